"""Peers that misbehave and loops interrupted, on asyncio and every ferroloop
kind (issue 10, items 1, 4, 5 and 6): thousands of connections closing
abruptly while descriptor numbers are reused, reset storms over pending
writes, a peer killed mid-transfer, half-close from either side on TCP and
Unix sockets, a signal storm during I/O, and a loop closed with operations
pending. Each check is bounded in count and time and uses loopback only.

The clients run in a separate process on asyncio's own loop, so what is
being tested is only the server's loop."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
import warnings
import zlib

import pytest
from conftest import fd_count, make_loop

KINDS = ["asyncio", "ferroloop", "ferroloop-poll", "ferroloop-proactor"]

# --------------------------------------------------------------- misrouting

# Frames both ways are a 4-byte big-endian length and a body. A client's
# first frame is b"T" + its 16-byte tag; then b"D" + payload frames, each
# answered with tag + crc32(payload) + len(payload), where the tag is the
# one the *server's protocol* remembers. A byte delivered to the wrong
# protocol therefore comes back under another connection's tag. b"C" +
# payload is answered the same way and then the server closes.
HEADER = struct.Struct(">I")
REPLY = struct.Struct(">16sII")

CLIENT = textwrap.dedent(
    r"""
    import asyncio, json, os, random, socket, struct, sys, zlib

    HEADER = struct.Struct(">I")
    REPLY = struct.Struct(">16sII")
    port, total, concurrency, seed = map(int, sys.argv[1:5])
    rng = random.Random(seed)
    SIZES = [1, 7, 100, 1000, 4096, 20000, 65536]
    stats = dict(connections=0, replies=0, misrouted=0, corrupt=0,
                 server_closes=0, resets=0, midframe=0, unread=0, errors=[])

    def frame(body):
        return HEADER.pack(len(body)) + body

    def rst(writer):
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def one(n):
        tag = os.urandom(16)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        stats["connections"] += 1
        writer.write(frame(b"T" + tag))
        ending = rng.choice(["clean", "clean", "rst", "midframe", "unread", "server"])
        for _ in range(rng.randrange(0, 5)):
            payload = rng.randbytes(rng.choice(SIZES))
            writer.write(frame(b"D" + payload))
            if ending == "unread":
                continue
            got_tag, crc, length = REPLY.unpack(await reader.readexactly(REPLY.size))
            stats["replies"] += 1
            if got_tag != tag:
                stats["misrouted"] += 1
            elif crc != zlib.crc32(payload) or length != len(payload):
                stats["corrupt"] += 1
        if ending == "server":
            payload = rng.randbytes(rng.choice(SIZES))
            writer.write(frame(b"C" + payload))
            got_tag, crc, length = REPLY.unpack(await reader.readexactly(REPLY.size))
            stats["replies"] += 1
            if got_tag != tag:
                stats["misrouted"] += 1
            elif crc != zlib.crc32(payload) or length != len(payload):
                stats["corrupt"] += 1
            rest = await reader.read()
            if rest:
                stats["corrupt"] += 1
            stats["server_closes"] += 1
            writer.close()
        elif ending == "clean":
            writer.close()
        elif ending == "rst":
            stats["resets"] += 1
            rst(writer)
        elif ending == "midframe":
            stats["midframe"] += 1
            body = b"D" + rng.randbytes(rng.choice(SIZES))
            whole = frame(body)
            writer.write(whole[: rng.randrange(1, len(whole))])
            await writer.drain()
            rst(writer)
        else:
            stats["unread"] += 1
            await writer.drain()
            # Replies left unread in our receive buffer: close sends a reset.
            writer.transport.abort()

    async def worker(counter):
        while counter[0] < total:
            counter[0] += 1
            try:
                await asyncio.wait_for(one(counter[0]), 20)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                # The server never resets or closes early: this is a failure.
                stats["errors"].append(repr(exc))

    async def main():
        counter = [0]
        await asyncio.gather(*(worker(counter) for _ in range(concurrency)))

    asyncio.run(main())
    print(json.dumps(stats))
    """
)


class TaggedEcho(asyncio.Protocol):
    def __init__(self, server):
        self.server = server
        self.buf = bytearray()
        self.tag = None
        self.transport = None
        self.lost = 0

    def connection_made(self, transport):
        self.transport = transport
        self.server["made"] += 1
        self.server["open"].add(self)

    def data_received(self, data):
        if self.lost:
            self.server["after_lost"] += 1
            return
        self.buf += data
        while len(self.buf) >= HEADER.size:
            (length,) = HEADER.unpack_from(self.buf)
            if len(self.buf) < HEADER.size + length:
                return
            body = bytes(self.buf[HEADER.size : HEADER.size + length])
            del self.buf[: HEADER.size + length]
            kind, payload = body[:1], body[1:]
            if kind == b"T":
                self.tag = payload
                continue
            self.transport.write(REPLY.pack(self.tag, zlib.crc32(payload), len(payload)))
            if kind == b"C":
                self.transport.close()
                return

    def connection_lost(self, exc):
        self.lost += 1
        self.server["lost"] += 1
        self.server["open"].discard(self)
        if self.lost > 1:
            self.server["lost_twice"] += 1


def _run_server(kind, protocol_factory, client_argv, *, timeout=60, family="tcp", path=None):
    """Serve on a new loop of ``kind`` until the client process exits;
    returns (the client's stdout, the loop's exception-handler contexts,
    the fd count before the server existed, the fd count after)."""
    gc.collect()
    before = fd_count()
    loop = make_loop(kind)
    contexts = []
    loop.set_exception_handler(lambda _loop, ctx: contexts.append(ctx))

    async def main():
        if family == "unix":
            server = await loop.create_unix_server(protocol_factory, path)
            where = path
        else:
            server = await loop.create_server(protocol_factory, "127.0.0.1", 0, backlog=512)
            where = str(server.sockets[0].getsockname()[1])
        # The clients are not children of the loop under test: a plain
        # Popen (fork and exec, no waiting), reaped in the executor.
        proc = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-c", *client_argv(where)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            out, err = await loop.run_in_executor(None, proc.communicate, None, timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        server.close()
        await server.wait_closed()
        return out

    try:
        out = loop.run_until_complete(main())
        # Let the last connection_lost callbacks run.
        loop.run_until_complete(asyncio.sleep(0.1))
    finally:
        loop.close()
    gc.collect()
    return out, contexts, before, fd_count()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", KINDS)
def test_nothing_misrouted_under_descriptor_reuse(kind):
    """3,000 connections from 200 concurrent clients, each sending tagged,
    checksummed frames and ending at random: a clean close, a reset, a reset
    in the middle of a frame, a close with replies unread (a reset from the
    kernel), or a close by the server. Every reply carries its own
    connection's tag and checksum; every connection is made and lost once;
    nothing reaches the exception handler; no descriptor is left open."""
    server = {"made": 0, "lost": 0, "lost_twice": 0, "after_lost": 0, "open": set()}
    total, concurrency = 3000, 200
    out, contexts, before, after = _run_server(
        kind,
        lambda: TaggedEcho(server),
        lambda port: [CLIENT, port, str(total), str(concurrency), "1234"],
    )
    stats = json.loads(out)
    assert stats["errors"] == []
    assert stats["connections"] == total
    assert stats["misrouted"] == 0
    assert stats["corrupt"] == 0
    assert stats["replies"] > total  # about 1.5 per connection
    # Every ending happened, many times over.
    for ending in ("server_closes", "resets", "midframe", "unread"):
        assert stats[ending] > 200, (ending, stats)
    assert server["made"] == total
    assert server["lost"] == total
    assert server["lost_twice"] == 0
    assert server["after_lost"] == 0
    assert not server["open"]
    assert contexts == []
    assert after == before


# -------------------------------------------------------------- reset storm

STORM_CLIENT = textwrap.dedent(
    r"""
    import socket, struct, sys, time
    port, n = int(sys.argv[1]), int(sys.argv[2])
    socks = []
    for _ in range(n):
        s = socket.socket()
        # A tiny receive window: the server's writes stay mostly queued.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        socks.append(s)
    # Wait until every connection has data waiting, then reset them all.
    for s in socks:
        assert s.recv(1)
    for s in socks:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    print("{}")
    """
)


PENDING = b"x" * (256 << 10)


class Flooder(asyncio.Protocol):
    def __init__(self, server):
        self.server = server
        self.lost = 0

    def connection_made(self, transport):
        self.server["made"] += 1
        # A small send buffer (autotuning off): most of the write waits.
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        transport.write(PENDING)
        self.server["buffered"].append(transport.get_write_buffer_size())

    def connection_lost(self, exc):
        self.lost += 1
        self.server["lost"] += 1
        self.server["excs"].add(type(exc).__name__ if exc is not None else None)
        if self.lost > 1:
            self.server["lost_twice"] += 1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", KINDS)
def test_reset_storm_with_pending_writes(kind):
    """200 peers reset while the server has most of 256 KiB queued for each:
    each connection is lost exactly once, with a connection error, nothing
    reaches the exception handler and no descriptor is left open."""
    server = {"made": 0, "lost": 0, "lost_twice": 0, "excs": set(), "buffered": []}
    n = 200
    out, contexts, before, after = _run_server(
        kind, lambda: Flooder(server), lambda port: [STORM_CLIENT, port, str(n)]
    )
    assert out.strip() == "{}"
    assert server["made"] == n
    # The writes could not all go out at once: there was something pending.
    assert max(server["buffered"]) > 0
    assert server["lost"] == n
    assert server["lost_twice"] == 0
    assert server["excs"] <= {"ConnectionResetError", "BrokenPipeError"}, server["excs"]
    assert contexts == []
    assert after == before


# --------------------------------------------------------- peer SIGKILLed

KILLED_CLIENT = textwrap.dedent(
    r"""
    import socket, sys, time
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    s.sendall(b"go")
    while True:
        # Read a little, slowly, so the server's writes back up.
        s.recv(1000)
        time.sleep(0.001)
    """
)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["protocol", "streams"])
def test_peer_killed_mid_transfer(kind, mode):
    """A peer is SIGKILLed while the server streams data to it and waits for
    more: the server learns of it promptly (connection_lost, or an error
    from the stream calls), and the descriptor is closed."""
    gc.collect()
    before = fd_count()
    loop = make_loop(kind)
    contexts = []
    loop.set_exception_handler(lambda _loop, ctx: contexts.append(ctx))
    seen = {}

    async def main():
        started = loop.create_future()
        ended = loop.create_future()

        class Pusher(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport

            def data_received(self, data):
                if not started.done():
                    started.set_result(None)
                    self.transport.write(b"y" * (8 << 20))

            def connection_lost(self, exc):
                ended.set_result(exc)

        async def handle(reader, writer):
            await reader.readexactly(2)
            started.set_result(None)
            try:
                while True:
                    writer.write(b"y" * 65536)
                    await writer.drain()
            except ConnectionError as exc:
                ended.set_result(exc)
            finally:
                writer.close()

        if mode == "protocol":
            server = await loop.create_server(Pusher, "127.0.0.1", 0)
        else:
            server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, str(port)])  # noqa: ASYNC220
        try:
            await asyncio.wait_for(started, 20)
            await asyncio.sleep(0.2)  # mid-transfer
            proc.kill()
            killed_at = time.monotonic()
            exc = await asyncio.wait_for(ended, 10)
            seen["delay"] = time.monotonic() - killed_at
            seen["exc"] = type(exc).__name__ if exc is not None else None
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    gc.collect()
    assert seen["delay"] < 2.0, seen
    assert seen["exc"] in ("ConnectionResetError", "BrokenPipeError"), seen
    assert contexts == []
    assert fd_count() == before


# ------------------------------------------------------------- half-close


class HalfCloser(asyncio.Protocol):
    """Records everything; keeps the transport open after EOF."""

    def __init__(self, loop):
        self.data = bytearray()
        self.events = []
        self.eof = loop.create_future()
        self.lost = loop.create_future()
        self.made = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.made.set_result(transport)

    def data_received(self, data):
        self.data += data
        if not self.events or self.events[-1] != "data":
            self.events.append("data")

    def eof_received(self):
        self.events.append("eof")
        self.eof.set_result(None)
        return True

    def connection_lost(self, exc):
        self.events.append(("lost", None if exc is None else type(exc).__name__))
        self.lost.set_result(exc)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", ["tcp", "unix"])
@pytest.mark.parametrize("first", ["server", "client"])
def test_half_close_either_side(kind, family, first, tmp_path):
    """One side sends data and write_eof(); the other sees data then EOF,
    and can still answer on its half, which the first side receives before
    its own EOF. Both are then lost with no error."""
    loop = make_loop(kind)
    path = str(tmp_path / "s")

    async def main():
        servers = []

        def factory():
            servers.append(HalfCloser(loop))
            return servers[-1]

        if family == "unix":
            server = await loop.create_unix_server(factory, path)
            _, client = await loop.create_unix_connection(lambda: HalfCloser(loop), path)
        else:
            server = await loop.create_server(factory, "127.0.0.1", 0)
            _, client = await loop.create_connection(
                lambda: HalfCloser(loop), *server.sockets[0].getsockname()
            )
        async with asyncio.timeout(5):
            while not servers:
                await asyncio.sleep(0.001)
        srv = servers[0]
        await srv.made
        a, b = (srv, client) if first == "server" else (client, srv)
        big = os.urandom(300_000)
        a.transport.write(big)
        assert a.transport.can_write_eof()
        a.transport.write_eof()
        await asyncio.wait_for(b.eof, 5)
        assert bytes(b.data) == big
        b.transport.write(b"answer after eof")
        b.transport.write_eof()
        await asyncio.wait_for(a.eof, 5)
        assert bytes(a.data) == b"answer after eof"
        a.transport.close()
        b.transport.close()
        await asyncio.wait_for(asyncio.gather(a.lost, b.lost), 5)
        server.close()
        await server.wait_closed()
        return a.events, b.events

    try:
        a_events, b_events = loop.run_until_complete(main())
    finally:
        loop.close()
    assert a_events == ["data", "eof", ("lost", None)]
    assert b_events == ["data", "eof", ("lost", None)]


# ------------------------------------------------------ signals during I/O

KILLER = textwrap.dedent(
    r"""
    import os, signal, sys, time
    pid, n = int(sys.argv[1]), int(sys.argv[2])
    for i in range(n):
        os.kill(pid, signal.SIGUSR1)
        if i % 200 == 0:
            time.sleep(0.001)
    """
)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", KINDS)
def test_signal_storm_during_io(kind):
    """20,000 SIGUSR1 from another process while transports echo through a
    socket pair (for as long as the storm lasts, 8 MiB at least): every
    byte arrives intact and in order, the handler runs during the I/O
    (signals that arrive together are merged, as the kernel does), and the
    loop is still responsive afterwards."""
    loop = make_loop(kind)
    handled = [0]
    block = os.urandom(65536)

    async def main():
        a, b = socket.socketpair()
        got = [0, 0]  # bytes, crc32 of the stream
        sent = [0, 0]

        class Echo(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport

            def data_received(self, data):
                self.transport.write(data)

        class Sink(asyncio.Protocol):
            def data_received(self, data):
                got[0] += len(data)
                got[1] = zlib.crc32(data, got[1])

        etr, _ = await loop.connect_accepted_socket(Echo, a)
        str_, _ = await loop.connect_accepted_socket(Sink, b)
        argv = [sys.executable, "-c", KILLER, str(os.getpid()), "20000"]
        killer = subprocess.Popen(argv)  # noqa: ASYNC220
        deadline = time.monotonic() + 30
        try:
            i = 0
            while killer.poll() is None or sent[0] < 8 << 20:
                assert time.monotonic() < deadline
                # Each chunk a different slice of the block: reordering shows.
                chunk = block[i % 1000 :] + block[: i % 1000]
                i += 1
                str_.write(chunk)
                sent[0] += len(chunk)
                sent[1] = zlib.crc32(chunk, sent[1])
                while sent[0] - got[0] > 1 << 20:  # at most 1 MiB in flight
                    await asyncio.sleep(0)
            async with asyncio.timeout(10):
                while got[0] < sent[0]:
                    await asyncio.sleep(0.001)
            during_io = handled[0]
        finally:
            if killer.poll() is None:
                killer.kill()
            killer.wait()
        assert killer.returncode == 0
        # Responsive: a timer still fires on time.
        t0 = time.monotonic()
        await asyncio.sleep(0.01)
        late = time.monotonic() - t0
        etr.close()
        str_.close()
        await asyncio.sleep(0.01)
        return got, sent, during_io, late

    loop.add_signal_handler(signal.SIGUSR1, lambda: handled.__setitem__(0, handled[0] + 1))
    try:
        got, sent, during_io, late = loop.run_until_complete(main())
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
        loop.close()
    assert got == sent
    assert 1 <= during_io <= handled[0] <= 20000
    assert late < 1.0


# ------------------------------------------------ loop closed, ops pending


@pytest.mark.parametrize("kind", KINDS)
def test_loop_closed_with_operations_pending(kind):
    """A loop stopped and closed while a sock_recv, a sock_accept, a
    transport with a large pending write and a timer wait: close() raises
    nothing, the pending futures stay pending (as on asyncio), the user's
    sockets stay open and lose no byte that arrives after the close, and
    once everything is dropped no descriptor is left open."""
    gc.collect()
    before = fd_count()
    loop = make_loop(kind)
    r, w = socket.socketpair()
    r.setblocking(False)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    tx_a, tx_b = socket.socketpair()
    contexts = []
    loop.set_exception_handler(lambda _loop, ctx: contexts.append(ctx))

    async def start():
        recv = asyncio.ensure_future(loop.sock_recv(r, 100))
        accept = asyncio.ensure_future(loop.sock_accept(listener))
        tr, _ = await loop.connect_accepted_socket(asyncio.Protocol, tx_a)
        tr.write(b"z" * (4 << 20))  # tx_b never reads: most of it stays queued
        timer = loop.call_later(3600, lambda: None)
        await asyncio.sleep(0.05)
        return recv, accept, tr, timer

    recv, accept, tr, timer = loop.run_until_complete(start())
    assert tr.get_write_buffer_size() > 0
    loop.close()
    assert not recv.done() and not accept.done()
    # The sockets still belong to the user, and bytes that arrive now are
    # there for them: nothing left in the closed loop takes them.
    w.sendall(b"after close")
    r.setblocking(True)
    r.settimeout(5)
    assert r.recv(100) == b"after close"
    c = socket.create_connection(listener.getsockname(), timeout=5)
    listener.settimeout(5)
    conn, _ = listener.accept()
    for s in (r, w, listener, c, conn, tx_b):
        s.close()
    # As on asyncio, the transport cannot schedule its connection_lost on
    # the closed loop; dropped, it closes its socket (with a ResourceWarning).
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        tr.abort()
    del recv, accept, tr, timer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    # Only what asyncio reports: the two tasks dropped while pending.
    assert [c["message"] for c in contexts] == ["Task was destroyed but it is pending!"] * 2
    assert fd_count() == before
