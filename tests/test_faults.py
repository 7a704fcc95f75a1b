"""Faults a server meets in production, on asyncio and every ferroloop kind:
running out of descriptors while accepting, and threads flooding the loop
with callbacks while it does I/O. Each check is bounded in count and time
and uses loopback only."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from conftest import LOOP_KINDS, make_loop

SERVER = textwrap.dedent(
    """
    import asyncio, os, resource, sys
    sys.path.insert(0, {tests!r})
    from conftest import make_loop

    loop = make_loop(sys.argv[1])
    exhausted = []

    def on_error(loop, context):
        if "out of system resource" in context.get("message", ""):
            exhausted.append(context["exception"].errno)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(on_error)

    async def handle(reader, writer):
        writer.write(await reader.read(100))
        await writer.drain()
        await reader.read(100)  # until the client closes
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=100)
        port = server.sockets[0].getsockname()[1]
        # Room for only a few connections beyond what is open now.
        spare = 4
        limit = len(os.listdir("/proc/self/fd")) + spare
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        print(port, flush=True)
        # Serve until the test closes our stdin.
        await loop.run_in_executor(None, sys.stdin.read)
        print("exhausted", len(exhausted), flush=True)

    loop.run_until_complete(main())
    """
)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_accepting_at_the_descriptor_limit(kind):
    """With the descriptor limit reached, the server neither spins nor stops
    listening: the loop reports the error, and accepts the waiting
    connections once descriptors are free again."""
    tests = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER.format(tests=tests), kind],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    clients = []
    try:
        port = int(proc.stdout.readline())
        for i in range(20):
            c = socket.create_connection(("127.0.0.1", port), timeout=10)
            c.sendall(b"ping%02d" % i)
            clients.append(c)
        # At the limit: measure the server's CPU while it cannot accept.
        time.sleep(0.5)
        before = cpu_seconds(proc.pid)
        time.sleep(1.5)
        stuck_cpu = cpu_seconds(proc.pid) - before
        answered = set()
        deadline = time.monotonic() + 8
        while len(answered) < len(clients) and time.monotonic() < deadline:
            for i, c in enumerate(clients):
                if i in answered:
                    continue
                c.settimeout(0.05)
                try:
                    data = c.recv(100)
                except TimeoutError:
                    continue
                assert data == b"ping%02d" % i
                answered.add(i)
                c.close()  # frees the server's descriptor for the next one
        assert len(answered) == len(clients), f"{len(answered)} of {len(clients)} answered"
        # A loop that spun on the readable listener would use all 1.5 s.
        assert stuck_cpu < 0.5, stuck_cpu
    finally:
        for c in clients:
            c.close()
        out, err = proc.communicate("", timeout=30)
    assert proc.returncode == 0, err
    reported = int(out.split("exhausted")[1])
    assert reported >= 1


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_threads_flooding_call_soon_threadsafe_during_io(kind):
    """8 threads post 2,000 callbacks each while the loop echoes on a
    socket pair: every callback runs exactly once, each thread's in the
    order posted, and the I/O is intact."""
    loop = make_loop(kind)
    threads, per_thread = 8, 2000
    seen: dict[int, list[int]] = {t: [] for t in range(threads)}
    payload = os.urandom(1 << 20)

    async def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        done = loop.create_future()
        remaining = [threads * per_thread]

        def hit(t, i):
            seen[t].append(i)
            remaining[0] -= 1
            if remaining[0] == 0:
                done.set_result(None)

        def post(t):
            for i in range(per_thread):
                loop.call_soon_threadsafe(hit, t, i)

        async def pump():
            got = bytearray()
            send = asyncio.ensure_future(loop.sock_sendall(a, payload))
            while len(got) < len(payload):
                got += await loop.sock_recv(b, 65536)
            await send
            return bytes(got)

        workers = [threading.Thread(target=post, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        try:
            got = await asyncio.wait_for(pump(), 30)
            await asyncio.wait_for(done, 30)
        finally:
            for w in workers:
                w.join()
            a.close()
            b.close()
        return got

    try:
        got = loop.run_until_complete(main())
    finally:
        loop.close()
    assert got == payload
    for t in range(threads):
        assert seen[t] == list(range(per_thread)), t
