#!/usr/bin/env python3
"""Soak runner (issue 10, item 2): connection churn over plain TCP and TLS,
and subprocess spawning, on asyncio (the reference) and on ferroloop's loops,
with the tested process's open descriptors and RSS reported.

Usage::

    python scripts/soak.py --workload tcp --count 1000000 --concurrency 100 \\
        --loops ferroloop,ferroloop-proactor --max-seconds 900
    python scripts/soak.py --workload tls --count 50000
    python scripts/soak.py --workload spawn --count 20000 --concurrency 8 --json

Workloads
---------
``tcp``
    Each operation is one connection: the client connects, sends one frame
    (a 4-byte big-endian length and a random payload of 1 to 2,048 bytes),
    the server answers with ``crc32(payload)``, ``len(payload)`` and the
    payload itself, the client checks all three and closes; the server closes
    its side on the client's EOF. ``--concurrency`` connections are in flight
    at any time.
``tls``
    The same over TLS (a self-signed P-256 certificate made at start-up with
    the ``openssl`` command line, or with ``trustme`` if installed; the client
    verifies it). The client closes with ``close_notify``.
``spawn``
    Each operation is ``asyncio.create_subprocess_exec("echo", token)`` with
    stdout piped: read the output, check it is the token, ``wait()`` for the
    exit status 0. ``--concurrency`` children at a time.

Processes
---------
The loop under test runs alone in its own process (the *server*, or the
*spawner* for ``spawn``), built by ``make_loop(kind)``. For ``tcp`` and
``tls`` the load generator is another process on asyncio's own loop (always
asyncio: only the server's loop is being tested). This process (the runner)
only orchestrates: it starts the tested process, reads its open descriptor
count (``/proc/PID/fd``) and RSS (``VmRSS`` in ``/proc/PID/status``) from
outside, and never shares a loop with it.

For each loop it reports: operations done, ops/s, the tested process's
descriptor count at start (listening / ready, before any operation), after
warm-up, and after the run once quiet (it must return to the count at
start), its RSS after warm-up (``--warmup`` of the operations, 10 % by
default), at the middle and at the end (and the peak sampled), errors
(client-side failures, bad replies, server-side ``connection_lost`` with an
exception, calls to the loop's exception handler: must be 0), the tested
process's children left at the end (zombies included: must be 0) and wall
time.
"Flat" RSS means ``end - after warm-up`` is small; the warm-up absorbs
allocator arenas, ssl contexts, caches and free lists that reach their
working size in the first few thousand operations.

Ports, TIME_WAIT
----------------
A million loopback connections from one address would run through the
28,232 ephemeral ports (32768-60999) many times over while each closed
client socket sits in TIME_WAIT for 60 s. Nothing here changes a sysctl.
Instead, the client side closes first (the usual request/response ending),
so TIME_WAIT is held by the load generator and never by the server under
test, and the client spreads its connections over 1,000 source addresses
127.1.0.1 ... 127.1.3.232 (all loopback: 127.0.0.0/8 is routed to ``lo``),
binding with ``IP_BIND_ADDRESS_NO_PORT`` so the kernel picks the port at
``connect()`` for the whole 4-tuple. That gives about 28 million distinct
tuples to the server's one address, far beyond what 60 s of TIME_WAIT can
hold at the rates reached here. If the kernel's TIME_WAIT table is full
(``tcp_max_tw_buckets``) it drops the newest TIME_WAIT entries, which
changes nothing for either side. No connection is reset: every close is a
clean FIN exchange.

Bounds
------
``--count`` bounds the operations per loop, ``--max-seconds`` the time per
loop: when it passes, the load generator starts no new operation, finishes
those in flight and reports what it did (the report says it stopped on
time). Each operation has a 30 s timeout (counted as an error). Loopback
only.

Loops: ``asyncio`` (epoll selector), ``ferroloop`` (epoll),
``ferroloop-poll``, ``ferroloop-select`` (``select()`` can watch only
descriptors below 1024: keep ``--concurrency`` under about 400 on it, the
runner refuses more), ``ferroloop-proactor`` (io_uring) and ``uvloop`` (when
installed; the default list includes it then).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import selectors
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from typing import ClassVar

HOST = "127.0.0.1"
TLS_NAME = "localhost"
HEADER = struct.Struct(">I")
REPLY = struct.Struct(">II")  # crc32, length; then the payload itself
MAX_PAYLOAD = 2048
OP_TIMEOUT = 30.0
# Source addresses for the client: 127.1.0.1 + i for i < SOURCE_ADDRESSES.
SOURCE_ADDRESSES = 1000
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
SELECT_MAX_CONCURRENCY = 400
ALL_LOOPS = [
    "asyncio",
    "ferroloop",
    "ferroloop-poll",
    "ferroloop-select",
    "ferroloop-proactor",
    "uvloop",
]


def have_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def default_loops() -> list[str]:
    return [k for k in ALL_LOOPS if k != "uvloop" or have_uvloop()]


def make_loop(kind: str) -> asyncio.AbstractEventLoop:
    """A new loop of the given kind (the same kinds as tests/conftest.py)."""
    if kind == "asyncio":
        return asyncio.SelectorEventLoop(selectors.EpollSelector())
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    import ferroloop

    if kind == "ferroloop":
        return ferroloop.new_event_loop()
    if kind == "ferroloop-poll":
        return ferroloop.new_event_loop("poll")
    if kind == "ferroloop-select":
        return ferroloop.new_event_loop("select")
    if kind == "ferroloop-proactor":
        return ferroloop.ProactorEventLoop()
    raise ValueError(f"unknown loop kind {kind!r}")


# ------------------------------------------------------------ measurements


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def children_of(pid: int) -> list[int]:
    """PIDs of ``pid``'s child processes, zombies included (from /proc)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(name))
    return found


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# ------------------------------------------------------------ certificates


