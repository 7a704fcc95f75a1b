#!/usr/bin/env python3
"""Network benchmarks for asyncio-compatible event loops: echo servers.

Usage (from the repository root):

    python benches/net.py --loops asyncio,uvloop,rloop,ferroloop \\
        [--repeat N] [--quick] [--json out.json] [--workload a,b] [--big]

Each (loop, workload, repetition) starts two fresh processes on loopback:

* the **server**, ``net.py --server LOOP KIND ADDR``, runs an echo server of
  the given kind on the loop under test and prints one READY line;
* the **client**, ``net.py --client SPEC``, is the load generator.  It is plain
  Python (blocking sockets for one connection, ``select.epoll`` over
  non-blocking sockets for many, the ``ssl`` module on top of them for TLS)
  and never uses an event loop, so it is the same for every loop under test.
  For the HTTP workload it runs ``wrk`` instead, for a fixed duration.

The client warms the server up, then measures a bounded number of messages.
Around the measured phase it reads the server's CPU time from ``/proc``
(``/proc/PID/task/*/schedstat``, in ns, and utime/stime from
``/proc/PID/stat``), and at the end its peak RSS (``VmHWM``).  The parent
collects one JSON line from the client, kills the server, takes medians over
the repetitions and prints Markdown tables (see README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import resource
import select
import shutil
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import common

HERE = Path(__file__).resolve().parent
SCRIPT = Path(__file__).resolve()
ROOT = HERE.parent

# The Rust load generator (--loadgen rust): benches/loadgen, built with cargo.
LOADGEN_PACKAGE = "ferroloop-loadgen"
LOADGEN_DIR = HERE / "loadgen"
LOADGEN_KINDS = ("echo", "udp", "churn")  # client kinds it runs; tls and wrk stay as they are
LOADGEN_EXIT_S = 5.0  # the load generator gets this long to exit once its stdin is closed

DEFAULT_REPEAT = 3
QUICK_DIVISOR = 10
CLIENT_TIMEOUT_S = 60.0
SERVER_READY_TIMEOUT_S = 30.0
WARMUP_DIVISOR = 20  # warm-up messages = max(n // 20, 50), not measured
RECV_SIZE = 256 * 1024
CHURN_MSG_SIZE = 64
UDP_RETRANSMIT_S = 0.5
SETTLE_S = 0.05  # pause before reading the server's CPU time (not in wall time)

# HTTP keep-alive workload, load from wrk (duration-bounded, not count-bounded).
HTTP_BODY = b"Hello, World!"
HTTP_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
    + str(len(HTTP_BODY)).encode("ascii")
    + b"\r\n\r\n"
    + HTTP_BODY
)
HTTP_MAX_HEAD = 64 * 1024  # a client sending more without a blank line is cut off
WRK_THREADS = 1
WRK_SECONDS = 5  # measured duration; wrk takes whole seconds
WRK_QUICK_SECONDS = 2  # with --quick
WRK_WARMUP_S = 1  # a separate wrk run before the measured one (not measured)
WRK_GRACE_S = 15.0  # wrk gets its duration plus this before it is killed
WRK_MARKER = "FERROLOOP-WRK "  # prefix of the JSON line printed by WRK_SCRIPT

# The wrk script: at the end of the run, one JSON line with the counts wrk
# keeps (requests are complete responses; every error count should be 0).
WRK_SCRIPT = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests": %.0f, "duration_us": %.0f, "bytes": %.0f, '
      .. '"errors": {"connect": %.0f, "read": %.0f, "write": %.0f, '
      .. '"status": %.0f, "timeout": %.0f}, '
      .. '"latency_us": {"p50": %.0f, "p99": %.0f, "max": %.0f, "mean": %.1f}}\n',
    'MARKER', summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max, latency.mean))
end
""".replace("MARKER", WRK_MARKER)

# TLS echo workloads: CPython's own test certificate (self-signed, key included).
TLS_CERT_NAME = "keycert.pem"

EXIT_MISSING = 3
EXIT_FAILED = 4
NOT_FAILURES = ("ok", "unsupported", "skipped")  # run statuses that keep exit status 0

KIB = 1024


# ---------------------------------------------------------------------------
# Workloads
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    name: str
    server: str  # protocol | streams | sock | unix | udp | http | tls
    client: str  # echo | udp | churn | wrk | tls
    size: int  # message size in bytes (response body for http)
    clients: int  # concurrent connections / sockets
    n: int  # measured messages (connections for churn; seconds for wrk)
    big: bool = False  # only with --big

    @property
    def unit(self) -> str:
        return {"churn": "conn", "wrk": "req"}.get(self.client, "msg")

    @property
    def transport(self) -> str:
        return {"unix": "unix", "udp": "udp"}.get(self.server, "tcp")

    @property
    def timed(self) -> bool:
        """Bounded by a duration (wrk) rather than by a message count."""
        return self.client == "wrk"


def _size_label(size: int) -> str:
    return f"{size // KIB}k" if size % KIB == 0 else f"{size}b"


def _workloads() -> list[Workload]:
    out: list[Workload] = []
    counts = {1 * KIB: 20_000, 10 * KIB: 10_000, 100 * KIB: 2_000}
    for kind in ("protocol", "streams", "sock"):
        for size, big in ((1 * KIB, False), (10 * KIB, False), (100 * KIB, True)):
            for clients in (1, 50):
                out.append(
                    Workload(
                        f"tcp-{kind}-{_size_label(size)}-c{clients}",
                        kind,
                        "echo",
                        size,
                        clients,
                        counts[size],
                        big,
                    )
                )
    for size, big in ((1 * KIB, False), (10 * KIB, False), (100 * KIB, True)):
        for clients in (1, 50):
            name = f"unix-protocol-{_size_label(size)}-c{clients}"
            out.append(Workload(name, "unix", "echo", size, clients, counts[size], big))
    for clients in (1, 50):
        out.append(Workload(f"udp-1k-c{clients}", "udp", "udp", KIB, clients, 20_000))
    out.append(Workload("tcp-churn-c1", "protocol", "churn", CHURN_MSG_SIZE, 1, 3_000))
    out.append(Workload("tcp-churn-c50", "protocol", "churn", CHURN_MSG_SIZE, 50, 5_000))
    out.append(Workload("http-wrk-c50", "http", "wrk", len(HTTP_BODY), 50, WRK_SECONDS))
    # TLS costs more per message on both sides than plain TCP, hence smaller counts;
    # 50 clients keep the server busier than 1, so they get twice as many.
    tls_counts = {(1 * KIB, 1): 10_000, (1 * KIB, 50): 20_000}
    tls_counts.update({(10 * KIB, 1): 5_000, (10 * KIB, 50): 10_000})
    for (size, clients), count in tls_counts.items():
        name = f"tls-protocol-{_size_label(size)}-c{clients}"
        out.append(Workload(name, "tls", "tls", size, clients, count))
    return out


def missing_prerequisite(wl: Workload) -> str | None:
    """Why *wl* cannot run on this machine (a missing tool or file), or None."""
    if wl.client == "wrk" and shutil.which("wrk") is None:
        return "wrk is not on PATH (Debian/Ubuntu: apt-get install -y wrk)"
    if wl.server == "tls" and tls_cert_file() is None:
        return (
            f"no TLS certificate: {TLS_CERT_NAME} was not found in CPython's test suite "
            "(the 'test' package, test/certdata/ or test/); install the Python test suite "
            "(Debian: libpython3.11-testsuite)"
        )
    return None


WORKLOADS = {w.name: w for w in _workloads()}


# ---------------------------------------------------------------------------
# Server side (runs on the loop under test)
# ---------------------------------------------------------------------------


class EchoProtocol(asyncio.Protocol):
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        return False  # close the transport


class EchoDatagram(asyncio.DatagramProtocol):
    transport: asyncio.DatagramTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data, addr)


