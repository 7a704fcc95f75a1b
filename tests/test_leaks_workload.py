"""Nothing grows across repetitions of a transport workload, and the cycles
a program makes through transports, protocols, handles and futures are
collected, on asyncio's loop and on each ferroloop kind.

The workload (one loop per kind, run ``REPS`` times in this process): a TCP
protocol echo and a streams echo (several connections, tens of KB each), a
Unix socket echo, a UDP exchange, a TLS echo, a pipe pair, a short
subprocess, ``sock_*`` calls, timers, and servers started and closed. After
``WARMUP`` repetitions (caches, the child watcher's first use, the ``ssl``
module's first handshake) each repetition is followed by ``gc.collect()`` and
a reading of: the number of objects the collector tracks, the counts per type
of the transports, protocols, futures, tasks, handles, sockets, servers and
the native cores, the open descriptors, the memory ``tracemalloc`` traces
(Python objects, native classes' instances included) and the bytes in use in
the C heap (``mallinfo2``: the Rust side's allocations too). From the
reading after repetition ``WARMUP`` on they must be flat: the same object
count, type counts and descriptors; traced memory and the C heap within the
small tolerances below (measured growth over those 4 repetitions: a few
hundred bytes traced, under 20 KiB of C heap, on every kind). CPython's
method cache is emptied before each reading (see ``Readings.take``).

The collector's part: a protocol holding its transport, a future holding
the protocol, handles whose callbacks hold the transport, on TCP (both
ends), Unix sockets and UDP; after the close only those cycles keep them,
and one ``gc.collect()`` frees them all.
"""

from __future__ import annotations

import array
import asyncio
import ctypes
import gc
import os
import socket
import ssl
import sys
import tracemalloc
import weakref
from collections import Counter

import pytest
from conftest import collect, fd_count, make_loop, run_coro
from test_tls import HOST, _cpython_test_cert, _make_with_openssl, _make_with_trustme

KINDS = ["asyncio", "ferroloop", "ferroloop-poll", "ferroloop-proactor"]

REPS = 9
WARMUP = 5  # the readings after repetitions WARMUP..REPS must be flat

# Growth allowed between the first and the last flat reading.
TOLERANCE_GC_OBJECTS = 0
TOLERANCE_TRACED_BYTES = 4 * 1024
TOLERANCE_HEAP_BYTES = 64 * 1024

# Type names whose live count must not change at all once warm.
WATCHED = (
    "Transport",
    "Protocol",
    "Future",
    "Task",
    "Handle",
    "socket",
    "Server",
    "StreamReader",
    "StreamWriter",
    "Core",  # ferroloop's native StreamCore, RingStreamCore, DatagramCore, pipes
    "SSLObject",
    "Process",
)

# To see the check fail, plant a leak: pass run_repetitions a ``plant``
# that appends something to this list after each repetition.
LEAKED = []


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
        "fsmblks", "uordblks", "fordblks", "keepcost",
    )]  # fmt: skip


def _heap_in_use():
    """Bytes allocated from the C heap and not freed (glibc), or None."""
    try:
        libc = ctypes.CDLL(None)
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _Mallinfo2
    info = fn()
    return info.uordblks + info.hblkhd


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("tls"))
    try:
        files = _make_with_trustme(directory)
    except ImportError:
        files = _make_with_openssl(directory) or _cpython_test_cert()
    if files is None:
        pytest.skip("no way to get a test certificate (trustme, openssl, CPython's test data)")
    chain, key, cafile = files
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(chain, key)
    client = ssl.create_default_context(cafile=cafile)
    return server, client


# ---------------------------------------------------------------- workload


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        self.transport.close()


class CollectProtocol(asyncio.Protocol):
    def __init__(self, loop, expected):
        self.buf = bytearray()
        self.expected = expected
        self.done = loop.create_future()

    def data_received(self, data):
        self.buf += data
        if len(self.buf) >= self.expected and not self.done.done():
            self.done.set_result(bytes(self.buf))

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"lost after {len(self.buf)}"))


