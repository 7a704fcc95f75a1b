#!/usr/bin/env python3
"""User-space instructions per echoed message, under callgrind.

Usage (from the repository root; needs valgrind):

    python benches/cg_echo.py [--loops asyncio,uvloop,ferroloop] [--conns 50] [--size 1024]
                              [--server protocol|streams|sock|udp] [--keep DIR]

For each loop, an echo server on a Unix socket (an ``asyncio.Protocol``;
with ``--server streams`` a ``start_unix_server`` handler that reads and
writes through asyncio's streams, draining after each write; with
``--server sock`` a task per connection looping on ``loop.sock_recv`` and
``loop.sock_sendall``, connections taken with ``loop.sock_accept``; with
``--server udp`` a ``DatagramProtocol`` on 127.0.0.1 that ``sendto``s each
datagram back to its sender, driven by N plain UDP sockets, one datagram in
flight on each) runs under ``valgrind --tool=callgrind`` twice, serving N1 and then N2 messages
from a plain-socket client in this process's child; the difference of the two
instruction totals divided by N2 - N1 is the loop's user-space cost per
message, start-up and shutdown cancelled out. Instruction counts do not
depend on what else the machine is doing, unlike times.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import socket
import subprocess
import sys
import tempfile
import time

# A fixed hash seed for the measured interpreter: with a random one, the
# dict lookups of start-up vary by some 500 instructions a message between
# runs of one build.
FIXED_HASH_ENV = {**os.environ, "PYTHONHASHSEED": "0"}

SERVER = r"""
import asyncio, sys
kind, path, server = sys.argv[1], sys.argv[2], sys.argv[3]
if kind == "asyncio":
    loop = asyncio.new_event_loop()
elif "-" in kind:  # ferroloop-proactor: ferroloop.new_event_loop(kind="proactor")
    module, _, loop_kind = kind.partition("-")
    loop = __import__(module).new_event_loop(kind=loop_kind)
else:
    loop = __import__(kind).new_event_loop()

class EchoDatagram(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)

class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

async def echo_stream(reader, writer):
    while data := await reader.read(262144):
        writer.write(data)
        await writer.drain()
    writer.close()

async def echo_sock(conn):
    with conn:
        while data := await loop.sock_recv(conn, 262144):
            await loop.sock_sendall(conn, data)

async def accept_socks(listener):
    while True:
        conn, _ = await loop.sock_accept(listener)
        conn.setblocking(False)
        loop.create_task(echo_sock(conn))

async def main():
    if server == "udp":
        transport, _ = await loop.create_datagram_endpoint(
            EchoDatagram, local_addr=("127.0.0.1", 0))
        with open(path, "w") as f:  # the client reads the port from here
            f.write(str(transport.get_extra_info("sockname")[1]))
    elif server == "churn":
        srv = await loop.create_server(Echo, "127.0.0.1", 0)
        with open(path, "w") as f:  # the client reads the port from here
            f.write(str(srv.sockets[0].getsockname()[1]))
    elif server == "streams":
        await asyncio.start_unix_server(echo_stream, path)
    elif server == "sock":
        import socket
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(128)
        listener.setblocking(False)
        loop.create_task(accept_socks(listener))
    else:
        await loop.create_unix_server(Echo, path)
    stop = loop.create_future()
    loop.add_reader(0, lambda: stop.done() or stop.set_result(None))
    print("READY", flush=True)
    await stop

