#!/usr/bin/env python3
"""Server memory per connection: N connections that each echoed one short
message and then stay open and idle.

Usage (from the repository root):

    python benches/idle_memory.py [--conns 2000] [--loops asyncio,uvloop,ferroloop,ferroloop-proactor,ferroloop-proactor-own]

Each loop runs in a fresh process that serves an ``asyncio.Protocol`` echo
on 127.0.0.1 and opens the N client sockets itself (plain non-blocking
sockets, no loop involved). It reports the growth of its resident set
(VmRSS) from just after the listener started to once every connection has
had its reply: the loop's and its transports' memory per connection.
``ferroloop-proactor-own`` is the proactor with its shared recv pool off
(``FERROLOOP_RECV_MULTISHOT=0``): every transport reads into a buffer of its
own.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

CHILD = r"""
import asyncio, socket, sys, time
kind, n = sys.argv[1], int(sys.argv[2])
sys.path.insert(0, sys.argv[3])
from common import import_loop_module

def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])

class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
    def data_received(self, data):
        self.transport.write(data)

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    await asyncio.sleep(0.05)
    base = rss_kib()
    clients = []
    for i in range(n):
        c = socket.create_connection(("127.0.0.1", port))
        c.setblocking(False)
        clients.append(c)
        if i % 200 == 199:
            await asyncio.sleep(0.005)
    for c in clients:
        c.send(b"x" * 100)
    got, deadline = 0, time.monotonic() + 60
    while got < n * 100 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        for c in clients:
            try:
                got += len(c.recv(4096))
            except BlockingIOError:
                pass
    await asyncio.sleep(0.2)
    grown = rss_kib() - base
    for c in clients:
        c.close()
    server.close()
    print("RESULT", got == n * 100, grown)

loop = import_loop_module(kind).new_event_loop()
loop.run_until_complete(main())
"""


def measure(loop: str, conns: int) -> tuple[bool, int]:
    env = dict(os.environ)
    kind = loop
    if loop == "ferroloop-proactor-own":
        env["FERROLOOP_RECV_MULTISHOT"] = "0"
        kind = "ferroloop-proactor"
    out = subprocess.run(
        [sys.executable, "-c", CHILD, kind, str(conns), os.path.dirname(os.path.abspath(__file__))],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    for line in out.stdout.splitlines():
        if line.startswith("RESULT"):
            _, ok, grown = line.split()
            return ok == "True", int(grown)
    raise RuntimeError(f"{loop}: no result\n{out.stdout}\n{out.stderr}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conns", type=int, default=2000)
    ap.add_argument(
        "--loops",
        default="asyncio,uvloop,ferroloop,ferroloop-proactor,ferroloop-proactor-own",
    )
    args = ap.parse_args(argv)
    print(f"| loop | RSS growth, {args.conns} idle connections | per connection |")
    print("|---|---:|---:|")
    for loop in args.loops.split(","):
        ok, grown = measure(loop, args.conns)
        flag = "" if ok else " (not every reply arrived)"
        print(f"| {loop} | {grown / 1024:.1f} MiB{flag} | {grown / args.conns:.1f} KiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
