"""docs/recipes.md works as written: hypercorn, FastAPI, pytest-asyncio, anyio.

Each code block the recipes mark ``<!-- file: DIR/NAME -->`` is written out
as it stands into a temporary folder and run in a fresh interpreter, on
ferroloop's selector loop and on its proactor loop (``FERROLOOP_LOOP``),
serving and connecting on loopback only. Servers get a free port in place of
the recipes' 8000 and are stopped with SIGINT, which must end them cleanly.
A recipe whose package is not installed is skipped, saying which.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import ferroloop
import pytest

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "docs" / "recipes.md"
FILE_BLOCK = re.compile(r"<!-- file: (\S+) -->\s*\n```[a-z]*\n(.*?)\n```", re.DOTALL)

START_TIMEOUT = 45.0  # importing FastAPI on a busy 2-core machine takes seconds
STOP_TIMEOUT = 20.0
RUN_TIMEOUT = 90.0

LOOP_CLASS = {
    "selector": "ferroloop._loop.Loop",
    "proactor": "ferroloop._loop.ProactorEventLoop",
}

EXPECTED_FILES = {
    "hypercorn/app.py",
    "hypercorn/cli_app.py",
    "fastapi/main.py",
    "pytest-asyncio/conftest.py",
    "pytest-asyncio/pytest.ini",
    "pytest-asyncio/test_echo.py",
    "anyio/echo.py",
    "anyio/test_anyio.py",
}


def recipe_files() -> dict[str, str]:
    return {name: body + "\n" for name, body in FILE_BLOCK.findall(RECIPES.read_text())}


def write_recipe(folder: str, dest: Path, port: int | None = None) -> Path:
    """Write the recipe files under *folder* into *dest*, port 8000 -> *port*."""
    for name, body in recipe_files().items():
        top, _, rest = name.partition("/")
        if top != folder:
            continue
        if port is not None:
            body = body.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        (dest / rest).write_text(body)
    return dest


def child_env(kind: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FERROLOOP_", "PYTEST_"))}
    if kind is not None:
        env["FERROLOOP_LOOP"] = kind
    # The ferroloop this test imports, also where it is not installed (a PYTHONPATH build).
    package_parent = str(Path(ferroloop.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(params=["selector", "proactor"])
def kind(request) -> str:
    if request.param == "proactor":
        reason = ferroloop.proactor_unavailable_reason()
        if reason is not None:
            pytest.skip(f"no proactor loop here: {reason}")
    return request.param


def need_proactor() -> None:
    reason = ferroloop.proactor_unavailable_reason()
    if reason is not None:
        pytest.skip(f"the recipe runs on both kinds and there is no proactor here: {reason}")


class Server:
    def __init__(self, proc: subprocess.Popen, port: int) -> None:
        self.proc = proc
        self.port = port
        self.output = ""

    def get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()


@contextlib.contextmanager
def serving(cmd: list[str], cwd: Path, env: dict[str, str], port: int):
    """Start a server, wait until it accepts on *port*, stop it with SIGINT."""
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    server = Server(proc, port)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{cmd} exited with {proc.returncode}:\n{proc.stdout.read()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"{cmd} did not listen on {port} in {START_TIMEOUT:g} s")
                time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            server.output, _ = proc.communicate(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            server.output, _ = proc.communicate()
            pytest.fail(f"{cmd} did not stop on SIGINT within {STOP_TIMEOUT:g} s")
    assert proc.returncode == 0, f"{cmd} exited with {proc.returncode}:\n{server.output}"


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def test_recipes_hold_the_files_tested_here():
    assert set(recipe_files()) == EXPECTED_FILES


# ---------------------------------------------------------------------------
# hypercorn
# ---------------------------------------------------------------------------


def test_hypercorn_from_a_script(kind, tmp_path):
    pytest.importorskip("hypercorn", reason="hypercorn is not installed")
    port = free_port()
    write_recipe("hypercorn", tmp_path, port)
    with serving([sys.executable, "app.py"], tmp_path, child_env(kind), port) as server:
        for _ in range(3):
            status, body = server.get("/")
            assert (status, body) == (200, f"{LOOP_CLASS[kind]}\n".encode())


def test_hypercorn_command_line_with_two_workers(kind, tmp_path):
    pytest.importorskip("hypercorn", reason="hypercorn is not installed")
    assert "hypercorn --bind 127.0.0.1:8000 --workers 2 cli_app:app" in RECIPES.read_text()
    port = free_port()
    write_recipe("hypercorn", tmp_path)
    cmd = [sys.executable, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}"]
    cmd += ["--workers", "2", "cli_app:app"]
    with serving(cmd, tmp_path, child_env(kind), port) as server:
        for _ in range(6):
            assert server.get("/") == (200, f"{LOOP_CLASS[kind]}\n".encode())


@pytest.mark.parametrize(
    ("workers", "expected"),
    [("0", LOOP_CLASS["selector"]), ("1", "asyncio.unix_events._UnixSelectorEventLoop")],
)
def test_python_m_ferroloop_reaches_hypercorn_workers_only_in_process(workers, expected, tmp_path):
    """What the recipe says about ``python -m ferroloop -m hypercorn``."""
    pytest.importorskip("hypercorn", reason="hypercorn is not installed")
    port = free_port()
    write_recipe("hypercorn", tmp_path)
    cmd = [sys.executable, "-m", "ferroloop", "-m", "hypercorn"]
    cmd += ["--bind", f"127.0.0.1:{port}", "--workers", workers, "app:app"]
    with serving(cmd, tmp_path, child_env(None), port) as server:
        assert server.get("/") == (200, f"{expected}\n".encode())


# ---------------------------------------------------------------------------
# FastAPI
# ---------------------------------------------------------------------------


def test_fastapi_on_hypercorn(kind, tmp_path):
    pytest.importorskip("fastapi", reason="fastapi is not installed")
    pytest.importorskip("hypercorn", reason="hypercorn is not installed")
    port = free_port()
    write_recipe("fastapi", tmp_path, port)
    with serving([sys.executable, "main.py"], tmp_path, child_env(kind), port) as server:
        status, body = server.get("/loop")
        assert (status, json.loads(body)) == (200, {"loop": LOOP_CLASS[kind]})
        status, body = server.get("/sleep/20")
        assert (status, json.loads(body)) == (200, {"slept_ms": 20})
        status, body = server.get("/thread")
        assert (status, json.loads(body)) == (200, {"thread": True})


# ---------------------------------------------------------------------------
# pytest-asyncio and anyio
# ---------------------------------------------------------------------------


def test_pytest_asyncio_runs_each_test_on_both_kinds(tmp_path):
    pytest.importorskip("pytest_asyncio", reason="pytest-asyncio is not installed")
    need_proactor()
    write_recipe("pytest-asyncio", tmp_path)
    proc = run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider"], tmp_path, child_env(None)
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "test_echo.py::test_echo[selector] PASSED" in out, out
    assert "test_echo.py::test_echo[proactor] PASSED" in out, out
    assert "2 passed" in out, out


def test_anyio_run(kind, tmp_path):
    pytest.importorskip("anyio", reason="anyio is not installed")
    write_recipe("anyio", tmp_path)
    proc = run([sys.executable, "echo.py"], tmp_path, child_env(kind))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"b'ping' {LOOP_CLASS[kind].rpartition('.')[2]}\n"


def test_anyio_pytest_plugin_on_both_kinds(tmp_path):
    pytest.importorskip("anyio", reason="anyio is not installed")
    need_proactor()
    write_recipe("anyio", tmp_path)
    cmd = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "test_anyio.py"]
    proc = run(cmd, tmp_path, child_env(None))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "test_sleep_and_a_thread[selector] PASSED" in out, out
    assert "test_sleep_and_a_thread[proactor] PASSED" in out, out