asyncio.set_event_loop(loop)
loop.run_until_complete(main())
"""

READY_TIMEOUT_S = 120.0
CLIENT_TIMEOUT_S = 300.0


def drive(path: str, n: int, conns: int, size: int, server: str = "protocol") -> None:
    """Echo *n* messages of *size* bytes over *conns* connections (UDP
    sockets connected to the server's port with ``server == "udp"``), one in
    flight per connection; bounded by CLIENT_TIMEOUT_S. On loopback no
    datagram is lost while the client's receive buffers have room, which
    one datagram in flight per socket keeps."""
    msg = b"x" * size
    if server == "churn":
        churn(path, n, msg)
        return
    socks = []
    for _ in range(conns):
        if server == "udp":
            with open(path, encoding="utf-8") as f:
                port = int(f.read())
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.connect(("127.0.0.1", port))
        else:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
        s.setblocking(False)
        socks.append(s)
    ep = select.epoll()
    got = {}
    for s in socks:
        ep.register(s.fileno(), select.EPOLLIN)
        got[s.fileno()] = [s, 0]
    sent = done = 0
    for s in socks[:n]:
        s.sendall(msg)
        sent += 1
    deadline = time.monotonic() + CLIENT_TIMEOUT_S
    while done < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{done} of {n} messages echoed")
        for fd, _ in ep.poll(5):
            st = got[fd]
            st[1] += len(st[0].recv(65536))
            while st[1] >= size:
                st[1] -= size
                done += 1
                if sent < n:
                    st[0].sendall(msg)
                    sent += 1
    for s in socks:
        s.close()
    ep.close()


def churn(path: str, n: int, msg: bytes) -> None:
    """*n* TCP connections one after another: connect, send *msg*, read it
    back, close; bounded by CLIENT_TIMEOUT_S."""
    with open(path, encoding="utf-8") as f:
        port = int(f.read())
    deadline = time.monotonic() + CLIENT_TIMEOUT_S
    for i in range(n):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{i} of {n} connections made")
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(msg)
            got = 0
            while got < len(msg):
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError("the server closed before echoing")
                got += len(chunk)


def instructions(loop: str, n: int, conns: int, size: int, tmp: str, kind: str) -> int:
    path = os.path.join(tmp, f"{loop}-{n}.sock")
    out = os.path.join(tmp, f"cg.{loop}.{n}")
    script = os.path.join(tmp, "server.py")
    with open(script, "w", encoding="utf-8") as f:
        f.write(SERVER)
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    cmd += [sys.executable, script, loop, path, kind]
    server = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=FIXED_HASH_ENV,
    )
    try:
        start = time.monotonic()
        line = server.stdout.readline()
        if "READY" not in line or time.monotonic() - start > READY_TIMEOUT_S:
            raise RuntimeError(f"{loop} server did not start: {line!r}")
        drive(path, n, conns, size, kind)
        # communicate() closes the server's stdin, which stops it.
        _, err = server.communicate(timeout=READY_TIMEOUT_S)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    m = re.search(r"Collected : (\d+)", err)
    if not m:
        raise RuntimeError(f"no callgrind total for {loop}: {err[-500:]}")
    return int(m.group(1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loops", default="asyncio,uvloop,ferroloop")
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument(
        "--server",
        choices=("protocol", "streams", "sock", "udp", "churn"),
        default="protocol",
        help="churn: a TCP protocol echo server, one connection per message "
        "(connect, echo, close), --conns ignored; its count is per connection",
    )
    ap.add_argument("--n1", type=int, default=2000)
    ap.add_argument("--n2", type=int, default=20000)
    ap.add_argument(
        "--keep",
        metavar="DIR",
        help="keep the callgrind output files (cg.LOOP.N) in DIR, for callgrind_annotate",
    )
    args = ap.parse_args(argv)
    if args.server == "churn":
        what = f"churn echo, {args.size} B, one connection after another"
        unit = "connection"
    else:
        socks = "UDP sockets" if args.server == "udp" else "connections"
        what = f"{args.server} echo, {args.size} B, {args.conns} {socks}"
        unit = "message"
    print(f"| loop | instructions per {unit} ({what}) |")
    print("|---|---:|")
    with tempfile.TemporaryDirectory(prefix="ferroloop-cg-") as tmp:
        if args.keep:
            os.makedirs(args.keep, exist_ok=True)
            tmp = args.keep
        for loop in args.loops.split(","):
            a = instructions(loop, args.n1, args.conns, args.size, tmp, args.server)
            b = instructions(loop, args.n2, args.conns, args.size, tmp, args.server)
            print(f"| {loop} | {(b - a) / (args.n2 - args.n1):,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