def _http_error(status: bytes) -> bytes:
    return b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class HttpProtocol(asyncio.Protocol):
    """A minimal HTTP/1.1 keep-alive server: every request gets HTTP_RESPONSE.

    Requests are cut out of the byte stream at each blank line
    (``\\r\\n\\r\\n``), plus the body when there is a ``Content-Length``, so
    several pipelined requests in one ``data_received`` and a request split over
    several reads are both handled; the replies to one read go out in order in a
    single ``write``.  The connection stays open unless the request says
    ``Connection: close`` (or is HTTP/1.0 without ``keep-alive``).  Chunked
    request bodies are refused (501) and so is an unfinished request head
    longer than HTTP_MAX_HEAD (431).
    """

    transport: asyncio.Transport

    def __init__(self) -> None:
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos = 0
        replies = 0
        error = b""
        keep_alive = True
        in_head = False  # stopped inside an unfinished request head
        while keep_alive:
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                in_head = pos < len(buf)
                break
            head = buf[pos:end].lower()
            nxt = end + 4
            if b"transfer-encoding:" in head:
                error = _http_error(b"501 Not Implemented")
                break
            if b"content-length:" in head:
                value = head.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0]
                try:
                    length = int(value)
                except ValueError:
                    length = -1
                if length < 0:
                    error = _http_error(b"400 Bad Request")
                    break
                nxt += length
                if nxt > len(buf):
                    break  # the body is not all here yet
            line_end = head.find(b"\r\n")  # the request line ends there (or at the end)
            if b"connection: close" in head or (
                head.endswith(b"http/1.0", 0, line_end if line_end >= 0 else len(head))
                and b"connection: keep-alive" not in head
            ):
                keep_alive = False
            replies += 1
            pos = nxt
        self.buf = buf[pos:] if pos < len(buf) else b""
        if in_head and len(self.buf) > HTTP_MAX_HEAD:
            error = _http_error(b"431 Request Header Fields Too Large")
        out = HTTP_RESPONSE * replies if replies != 1 else HTTP_RESPONSE
        if error:
            out += error
        if out:
            self.transport.write(out)
        if error or not keep_alive:
            self.buf = b""
            self.transport.close()

    def eof_received(self) -> bool:
        return False  # close the transport


def tls_cert_file() -> str | None:
    """CPython's test certificate (CN=localhost, with its key), or None.

    Found the way tests/test_tls.py finds it: ``keycert.pem`` in the ``test``
    package's ``certdata`` directory (3.12+, and 3.11 builds that have it
    there) or in the package itself (older layouts).
    """
    try:
        import test
    except ImportError:
        return None
    base = os.path.dirname(test.__file__)
    for directory in (os.path.join(base, "certdata"), base):
        path = os.path.join(directory, TLS_CERT_NAME)
        if os.path.exists(path):
            return path
    return None


def tls_server_context() -> ssl.SSLContext:
    path = tls_cert_file()
    if path is None:
        raise FileNotFoundError(f"{TLS_CERT_NAME} not found in CPython's test suite")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(path)
    return ctx


