"""Multi-process servers on ferroloop: one loop per worker process.

* uvicorn ``--workers 2`` (its CLI and ``uvicorn.run``) with a ferroloop loop
  factory given as ``--loop`` import string;
* gunicorn with the worker classes of ``ferroloop.gunicorn`` (uvicorn's worker
  on ferroloop), including a ``SIGHUP`` reload;
* aiohttp ``web.run_app(..., reuse_port=True)`` in two processes, given a
  ferroloop loop, or unmodified under ``python -m ferroloop``.

Each test runs on asyncio's own loop too (the reference: it shows the
expectations hold for the servers themselves), on ferroloop's selector loop
and on its proactor loop. The ASGI app (and the aiohttp one) answers each
request with its process id and ``type(asyncio.get_running_loop())``, and
writes a file at startup (the loop's type) and at shutdown, per process, so
the test sees every worker start on the expected loop, requests spread over
the workers, and every worker run its shutdown handler on ``SIGTERM``.

Every process the tests start carries a tag in its environment; cleanup kills
(by PID) only processes that carry this test's tag, whatever happened.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import signal
import site
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

# The servers under test (pinned in requirements-dev.txt). Imported here so a
# missing install fails these tests instead of skipping them.
import aiohttp  # noqa: F401
import ferroloop
import gunicorn  # noqa: F401
import pytest
import uvicorn  # noqa: F401
import uvicorn_worker  # noqa: F401

KINDS = ["asyncio", "ferroloop", "ferroloop-proactor"]

SITE_DIRS = {str(Path(p).resolve()) for p in [*site.getsitepackages(), site.getusersitepackages()]}

# type(asyncio.get_running_loop()) in a worker, as "module.qualname".
EXPECTED_LOOP = {
    "asyncio": "asyncio.unix_events._UnixSelectorEventLoop",
    "ferroloop": "ferroloop._loop.Loop",
    "ferroloop-proactor": "ferroloop._loop.ProactorEventLoop",
}

WORKERS = 2
START_TIMEOUT = 25.0  # all workers up and serving
STOP_TIMEOUT = 15.0  # master gone after SIGTERM
REQUEST_TIMEOUT = 5.0

pytestmark = pytest.mark.timeout(90)


def skip_unavailable(kind: str) -> None:
    if kind == "ferroloop-proactor":
        why = ferroloop.proactor_unavailable_reason()
        if why is not None:
            pytest.skip(f"the proactor loop cannot run here: {why}")


@pytest.fixture(params=KINDS)
def kind(request):
    skip_unavailable(request.param)
    return request.param


# ---------------------------------------------------------------- the apps

APP = textwrap.dedent(
    """
    import asyncio
    import json
    import os

    MARKS = os.environ["SERVERS_TEST_MARKS"]


    def loop_name():
        loop = asyncio.get_running_loop()
        return f"{type(loop).__module__}.{type(loop).__qualname__}"


    def mark(what, text=""):
        path = os.path.join(MARKS, f"{what}-{os.getpid()}")
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)


    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    mark("startup", loop_name())
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    mark("shutdown")
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        assert scope["type"] == "http"
        body = json.dumps({"pid": os.getpid(), "loop": loop_name()}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


    try:
        from uvicorn_worker import UvicornWorker
    except ImportError:
        pass
    else:
        class AsyncioWorker(UvicornWorker):
            # The reference: uvicorn's worker on asyncio's own loop ("auto"
            # would pick uvloop where it is installed).
            CONFIG_KWARGS = {**UvicornWorker.CONFIG_KWARGS, "loop": "asyncio"}
    """
)

UVICORN_RUN = textwrap.dedent(
    """
    import sys

    import uvicorn

    if __name__ == "__main__":
        uvicorn.run(
            "serverapp:app",
            host="127.0.0.1",
            port=int(sys.argv[1]),
            workers=2,
            loop=sys.argv[2],
            timeout_graceful_shutdown=5,
        )
    """
)

AIOHTTP_APP = textwrap.dedent(
    """
    import asyncio
    import os
    import sys

    from aiohttp import web

    import ferroloop
    from serverapp import loop_name, mark


    async def handler(request):
        return web.json_response({"pid": os.getpid(), "loop": loop_name()})


    async def on_startup(app):
        mark("startup", loop_name())


    async def on_cleanup(app):
        mark("shutdown")


    app = web.Application()
    app.router.add_get("/", handler)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)

    how = os.environ["SERVERS_TEST_LOOP"]
    if how == "asyncio":
        loop = asyncio.new_event_loop()
    elif how == "ferroloop":
        loop = ferroloop.new_event_loop()  # the kind FERROLOOP_LOOP names
    else:  # unmodified: under python -m ferroloop, run_app's own new loop is ferroloop's
        loop = None
    web.run_app(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        reuse_port=True,
        loop=loop,
        shutdown_timeout=5,
        print=None,
    )
    """
)


# ---------------------------------------------------------------- harness


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_pids(port: int) -> set[int]:
    """PIDs holding a TCP socket that listens on 127.0.0.1:``port`` (from /proc)."""
    inodes = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            # local address 0100007F:PORT, state 0A = LISTEN
            if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":
                inodes.add(f"socket:[{fields[9]}]")
    pids = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{name}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{name}/fd/{fd}") in inodes:
                    pids.add(int(name))
                    break
            except OSError:
                continue
    return pids


def get(port: int) -> dict:
    """One request on a new connection; the app's JSON reply."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, (resp.status, body)
        return json.loads(body)
    finally:
        conn.close()