class EchoDatagram(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


class ClientDatagram(asyncio.DatagramProtocol):
    def __init__(self, loop, n):
        self.got = []
        self.n = n
        self.done = loop.create_future()

    def datagram_received(self, data, addr):
        self.got.append(data)
        if len(self.got) == self.n:
            self.done.set_result(self.got)


async def _stream_echo(reader, writer):
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()
    await writer.wait_closed()


async def workload(loop, tmp, tls_ctx, rep):
    payload = os.urandom(24 * 1024)

    # TCP, protocols: 3 connections of 24 KB each, echoed.
    server = await loop.create_server(EchoProtocol, HOST, 0)
    port = server.sockets[0].getsockname()[1]

    async def tcp_client():
        tr, pr = await loop.create_connection(
            lambda: CollectProtocol(loop, len(payload)), HOST, port
        )
        tr.write(payload)
        data = await pr.done
        tr.close()
        return data

    assert await asyncio.gather(*(tcp_client() for _ in range(3))) == [payload] * 3
    server.close()
    await server.wait_closed()

    # TCP, streams: 3 connections.
    server = await asyncio.start_server(_stream_echo, HOST, 0)
    port = server.sockets[0].getsockname()[1]

    async def stream_client(host, port):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(payload)
        writer.write_eof()
        data = await reader.readexactly(len(payload))
        writer.close()
        await writer.wait_closed()
        return data

    assert await asyncio.gather(*(stream_client(HOST, port) for _ in range(3))) == [payload] * 3
    server.close()
    await server.wait_closed()

    # Unix socket, streams.
    path = os.path.join(tmp, f"echo-{rep}.sock")
    server = await asyncio.start_unix_server(_stream_echo, path)
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(payload)
    writer.write_eof()
    assert await reader.read() == payload
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    os.unlink(path)

    # UDP: 5 datagrams there and back.
    echo_tr, _ = await loop.create_datagram_endpoint(EchoDatagram, local_addr=(HOST, 0))
    addr = echo_tr.get_extra_info("sockname")
    cli_tr, cli = await loop.create_datagram_endpoint(
        lambda: ClientDatagram(loop, 5), remote_addr=addr
    )
    for i in range(5):
        cli_tr.sendto(bytes([i]) * 512)
    assert sorted(await cli.done) == [bytes([i]) * 512 for i in range(5)]
    cli_tr.close()
    echo_tr.close()

    # TLS, streams.
    server_ctx, client_ctx = tls_ctx
    server = await asyncio.start_server(_stream_echo, HOST, 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection(
        HOST, port, ssl=client_ctx, server_hostname="localhost"
    )
    writer.write(payload[:8192])
    assert await reader.readexactly(8192) == payload[:8192]
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()

    # A pipe pair.
    rfd, wfd = os.pipe()
    reader = asyncio.StreamReader()
    r_tr, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(rfd, "rb", 0)
    )
    w_tr, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(wfd, "wb", 0))
    w_tr.write(payload[:8192])
    w_tr.close()
    assert await reader.read() == payload[:8192]
    r_tr.close()

    # A short subprocess.
    proc = await asyncio.create_subprocess_exec(
        "/bin/cat", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate(payload[:4096])
    assert (out, proc.returncode) == (payload[:4096], 0)

    # sock_* calls.
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen()
    listener.setblocking(False)
    client = socket.socket()
    client.setblocking(False)
    accepted = loop.create_task(loop.sock_accept(listener))
    await loop.sock_connect(client, listener.getsockname())
    conn, _ = await accepted
    conn.setblocking(False)
    await loop.sock_sendall(client, payload[:16384])
    got = bytearray()
    buf = bytearray(4096)
    while len(got) < 16384:
        n = await loop.sock_recv_into(conn, buf)
        got += buf[:n]
    await loop.sock_sendall(conn, b"pong")
    assert await loop.sock_recv(client, 16) == b"pong"
    assert got == payload[:16384]
    for s in (conn, client, listener):
        s.close()

    # Timers: some run, some cancelled.
    ran = []
    handles = [loop.call_later(0.001 * (i % 3), ran.append, i) for i in range(10)]
    for h in handles[::2]:
        h.cancel()
    await asyncio.sleep(0.005)
    assert sorted(ran) == [1, 3, 5, 7, 9]


SERIES = ("gc_objects", "fds", "traced", "heap")


class Readings:
    """The readings after each repetition, kept in arrays made up front:
    storing them allocates nothing the next reading would count."""

    def __init__(self):
        self.series = {name: array.array("q", [0] * REPS) for name in SERIES}
        self.watched_first = None  # the counts at the first flat reading
        self.watched_changes = []  # (repetition, counts) where they differ

    def take(self, rep):
        collect()
        # CPython 3.11's method cache keeps a reference to the name of each
        # of its last 4,096 attribute lookups: names made afresh for a lookup
        # (by C code, or Rust code not interning them) stay alive until their
        # entry is reused. Bounded, but it would read as growth here.
        sys._clear_type_cache()
        objects = gc.get_objects()
        counts = Counter(type(o).__name__ for o in objects)
        watched = {name: n for name, n in counts.items() if any(w in name for w in WATCHED)}
        self.series["gc_objects"][rep] = len(objects)
        del objects, counts
        self.series["fds"][rep] = fd_count()
        self.series["traced"][rep] = tracemalloc.get_traced_memory()[0]
        self.series["heap"][rep] = _heap_in_use() or 0
        if rep == WARMUP - 1:
            self.watched_first = watched
        elif rep >= WARMUP and watched != self.watched_first:
            self.watched_changes.append((rep, watched))

    def flat(self, name):
        return list(self.series[name][WARMUP - 1 :])

    def problems(self):
        """What grew, with the readings (empty when flat)."""
        found = [f"watched counts at rep {WARMUP - 1}: {self.watched_first}, then {c}"
                 for c in self.watched_changes]  # fmt: skip
        if len(set(self.flat("fds"))) != 1:
            found.append(f"descriptors: {self.flat('fds')}")
        for name, tolerance in (
            ("gc_objects", TOLERANCE_GC_OBJECTS),
            ("traced", TOLERANCE_TRACED_BYTES),
            ("heap", TOLERANCE_HEAP_BYTES),
        ):
            values = self.flat(name)
            if values[-1] - values[0] > tolerance:
                found.append(f"{name}: {values} (tolerance {tolerance})")
        return found


def run_repetitions(kind, tmp, tls_ctx, plant=None):
    loop = make_loop(kind)
    readings = Readings()
    tracemalloc.start()
    try:
        for rep in range(REPS):
            run_coro(loop, workload(loop, tmp, tls_ctx, rep), timeout=20)
            if plant is not None:
                plant(rep)
            readings.take(rep)
    finally:
        tracemalloc.stop()
        loop.close()
    return readings


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", KINDS)
def test_workload_repetitions_are_flat(kind, tmp_path, tls):
    collect()
    fds_before = fd_count()
    readings = run_repetitions(kind, str(tmp_path), tls)
    assert readings.problems() == []
    collect()
    assert fd_count() == fds_before


# ---------------------------------------------------------------- cycles


class CycleProtocol(asyncio.Protocol):
    """protocol -> transport -> protocol; protocol -> future -> protocol;
    protocol -> handle -> callback -> transport."""

    def __init__(self, loop):
        self.loop = loop
        self.lost = loop.create_future()
        self.fut = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.fut.set_result(self)

        def touch():
            self.touched = transport.get_extra_info("sockname")

        self.handle = self.loop.call_soon(touch)
        self.timer = self.loop.call_later(0, touch)

    def data_received(self, data):
        self.transport.write(data)

    def connection_lost(self, exc):
        self.lost.set_result(exc)


class CycleDatagram(asyncio.DatagramProtocol):
    def __init__(self, loop):
        self.loop = loop
        self.fut = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.fut.set_result(self)
        self.handle = self.loop.call_soon(lambda: transport.get_extra_info("sockname"))

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def _refs(proto):
    return [
        weakref.ref(x)
        for x in (proto, proto.transport, proto.fut, proto.handle, getattr(proto, "timer", proto))
    ]


async def _make_cycles(loop, path):
    refs = []
    # TCP, both ends.
    server_protos = []

    def factory():
        p = CycleProtocol(loop)
        server_protos.append(p)
        return p

    server = await loop.create_server(factory, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    tr, pr = await loop.create_connection(lambda: CycleProtocol(loop), HOST, port)
    tr.write(b"ping")
    await asyncio.sleep(0.01)
    tr.close()
    await pr.lost
    await server_protos[0].lost
    refs += _refs(pr) + _refs(server_protos[0])
    server.close()
    await server.wait_closed()
    # Unix socket.
    server_protos.clear()
    server = await loop.create_unix_server(factory, path)
    tr, pr = await loop.create_unix_connection(lambda: CycleProtocol(loop), path)
    await asyncio.sleep(0.01)
    tr.abort()
    await pr.lost
    await server_protos[0].lost
    refs += _refs(pr) + _refs(server_protos[0])
    server.close()
    await server.wait_closed()
    # UDP.
    tr, pr = await loop.create_datagram_endpoint(lambda: CycleDatagram(loop), local_addr=(HOST, 0))
    await asyncio.sleep(0)
    tr.close()
    await pr.lost
    refs += _refs(pr)
    return refs


@pytest.mark.parametrize("kind", KINDS)
def test_cycles_through_transports_are_collected(kind, tmp_path):
    loop = make_loop(kind)
    try:
        gc.disable()
        refs = run_coro(loop, _make_cycles(loop, str(tmp_path / "c.sock")))
        # Only the cycles keep them now: reference counting alone frees
        # none of the protocols...
        alive = [r() is not None for r in refs]
        assert all(alive[0::5]), alive
        collect()
        assert [r() for r in refs] == [None] * len(refs)
    finally:
        gc.enable()
        loop.close()


async def _connections(loop, n):
    server = await loop.create_server(EchoProtocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    for _ in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        writer.close()
        await writer.wait_closed()
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize("kind", KINDS)
def test_connections_leave_no_names_behind(kind):
    """1,000 connections on one loop leave the traced memory where it was,
    with CPython's attribute cache left as it is. A name the native code
    made afresh for each call (`fileno`, `close`, `set_result`, ...) was
    kept by that cache: +13.6 KB over this run before such names were
    interned, against asyncio's few hundred bytes."""
    loop = make_loop(kind)
    try:
        loop.run_until_complete(_connections(loop, 200))  # warm-up
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            loop.run_until_complete(_connections(loop, 1000))
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
    finally:
        loop.close()
    assert grown < TOLERANCE_TRACED_BYTES, f"{grown} bytes kept after 1,000 connections"