def tls_client_context() -> ssl.SSLContext:
    """No verification: the certificate is a self-signed test one (loopback only)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def _streams_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(RECV_SIZE)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


_TASKS: set[asyncio.Task[Any]] = set()
# Servers and transports are kept alive here: some loops (uvloop's Unix
# server) stop listening when the server object is garbage-collected.
_KEEP: list[Any] = []


async def _sock_echo(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
    with conn:
        try:
            while True:
                data = await loop.sock_recv(conn, RECV_SIZE)
                if not data:
                    break
                await loop.sock_sendall(conn, data)
        except ConnectionError:
            pass


async def _sock_accept_loop(loop: asyncio.AbstractEventLoop, lsock: socket.socket) -> None:
    while True:
        conn, _ = await loop.sock_accept(lsock)
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = loop.create_task(_sock_echo(loop, conn))
        _TASKS.add(task)
        task.add_done_callback(_TASKS.discard)


async def _start_server(loop: asyncio.AbstractEventLoop, kind: str, addr: str) -> dict[str, Any]:
    """Start the echo server of *kind*; return where the client should connect."""
    host = "127.0.0.1"
    if kind == "protocol":
        server = await loop.create_server(EchoProtocol, host, 0)
        _KEEP.append(server)
        return {"family": "inet", "host": host, "port": server.sockets[0].getsockname()[1]}
    if kind == "streams":
        server = await asyncio.start_server(_streams_echo, host, 0)
        _KEEP.append(server)
        return {"family": "inet", "host": host, "port": server.sockets[0].getsockname()[1]}
    if kind == "sock":
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind((host, 0))
        lsock.listen(128)
        lsock.setblocking(False)
        _KEEP.append(lsock)
        task = loop.create_task(_sock_accept_loop(loop, lsock))
        _TASKS.add(task)
        return {"family": "inet", "host": host, "port": lsock.getsockname()[1]}
    if kind == "http":
        server = await loop.create_server(HttpProtocol, host, 0)
        _KEEP.append(server)
        return {"family": "inet", "host": host, "port": server.sockets[0].getsockname()[1]}
    if kind == "tls":
        server = await loop.create_server(EchoProtocol, host, 0, ssl=tls_server_context())
        _KEEP.append(server)
        return {"family": "inet", "host": host, "port": server.sockets[0].getsockname()[1]}
    if kind == "unix":
        _KEEP.append(await loop.create_unix_server(EchoProtocol, addr))
        return {"family": "unix", "path": addr}
    if kind == "udp":
        transport, _ = await loop.create_datagram_endpoint(EchoDatagram, local_addr=(host, 0))
        _KEEP.append(transport)
        return {"family": "inet", "host": host, "port": transport.get_extra_info("sockname")[1]}
    raise ValueError(f"unknown server kind {kind!r}")


def server_main(loop_name: str, kind: str, addr: str, profile: str | None = None) -> int:
    """Run an echo server of *kind* on *loop_name* until killed.

    With *profile* (a path), the server runs under cProfile, stops when its
    stdin reaches EOF, and writes the stats to *profile* (binary, for pstats)
    and a top-30 listing to *profile*.txt.
    """
    record: dict[str, Any] = {"mode": "server", "loop": loop_name, "kind": kind}
    try:
        module = common.import_loop_module(loop_name)
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        record.update(status="missing", error=common.error_text(exc))
        common.emit(record)
        return EXIT_MISSING
    try:
        loop = module.new_event_loop()
        asyncio.set_event_loop(loop)
        errors = 0

        def on_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            nonlocal errors
            errors += 1
            if errors <= 5:
                loop.default_exception_handler(context)

        loop.set_exception_handler(on_error)
        where = loop.run_until_complete(_start_server(loop, kind, addr))
    except Exception as exc:  # noqa: BLE001 - the parent records the failure
        record.update(status="error", error=common.error_text(exc))
        common.emit(record)
        return EXIT_FAILED
    record.update(
        status="ready",
        pid=os.getpid(),
        loop_class=common.describe_loop(loop),
        version=common.loop_version(loop_name, module),
        build=common.loop_build(module),
        **where,
    )
    common.emit(record)
    if profile is None:
        loop.run_forever()  # until the parent kills this process
        return 0
    return _run_profiled(loop, profile)


def _run_profiled(loop: asyncio.AbstractEventLoop, path: str) -> int:
    import cProfile
    import io
    import pstats

    def on_stdin() -> None:
        if not os.read(0, 4096):
            loop.remove_reader(0)
            loop.stop()

    loop.add_reader(0, on_stdin)
    prof = cProfile.Profile()
    prof.enable()
    try:
        loop.run_forever()
    finally:
        prof.disable()
    prof.dump_stats(path)
    text = io.StringIO()
    stats = pstats.Stats(prof, stream=text)
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(30)
    Path(path + ".txt").write_text(text.getvalue(), encoding="utf-8")
    return 0


# ---------------------------------------------------------------------------
# Client side: /proc readings of the server
# ---------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def server_cpu(pid: int) -> dict[str, Any]:
    """CPU time of process *pid* so far.

    ``sched_ns`` is the sum of ``/proc/PID/task/*/schedstat`` (exact, ns, live
    threads only); ``utime``/``stime`` come from ``/proc/PID/stat`` (clock
    ticks, all threads including dead ones).
    """
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rpartition(")")[2].split()
    out: dict[str, Any] = {
        "utime_s": int(fields[11]) / CLK_TCK,
        "stime_s": int(fields[12]) / CLK_TCK,
        "minflt": int(fields[7]),
    }
    tids = {}
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as fh:
                    tids[tid] = int(fh.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    except OSError:
        pass
    out["tids"] = tids
    return out


def server_status(pid: int) -> dict[str, int]:
    """VmHWM, VmRSS (KiB) and context switches of the server's main thread."""
    wanted = {
        "VmHWM": "hwm_kib",
        "VmRSS": "rss_kib",
        "voluntary_ctxt_switches": "vcsw",
        "nonvoluntary_ctxt_switches": "nvcsw",
        "Threads": "threads",
    }
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in wanted:
                out[wanted[key]] = int(value.split()[0])
    return out


def cpu_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    user = after["utime_s"] - before["utime_s"]
    sys_ = after["stime_s"] - before["stime_s"]
    out: dict[str, Any] = {
        "server_user_s": user,
        "server_sys_s": sys_,
        "server_stat_cpu_s": user + sys_,
    }
    same_threads = set(before["tids"]) == set(after["tids"]) and before["tids"]
    if same_threads:
        ns = sum(after["tids"][t] - before["tids"][t] for t in after["tids"])
        out["server_sched_cpu_s"] = ns / 1e9
        out["server_cpu_s"] = ns / 1e9
        out["server_cpu_source"] = "schedstat"
    else:
        out["server_cpu_s"] = user + sys_
        out["server_cpu_source"] = "stat"
    out["server_threads_changed"] = not same_threads
    out["server_minflt"] = after["minflt"] - before["minflt"]
    return out


# ---------------------------------------------------------------------------
# Client side: load generators (no event loop, same for every loop)
# ---------------------------------------------------------------------------


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() > self.at:
            raise TimeoutError("client deadline exceeded")


def _connect(spec: dict[str, Any], blocking: bool = True) -> socket.socket:
    if spec["family"] == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(spec["path"])
    else:
        sock = socket.create_connection((spec["host"], spec["port"]))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(blocking)
    return sock


def _payload(size: int) -> bytes:
    pattern = bytes(range(256))
    return (pattern * (size // 256 + 1))[:size]


def echo_one(sock: socket.socket, msg: bytes, count: int) -> int:
    """Blocking ping-pong over one connection: send, read the whole echo."""
    size = len(msg)
    buf = bytearray(size)
    view = memoryview(buf)
    recv_into = sock.recv_into
    sendall = sock.sendall
    for _ in range(count):
        sendall(msg)
        got = 0
        while got < size:
            k = recv_into(view[got:])
            if not k:
                raise ConnectionError("server closed the connection")
            got += k
        if buf != msg:
            raise ValueError("echo mismatch")
    return count


class _Conn:
    __slots__ = ("buf", "fd", "got", "pending", "sent_at", "seq", "sock", "view")

    def __init__(self, sock: socket.socket, size: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self.got = 0
        self.pending: memoryview | None = None
        self.seq = 0
        self.sent_at = 0.0


def echo_many(conns: list[_Conn], msg: bytes, total: int, deadline: Deadline) -> int:
    """Ping-pong on every connection at once (one message in flight each)."""
    size = len(msg)
    ep = select.epoll()
    by_fd = {c.fd: c for c in conns}
    for c in conns:
        ep.register(c.fd, select.EPOLLIN)
    remaining = total
    done = 0
    msg_view = memoryview(msg)
    IN, OUT = select.EPOLLIN, select.EPOLLOUT

    def start(c: _Conn) -> None:
        nonlocal remaining
        remaining -= 1
        c.got = 0
        sent = c.sock.send(msg)
        if sent < size:
            c.pending = msg_view[sent:]
            ep.modify(c.fd, IN | OUT)

    try:
        for c in conns:
            if remaining <= 0:
                break
            start(c)
        while done < total:
            events = ep.poll(1.0)
            deadline.check()
            for fd, mask in events:
                c = by_fd[fd]
                if mask & OUT and c.pending is not None:
                    sent = c.sock.send(c.pending)
                    c.pending = c.pending[sent:] if sent < len(c.pending) else None
                    if c.pending is None:
                        ep.modify(fd, IN)
                if mask & IN:
                    try:
                        k = c.sock.recv_into(c.view[c.got :])
                    except BlockingIOError:
                        continue
                    if not k:
                        raise ConnectionError("server closed the connection")
                    c.got += k
                    if c.got == size:
                        if c.buf != msg:
                            raise ValueError("echo mismatch")
                        done += 1
                        if remaining > 0:
                            start(c)
                elif mask & (select.EPOLLERR | select.EPOLLHUP):
                    raise ConnectionError("connection error")
    finally:
        ep.close()
    return done


def tls_echo_many(conns: list[_Conn], msg: bytes, total: int, deadline: Deadline) -> int:
    """:func:`echo_many` over non-blocking TLS sockets (handshakes already done).

    epoll sees the encrypted bytes in the kernel, not what the ``ssl`` layer
    has buffered, so on every readiness event a connection reads until
    ``SSLWantReadError`` (one TLS record may hold part of an echo, or an echo
    may span records).  A send that raises ``SSLWantWriteError`` (socket full)
    waits for EPOLLOUT; one that raises ``SSLWantReadError`` is tried again on
    the next event.  Either way it is retried with the same bytes, as OpenSSL
    requires.
    """
    size = len(msg)
    ep = select.epoll()
    by_fd = {c.fd: c for c in conns}
    for c in conns:
        ep.register(c.fd, select.EPOLLIN)
    writing: set[int] = set()  # fds also registered for EPOLLOUT
    remaining = total
    done = 0
    msg_view = memoryview(msg)
    IN, OUT = select.EPOLLIN, select.EPOLLOUT
    want_read, want_write = ssl.SSLWantReadError, ssl.SSLWantWriteError
    scratch = bytearray(size)

    def flush(c: _Conn) -> None:
        while c.pending is not None:
            try:
                sent = c.sock.send(c.pending)
            except want_write:
                if c.fd not in writing:
                    writing.add(c.fd)
                    ep.modify(c.fd, IN | OUT)
                return
            except want_read:
                return
            c.pending = c.pending[sent:] if sent < len(c.pending) else None
        if c.fd in writing:
            writing.discard(c.fd)
            ep.modify(c.fd, IN)

    def start(c: _Conn) -> None:
        nonlocal remaining
        remaining -= 1
        c.got = 0
        c.seq = 1  # a message is in flight
        c.pending = msg_view
        flush(c)

    def drain(c: _Conn) -> None:
        nonlocal done
        if not c.seq:  # idle: only TLS-internal records (session tickets) may come
            try:
                k = c.sock.recv_into(scratch)
            except (want_read, want_write):
                return
            raise ConnectionError("unexpected data" if k else "server closed the connection")
        while c.got < size:
            try:
                k = c.sock.recv_into(c.view[c.got :])
            except (want_read, want_write):
                return
            if not k:
                raise ConnectionError("server closed the connection")
            c.got += k
        if c.buf != msg:
            raise ValueError("echo mismatch")
        c.seq = 0
        done += 1
        if remaining > 0:
            start(c)

    try:
        for c in conns:
            if remaining <= 0:
                break
            start(c)
        while done < total:
            events = ep.poll(1.0)
            deadline.check()
            for fd, mask in events:
                c = by_fd[fd]
                if c.pending is not None:
                    flush(c)
                if mask & IN:
                    drain(c)
                elif mask & (select.EPOLLERR | select.EPOLLHUP):
                    raise ConnectionError("connection error")
    finally:
        ep.close()
    return done


def parse_wrk(stdout: str) -> dict[str, Any] | None:
    """The JSON line WRK_SCRIPT printed (the last one), or None."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith(WRK_MARKER):
            try:
                value = json.loads(line[len(WRK_MARKER) :])
            except ValueError:
                return None
            return value if isinstance(value, dict) else None
    return None


def run_wrk(spec: dict[str, Any], seconds: int, deadline: Deadline) -> dict[str, Any]:
    """One wrk run of *seconds* against the HTTP server; its counts.

    wrk inherits this process's CPU affinity.  Raises when wrk fails, prints
    no result, completes no request or reports any error (connect, read,
    write, timeout, or a non-2xx/3xx status).
    """
    left = deadline.at - time.monotonic()
    if left <= 0:
        raise TimeoutError("client deadline exceeded")
    url = f"http://{spec['host']}:{spec['port']}/"
    with tempfile.TemporaryDirectory(prefix="ferroloop-wrk-") as tmp:
        script = os.path.join(tmp, "report.lua")
        Path(script).write_text(WRK_SCRIPT, encoding="utf-8")
        cmd = ["wrk", "-t", str(WRK_THREADS), "-c", str(spec["clients"])]
        cmd += ["-d", f"{seconds}s", "-s", script, url]
        try:
            proc = subprocess.run(
                cmd,
                check=False,
                capture_output=True,
                text=True,
                timeout=min(left, seconds + WRK_GRACE_S),
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"wrk did not finish a {seconds} s run") from None
    result = parse_wrk(proc.stdout)
    if proc.returncode != 0 or result is None:
        detail = common.tail(proc.stderr) or common.tail(proc.stdout) or "no output"
        raise RuntimeError(f"wrk: {common.describe_exit(proc.returncode)}: {detail}")
    errors = {k: int(v) for k, v in result.get("errors", {}).items() if v}
    if errors:
        raise RuntimeError(f"wrk reported errors: {errors}")
    requests = int(result["requests"])
    if requests <= 0 or result["duration_us"] <= 0:
        raise RuntimeError(f"wrk completed no request: {result}")
    return {
        "ops": requests,
        "wall_s": result["duration_us"] / 1e6,
        "wrk_bytes": int(result["bytes"]),
        "wrk_latency_us": result.get("latency_us"),
    }


def udp_many(conns: list[_Conn], size: int, total: int, deadline: Deadline) -> tuple[int, int]:
    """UDP ping-pong on every socket; lost datagrams are sent again.

    Each datagram starts with a sequence number so late duplicates are
    recognised and ignored.  Returns (echoes received, retransmissions).
    """
    tail = _payload(size)[8:]
    ep = select.epoll()
    by_fd = {c.fd: c for c in conns}
    for c in conns:
        ep.register(c.fd, select.EPOLLIN)
    remaining = total
    done = 0
    retransmits = 0
    seq = 0
    pack = struct.Struct(">Q").pack
    last_scan = time.monotonic()

    def send(c: _Conn) -> None:
        c.sock.send(pack(c.seq) + tail)
        c.sent_at = time.monotonic()

    def start(c: _Conn) -> None:
        nonlocal remaining, seq
        remaining -= 1
        seq += 1
        c.seq = seq
        send(c)

    try:
        for c in conns:
            if remaining <= 0:
                break
            start(c)
        while done < total:
            events = ep.poll(0.1)
            deadline.check()
            for fd, _mask in events:
                c = by_fd[fd]
                try:
                    data = c.sock.recv(size + 64)
                except BlockingIOError:
                    continue
                if len(data) != size or data[:8] != pack(c.seq) or c.seq == 0:
                    continue  # a late duplicate of an earlier datagram
                if data[8:] != tail:
                    raise ValueError("echo mismatch")
                c.seq = 0
                done += 1
                if remaining > 0:
                    start(c)
            now = time.monotonic()
            if not events or now - last_scan > 0.1:
                last_scan = now
                for c in conns:
                    if c.seq and now - c.sent_at > UDP_RETRANSMIT_S:
                        retransmits += 1
                        send(c)
    finally:
        ep.close()
    return done, retransmits


def churn_one(spec: dict[str, Any], msg: bytes, count: int) -> int:
    """Sequential connections: connect, send one message, read the echo, close."""
    size = len(msg)
    for _ in range(count):
        sock = _connect(spec)
        try:
            sock.sendall(msg)
            got = b""
            while len(got) < size:
                chunk = sock.recv(size - len(got))
                if not chunk:
                    raise ConnectionError("server closed the connection early")
                got += chunk
            if got != msg:
                raise ValueError("echo mismatch")
        finally:
            sock.close()
    return count


def churn_many(spec: dict[str, Any], msg: bytes, total: int, width: int, deadline: Deadline) -> int:
    """*width* connections in flight, each: connect, send one message, read, close."""
    size = len(msg)
    addr = (spec["host"], spec["port"])
    ep = select.epoll()
    live: dict[int, list[Any]] = {}  # fd -> [sock, received bytes, connected]
    remaining = total
    done = 0

    def start() -> None:
        nonlocal remaining
        remaining -= 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex(addr)
        if err not in (0, 115):  # EINPROGRESS
            sock.close()
            raise ConnectionError(f"connect failed: {os.strerror(err)}")
        live[sock.fileno()] = [sock, b"", False]
        ep.register(sock.fileno(), select.EPOLLOUT)

    try:
        for _ in range(min(width, total)):
            start()
        while done < total:
            events = ep.poll(1.0)
            deadline.check()
            for fd, mask in events:
                entry = live[fd]
                sock = entry[0]
                if not entry[2]:
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise ConnectionError(f"connect failed: {os.strerror(err)}")
                    entry[2] = True
                    sock.send(msg)
                    ep.modify(fd, select.EPOLLIN)
                    continue
                try:
                    chunk = sock.recv(size)
                except BlockingIOError:
                    continue
                if not chunk:
                    raise ConnectionError("server closed the connection early")
                entry[1] += chunk
                if len(entry[1]) == size:
                    if entry[1] != msg:
                        raise ValueError("echo mismatch")
                    ep.unregister(fd)
                    del live[fd]
                    sock.close()
                    done += 1
                    if remaining > 0:
                        start()
    finally:
        for entry in live.values():
            entry[0].close()
        ep.close()
    return done


def _open_conns(spec: dict[str, Any], count: int, size: int) -> list[_Conn]:
    conns = []
    ctx: ssl.SSLContext | None = None
    for _ in range(count):
        if spec["family"] == "udp":
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.connect((spec["host"], spec["port"]))
            sock.setblocking(False)
        elif spec["client"] == "tls":
            # Blocking handshake (not measured), then non-blocking for many.
            if ctx is None:
                ctx = tls_client_context()
            sock = ctx.wrap_socket(_connect(spec), server_hostname="localhost")
            sock.setblocking(count == 1)
        else:
            sock = _connect(spec, blocking=count == 1)
        conns.append(_Conn(sock, size))
    return conns


def _run_phase(
    spec: dict[str, Any], conns: list[_Conn], n: int, deadline: Deadline
) -> dict[str, Any]:
    kind, size, clients = spec["client"], spec["size"], spec["clients"]
    if kind == "echo":
        msg = _payload(size)
        if clients == 1:
            return {"ops": echo_one(conns[0].sock, msg, n)}
        return {"ops": echo_many(conns, msg, n, deadline)}
    if kind == "udp":
        ops, retransmits = udp_many(conns, size, n, deadline)
        return {"ops": ops, "retransmits": retransmits}
    if kind == "churn":
        msg = _payload(size)
        if clients == 1:
            return {"ops": churn_one(spec, msg, n)}
        return {"ops": churn_many(spec, msg, n, clients, deadline)}
    if kind == "tls":
        msg = _payload(size)
        if clients == 1:  # echo_one works unchanged on a blocking SSLSocket
            return {"ops": echo_one(conns[0].sock, msg, n)}
        return {"ops": tls_echo_many(conns, msg, n, deadline)}
    if kind == "wrk":
        return run_wrk(spec, n, deadline)
    raise ValueError(f"unknown client kind {kind!r}")


def _proc_cpu_s(pid: int) -> float:
    """On-CPU time of a single-threaded process so far (schedstat, ns)."""
    with open(f"/proc/{pid}/schedstat", encoding="ascii") as fh:
        return int(fh.read().split()[0]) / 1e9


class RustLoadgen:
    """The Rust load generator (benches/loadgen) as a child of the client.

    It opens its connections and runs the warm-up at once, then prints
    ``{"phase": "warm", ...}``; :meth:`run` writes ``go`` and reads
    ``{"phase": "done", "ops", "wall_s", "retransmits"}`` (its own timing of
    the measured messages).  It keeps its connections open until its stdin is
    closed (:meth:`close`), so the server's counters are read before they
    close, as with the Python client.  A ``{"phase": "error"}`` line, an exit
    or the client's deadline raise; :meth:`close` then kills it.
    """

    def __init__(self, spec: dict[str, Any], deadline: Deadline) -> None:
        self.deadline = deadline
        if spec["family"] == "unix":
            target = ["--unix", spec["path"]]
        else:
            target = ["--tcp", f"{spec['host']}:{spec['port']}"]
        left = max(deadline.at - time.monotonic(), 0.001)
        cmd = [spec["loadgen_path"], "--kind", spec["client"], *target]
        cmd += ["--size", str(spec["size"]), "--clients", str(spec["clients"])]
        cmd += ["--warmup", str(spec["warmup"]), "--n", str(spec["n"])]
        cmd += ["--deadline-s", f"{left:.3f}"]
        self.err = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err
        )
        self.pid = self.proc.pid
        self.buf = b""

    def _fail(self, why: str) -> RuntimeError:
        self.err.seek(0)
        detail = common.tail(self.err.read().decode("utf-8", "replace"))
        return RuntimeError(f"rust load generator: {why}" + (f": {detail}" if detail else ""))

    def _read(self, phase: str) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = self.deadline.at - time.monotonic()
            if left <= 0:
                raise TimeoutError("client deadline exceeded")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                code = self.proc.wait(timeout=LOADGEN_EXIT_S)
                raise self._fail(f"{common.describe_exit(code)} before its {phase!r} line")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        try:
            value = json.loads(line)
        except ValueError:
            raise self._fail(f"unexpected output {line[:200]!r}") from None
        if value.get("phase") == "error":
            raise RuntimeError(f"rust load generator: {value.get('error')}")
        if value.get("phase") != phase:
            raise self._fail(f"expected a {phase!r} line, got {line[:200]!r}")
        return value

    def warm(self) -> dict[str, Any]:
        return {"ops": self._read("warm")["ops"]}

    def run(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()
        done = self._read("done")
        return {k: done[k] for k in ("ops", "wall_s", "retransmits")}

    def close(self, ok: bool) -> None:
        """Close its stdin and let it exit (kill it at once unless *ok*)."""
        try:
            if not ok:
                self.proc.kill()
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=LOADGEN_EXIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        except BrokenPipeError:
            self.proc.kill()
            self.proc.wait()
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.err.close()


def client_main(spec_text: str) -> int:
    """Warm the server up, measure n messages, print one JSON line.

    For wrk, n and the warm-up are durations in seconds; the request count
    and the measured duration are wrk's own, and the client's CPU includes
    wrk's (a child, from RUSAGE_CHILDREN).

    With ``"loadgen": "rust"`` in the spec, echo, udp and churn are run by the
    Rust load generator (:class:`RustLoadgen`, a child process); the wall time
    is its own, and the client's CPU includes its CPU during the measured phase.
    """
    spec = json.loads(spec_text)
    record: dict[str, Any] = {"mode": "client"}
    pid = spec["server_pid"]
    deadline = Deadline(spec["timeout_s"])
    conns: list[_Conn] = []
    child: RustLoadgen | None = None
    rust = spec.get("loadgen") == "rust" and spec["client"] in LOADGEN_KINDS
    record["loadgen"] = "rust" if rust else ("wrk" if spec["client"] == "wrk" else "python")
    try:
        if rust:
            child = RustLoadgen(spec, deadline)
            warmup = child.warm()
        else:
            if spec["client"] not in ("churn", "wrk"):
                family = "udp" if spec["client"] == "udp" else spec["family"]
                conns = _open_conns({**spec, "family": family}, spec["clients"], spec["size"])
            warmup = _run_phase(spec, conns, spec["warmup"], deadline)
        time.sleep(SETTLE_S)  # let the server finish the warm-up's tail work
        status0 = server_status(pid)
        cpu0 = server_cpu(pid)
        others = {pid, os.getpid(), os.getppid()}
        if child is not None:
            others.add(child.pid)
        foreign0 = common.others_snapshot(others)
        own0 = time.process_time()
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        child0 = _proc_cpu_s(child.pid) if child is not None else 0.0
        t0 = time.perf_counter()
        if child is not None:
            result = child.run()
        else:
            result = _run_phase(spec, conns, spec["n"], deadline)
        t1 = time.perf_counter()
        child1 = _proc_cpu_s(child.pid) if child is not None else 0.0
        kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        own1 = time.process_time()
        foreign1 = common.others_snapshot(others)
        # The server's work for the last messages (for churn: closing the
        # last connections) may end after the client saw the last echo.  An
        # idle server uses no CPU, so waiting a little costs nothing.
        time.sleep(SETTLE_S)
        cpu1 = server_cpu(pid)
        status1 = server_status(pid)
        if spec["client"] == "tls":
            tls = conns[0].sock
            assert isinstance(tls, ssl.SSLSocket)
            record["tls"] = {"version": tls.version(), "cipher": tls.cipher()}
    except Exception as exc:  # noqa: BLE001 - the parent records the failure
        if child is not None:
            child.close(ok=False)
            child = None
        record.update(status="error", error=common.error_text(exc))
        common.emit(record)
        return EXIT_FAILED
    finally:
        for c in conns:
            c.sock.close()
        if child is not None:
            child.close(ok=True)
    wall_s = result.pop("wall_s", t1 - t0)  # wrk, rust: their own measured duration
    if spec["client"] != "udp":
        result.pop("retransmits", None)
    kids_cpu = kids1.ru_utime + kids1.ru_stime - kids0.ru_utime - kids0.ru_stime
    kids_cpu += child1 - child0
    record.update(result)
    record.update(cpu_delta(cpu0, cpu1))
    record.update(common.foreign_cpu(foreign0, foreign1, t1 - t0))
    record.update(
        status="ok",
        expected_ops=None if spec["client"] == "wrk" else spec["n"],
        wall_s=wall_s,
        phase_wall_s=t1 - t0,
        warmup_ops=warmup["ops"],
        client_cpu_s=own1 - own0 + kids_cpu,
        server_hwm_kib=status1["hwm_kib"],
        server_rss_kib=status1["rss_kib"],
        server_rss_before_kib=status0["rss_kib"],
        server_threads=status1["threads"],
        server_vcsw=status1["vcsw"] - status0["vcsw"],
        server_nvcsw=status1["nvcsw"] - status0["nvcsw"],
    )
    if record["expected_ops"] is not None and record["ops"] != spec["n"]:
        record.update(status="error", error=f"observed {record['ops']} ops, expected {spec['n']}")
    common.emit(record)
    return 0 if record["status"] == "ok" else EXIT_FAILED


# ---------------------------------------------------------------------------
# Parent side: one measurement
# ---------------------------------------------------------------------------


def _read_ready(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any] | None:
    """The server's first JSON line (READY or an error), or None on timeout/EOF."""
    assert proc.stdout is not None
    end = time.monotonic() + timeout
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if not ready:
            return None
        line = proc.stdout.readline()
        if not line:
            return None
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def pin_sets(mode: str) -> tuple[set[int] | None, set[int] | None]:
    """CPU sets of (server, client) for a --pin mode."""
    if mode == "none":
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if mode == "same" or len(cpus) < 2:
        return {cpus[0]}, {cpus[0]}
    if mode == "split":
        return {cpus[0]}, {cpus[1]}
    raise ValueError(f"unknown pin mode {mode!r}")


def _cpus_arg(cpus: set[int] | None) -> list[str]:
    return [] if cpus is None else ["--cpus", ",".join(map(str, sorted(cpus)))]


def measure(
    loop_name: str,
    wl: Workload,
    n: int,
    timeout: float,
    pin: str = "none",
    diag: tuple[str, str] | None = None,
    loadgen: str | None = None,
) -> dict[str, Any]:
    """Start a server on *loop_name*, drive it with a client, return the record.

    *loadgen* is the path of the Rust load generator, to be used for the
    workloads it supports (None: the Python client).

    *diag* is (mode, path prefix) for a diagnostic run: ``profile`` runs the
    server under cProfile, ``strace`` attaches ``strace -c -f`` to it.  Both
    slow the server down: the timings of such a run are not comparable.
    """
    server_cpus, client_cpus = pin_sets(pin)
    mode, prefix = diag if diag else (None, "")
    extra = ["--profile", prefix + ".prof"] if mode == "profile" else []
    with tempfile.TemporaryDirectory(prefix="ferroloop-net-") as tmp:
        sock_path = os.path.join(tmp, "echo.sock")
        err_path = os.path.join(tmp, "server.err")
        with open(err_path, "w+", encoding="utf-8") as err:
            server = subprocess.Popen(
                [
                    sys.executable,
                    str(SCRIPT),
                    *_cpus_arg(server_cpus),
                    "--server",
                    loop_name,
                    wl.server,
                    sock_path,
                    *extra,
                ],
                stdin=subprocess.PIPE if mode == "profile" else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=common.child_env(),
                cwd=str(HERE),
            )
            try:
                rec = _run_client(server, wl, n, timeout, client_cpus, mode, prefix, loadgen)
            finally:
                if mode == "profile" and server.stdin is not None:
                    server.stdin.close()  # the profiled server stops and writes its stats
                    try:
                        server.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        pass
                _stop(server)
            err.seek(0)
            stderr = err.read().strip()
    if stderr:
        rec["server_stderr"] = common.tail(stderr)
    if mode == "profile":
        rec["profile"] = prefix + ".prof.txt"
    return rec


def _attach(cmd: list[str]) -> subprocess.Popen[bytes] | None:
    """Start a tracer that attaches to the server (its command ends with
    ``-p PID``), and give it time to attach to every thread."""
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
    except OSError as exc:
        common.log(f"{cmd[0]} not available: {exc}")
        return None
    time.sleep(0.5)
    return proc


def _attach_strace(pid: int, path: str) -> subprocess.Popen[bytes] | None:
    return _attach(["strace", "-c", "-f", "-o", path, "-p", str(pid)])


# The system calls `--syscall-dir` counts, each a kernel tracepoint; counting
# them costs next to nothing, so the server waits as often as it does unwatched
# (strace stops it at every call, and a slowed server finds its data already
# there).
SYSCALL_EVENTS = (
    "raw_syscalls:sys_enter",
    "syscalls:sys_enter_epoll_wait",
    "syscalls:sys_enter_epoll_pwait",
    "syscalls:sys_enter_epoll_ctl",
    "syscalls:sys_enter_io_uring_enter",
    "syscalls:sys_enter_recvfrom",
    "syscalls:sys_enter_sendto",
    "syscalls:sys_enter_read",
    "syscalls:sys_enter_write",
    "syscalls:sys_enter_recvmmsg",
    "syscalls:sys_enter_recvmsg",
    "syscalls:sys_enter_sendmsg",
    "syscalls:sys_enter_sendmmsg",
    "syscalls:sys_enter_ioctl",
    "syscalls:sys_enter_getsockname",
    "syscalls:sys_enter_getpeername",
    "syscalls:sys_enter_setsockopt",
    "syscalls:sys_enter_accept4",
    "syscalls:sys_enter_close",
    "syscalls:sys_enter_brk",
    "syscalls:sys_enter_mmap",
    "syscalls:sys_enter_munmap",
    "syscalls:sys_enter_madvise",
    "page-faults",
)


def _attach_perf_syscalls(pid: int, path: str) -> subprocess.Popen[bytes] | None:
    events = ",".join(SYSCALL_EVENTS)
    return _attach(["perf", "stat", "-x", ",", "-o", path, "-e", events, "-p", str(pid)])


def _per_message(path: str, messages: int) -> dict[str, float]:
    """System calls per message from a ``perf stat -x ,`` file: each counted
    event's name without its tracepoint prefix (``all`` for every call)."""
    out: dict[str, float] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            fields = line.strip().split(",")
            if len(fields) < 3 or not fields[0].isdigit():
                continue
            event = fields[2]
            name = "all" if event == "raw_syscalls:sys_enter" else event.rsplit("sys_enter_", 1)[-1]
            out[name] = round(int(fields[0]) / max(messages, 1), 3)
    return out


def _detach_strace(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _run_client(
    server: subprocess.Popen[str],
    wl: Workload,
    n: int,
    timeout: float,
    client_cpus: set[int] | None,
    mode: str | None = None,
    prefix: str = "",
    loadgen: str | None = None,
) -> dict[str, Any]:
    ready = _read_ready(server, SERVER_READY_TIMEOUT_S)
    if ready is None:
        code = server.poll()
        why = "no READY line" if code is None else common.describe_exit(code)
        return {"status": "server-failed", "error": f"server: {why}"}
    if ready.get("status") != "ready":
        error = str(ready.get("error"))
        # A loop without the API (rloop has no create_unix_server) is not a failure.
        status = "unsupported" if error.startswith("NotImplementedError") else "server-error"
        if ready.get("status") == "missing":
            status = "missing"
        return {"status": status, "error": f"server: {error}"}
    spec = {
        **{k: v for k, v in ready.items() if k in ("family", "host", "port", "path")},
        "client": wl.client,
        "size": wl.size,
        "clients": wl.clients,
        "n": n,
        "warmup": WRK_WARMUP_S if wl.timed else max(n // WARMUP_DIVISOR, 50),
        "server_pid": ready["pid"],
        "timeout_s": timeout,
    }
    if loadgen is not None and wl.client in LOADGEN_KINDS:
        spec.update(loadgen="rust", loadgen_path=loadgen)
    tracer = None
    if mode == "strace":
        tracer = _attach_strace(ready["pid"], prefix + ".strace")
    elif mode == "syscalls":
        tracer = _attach_perf_syscalls(ready["pid"], prefix + ".syscalls")
    try:
        proc = subprocess.run(
            [sys.executable, str(SCRIPT), *_cpus_arg(client_cpus), "--client", json.dumps(spec)],
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout + 5,
            env=common.child_env(),
            cwd=str(HERE),
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "error": f"no result within {timeout:g} s"}
    finally:
        _detach_strace(tracer)
    rec = common.last_json_line(proc.stdout)
    if tracer is not None:
        # The tracer counted the warm-up too; the per-message figure needs both.
        if wl.timed:
            total = (rec or {}).get("warmup_ops", 0) + (rec or {}).get("ops", 0)
        else:
            total = spec["warmup"] + n
        suffix = ".strace" if mode == "strace" else ".syscalls"
        with open(prefix + suffix, "a", encoding="utf-8") as fh:
            fh.write(f"\n# messages (warm-up + measured): {total}\n")
        if mode == "syscalls" and rec is not None:
            rec["syscalls_per_message"] = _per_message(prefix + suffix, total)
    if rec is None:
        detail = common.tail(proc.stderr) or "no output"
        return {
            "status": "client-crashed",
            "error": f"{common.describe_exit(proc.returncode)}: {detail}",
        }
    code = server.poll()
    if code is not None and rec.get("status") == "ok":
        rec.update(status="server-crashed", error=f"server: {common.describe_exit(code)}")
    rec["server_version"] = ready.get("version")
    rec["loop_build"] = ready.get("build")
    rec["server_loop_class"] = ready.get("loop_class")
    return rec


# ---------------------------------------------------------------------------
# Parent side: statistics and report
# ---------------------------------------------------------------------------


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    ok = [r for r in runs if r.get("status") == "ok" and r.get("wall_s")]
    if not ok:
        return None
    rates = [r["ops"] / r["wall_s"] for r in ok]
    cpu_per_op = [1e6 * r["server_cpu_s"] / r["ops"] for r in ok]
    return {
        "runs_ok": len(ok),
        "runs_failed": len(runs) - len(ok),
        "ops": statistics.median(r["ops"] for r in ok),
        "ops_per_s": statistics.median(rates),
        "ops_per_s_spread_pct": common.spread_pct(rates),
        "server_cpu_us_per_op": statistics.median(cpu_per_op),
        "server_cpu_us_per_op_spread_pct": common.spread_pct(cpu_per_op),
        "server_user_us_per_op": statistics.median(1e6 * r["server_user_s"] / r["ops"] for r in ok),
        "server_sys_us_per_op": statistics.median(1e6 * r["server_sys_s"] / r["ops"] for r in ok),
        "server_busy": statistics.median(r["server_cpu_s"] / r["wall_s"] for r in ok),
        "client_busy": statistics.median(r["client_cpu_s"] / r["wall_s"] for r in ok),
        "server_wakeups_per_op": statistics.median(r["server_vcsw"] / r["ops"] for r in ok),
        "server_hwm_mib": statistics.median(r["server_hwm_kib"] / 1024 for r in ok),
        # Minor page faults: memory the server maps or gets back from the
        # kernel mid-run (a heap trimmed and grown again shows here).
        "server_faults_per_op": statistics.median(r.get("server_minflt", 0) / r["ops"] for r in ok),
        "retransmits": max(r.get("retransmits", 0) for r in ok),
        "foreign_share_max": max((r.get("foreign_share") or 0.0) for r in ok),
    }


def loadgen_of(wl: Workload, loadgen: str) -> str:
    """The load generator that drives *wl* under ``--loadgen`` *loadgen*."""
    if wl.client == "wrk":
        return "wrk"
    return "rust" if loadgen == "rust" and wl.client in LOADGEN_KINDS else "python"


def settings_line(cfg: dict[str, Any]) -> str:
    """The report's settings line: load generator, fallbacks, pinning."""
    loadgen = cfg.get("loadgen", "python")
    text = f"- load generator: {loadgen}"
    if loadgen == "rust":
        text += f" (`{cfg.get('loadgen_path')}`)"
    fallback = cfg.get("loadgen_fallback") or {}
    if fallback:
        text += "; not supported by it, so run by " + ", ".join(
            f"{how}: {', '.join(names)}"
            for how in sorted(set(fallback.values()))
            for names in [[n for n, h in fallback.items() if h == how]]
        )
    return text + f"; pin: {cfg.get('pin')}"


def render(report: dict[str, Any]) -> str:
    cfg = report["config"]
    present = [n for n in cfg["loops"] if report["loops"][n]["available"]]
    out = common.header_lines(report, "Event loop network benchmarks (echo servers, loopback)")
    out.insert(len(out) - 1, settings_line(cfg))
    if not present:
        out.append("No loop could be run.")
        return "\n".join(out) + "\n"
    names = cfg["workloads"]
    results = report["results"]
    pairs = [tuple(p.split("/")) for p in report["ratio_columns"]]
    runs_by_key: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in report["runs"]:
        runs_by_key.setdefault((run["workload"], run["loop"]), []).append(run)
    fail = {key: common.failure_status(runs) for key, runs in runs_by_key.items()}

    def lead(name: str) -> list[str]:
        wl = WORKLOADS[name]
        if wl.timed:
            return [name, f"{cfg['sizes'][name]} s of wrk"]
        return [name, f"{cfg['sizes'][name]:,} {wl.unit}s"]

    rows = [(name, lead(name)) for name in names]
    out.append(
        "## Throughput (median msgs/s, conns/s or reqs/s; ratio A/B > 1 = A faster)\n\n"
        + common.ratio_table(
            rows,
            present,
            results,
            "ops_per_s",
            lambda v: f"{v:,.0f}",
            pairs,
            ["workload", "n"],
            fail,
        )
    )
    out.append("")
    out.append(
        "## Server CPU per message (median µs of server user+sys per msg, conn or req; "
        "ratio A/B > 1 = A uses MORE CPU)\n\n"
        + common.ratio_table(
            rows,
            present,
            results,
            "server_cpu_us_per_op",
            lambda v: f"{v:.2f}",
            pairs,
            ["workload", "n"],
            fail,
        )
    )
    out.append("")

    # Utilisation / split / memory.
    header = ["workload"] + [f"{name} busy (sys)" for name in present]
    header += [f"{name} wakeups/op" for name in present]
    header += ["client busy", "max foreign"]
    table = []
    for name in names:
        row = [name]
        for name_l in present:
            s = results[name].get(name_l)
            if s is None:
                row.append(fail.get((name, name_l), "n/a"))
            else:
                sys_share = s["server_sys_us_per_op"] / max(
                    s["server_user_us_per_op"] + s["server_sys_us_per_op"], 1e-9
                )
                row.append(f"{100 * s['server_busy']:.0f}% ({100 * sys_share:.0f}%)")
        for name_l in present:
            s = results[name].get(name_l)
            row.append("n/a" if s is None else f"{s['server_wakeups_per_op']:.2f}")
        busy = [results[name][n_]["client_busy"] for n_ in present if results[name].get(n_)]
        row.append(f"{100 * statistics.median(busy):.0f}%" if busy else "n/a")
        foreign = [
            results[name][n_]["foreign_share_max"] for n_ in present if results[name].get(n_)
        ]
        row.append(f"{100 * max(foreign):.0f}%" if foreign else "n/a")
        table.append(row)
    out.append(
        "## Server utilisation (server CPU / wall; in brackets the sys share of server CPU "
        "from /proc/PID/stat), server main-thread voluntary context switches per op, "
        "the client's CPU / wall (median over loops), and the largest share of the "
        "machine's CPUs used by other processes during any run of the workload\n\n"
        + common.md_table(header, table, ["l"] + ["r"] * (len(header) - 1))
    )
    out.append("")

    def per_loop_table(title: str, unit: str, cell: Callable[[dict[str, Any]], str]) -> None:
        """A table of one figure per (workload, loop), under ``## title``."""
        header = ["workload"] + [f"{name} {unit}" for name in present]
        table = []
        for name in names:
            row = [name]
            for name_l in present:
                s = results[name].get(name_l)
                row.append(fail.get((name, name_l), "n/a") if s is None else cell(s))
            table.append(row)
        out.append(
            f"## {title}\n\n" + common.md_table(header, table, ["l"] + ["r"] * (len(header) - 1))
        )
        out.append("")

    per_loop_table(
        "Peak server RSS (median VmHWM at the end of the run, MiB)",
        "MiB",
        lambda s: f"{s['server_hwm_mib']:.1f}",
    )
    per_loop_table(
        "Server page faults per op (median over runs, measured phase; a heap given "
        "back to the kernel and faulted in again shows here)",
        "faults/op",
        # "n/a" in a report from before the column existed.
        lambda s: f"{s['server_faults_per_op']:.2f}" if "server_faults_per_op" in s else "n/a",
    )

    out.extend(common.noise_lines(report))
    unsupported = sorted(
        {
            (r["loop"], r["workload"], r.get("error", ""))
            for r in report["runs"]
            if r.get("status") == "unsupported"
        }
    )
    if unsupported:
        out.append("## Unsupported (the loop raised NotImplementedError; not counted as failures)")
        out.append("")
        for loop_name, workload, error in unsupported:
            out.append(f"- {loop_name} / {workload}: {error}")
        out.append("")
    skipped = report.get("skipped_workloads", {})
    if skipped:
        out.append("## Skipped workloads (a tool or file is missing; not counted as failures)")
        out.append("")
        for workload, reason in skipped.items():
            out.append(f"- {workload}: {reason}")
        out.append("")
    failures = [r for r in report["runs"] if r.get("status") not in NOT_FAILURES]
    if failures:
        out.append("## Failed runs")
        out.append("")
        for r in failures:
            out.append(
                f"- {r['loop']} / {r['workload']} rep {r['rep'] + 1}: "
                f"{r.get('status')}: {r.get('error', '')}"
            )
        out.append("")
    noisy = [r for r in report["runs"] if r.get("server_stderr")]
    if noisy:
        out.append("## Server stderr (first line per run)")
        out.append("")
        for r in noisy:
            first = r["server_stderr"].splitlines()[0]
            out.append(f"- {r['loop']} / {r['workload']} rep {r['rep'] + 1}: {first}")
        out.append("")
    retrans = {
        (name, n_): results[name][n_]["retransmits"]
        for name in names
        for n_ in present
        if results[name].get(n_) and results[name][n_]["retransmits"]
    }
    if retrans:
        out.append(
            "UDP retransmissions (max per run): "
            + ", ".join(f"{k[1]}/{k[0]}: {v}" for k, v in retrans.items())
        )
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------------
# The Rust load generator: locate and build
# ---------------------------------------------------------------------------


def loadgen_binary() -> Path:
    target = os.environ.get("CARGO_TARGET_DIR") or str(ROOT / "target")
    return Path(target) / "release" / LOADGEN_PACKAGE


def loadgen_stale(binary: Path) -> bool:
    """True when *binary* is missing or older than any of its sources."""
    if not binary.exists():
        return True
    built = binary.stat().st_mtime
    sources = [LOADGEN_DIR / "Cargo.toml", *(LOADGEN_DIR / "src").rglob("*.rs")]
    return any(p.stat().st_mtime > built for p in sources)


def ensure_loadgen() -> Path:
    """The Rust load generator's path, built first if it is missing or stale."""
    binary = loadgen_binary()
    if not loadgen_stale(binary):
        return binary
    cargo = shutil.which("cargo")
    if cargo is None:
        raise RuntimeError(f"{binary} is missing or stale and cargo is not on PATH")
    cmd = [cargo, "build", "--release", "-p", LOADGEN_PACKAGE]
    common.log(f"building the Rust load generator: {' '.join(cmd[1:])} (in {ROOT})")
    proc = subprocess.run(cmd, cwd=str(ROOT), check=False, stdout=sys.stderr)
    if proc.returncode != 0 or not binary.exists():
        raise RuntimeError(f"cargo build failed ({common.describe_exit(proc.returncode)})")
    return binary


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Echo-server benchmarks of asyncio event loops.")
    parser.add_argument(
        "--loops",
        default=common.DEFAULT_LOOPS,
        help="comma-separated loop modules; put the loop you care about last "
        f"(default: {common.DEFAULT_LOOPS})",
    )
    parser.add_argument(
        "--repeat",
        type=common.positive_int,
        default=None,
        help=f"fresh-process runs per (loop, workload) (default {DEFAULT_REPEAT}, 1 with --quick)",
    )
    parser.add_argument("--json", metavar="PATH", help="write the full results as JSON")
    parser.add_argument("--workload", default=None, help="comma-separated workloads; see --list")
    parser.add_argument("--big", action="store_true", help="also run the 100 KiB workloads")
    parser.add_argument(
        "--quick", action="store_true", help=f"smoke test: counts divided by {QUICK_DIVISOR}"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=CLIENT_TIMEOUT_S,
        help=f"hard timeout per client run in seconds (default {CLIENT_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--pin",
        choices=("split", "same", "none"),
        default="split",
        help="CPU affinity: split = server on the first allowed CPU, client on the second "
        "(default); same = both on the first; none = let the scheduler place them",
    )
    parser.add_argument(
        "--loadgen",
        choices=("python", "rust"),
        default="python",
        help="load generator for the echo, udp and churn workloads: python = net.py's own "
        "client (default); rust = benches/loadgen (built with cargo when missing or older "
        "than its sources); tls and http keep the Python client and wrk",
    )
    parser.add_argument(
        "--profile-dir",
        metavar="DIR",
        help="diagnostic: run each server under cProfile and write DIR/WORKLOAD-LOOP-repN.prof "
        "and .prof.txt (top functions); timings of such runs are not comparable",
    )
    parser.add_argument(
        "--strace-dir",
        metavar="DIR",
        help="diagnostic: attach 'strace -c -f' to each server and write "
        "DIR/WORKLOAD-LOOP-repN.strace (syscall counts, warm-up included); "
        "timings of such runs are not comparable",
    )
    parser.add_argument(
        "--syscall-dir",
        metavar="DIR",
        help="diagnostic: count the server's system calls with 'perf stat' tracepoints and "
        "write DIR/WORKLOAD-LOOP-repN.syscalls; per-message counts go into the JSON "
        "(syscalls_per_message); far less intrusive than --strace-dir",
    )
    common.add_noise_options(parser)
    parser.add_argument("--list", action="store_true", help="list the workloads and exit")
    parser.add_argument(
        "--server", nargs=3, metavar=("LOOP", "KIND", "ADDR"), help=argparse.SUPPRESS
    )
    parser.add_argument("--profile", metavar="PATH", help=argparse.SUPPRESS)
    parser.add_argument("--client", metavar="SPEC", help=argparse.SUPPRESS)
    parser.add_argument("--cpus", metavar="LIST", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cpus:  # set by the parent for its server and client processes
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    if args.server:
        return server_main(*args.server, profile=args.profile)
    if args.client:
        return client_main(args.client)
    if args.list:
        for wl in WORKLOADS.values():
            extra = "  (--big)" if wl.big else ""
            missing = missing_prerequisite(wl)
            if missing:
                extra += f"  (skipped: {missing})"
            count = f"{wl.n} s of wrk" if wl.timed else f"{wl.n:,}"
            print(
                f"{wl.name:24} server={wl.server:9} client={wl.client:6} size={wl.size:>6} "
                f"clients={wl.clients:<3} n={count}{extra}"
            )
        return 0

    loops = common.split_names(args.loops)
    if not loops:
        parser.error("--loops is empty")
    if args.workload:
        names = common.split_names(args.workload)
        unknown = [n for n in names if n not in WORKLOADS]
        if unknown:
            parser.error(f"unknown workload(s): {', '.join(unknown)}; see --list")
    else:
        names = [n for n, wl in WORKLOADS.items() if args.big or not wl.big]
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else DEFAULT_REPEAT)
    divisor = QUICK_DIVISOR if args.quick else 1
    sizes = {
        n: (WRK_QUICK_SECONDS if args.quick else WORKLOADS[n].n)
        if WORKLOADS[n].timed
        else max(1, WORKLOADS[n].n // divisor)
        for n in names
    }
    skipped = {n: why for n in names if (why := missing_prerequisite(WORKLOADS[n]))}
    for name, why in skipped.items():
        common.log(f"skipping {name}: {why}")
    loadgen_path: str | None = None
    if args.loadgen == "rust":
        try:
            loadgen_path = str(ensure_loadgen())
        except RuntimeError as exc:
            parser.error(f"--loadgen rust: {exc}")
    fallback = {
        n: loadgen_of(WORKLOADS[n], args.loadgen)
        for n in names
        if args.loadgen == "rust" and loadgen_of(WORKLOADS[n], args.loadgen) != "rust"
    }

    report = common.new_report(
        {
            "loops": loops,
            "workloads": names,
            "workload_specs": {n: asdict(WORKLOADS[n]) for n in names},
            "sizes": sizes,
            "repeat": repeat,
            "quick": args.quick,
            "timeout_s": args.timeout,
            "pin": args.pin,
            "loadgen": args.loadgen,
            "loadgen_path": loadgen_path,
            "loadgen_fallback": fallback,
            "noisy_retries": args.noisy_retries,
            "noisy_threshold": args.noisy_threshold,
            "wait_idle_s": args.wait_idle,
            "warmup_divisor": WARMUP_DIVISOR,
            "wrk": {"threads": WRK_THREADS, "warmup_s": WRK_WARMUP_S, "path": shutil.which("wrk")},
            "tls_cert": tls_cert_file(),
        },
        args.wait_idle,
    )
    loops_info, present = common.probe(loops)
    report["loops"] = loops_info

    runs: list[dict[str, Any]] = []
    discarded: list[dict[str, Any]] = []
    for name, why in skipped.items():
        for loop_name in present:
            runs.append(
                {"status": "skipped", "error": why, "loop": loop_name, "workload": name, "rep": 0}
            )
    total = repeat * (len(names) - len(skipped)) * len(present)
    done = 0
    for rep in range(repeat):
        order = common.rotated(present, rep)
        for name in names:
            if name in skipped:
                continue
            for loop_name in order:
                done += 1
                diag = None
                for mode, directory in (
                    ("profile", args.profile_dir),
                    ("strace", args.strace_dir),
                    ("syscalls", args.syscall_dir),
                ):
                    if directory:
                        Path(directory).mkdir(parents=True, exist_ok=True)
                        diag = (mode, str(Path(directory) / f"{name}-{loop_name}-rep{rep + 1}"))
                rec = common.measure_quietly(
                    functools.partial(
                        measure,
                        loop_name,
                        WORKLOADS[name],
                        sizes[name],
                        args.timeout,
                        args.pin,
                        diag,
                        loadgen_path,
                    ),
                    args,
                    discarded,
                    f"{name} {loop_name}",
                )
                rec.update(loop=loop_name, workload=name, rep=rep, n=sizes[name])
                for old in discarded:
                    old.setdefault("workload", name)
                    old.setdefault("loop", loop_name)
                    old.setdefault("rep", rep)
                runs.append(rec)
                if rec.get("status") == "ok":
                    detail = (
                        f"{rec['ops'] / rec['wall_s']:>10,.0f} {WORKLOADS[name].unit}/s  "
                        f"server {1e6 * rec['server_cpu_s'] / rec['ops']:7.2f} µs/{WORKLOADS[name].unit}"
                        f"  hwm {rec['server_hwm_kib'] / 1024:6.1f} MiB"
                        f"  foreign {100 * (rec.get('foreign_share') or 0):3.0f}%"
                    )
                else:
                    detail = f"{rec.get('status')}: {rec.get('error')}"
                common.log(f"[{done:>3}/{total}] rep {rep + 1} {name:22} {loop_name:10} {detail}")

    results = {
        name: {
            loop_name: summarize(
                [r for r in runs if r["workload"] == name and r["loop"] == loop_name]
            )
            for loop_name in present
        }
        for name in names
    }
    pairs = common.ratio_pairs(present)
    report["runs"] = runs
    report["skipped_workloads"] = skipped
    report["discarded_noisy_runs"] = discarded
    report["results"] = results
    report["ratio_columns"] = [f"{a}/{b}" for a, b in pairs]
    report["throughput_ratios"] = common.ratios_for(results, pairs, "ops_per_s")
    report["server_cpu_ratios"] = common.ratios_for(results, pairs, "server_cpu_us_per_op")
    report["geomean_throughput_ratios"] = {
        k: common.geomean([report["throughput_ratios"][n][k] for n in names])
        for k in report["ratio_columns"]
    }
    report["geomean_server_cpu_ratios"] = {
        k: common.geomean([report["server_cpu_ratios"][n][k] for n in names])
        for k in report["ratio_columns"]
    }
    common.finish_report(report, args.json)
    print(render(report))
    if args.json:
        common.log(f"full results written to {args.json}")
    return 1 if any(r.get("status") not in NOT_FAILURES for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