class Servers:
    """The server processes of one test, their marks and logs."""

    def __init__(self, root: Path):
        self.root = root
        self.marks = root / "marks"
        self.marks.mkdir()
        (root / "serverapp.py").write_text(APP)
        (root / "run_uvicorn.py").write_text(UVICORN_RUN)
        (root / "aiohttp_app.py").write_text(AIOHTTP_APP)
        self.tag = uuid.uuid4().hex
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def env(self, extra: dict[str, str]) -> dict[str, str]:
        env = dict(os.environ)
        for name in ("FERROLOOP_LOOP", "FERROLOOP_SELECTOR", "PYTHONASYNCIODEBUG", "PYTHONDEVMODE"):
            env.pop(name, None)
        # The app's directory, and this ferroloop, wherever it was imported
        # from (a source tree on PYTHONPATH; an installed one needs nothing).
        ferroloop_root = str(Path(ferroloop.__file__).resolve().parent.parent)
        path = [str(self.root)]
        if ferroloop_root not in SITE_DIRS:
            path.append(ferroloop_root)
        if env.get("PYTHONPATH"):
            path.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(path)
        env["SERVERS_TEST_MARKS"] = str(self.marks)
        env["SERVERS_TEST_TAG"] = self.tag
        env.update(extra)
        return env

    def start(self, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = self.root / f"proc{len(self.procs)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv,
                cwd=self.root,
                env=self.env(env or {}),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        self.logs.append(log)
        return proc

    def log_text(self) -> str:
        parts = []
        for log in self.logs:
            text = log.read_text(errors="replace") if log.exists() else ""
            parts.append(f"--- {log.name}\n{text[-6000:]}")
        return "\n".join(parts)

    def read_marks(self, what: str) -> dict[int, str]:
        found = {}
        for path in self.marks.glob(f"{what}-*"):
            if path.suffix == ".tmp":
                continue
            found[int(path.name.split("-", 1)[1])] = path.read_text()
        return found

    def check_running(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                pytest.fail(
                    f"{proc.args[:4]} exited early with {proc.returncode}\n{self.log_text()}"
                )

    def wait_started(
        self, count: int, exclude=(), timeout: float = START_TIMEOUT
    ) -> dict[int, str]:
        """Wait for ``count`` workers (not in ``exclude``) to have run their
        startup handler; their pid -> loop type."""
        deadline = time.monotonic() + timeout
        while True:
            started = {p: n for p, n in self.read_marks("startup").items() if p not in exclude}
            if len(started) >= count:
                return started
            self.check_running()
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{len(started)} of {count} workers started in {timeout} s\n{self.log_text()}"
                )
            time.sleep(0.05)

    def wait_serving(self, port: int, timeout: float = START_TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return get(port)
            except OSError as exc:
                self.check_running()
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"no answer on port {port} in {timeout} s: {exc!r}\n{self.log_text()}"
                    )
                time.sleep(0.05)

    def wait_listening(self, port: int, pids: set[int], timeout: float = START_TIMEOUT) -> None:
        """Wait until each of ``pids`` has its own listening socket on ``port``."""
        deadline = time.monotonic() + timeout
        while (have := listening_pids(port)) < pids:
            self.check_running()
            if time.monotonic() > deadline:
                pytest.fail(
                    f"only {sorted(have)} of {sorted(pids)} listen on {port}\n{self.log_text()}"
                )
            time.sleep(0.05)

    def tagged_pids(self) -> list[int]:
        """Live processes carrying this test's tag (the servers and their workers)."""
        needle = f"SERVERS_TEST_TAG={self.tag}".encode()
        pids = []
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == os.getpid():
                continue
            try:
                with open(f"/proc/{name}/environ", "rb") as f:
                    environ = f.read().split(b"\0")
                with open(f"/proc/{name}/stat", "rb") as f:
                    state = f.read().rpartition(b")")[2].split()[0]
            except OSError:
                continue
            if needle in environ and state != b"Z":
                pids.append(int(name))
        return pids

    def cleanup(self) -> None:
        """Kill whatever is left: the processes started here, then any of
        their workers still alive (found by the tag)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 10
        while (left := self.tagged_pids()) and time.monotonic() < deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)


@pytest.fixture
def servers(tmp_path):
    s = Servers(tmp_path)
    try:
        yield s
    finally:
        s.cleanup()


def spread(port: int, want: int = 2, max_requests: int = 120, concurrency: int = 4) -> list[dict]:
    """Requests, each on a new connection, in rounds of ``concurrency`` at
    once, until ``want`` distinct pids answered or ``max_requests`` were made."""
    replies: list[dict] = []
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        while len(replies) < max_requests:
            replies += pool.map(get, [port] * concurrency)
            if len({r["pid"] for r in replies}) >= want:
                break
    return replies


def check_spread(servers: Servers, port: int, started: dict[int, str], kind: str) -> set[int]:
    """Every worker started on the expected loop, and requests reached >= 2 of them."""
    assert len(started) == WORKERS, (started, servers.log_text())
    assert set(started.values()) == {EXPECTED_LOOP[kind]}, started
    replies = spread(port)
    assert {r["loop"] for r in replies} == {EXPECTED_LOOP[kind]}, replies
    pids = {r["pid"] for r in replies}
    assert pids <= set(started), (pids, started)
    assert len(pids) >= 2, (
        f"{len(replies)} requests on new connections all went to pid {pids}\n{servers.log_text()}"
    )
    return pids


def stop(servers: Servers, proc: subprocess.Popen, workers: set[int]) -> None:
    """SIGTERM to ``proc``; it exits with 0, every worker ran its shutdown
    handler, and none is left running."""
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {STOP_TIMEOUT} s after SIGTERM\n{servers.log_text()}")
    assert rc == 0, f"exit code {rc}\n{servers.log_text()}"
    shut = servers.read_marks("shutdown")
    assert workers <= set(shut), (
        f"no shutdown handler ran in {sorted(workers - set(shut))}\n{servers.log_text()}"
    )
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or pid not in servers.tagged_pids(), pid


# ---------------------------------------------------------------- uvicorn


def uvicorn_loop(kind: str, how: str) -> tuple[str, dict[str, str]]:
    """uvicorn's ``loop`` setting for ``kind``, and the environment it needs."""
    if kind == "asyncio":
        return "asyncio", {}
    proactor = kind == "ferroloop-proactor"
    if how == "cli":  # the factory; FERROLOOP_LOOP picks its kind
        return "ferroloop:new_event_loop", {
            "FERROLOOP_LOOP": "proactor" if proactor else "selector"
        }
    # a loop class as the factory: no environment needed
    return ("ferroloop:ProactorEventLoop" if proactor else "ferroloop:SelectorEventLoop"), {}


@pytest.mark.parametrize("how", ["cli", "run"])
def test_uvicorn_workers(servers, kind, how):
    port = free_port()
    loop, env = uvicorn_loop(kind, how)
    if how == "cli":
        argv = [sys.executable, "-m", "uvicorn", "serverapp:app", "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--workers", str(WORKERS), "--loop", loop]
        argv += ["--timeout-graceful-shutdown", "5"]
    else:
        argv = [sys.executable, "run_uvicorn.py", str(port), loop]
    master = servers.start(argv, env)
    started = servers.wait_started(WORKERS)
    servers.wait_serving(port)
    check_spread(servers, port, started, kind)
    stop(servers, master, set(started))


# ---------------------------------------------------------------- gunicorn


def gunicorn_worker(kind: str, neutral: bool) -> tuple[str, dict[str, str]]:
    """gunicorn's worker class for ``kind``, and the environment it needs:
    the class of that kind, or (``neutral``) ``ferroloop.gunicorn.Worker``
    told the kind by ``FERROLOOP_LOOP``."""
    if kind == "asyncio":
        return "serverapp.AsyncioWorker", {}
    proactor = kind == "ferroloop-proactor"
    if neutral:
        return "ferroloop.gunicorn.Worker", {
            "FERROLOOP_LOOP": "proactor" if proactor else "selector"
        }
    return (
        "ferroloop.gunicorn.ProactorWorker" if proactor else "ferroloop.gunicorn.SelectorWorker"
    ), {}


def start_gunicorn(servers: Servers, kind: str, port: int, neutral: bool) -> subprocess.Popen:
    worker, env = gunicorn_worker(kind, neutral)
    argv = [sys.executable, "-m", "gunicorn", "-w", str(WORKERS), "-k", worker]
    argv += ["-b", f"127.0.0.1:{port}", "--graceful-timeout", "5", "--timeout", "60"]
    # gunicorn 24+ opens a control socket at a fixed path by default; tests
    # running side by side must not share it.
    argv += ["--no-control-socket", "serverapp:app"]
    return servers.start(argv, env)


def test_gunicorn_workers(servers, kind):
    """``-k ferroloop.gunicorn.SelectorWorker`` / ``ProactorWorker``."""
    port = free_port()
    master = start_gunicorn(servers, kind, port, neutral=False)
    started = servers.wait_started(WORKERS)
    servers.wait_serving(port)
    check_spread(servers, port, started, kind)
    stop(servers, master, set(started))


def test_gunicorn_reload_keeps_serving(servers, kind):
    """SIGHUP: gunicorn starts new workers and stops the old ones gracefully;
    requests made all along (a new connection each) all succeed. Here the
    ferroloop worker class is ``ferroloop.gunicorn.Worker``, the kind from
    ``FERROLOOP_LOOP``."""
    port = free_port()
    master = start_gunicorn(servers, kind, port, neutral=True)
    old = servers.wait_started(WORKERS)
    servers.wait_serving(port)
    check_spread(servers, port, old, kind)

    replies: list[dict] = []
    dropped: list[BaseException] = []  # closed unanswered, then answered on a retry
    errors: list[BaseException] = []
    done = threading.Event()

    def load():
        # One client, one request at a time, a new connection each.
        deadline = time.monotonic() + 40  # bounded even if the test hangs
        while not done.is_set() and time.monotonic() < deadline and len(replies) < 20000:
            try:
                replies.append(get(port))
                continue
            except (http.client.RemoteDisconnected, ConnectionResetError) as exc:
                # A worker that stops closes the connections on which no
                # request is in progress yet: uvicorn's Server.shutdown()
                # (asyncio's loop shows it too). The request was not
                # answered at all, so a client may retry this GET.
                dropped.append(exc)
            except Exception as exc:  # noqa: BLE001 -- every other failure counts
                errors.append(exc)
                continue
            try:
                replies.append(get(port))
            except Exception as exc:  # noqa: BLE001 -- a retry must succeed
                errors.append(exc)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    try:
        time.sleep(0.2)
        before_hup = len(replies)
        master.send_signal(signal.SIGHUP)
        new = servers.wait_started(WORKERS, exclude=old)
        # The old workers finish gracefully: their shutdown handlers run.
        deadline = time.monotonic() + STOP_TIMEOUT
        while not set(old) <= set(servers.read_marks("shutdown")):
            servers.check_running()
            if time.monotonic() > deadline:
                pytest.fail(f"old workers did not shut down after SIGHUP\n{servers.log_text()}")
            time.sleep(0.05)
        during_reload = len(replies) - before_hup
        time.sleep(0.2)
    finally:
        done.set()
        loader.join(timeout=REQUEST_TIMEOUT + 5)
    assert not errors, f"{len(errors)} failed requests during the reload: {errors[:3]!r}"
    # Each old worker can close at most the one connection in flight when it stopped.
    assert len(dropped) <= WORKERS, dropped
    # Requests were answered before the SIGHUP, while the workers were
    # replaced, and after.
    assert before_hup > 0, before_hup
    assert during_reload > 0, during_reload
    assert len(replies) > before_hup + during_reload, (before_hup, during_reload, len(replies))
    assert {r["loop"] for r in replies} == {EXPECTED_LOOP[kind]}

    # After the reload only the new workers serve, spread over both.
    assert set(new.values()) == {EXPECTED_LOOP[kind]}, new
    pids = check_spread(servers, port, new, kind)
    assert not pids & set(old), (pids, old)
    stop(servers, master, set(old) | set(new))


# ---------------------------------------------------------------- aiohttp


@pytest.mark.parametrize(
    ("kind", "how"),
    [(kind, "loop-argument") for kind in KINDS]
    + [(kind, "python-m-ferroloop") for kind in KINDS if kind != "asyncio"],
)
def test_aiohttp_reuse_port_processes(servers, kind, how):
    """``loop-argument``: ``run_app(..., loop=ferroloop.new_event_loop())``
    (``FERROLOOP_LOOP`` picks the kind); ``python-m-ferroloop``: the script
    passes no loop and runs as ``python -m ferroloop --loop KIND script.py``."""
    skip_unavailable(kind)
    port = free_port()
    argv = [sys.executable, "aiohttp_app.py", str(port)]
    if kind == "asyncio":
        env = {"SERVERS_TEST_LOOP": "asyncio"}
    else:
        loop_kind = "proactor" if kind == "ferroloop-proactor" else "selector"
        if how == "loop-argument":
            env = {"SERVERS_TEST_LOOP": "ferroloop", "FERROLOOP_LOOP": loop_kind}
        else:
            env = {"SERVERS_TEST_LOOP": "none"}
            argv[1:1] = ["-m", "ferroloop", "--loop", loop_kind]
    procs = [servers.start(argv, env) for _ in range(WORKERS)]
    started = servers.wait_started(WORKERS)
    assert set(started) == {p.pid for p in procs}, started
    # Both bound the port (SO_REUSEPORT), each its own socket, and serve: the
    # kernel spreads new connections over the listening sockets.
    servers.wait_listening(port, set(started))
    servers.wait_serving(port)
    check_spread(servers, port, started, kind)
    for proc in procs:
        stop(servers, proc, {proc.pid})