def make_certificate(directory: str) -> tuple[str, str | None, str]:
    """(certificate chain, key or None, CA file) for "localhost" and 127.0.0.1."""
    try:
        import trustme
    except ImportError:
        trustme = None
    if trustme is not None:
        ca = trustme.CA()
        cert = ca.issue_cert(TLS_NAME, HOST)
        chain = os.path.join(directory, "chain.pem")
        cafile = os.path.join(directory, "ca.pem")
        cert.private_key_and_cert_chain_pem.write_to_path(chain)
        ca.cert_pem.write_to_path(cafile)
        return chain, None, cafile
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("TLS soak needs trustme or the openssl command line")
    cert = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    cmd = [
        openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={TLS_NAME}",
        "-addext", f"subjectAltName=DNS:{TLS_NAME},IP:{HOST}",
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    return cert, key, cert  # self-signed: its own CA


# ------------------------------------------------------------ tested process: server


class EchoServer(asyncio.Protocol):
    """Reads one frame, answers crc32 + length + payload, closes on EOF."""

    # One server per process: the counts are the process's.
    stats: ClassVar[dict] = {
        "accepted": 0, "lost": 0, "lost_with_error": 0, "bad_frames": 0, "replies": 0,
    }  # fmt: skip

    def connection_made(self, transport):
        self.transport = transport
        self.buf = bytearray()
        self.answered = False
        self.stats["accepted"] += 1

    def data_received(self, data):
        if self.answered:
            self.stats["bad_frames"] += 1
            self.transport.abort()
            return
        self.buf += data
        if len(self.buf) < HEADER.size:
            return
        (n,) = HEADER.unpack_from(self.buf)
        if n > MAX_PAYLOAD or len(self.buf) > HEADER.size + n:
            self.stats["bad_frames"] += 1
            self.transport.abort()
            return
        if len(self.buf) < HEADER.size + n:
            return
        payload = bytes(self.buf[HEADER.size :])
        self.answered = True
        self.buf = None
        self.transport.write(REPLY.pack(zlib.crc32(payload), n) + payload)
        self.stats["replies"] += 1

    def eof_received(self):
        if not self.answered:
            self.stats["bad_frames"] += 1
        return False  # close our side

    def connection_lost(self, exc):
        self.stats["lost"] += 1
        if exc is not None:
            self.stats["lost_with_error"] += 1
            self.stats.setdefault("lost_errors", [])
            if len(self.stats["lost_errors"]) < 10:
                self.stats["lost_errors"].append(repr(exc))


def _install_handler_counter(loop, stats):
    stats["handler_calls"] = 0
    stats["handler_messages"] = []

    def handler(loop, context):
        stats["handler_calls"] += 1
        if len(stats["handler_messages"]) < 10:
            stats["handler_messages"].append(
                f"{context.get('message')}: {context.get('exception')!r}"
            )

    loop.set_exception_handler(handler)


def server_main(kind: str, tls: bool, certfile: str | None, keyfile: str | None) -> None:
    loop = make_loop(kind)
    asyncio.set_event_loop(loop)
    stats = EchoServer.stats
    _install_handler_counter(loop, stats)
    ctx = None
    if tls:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(certfile, keyfile)
    server = loop.run_until_complete(
        loop.create_server(EchoServer, HOST, 0, ssl=ctx, backlog=4096, reuse_address=True)
    )
    port = server.sockets[0].getsockname()[1]
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(None))
    print(json.dumps({"ready": True, "port": port, "pid": os.getpid()}), flush=True)
    loop.run_until_complete(stop)
    server.close()
    loop.run_until_complete(server.wait_closed())
    loop.remove_signal_handler(signal.SIGTERM)
    loop.close()
    print(json.dumps({"server": stats}), flush=True)


def _run_ops(loop, stats, one, count, concurrency, max_seconds) -> None:
    """Run ``one(1)`` to ``one(count)`` on ``loop``, ``concurrency`` at a
    time, until all have run or ``max_seconds`` have passed (then
    ``stopped_on_time``). ``one(i)`` returns None when the operation went
    right, else what went wrong; an exception is what went wrong too. Counts
    ops, ok and errors (the first ten described) in ``stats``, prints a
    progress line every 1% and stores the seconds taken."""
    stats.update(ops=0, ok=0, errors=0, error_samples=[], stopped_on_time=False)
    started = 0
    deadline = time.monotonic() + max_seconds
    progress_every = max(1, count // 100)

    async def worker():
        nonlocal started
        while started < count:
            if time.monotonic() > deadline:
                stats["stopped_on_time"] = True
                return
            started += 1
            i = started
            try:
                wrong = await asyncio.wait_for(one(i), OP_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 -- every failure is reported, none expected
                wrong = repr(exc)
            stats["ops"] += 1
            if wrong is None:
                stats["ok"] += 1
            else:
                stats["errors"] += 1
                if len(stats["error_samples"]) < 10:
                    stats["error_samples"].append(f"op {i}: {wrong}")
            if stats["ops"] % progress_every == 0:
                print(json.dumps({"progress": stats["ops"]}), flush=True)

    async def main():
        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.monotonic() - t0

    stats["seconds"] = loop.run_until_complete(main())


# ------------------------------------------------------------ tested process: spawner


def spawner_main(kind: str, count: int, concurrency: int, max_seconds: float) -> None:
    loop = make_loop(kind)
    asyncio.set_event_loop(loop)
    stats = {}
    _install_handler_counter(loop, stats)
    echo = shutil.which("echo") or "/bin/echo"
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    sys.stdin.readline()  # "go": the runner has read the baseline

    async def one(i):
        token = f"soak-{i}-{random.getrandbits(32):08x}"
        proc = await asyncio.create_subprocess_exec(
            echo, token, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
        )
        out = await proc.stdout.read()
        status = await proc.wait()
        if out != token.encode() + b"\n" or status != 0:
            return f"output {out!r}, status {status}"
        return None

    _run_ops(loop, stats, one, count, concurrency, max_seconds)
    # Let the loop run a little so child watchers finish with the last ones.
    loop.run_until_complete(asyncio.sleep(0.2))
    print(json.dumps({"done": stats}), flush=True)
    sys.stdin.readline()  # "quit": the runner has read the final counts
    loop.close()


# ------------------------------------------------------------ load generator


class EchoClient(asyncio.Protocol):
    def __init__(self, payload: bytes, done: asyncio.Future):
        self.payload = payload
        self.done = done
        self.buf = bytearray()
        self.result = "no reply"

    def connection_made(self, transport):
        self.transport = transport
        transport.write(HEADER.pack(len(self.payload)) + self.payload)

    def data_received(self, data):
        self.buf += data
        want = REPLY.size + len(self.payload)
        if len(self.buf) < want:
            return
        crc, n = REPLY.unpack_from(self.buf)
        body = bytes(self.buf[REPLY.size :])
        if len(self.buf) > want:
            self.result = "reply too long"
        elif crc != zlib.crc32(self.payload) or n != len(self.payload) or body != self.payload:
            self.result = "bad reply"
        else:
            self.result = "ok"
        self.transport.close()  # the client closes first: TIME_WAIT stays here

    def connection_lost(self, exc):
        if not self.done.done():
            if exc is not None and self.result == "ok":
                self.result = f"lost: {exc!r}"
            self.done.set_result(self.result)


def client_main(port: int, tls: bool, cafile: str | None, count: int, concurrency: int,
                max_seconds: float, seed: int) -> None:  # fmt: skip
    loop = asyncio.SelectorEventLoop(selectors.EpollSelector())
    asyncio.set_event_loop(loop)
    rng = random.Random(seed)
    ctx = ssl.create_default_context(cafile=cafile) if tls else None
    stats = {}
    _install_handler_counter(loop, stats)

    async def one(i):
        source = i % SOURCE_ADDRESSES
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((f"127.1.{source // 250}.{source % 250 + 1}", 0))
            await loop.sock_connect(sock, (HOST, port))
        except BaseException:
            sock.close()
            raise
        payload = rng.randbytes(rng.randrange(1, MAX_PAYLOAD + 1))
        done = loop.create_future()
        if ctx is None:
            await loop.create_connection(lambda: EchoClient(payload, done), sock=sock)
        else:
            await loop.create_connection(
                lambda: EchoClient(payload, done), sock=sock, ssl=ctx, server_hostname=TLS_NAME
            )
        result = await done
        return None if result == "ok" else result

    _run_ops(loop, stats, one, count, concurrency, max_seconds)
    loop.close()
    print(json.dumps({"done": stats}), flush=True)


# ------------------------------------------------------------ runner


def _json_lines(proc):
    """The JSON objects a child prints, one a line (other lines are skipped)."""
    for line in proc.stdout:
        line = line.strip()
        if line.startswith("{"):
            yield json.loads(line)


def _start(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("PYTHONASYNCIODEBUG", None)
    env.pop("PYTHONDEVMODE", None)
    # stderr to a file: a child that writes a lot there never blocks on a pipe.
    err = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 -- closed in run_one
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
        env=env,
    )
    proc.err_file = err
    return proc


def _stop(proc: subprocess.Popen, timeout: float = 20.0) -> tuple[str, str]:
    """Wait for a child we started; SIGKILL it (by its PID) if it hangs."""
    try:
        out, _ = proc.communicate(timeout=timeout)
        note = ""
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        note = f"\n[soak] killed after {timeout} s"
    proc.err_file.seek(0)
    return out, proc.err_file.read() + note


def _wait_fds(pid: int, target: int, timeout: float = 10.0) -> int:
    """The descriptor count once it is back to ``target`` (or at ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        n = fd_count(pid)
        if n <= target or time.monotonic() > deadline:
            return n
        time.sleep(0.02)


class Sampler:
    """RSS and descriptor samples of the tested process at progress marks."""

    def __init__(self, pid: int, count: int, warmup: float):
        self.pid = pid
        self.warm_mark = max(1, int(count * warmup))
        self.mid_mark = max(self.warm_mark, count // 2)
        self.rss_warm = self.rss_mid = None
        self.fds_warm = None
        self.rss_peak = 0

    def progress(self, done: int) -> None:
        rss = rss_kib(self.pid)
        self.rss_peak = max(self.rss_peak, rss)
        if self.rss_warm is None and done >= self.warm_mark:
            self.rss_warm = rss
            self.fds_warm = fd_count(self.pid)
        if self.rss_mid is None and done >= self.mid_mark:
            self.rss_mid = rss


def run_one(workload: str, kind: str, count: int, concurrency: int, max_seconds: float,
            warmup: float = 0.1, certs: tuple | None = None, seed: int = 1) -> dict:  # fmt: skip
    """Soak one loop kind with one workload; return the report as a dict."""
    if kind == "ferroloop-select" and concurrency > SELECT_MAX_CONCURRENCY:
        raise ValueError(
            f"select() watches descriptors below 1024 only: keep --concurrency <= "
            f"{SELECT_MAX_CONCURRENCY} on ferroloop-select"
        )
    t0 = time.monotonic()
    report = {"workload": workload, "loop": kind, "count": count, "concurrency": concurrency}
    if workload == "spawn":
        tested = _start(["_spawner", kind, str(count), str(concurrency), str(max_seconds)])
        client = None
    else:
        tls = workload == "tls"
        server_args = ["_server", kind, "tls" if tls else "tcp"]
        if tls:
            server_args += [certs[0], certs[1] or ""]
        tested = _start(server_args)
    try:
        lines = _json_lines(tested)
        ready = next(lines, None)
        if ready is None:
            _, err = _stop(tested)
            raise RuntimeError(f"{kind}: the tested process did not start:\n{err}")
        pid = tested.pid
        time.sleep(0.1)  # let it settle into its idle state
        report["fds_start"] = fd_count(pid)
        report["rss_start_kib"] = rss_kib(pid)
        sampler = Sampler(pid, count, warmup)
        if workload == "spawn":
            tested.stdin.write("go\n")
            tested.stdin.flush()
            source = lines
        else:
            client = _start(
                ["_client", str(ready["port"]), workload, certs[2] if certs else "",
                 str(count), str(concurrency), str(max_seconds), str(seed)]
            )  # fmt: skip
            source = _json_lines(client)
        done = None
        for msg in source:
            if "progress" in msg:
                sampler.progress(msg["progress"])
            elif "done" in msg:
                done = msg["done"]
                break
        if done is None:
            err = _stop(client or tested)[1]
            raise RuntimeError(f"{kind}: the load ended without a report:\n{err[-3000:]}")
        if client is not None:
            _stop(client)
        report["fds_end"] = _wait_fds(pid, report["fds_start"])
        report["children_end"] = len(children_of(pid))  # zombies included
        time.sleep(0.1)
        report["rss_end_kib"] = rss_kib(pid)
        server_stats = None
        if workload == "spawn":
            tested.stdin.write("quit\n")
            tested.stdin.flush()
            _stop(tested)
        else:
            os.kill(pid, signal.SIGTERM)
            out, err = _stop(tested)
            for line in out.splitlines():
                if line.startswith('{"server"'):
                    server_stats = json.loads(line)["server"]
            if server_stats is None:
                raise RuntimeError(f"{kind}: the server did not report:\n{err[-3000:]}")
    finally:
        for proc in (tested, client):
            if proc is not None:
                if proc.poll() is None:
                    proc.kill()  # only our own children, by PID
                    proc.wait()
                proc.err_file.close()
    ops = done["ops"]
    errors = done["errors"] + done["handler_calls"]
    samples = list(done["error_samples"]) + list(done["handler_messages"])
    if server_stats is not None:
        server_errors = (
            server_stats["lost_with_error"]
            + server_stats["bad_frames"]
            + server_stats["handler_calls"]
            + abs(server_stats["accepted"] - server_stats["lost"])
        )
        errors += server_errors
        samples += server_stats.get("lost_errors", []) + server_stats["handler_messages"]
        report["server"] = {
            k: server_stats[k] for k in ("accepted", "lost", "replies", "lost_with_error")
        }
        report["server_handler_calls"] = server_stats["handler_calls"]
        report["client_handler_calls"] = done["handler_calls"]
    report.update(
        ops=ops,
        ok=done.get("ok", ops - done["errors"]),
        errors=errors,
        error_samples=samples[:10],
        seconds=round(done["seconds"], 2),
        ops_per_s=round(ops / done["seconds"]) if done["seconds"] else 0,
        stopped_on_time=done["stopped_on_time"],
        fds_warm=sampler.fds_warm,
        rss_warm_kib=sampler.rss_warm,
        rss_mid_kib=sampler.rss_mid,
        rss_peak_kib=max(sampler.rss_peak, report["rss_end_kib"]),
        wall_seconds=round(time.monotonic() - t0, 2),
    )
    if sampler.rss_warm is not None:
        report["rss_growth_kib"] = report["rss_end_kib"] - sampler.rss_warm
    else:
        report["rss_growth_kib"] = None
    return report


def format_table(reports: list[dict]) -> str:
    head = (
        "| workload | loop | ops | ops/s | fds start / warm / end | "
        "RSS MiB start / warm / mid / end (peak) | RSS end - warm | errors | wall s |"
    )
    rows = [head, "|" + "---|" * 9]

    def mib(kib):
        return "-" if kib is None else f"{kib / 1024:.1f}"

    for r in reports:
        growth = r["rss_growth_kib"]
        growth_text = "-" if growth is None else f"{growth:+,} KiB"
        ops = f"{r['ops']:,}" + (" (time limit)" if r["stopped_on_time"] else "")
        rows.append(
            f"| {r['workload']} | {r['loop']} | {ops} | {r['ops_per_s']:,} | "
            f"{r['fds_start']} / {r['fds_warm']} / {r['fds_end']} | "
            f"{mib(r['rss_start_kib'])} / {mib(r['rss_warm_kib'])} / {mib(r['rss_mid_kib'])} / "
            f"{mib(r['rss_end_kib'])} ({mib(r['rss_peak_kib'])}) | {growth_text} | "
            f"{r['errors']} | {r['wall_seconds']} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Internal roles (the processes the runner starts).
    if argv and argv[0] == "_server":
        kind, mode = argv[1], argv[2]
        cert, key = (argv[3], argv[4] or None) if mode == "tls" else (None, None)
        server_main(kind, mode == "tls", cert, key)
        return 0
    if argv and argv[0] == "_client":
        port, workload, cafile = int(argv[1]), argv[2], argv[3] or None
        count, concurrency, max_seconds, seed = int(argv[4]), int(argv[5]), float(argv[6]), int(argv[7])  # fmt: skip
        client_main(port, workload == "tls", cafile, count, concurrency, max_seconds, seed)
        return 0
    if argv and argv[0] == "_spawner":
        spawner_main(argv[1], int(argv[2]), int(argv[3]), float(argv[4]))
        return 0

    parser = argparse.ArgumentParser(
        description="Soak: connection churn (tcp, tls) and subprocess spawning per event loop.",
        epilog="See the module docstring for what is measured and how TIME_WAIT is avoided.",
    )
    parser.add_argument("--workload", choices=["tcp", "tls", "spawn"], default="tcp")
    parser.add_argument(
        "--loops",
        default=",".join(default_loops()),
        help=f"comma-separated, from {', '.join(ALL_LOOPS)} (default: all installed)",
    )
    parser.add_argument("--count", type=int, default=100_000, help="operations per loop")
    parser.add_argument(
        "--concurrency", type=int, default=None, help="in flight (default 100; spawn 8)"
    )
    parser.add_argument(
        "--max-seconds", type=float, default=900.0, help="per loop: stop starting new operations"
    )
    parser.add_argument(
        "--warmup", type=float, default=0.1, help="fraction of --count before the warm RSS sample"
    )
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")
    args = parser.parse_args(argv)
    concurrency = args.concurrency or (8 if args.workload == "spawn" else 100)
    loops = [k.strip() for k in args.loops.split(",") if k.strip()]
    for kind in loops:
        if kind not in ALL_LOOPS:
            parser.error(f"unknown loop {kind!r}")
        if kind == "uvloop" and not have_uvloop():
            parser.error("uvloop is not installed")
    reports = []
    with tempfile.TemporaryDirectory(prefix="soak-") as directory:
        certs = make_certificate(directory) if args.workload == "tls" else None
        for kind in loops:
            report = run_one(
                args.workload, kind, args.count, concurrency, args.max_seconds, args.warmup, certs
            )
            reports.append(report)
            if not args.json:
                print(
                    f"[soak] {args.workload} {kind}: {report['ops']:,} ops, "
                    f"{report['ops_per_s']:,}/s, fds {report['fds_start']} -> {report['fds_end']}, "
                    f"RSS growth after warm-up {report['rss_growth_kib']} KiB, "
                    f"errors {report['errors']} {report['error_samples'][:3]}",
                    file=sys.stderr,
                    flush=True,
                )
    if args.json:
        print(json.dumps(reports, indent=2))
    else:
        print(format_table(reports))
    bad = [r for r in reports if r["errors"] or r["fds_end"] != r["fds_start"] or r["children_end"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
