"""ferroloop's ProactorEventLoop (io_uring): fallback, choosing, fork, transports.

Everything here runs for real: io_uring is blocked by a genuine seccomp
filter in throw-away child processes (``_seccomp``), loop kinds are chosen
through the real environment variables and ``python -m ferroloop`` in fresh
interpreters, fork is a real ``os.fork()`` from a running loop's callback
(in a fresh interpreter, so pytest itself is never forked), and the
transport tests move real bytes over 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import resource
import socket
import subprocess
import sys
import textwrap

import _seccomp
import ferroloop
import pytest
from conftest import collect, fd_count, run_coro, run_python, until

CHILD_TIMEOUT = 20  # seconds, for every child process; each normally takes < 1 s
MESSAGE_PREFIX = "io_uring is unavailable: "
BLOCKED = pytest.mark.parametrize("err", [errno.ENOSYS, errno.EPERM], ids=["ENOSYS", "EPERM"])


@pytest.fixture(autouse=True)
def _no_loop_env(monkeypatch):
    # The tests say which loop kind they want; a FERROLOOP_LOOP left in the
    # environment would silently change what new_event_loop() makes.
    monkeypatch.delenv("FERROLOOP_LOOP", raising=False)
    monkeypatch.delenv("FERROLOOP_SELECTOR", raising=False)


@pytest.fixture(scope="module")
def io_uring_works() -> None:
    """Skip unless io_uring works in this process: blocking it in a child, or
    checking that the proactor is chosen, means nothing otherwise."""
    err = _seccomp.io_uring_setup_errno()
    if err is not None:
        pytest.skip(
            f"io_uring does not work on this machine (io_uring_setup failed with "
            f"{errno.errorcode.get(err, err)}): the proactor cannot be tested here"
        )


def _last_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, (
        f"child failed with {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    assert "panicked" not in proc.stderr, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines, f"child printed nothing\nstderr:\n{proc.stderr}"
    return json.loads(lines[-1])


def _check_unavailable_error(info: dict, err: int) -> None:
    """``info`` describes an OSError the child caught: type, errno, strerror, str."""
    assert info["errno"] == err
    assert info["strerror"].startswith(MESSAGE_PREFIX), info
    assert "seccomp" in info["strerror"], info
    assert errno.errorcode[err] in info["strerror"], info
    assert info["is_oserror"], info
    # OSError(errno, ...) picks its subclass from the errno, as for any OSError.
    assert info["type"] == ("PermissionError" if err == errno.EPERM else "OSError"), info


# Helpers for the children (and the tests): a TCP echo on a loop, and a
# description of a caught OSError.
CHILD_HELPERS = r"""
import asyncio, errno, gc, json, os, socket, sys

def describe(exc):
    return {"type": type(exc).__name__, "is_oserror": isinstance(exc, OSError),
            "errno": exc.errno, "strerror": exc.strerror, "str": str(exc)}

async def tcp_echo(payload=b"ping " * 1000):
    async def handle(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    writer.write_eof()
    got = await reader.read()
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    assert got == payload, (len(got), len(payload))
    return len(got)

def echo_on(loop):
    return loop.run_until_complete(asyncio.wait_for(tcp_echo(), 10))
"""


def _run_blocked(code: str, err: int) -> subprocess.CompletedProcess:
    return _seccomp.run_blocked(CHILD_HELPERS + textwrap.dedent(code), err, timeout=CHILD_TIMEOUT)


# ---------------------------------------------------------------- 1. fallback


@BLOCKED
def test_blocked_constructor_raises_named_oserror(io_uring_works, err):
    out = _last_json(
        _run_blocked(
            """
            import ferroloop, _seccomp
            res = {"probe": _seccomp.io_uring_setup_errno()}
            try:
                ferroloop.ProactorEventLoop()
            except OSError as exc:
                res["exc"] = describe(exc)
            else:
                res["exc"] = None
            print(json.dumps(res))
            """,
            err,
        )
    )
    assert out["probe"] == err  # the filter really is in place in the child
    assert out["exc"] is not None, "ProactorEventLoop() worked with io_uring blocked"
    _check_unavailable_error(out["exc"], err)


@BLOCKED
def test_blocked_reason_is_the_message(io_uring_works, err):
    out = _last_json(
        _run_blocked(
            """
            import ferroloop
            try:
                ferroloop.ProactorEventLoop()
            except OSError as exc:
                message = str(exc)
            print(json.dumps({"reason": ferroloop.proactor_unavailable_reason(),
                              "again": ferroloop.proactor_unavailable_reason(),
                              "message": message}))
            """,
            err,
        )
    )
    assert out["reason"] is not None
    assert out["reason"] == out["message"] == out["again"]
    assert MESSAGE_PREFIX in out["reason"]
    assert "seccomp" in out["reason"]


def test_unblocked_reason_is_none(io_uring_works):
    assert ferroloop.proactor_unavailable_reason() is None


@BLOCKED
def test_blocked_auto_falls_back_to_working_epoll_loop(io_uring_works, err):
    out = _last_json(
        _run_blocked(
            """
            import ferroloop
            res = {}
            for i in range(2):  # the second call uses what "auto" found out
                loop = ferroloop.new_event_loop(kind="auto")
                res[f"type{i}"] = type(loop).__name__
                res[f"proactor{i}"] = isinstance(loop, ferroloop.ProactorEventLoop)
                res[f"selector{i}"] = isinstance(loop, ferroloop.SelectorEventLoop)
                res[f"backend{i}"] = loop.backend
                res[f"echoed{i}"] = echo_on(loop)
                loop.close()
            print(json.dumps(res))
            """,
            err,
        )
    )
    for i in range(2):
        assert out[f"proactor{i}"] is False, out
        assert out[f"selector{i}"] is True, out
        assert out[f"backend{i}"] == "epoll", out
        assert out[f"echoed{i}"] == 5000, out


@BLOCKED
def test_blocked_env_auto_with_asyncio_run(io_uring_works, err, monkeypatch):
    monkeypatch.setenv("FERROLOOP_LOOP", "auto")
    out = _last_json(
        _run_blocked(
            """
            import ferroloop
            assert os.environ["FERROLOOP_LOOP"] == "auto"
            ferroloop.install()
            async def main():
                loop = asyncio.get_running_loop()
                n = await tcp_echo()
                return {"backend": loop.backend, "type": type(loop).__name__,
                        "proactor": isinstance(loop, ferroloop.ProactorEventLoop),
                        "ferroloop": isinstance(loop, ferroloop.SelectorEventLoop), "n": n}
            print(json.dumps(asyncio.run(main())))
            """,
            err,
        )
    )
    assert out == {
        "backend": "epoll",
        "type": out["type"],
        "proactor": False,
        "ferroloop": True,
        "n": 5000,
    }


@BLOCKED
def test_blocked_env_proactor_new_event_loop_raises(io_uring_works, err, monkeypatch):
    monkeypatch.setenv("FERROLOOP_LOOP", "proactor")
    out = _last_json(
        _run_blocked(
            """
            import ferroloop
            res = {}
            for name, make in [("new_event_loop", ferroloop.new_event_loop),
                               ("policy", lambda: ferroloop.EventLoopPolicy().new_event_loop())]:
                try:
                    loop = make()
                except OSError as exc:
                    res[name] = describe(exc)
                else:
                    res[name] = {"made": type(loop).__name__, "backend": loop.backend}
                    loop.close()
            print(json.dumps(res))
            """,
            err,
        )
    )
    for name in ("new_event_loop", "policy"):
        assert "made" not in out[name], f"{name}: {out[name]}"
        _check_unavailable_error(out[name], err)


@BLOCKED
def test_blocked_env_proactor_uncaught_is_a_clean_traceback(io_uring_works, err, monkeypatch):
    # Uncaught, the OSError must end the program as any Python exception
    # does (exit code 1, a traceback), never as a Rust panic or an abort.
    monkeypatch.setenv("FERROLOOP_LOOP", "proactor")
    proc = _run_blocked(
        """
        import ferroloop
        ferroloop.install()
        async def main():
            return 1
        asyncio.run(main())
        print("NOT REACHED")
        """,
        err,
    )
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "panicked" not in proc.stderr
    assert "NOT REACHED" not in proc.stdout
    assert "Traceback (most recent call last):" in proc.stderr
    exc_type = "PermissionError" if err == errno.EPERM else "OSError"
    # The traceback's last line (a "coroutine 'main' was never awaited"
    # warning may follow it, as on asyncio when making the loop fails).
    lines = proc.stderr.splitlines()
    assert any(
        line.startswith(f"{exc_type}: [Errno {err}] {MESSAGE_PREFIX}") and "seccomp" in line
        for line in lines
    ), proc.stderr


@BLOCKED
def test_blocked_proactor_policy_raises(io_uring_works, err):
    out = _last_json(
        _run_blocked(
            """
            import ferroloop
            res = {}
            policy = ferroloop.ProactorEventLoopPolicy()
            try:
                policy.new_event_loop()
            except OSError as exc:
                res["exc"] = describe(exc)
            # The other policies still work.
            for name in ("SelectorEventLoopPolicy", "EventLoopPolicy"):
                loop = getattr(ferroloop, name)().new_event_loop()
                res[name] = [loop.backend, echo_on(loop)]
                loop.close()
            print(json.dumps(res))
            """,
            err,
        )
    )
    assert "exc" in out, "ProactorEventLoopPolicy().new_event_loop() worked with io_uring blocked"
    _check_unavailable_error(out["exc"], err)
    assert out["SelectorEventLoopPolicy"] == ["epoll", 5000]
    assert out["EventLoopPolicy"] == ["epoll", 5000]


@BLOCKED
def test_blocked_failed_constructions_leak_no_fd(io_uring_works, err):
    out = _last_json(
        _run_blocked(
            """
            import ferroloop
            def count():
                return len(os.listdir("/proc/self/fd"))
            # Warm up whatever is made once (imports, the fallback's cache).
            for make in (ferroloop.ProactorEventLoop, lambda: ferroloop.new_event_loop(kind="auto")):
                try:
                    make().close()
                except OSError:
                    pass
            gc.collect()
            before = count()
            failures = 0
            for _ in range(20):
                for make in (ferroloop.ProactorEventLoop,
                             lambda: ferroloop.new_event_loop(kind="proactor"),
                             ferroloop.ProactorEventLoopPolicy().new_event_loop):
                    try:
                        make()
                    except OSError:
                        failures += 1
            gc.collect()
            after_fail = count()
            for _ in range(20):
                ferroloop.new_event_loop(kind="auto").close()
            gc.collect()
            print(json.dumps({"before": before, "after_fail": after_fail,
                              "after_auto": count(), "failures": failures,
                              "fds": sorted(os.listdir("/proc/self/fd"))}))
            """,
            err,
        )
    )
    assert out["failures"] == 60
    assert out["after_fail"] == out["before"], out
    assert out["after_auto"] == out["before"], out


# ---------------------------------------------------------------- 2. choosing


def _describe_loop(loop) -> tuple[bool, bool, str]:
    return (
        isinstance(loop, ferroloop.ProactorEventLoop),
        isinstance(loop, ferroloop.SelectorEventLoop),
        loop.backend,
    )


PROACTOR = (True, True, "io_uring")  # a ProactorEventLoop is also a SelectorEventLoop subclass
SELECTOR = (False, True, "epoll")


def test_proactor_is_a_ferroloop_loop():
    assert issubclass(ferroloop.ProactorEventLoop, asyncio.AbstractEventLoop)
    assert ferroloop.Loop is ferroloop.SelectorEventLoop
    assert ferroloop.DEFAULT_KIND in ("selector", "proactor", "auto")


@pytest.mark.parametrize(
    "kind, expected",
    [("selector", SELECTOR), ("proactor", PROACTOR), ("auto", PROACTOR)],
)
def test_kind_argument(io_uring_works, kind, expected):
    loop = ferroloop.new_event_loop(kind=kind)
    try:
        assert _describe_loop(loop) == expected
        assert not loop.is_running() and not loop.is_closed()
        assert run_coro(loop, asyncio.sleep(0.001, "ran")) == "ran"
    finally:
        loop.close()


def test_kind_none_is_default_kind(io_uring_works):
    loop = ferroloop.new_event_loop()
    try:
        expected = SELECTOR if ferroloop.DEFAULT_KIND == "selector" else PROACTOR
        assert _describe_loop(loop) == expected
    finally:
        loop.close()


@pytest.mark.parametrize("selector, backend", [("epoll", "epoll"), ("poll", "poll"), ("select", "select")])
def test_selector_argument_means_selector_loop(io_uring_works, selector, backend, monkeypatch):
    for kind in (None, "selector"):
        loop = ferroloop.new_event_loop(selector, kind=kind)
        try:
            assert not isinstance(loop, ferroloop.ProactorEventLoop)
            assert loop.backend == backend
        finally:
            loop.close()
    # Even when the environment asks for the proactor.
    monkeypatch.setenv("FERROLOOP_LOOP", "proactor")
    loop = ferroloop.new_event_loop(selector)
    try:
        assert not isinstance(loop, ferroloop.ProactorEventLoop)
        assert loop.backend == backend
    finally:
        loop.close()


def test_selector_with_kind_proactor_is_value_error():
    collect()  # earlier tests' garbage must not close descriptors during this one
    before = fd_count()
    for selector in ("epoll", "poll", "select"):
        with pytest.raises(ValueError):
            ferroloop.new_event_loop(selector, kind="proactor")
    collect()
    assert fd_count() == before


@pytest.mark.parametrize("kind", ["bogus", "uring", "epoll", "Selector ", 3])
def test_unknown_kind_is_value_error(kind):
    before = fd_count()
    with pytest.raises(ValueError):
        ferroloop.new_event_loop(kind=kind)
    collect()
    assert fd_count() == before


def test_explicit_kind_beats_environment(io_uring_works, monkeypatch):
    monkeypatch.setenv("FERROLOOP_LOOP", "proactor")
    loop = ferroloop.new_event_loop(kind="selector")
    try:
        assert _describe_loop(loop) == SELECTOR
    finally:
        loop.close()
    monkeypatch.setenv("FERROLOOP_LOOP", "selector")
    loop = ferroloop.new_event_loop(kind="proactor")
    try:
        assert _describe_loop(loop) == PROACTOR
    finally:
        loop.close()


ENV_PROBE = """
import asyncio, json, ferroloop
def describe(loop):
    return [isinstance(loop, ferroloop.ProactorEventLoop),
            isinstance(loop, ferroloop.SelectorEventLoop), loop.backend]
res = {}
loop = ferroloop.new_event_loop()
res["new_event_loop"] = describe(loop)
loop.close()
loop = ferroloop.EventLoopPolicy().new_event_loop()
res["policy"] = describe(loop)
loop.close()
ferroloop.install()
async def main():
    return describe(asyncio.get_running_loop())
res["asyncio.run"] = asyncio.run(main())
res["ferroloop.run"] = ferroloop.run(main())
loop = asyncio.new_event_loop()
res["asyncio.new_event_loop"] = describe(loop)
loop.close()
print(json.dumps(res))
"""


@pytest.mark.parametrize(
    "value, expected",
    [("selector", SELECTOR), ("proactor", PROACTOR), ("auto", PROACTOR)],
)
def test_env_var_chooses_kind(io_uring_works, value, expected):
    out = _last_json(run_python(ENV_PROBE, env={"FERROLOOP_LOOP": value}, timeout=CHILD_TIMEOUT))
    assert set(out) == {
        "new_event_loop",
        "policy",
        "asyncio.run",
        "ferroloop.run",
        "asyncio.new_event_loop",
    }
    for where, got in out.items():
        assert tuple(got) == expected, (where, got)


def test_env_var_unset_is_default_kind(io_uring_works):
    out = _last_json(run_python(ENV_PROBE, timeout=CHILD_TIMEOUT))
    expected = SELECTOR if ferroloop.DEFAULT_KIND == "selector" else PROACTOR
    for where, got in out.items():
        assert tuple(got) == expected, (where, got)


def test_env_var_unknown_is_value_error():
    proc = run_python(
        """
        import ferroloop
        try:
            ferroloop.new_event_loop()
        except ValueError as exc:
            print("ValueError", exc)
        """,
        env={"FERROLOOP_LOOP": "bogus"},
        timeout=CHILD_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ValueError"), proc.stdout
    assert "bogus" in proc.stdout


@pytest.mark.parametrize(
    "policy, expected",
    [
        ("SelectorEventLoopPolicy", SELECTOR),
        ("ProactorEventLoopPolicy", PROACTOR),
    ],
)
def test_policy_loops(io_uring_works, policy, expected, restore_policy, monkeypatch):
    # Whatever FERROLOOP_LOOP says, these two policies make their own kind.
    for env in (None, "selector", "proactor", "auto"):
        if env is None:
            monkeypatch.delenv("FERROLOOP_LOOP", raising=False)
        else:
            monkeypatch.setenv("FERROLOOP_LOOP", env)
        pol = getattr(ferroloop, policy)()
        assert isinstance(pol, ferroloop.EventLoopPolicy)
        loop = pol.new_event_loop()
        try:
            assert _describe_loop(loop) == expected, env
            assert run_coro(loop, asyncio.sleep(0, "ok")) == "ok"
        finally:
            loop.close()
    # Installed, it is what asyncio.run uses.
    monkeypatch.delenv("FERROLOOP_LOOP", raising=False)
    asyncio.set_event_loop_policy(getattr(ferroloop, policy)())

    async def main():
        return _describe_loop(asyncio.get_running_loop())

    assert asyncio.run(main()) == expected


def test_event_loop_policy_follows_kind(io_uring_works, restore_policy, monkeypatch):
    pol = ferroloop.EventLoopPolicy()
    for env, expected in (("selector", SELECTOR), ("proactor", PROACTOR), ("auto", PROACTOR)):
        monkeypatch.setenv("FERROLOOP_LOOP", env)
        loop = pol.new_event_loop()
        try:
            assert _describe_loop(loop) == expected, env
        finally:
            loop.close()


SCRIPT = """
import asyncio, json, sys
import ferroloop
async def main():
    loop = asyncio.get_running_loop()
    await asyncio.sleep(0)
    return loop.backend, isinstance(loop, ferroloop.ProactorEventLoop)
backend, proactor = asyncio.run(main())
print(json.dumps({"backend": backend, "argv": sys.argv, "proactor": proactor}))
"""


@pytest.mark.parametrize(
    "option, backend",
    [("proactor", "io_uring"), ("selector", "epoll"), ("auto", "io_uring")],
)
def test_python_m_ferroloop_loop_option(io_uring_works, tmp_path, option, backend):
    script = tmp_path / "prog.py"
    script.write_text(SCRIPT)
    proc = subprocess.run(
        [sys.executable, "-m", "ferroloop", "--loop", option, str(script), "a1", "--x"],
        capture_output=True,
        check=False,
        text=True,
        timeout=CHILD_TIMEOUT,
        stdin=subprocess.DEVNULL,
        cwd=str(tmp_path),
    )
    out = _last_json(proc)
    assert out == {
        "backend": backend,
        "argv": [str(script), "a1", "--x"],
        "proactor": backend == "io_uring",
    }


def test_python_m_ferroloop_backend_print(io_uring_works, tmp_path):
    # The exact program of the brief: it prints the running loop's backend.
    script = tmp_path / "prog.py"
    script.write_text(
        "import asyncio\n"
        "async def main():\n"
        "    print(asyncio.get_running_loop().backend)\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "ferroloop", "--loop", "proactor", str(script)],
        capture_output=True,
        check=False,
        text=True,
        timeout=CHILD_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "io_uring\n"


def test_python_m_ferroloop_rejects_bad_loop_option(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text("print('ran')\n")
    for args in (["--loop", "bogus"], ["--loop"], ["--loop", "proactor", "--selector", "poll"]):
        proc = subprocess.run(
            [sys.executable, "-m", "ferroloop", *args, str(script)],
            capture_output=True,
            check=False,
            text=True,
            timeout=CHILD_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        assert proc.returncode == 2, (args, proc.returncode, proc.stderr)
        assert "ran" not in proc.stdout
        assert "usage:" in proc.stderr


@BLOCKED
def test_python_m_ferroloop_blocked(io_uring_works, tmp_path, err):
    # With io_uring blocked, --loop auto runs the program on epoll and
    # --loop proactor fails with the clear OSError (no panic).
    script = tmp_path / "prog.py"
    script.write_text(SCRIPT)
    code = f"""
    import runpy, subprocess, sys
    for option in ("auto", "proactor"):
        proc = subprocess.run([sys.executable, "-m", "ferroloop", "--loop", option, {str(script)!r}],
                              capture_output=True, text=True, timeout=15)
        print(json.dumps({{"option": option, "rc": proc.returncode,
                          "stdout": proc.stdout, "stderr": proc.stderr}}))
    """
    proc = _run_blocked(code, err)
    assert proc.returncode == 0, proc.stderr
    runs = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    auto, proactor = runs
    assert auto["rc"] == 0, auto["stderr"]
    out = json.loads(auto["stdout"].strip().splitlines()[-1])
    assert out["backend"] == "epoll" and out["proactor"] is False
    assert proactor["rc"] == 1, proactor
    assert "panicked" not in proactor["stderr"]
    assert f"[Errno {err}] {MESSAGE_PREFIX}" in proactor["stderr"]


def _info_lines(stdout: str) -> dict[str, str]:
    """`python -m ferroloop --info` lines by their first word."""
    return {line.split()[0]: line.strip() for line in stdout.splitlines() if line.strip()}


def test_python_m_ferroloop_info(io_uring_works):
    proc = subprocess.run(
        [sys.executable, "-m", "ferroloop", "--info"], check=False, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    lines = _info_lines(proc.stdout)
    assert lines["ferroloop"] == f"ferroloop {ferroloop.__version__}"
    assert lines["kernel"].startswith(f"kernel Linux {os.uname().release}")
    assert lines["default"] == f"default kind: {ferroloop.DEFAULT_KIND}"
    assert lines["selector"] == "selector  available (epoll)"
    assert lines["proactor"].startswith("proactor  available (io_uring; setup flags ")
    for backend in ("epoll", "poll", "select"):
        assert lines[backend].split() == [backend, "available"]
    bad = subprocess.run(
        [sys.executable, "-m", "ferroloop", "--info", "extra"], check=False, capture_output=True, text=True, timeout=30
    )
    assert bad.returncode == 2 and "usage:" in bad.stderr


@BLOCKED
def test_python_m_ferroloop_info_says_why_io_uring_is_blocked(io_uring_works, err):
    code = """
    import subprocess, sys
    proc = subprocess.run([sys.executable, "-m", "ferroloop", "--info"],
                          capture_output=True, text=True, timeout=15)
    print(json.dumps({"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}))
    """
    proc = _run_blocked(code, err)
    assert proc.returncode == 0, proc.stderr
    out = _last_json(proc)
    assert out["rc"] == 0, out["stderr"]
    lines = _info_lines(out["stdout"])
    assert lines["proactor"].startswith(f"proactor  unavailable: [Errno {err}] {MESSAGE_PREFIX}")
    assert lines["selector"] == "selector  available (epoll)"


# ---------------------------------------------------------------- 3. fork

# A parent with a running ProactorEventLoop (a TCP server and one connection
# open) forks from a callback. The child leaves the parent's loop alone: it
# makes a new ProactorEventLoop and a SelectorEventLoop and runs a TCP echo on
# each, stops the inherited loop (so its run_forever returns), closes it and
# exits 0. The parent's connection works while the child lives and after it
# exited. Each process has an alarm, the parent kills a child that hangs.
FORK_SCRIPT = r'''
import asyncio, json, os, signal, sys, traceback
import ferroloop
RERUN = "rerun" in sys.argv

async def echo_once(payload):
    async def handle(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    writer.write_eof()
    got = await reader.read()
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    return got == payload

def child_work(inherited):
    signal.alarm(15)  # never outlive a hang
    res = {"inherited_running": inherited.is_running()}
    asyncio.events._set_running_loop(None)  # we are inside the parent's callback
    for name, make in (("proactor", ferroloop.ProactorEventLoop), ("selector", ferroloop.SelectorEventLoop)):
        loop = make()
        res[name] = [loop.backend, loop.run_until_complete(asyncio.wait_for(echo_once(b"child %s " % name.encode() * 500), 10))]
        loop.close()
    return res

loop = ferroloop.ProactorEventLoop()
state = {}

async def parent():
    conns = []
    async def handle(reader, writer):
        conns.append(writer)
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    res = {}
    async def exchange(tag):
        msg = tag.encode() * 1000
        writer.write(msg)
        return (await reader.readexactly(len(msg))) == msg
    res["before"] = await exchange("before")
    forked = loop.create_future()
    def do_fork():
        pid = os.fork()
        if pid == 0:
            state["child"] = True
            try:
                state["res"] = child_work(loop)
            except BaseException:
                traceback.print_exc()
                sys.stderr.flush()
                os._exit(3)
            loop.stop()
            return
        forked.set_result(pid)
    loop.call_soon(do_fork)
    pid = await forked
    res["during"] = await exchange("during")
    try:
        _, status = await asyncio.wait_for(loop.run_in_executor(None, os.waitpid, pid, 0), 20)
    except asyncio.TimeoutError:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        status = -1
    res["child_status"] = os.waitstatus_to_exitcode(status) if status != -1 else "timeout"
    res["after"] = await exchange("after")
    res["new_after"] = await echo_once(b"parent after " * 100)
    writer.write_eof()
    res["eof"] = await reader.read() == b""
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    res["backend"] = loop.backend
    return res

task = loop.create_task(asyncio.wait_for(parent(), 30))
task.add_done_callback(lambda t: loop.stop())
signal.alarm(40)
try:
    loop.run_forever()
except BaseException as exc:
    if not state.get("child"):
        raise
    state.setdefault("res", {})["run_forever_raised"] = repr(exc)
if state.get("child"):
    res = state["res"]
    if RERUN:
        # The inherited proactor, run again in the child: it must refuse
        # (its ring is the parent's and is not mapped here), not crash.
        try:
            loop.run_until_complete(asyncio.sleep(0.01))
            res["rerun"] = "ran"
        except (OSError, RuntimeError) as exc:
            res["rerun"] = ["refused", type(exc).__name__, str(exc)]
    try:
        loop.close()
        res["closed"] = loop.is_closed()
    except BaseException as exc:
        res["closed"] = repr(exc)
    print("CHILD " + json.dumps(res), flush=True)
    os._exit(0)
res = task.result()
loop.close()
print("PARENT " + json.dumps(res), flush=True)
'''


def _run_fork_script(*args):
    proc = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", FORK_SCRIPT, *args],
        capture_output=True,
        check=False,
        text=True,
        timeout=45,
        stdin=subprocess.DEVNULL,
    )
    lines = proc.stdout.splitlines()
    child = [json.loads(line[6:]) for line in lines if line.startswith("CHILD ")]
    parent = [json.loads(line[7:]) for line in lines if line.startswith("PARENT ")]
    return proc, child, parent


def test_fork_from_running_proactor(io_uring_works):
    proc, child, parent = _run_fork_script()
    assert proc.returncode == 0, proc.stderr
    assert "panicked" not in proc.stderr and "Fatal Python error" not in proc.stderr, proc.stderr
    assert parent == [
        {
            "before": True,
            "during": True,
            "child_status": 0,
            "after": True,
            "new_after": True,
            "eof": True,
            "backend": "io_uring",
        }
    ], (parent, proc.stderr)
    assert child == [
        {
            "inherited_running": True,
            "proactor": ["io_uring", True],
            "selector": ["epoll", True],
            "closed": True,
        }
    ], (child, proc.stderr)


def test_fork_child_rerunning_inherited_proactor_refuses(io_uring_works):
    proc, child, parent = _run_fork_script("rerun")
    assert proc.returncode == 0, proc.stderr
    assert len(parent) == 1 and parent[0]["child_status"] == 0, (parent, proc.stderr)
    assert parent[0]["after"] is True and parent[0]["new_after"] is True
    assert len(child) == 1, proc.stderr
    assert child[0]["rerun"][0] == "refused", child
    assert child[0]["closed"] is True


# ---------------------------------------------------------------- 4. proactor transports


@pytest.fixture
def ploop(io_uring_works):
    loop = ferroloop.ProactorEventLoop()
    assert loop.backend == "io_uring"
    yield loop
    if not loop.is_closed():
        loop.close()


def _tcp_pair(loop):
    """A connected nonblocking TCP pair over 127.0.0.1 (made synchronously)."""
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        a = socket.create_connection(lsock.getsockname())
        b, _ = lsock.accept()
    for s in (a, b):
        s.setblocking(False)
    return a, b


def test_cancel_sock_recv_loses_no_byte(ploop):
    before = fd_count()

    async def main():
        a, b = _tcp_pair(ploop)
        got = bytearray()
        sent = bytearray()
        try:
            for i in range(200):
                task = ploop.create_task(ploop.sock_recv(a, 65536))
                await asyncio.sleep(0)  # the recv is pending now
                assert not task.done()
                task.cancel()
                msg = b"[%05d]" % i * (1 + i % 7)
                if i % 2:
                    # Send at once, before the loop saw the cancellation.
                    b.send(msg)
                with pytest.raises(asyncio.CancelledError):
                    await task
                if not i % 2:
                    b.send(msg)
                sent += msg
                # The next sock_recv gets everything sent since.
                while len(got) < len(sent):
                    got += await asyncio.wait_for(ploop.sock_recv(a, 65536), 5)
                assert got == sent, i
        finally:
            a.close()
            b.close()

    run_coro(ploop, main(), timeout=20)
    collect()
    assert fd_count() == before


def test_cancel_sock_accept_loses_no_connection(ploop):
    before = fd_count()

    async def main():
        lsock = socket.create_server(("127.0.0.1", 0))
        lsock.setblocking(False)
        clients = []
        try:
            for i in range(50):
                task = ploop.create_task(ploop.sock_accept(lsock))
                await asyncio.sleep(0)
                assert not task.done()
                task.cancel()
                c = socket.socket()
                c.setblocking(False)
                clients.append(c)
                if i % 2:
                    c.connect_ex(lsock.getsockname())  # before the cancel is seen
                with pytest.raises(asyncio.CancelledError):
                    await task
                if not i % 2:
                    c.connect_ex(lsock.getsockname())
                conn, addr = await asyncio.wait_for(ploop.sock_accept(lsock), 5)
                with conn:
                    # The very connection just made, not one swallowed earlier.
                    assert addr == c.getsockname(), i
                    await ploop.sock_sendall(conn, b"hi %d" % i)
                    assert await asyncio.wait_for(ploop.sock_recv(c, 100), 5) == b"hi %d" % i
                c.close()
            # Nothing else is waiting in the backlog: no accept was lost or doubled.
            with pytest.raises(BlockingIOError):
                lsock.accept()
        finally:
            lsock.close()
            for c in clients:
                c.close()

    run_coro(ploop, main(), timeout=20)
    collect()
    assert fd_count() == before


def test_cancel_sock_sendall_peer_not_reading(ploop):
    before = fd_count()

    async def main():
        a, b = _tcp_pair(ploop)
        try:
            a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
            b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            data = bytes(range(256)) * (4 * 4096)  # 4 MiB: cannot all fit in the buffers
            task = ploop.create_task(ploop.sock_sendall(a, data))
            for _ in range(20):
                await asyncio.sleep(0.005)
            assert not task.done()  # blocked: the peer reads nothing
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            marker = b"--MARKER-- the end"
            # Read everything now; the marker goes once the peer drains.
            send_marker = ploop.create_task(ploop.sock_sendall(a, marker))
            got = bytearray()
            while not got.endswith(marker):
                chunk = await asyncio.wait_for(ploop.sock_recv(b, 65536), 5)
                assert chunk, "EOF before the marker"
                got += chunk
            await asyncio.wait_for(send_marker, 5)
            prefix = bytes(got[: -len(marker)])
            # A prefix of the cancelled data, then the marker: nothing lost,
            # doubled or reordered.
            assert 0 < len(prefix) < len(data)
            assert prefix == data[: len(prefix)]
        finally:
            a.close()
            b.close()

    run_coro(ploop, main(), timeout=20)
    collect()
    assert fd_count() == before


class _Recorder(asyncio.Protocol):
    def __init__(self):
        self.data = bytearray()
        self.events = []
        self.lost = asyncio.get_running_loop().create_future()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def data_received(self, data):
        self.data += data

    def eof_received(self):
        self.events.append("eof")

    def pause_writing(self):
        self.events.append("pause")

    def resume_writing(self):
        self.events.append("resume")

    def connection_lost(self, exc):
        self.events.append(("lost", exc))
        if not self.lost.done():
            self.lost.set_result(exc)


async def _small_buffer_connection(loop):
    """A transport with a ``_Recorder`` over TCP, and its peer socket (for the
    test to read with ``sock_recv``), both with 16 KiB socket buffers so a
    few hundred KiB of writes fill them."""
    lsock = socket.create_server(("127.0.0.1", 0))
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    lsock.setblocking(False)
    try:
        csock = socket.socket()
        csock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        csock.setblocking(False)
        await loop.sock_connect(csock, lsock.getsockname())
        transport, proto = await loop.create_connection(_Recorder, sock=csock)
        peer, _ = await loop.sock_accept(lsock)
    finally:
        lsock.close()
    return transport, proto, peer


@pytest.mark.parametrize("how", ["close", "abort"])
def test_close_transport_with_recv_and_send_in_flight(ploop, how):
    before = fd_count()

    async def main():
        transport, proto, peer = await _small_buffer_connection(ploop)
        try:
            assert type(transport).__name__ == "RingSocketTransport"
            data = os.urandom(256) * (64 * 1024)  # 16 MiB
            transport.write(data)
            await asyncio.sleep(0.05)
            # A send is in flight (the peer reads nothing) and so is a recv.
            assert transport.get_write_buffer_size() > 0
            fd = transport.get_extra_info("socket").fileno()
            getattr(transport, how)()
            assert transport.is_closing()
            got = bytearray()
            while chunk := await asyncio.wait_for(ploop.sock_recv(peer, 65536), 5):
                got += chunk
            exc = await asyncio.wait_for(proto.lost, 5)
            assert exc is None
            assert proto.events.count(("lost", None)) == 1
            assert proto.data == b""
            if how == "close":
                assert got == data  # close() flushes what was written first
            else:
                assert got == data[: len(got)]  # abort() drops the buffer
                assert len(got) < len(data)
            await asyncio.sleep(0.02)
            assert proto.events.count(("lost", None)) == 1
            assert transport.get_extra_info("socket").fileno() == -1
            # The descriptor really is closed: nothing of ours holds it now.
            assert not os.path.exists(f"/proc/self/fd/{fd}")
        finally:
            peer.close()

    run_coro(ploop, main(), timeout=20)
    collect()
    assert fd_count() == before


class _Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        return False  # close once the peer is done


class _Client(asyncio.Protocol):
    def __init__(self, payload, close_on_full=False):
        self.payload = payload
        self.got = bytearray()
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.payload)

    def data_received(self, data):
        self.got += data
        if len(self.got) >= len(self.payload) and not self.done.done():
            self.done.set_result(bytes(self.got))

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(bytes(self.got))


N_CONCURRENT = 2000


def _raise_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"RLIMIT_NOFILE hard limit is {hard}, below the {needed} descriptors needed")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed if hard == resource.RLIM_INFINITY else hard, hard))


@pytest.mark.timeout(60)
def test_2000_concurrent_connections_echo(ploop):
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 5000:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < 5000: 2,000 connections need ~4,000 fds")
    saved = resource.getrlimit(resource.RLIMIT_NOFILE)
    _raise_nofile(5000)
    before = fd_count()

    async def main():
        server = await ploop.create_server(_Echo, "127.0.0.1", 0, backlog=4096)
        port = server.sockets[0].getsockname()[1]
        payloads = [(b"<%05d>" % i) * (1 + i % 50) for i in range(N_CONCURRENT)]
        conns = await asyncio.gather(
            *(ploop.create_connection(lambda p=p: _Client(p), "127.0.0.1", port) for p in payloads)
        )
        try:
            assert all(type(t).__name__ == "RingSocketTransport" for t, _ in conns)
            results = await asyncio.gather(*(proto.done for _, proto in conns))
            for i, got in enumerate(results):
                assert got == payloads[i], i
        finally:
            for t, _ in conns:
                t.close()
            server.close()
            await server.wait_closed()
        await asyncio.sleep(0.05)

    try:
        run_coro(ploop, main(), timeout=45)
        collect()
        assert fd_count() == before
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, saved)


N_IN_FLIGHT = 10_000

# The client side of the 10,000-connection test, in its own process (each
# side needs a descriptor per connection, more than one process may have
# here): its own proactor loop opens every connection, and only when all
# are open does each send its tagged payload and wait for the echo.
MANY_CLIENTS = r"""
import asyncio, json, resource, sys
import ferroloop

port, n = int(sys.argv[1]), int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

class Client(asyncio.Protocol):
    def __init__(self, payload):
        self.payload, self.got = payload, bytearray()
        self.done = asyncio.get_running_loop().create_future()
    def connection_made(self, transport):
        self.transport = transport
    def data_received(self, data):
        self.got += data
        if len(self.got) >= len(self.payload) and not self.done.done():
            self.done.set_result(bytes(self.got))
    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(bytes(self.got))

async def main():
    loop = asyncio.get_running_loop()
    conns = []
    for start in range(0, n, 1000):  # within the listen backlog
        conns += await asyncio.gather(*(
            loop.create_connection(lambda i=i: Client(b"<%05d>" % i * (1 + i % 7)), "127.0.0.1", port)
            for i in range(start, min(n, start + 1000))))
    for t, c in conns:
        t.write(c.payload)
    got = await asyncio.gather(*(c.done for _, c in conns))
    wrong = sum(g != c.payload for g, (_, c) in zip(got, conns))
    for t, _ in conns:
        t.close()
    await asyncio.sleep(0.1)
    return {"connections": len(conns), "wrong": wrong, "backend": loop.backend}

loop = ferroloop.ProactorEventLoop()
print(json.dumps(loop.run_until_complete(asyncio.wait_for(main(), 90))))
loop.close()
"""


@pytest.mark.timeout(150)
def test_10000_connections_in_flight(ploop):
    # 10,000 connections open at once, each with a recv op in flight on the
    # server; every echo comes back to its own sender, whole, and the server
    # ends with the descriptors it began with.
    saved = resource.getrlimit(resource.RLIMIT_NOFILE)
    _raise_nofile(N_IN_FLIGHT + 500)
    before = fd_count()
    live = {"now": 0, "max": 0}

    class CountingEcho(_Echo):
        def connection_made(self, transport):
            super().connection_made(transport)
            live["now"] += 1
            live["max"] = max(live["max"], live["now"])

        def connection_lost(self, exc):
            live["now"] -= 1

    async def main():
        server = await ploop.create_server(CountingEcho, "127.0.0.1", 0, backlog=4096)
        port = server.sockets[0].getsockname()[1]
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", MANY_CLIENTS, str(port), str(N_IN_FLIGHT),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), 120)
        finally:
            server.close()
            await server.wait_closed()
        for _ in range(200):
            if live["now"] == 0:
                break
            await asyncio.sleep(0.05)
        return proc.returncode, out.decode(), err.decode()

    try:
        rc, out, err = run_coro(ploop, main(), timeout=140)
        assert rc == 0, err[-3000:]
        res = json.loads(out.strip().splitlines()[-1])
        assert res == {"connections": N_IN_FLIGHT, "wrong": 0, "backend": "io_uring"}, res
        assert live["max"] == N_IN_FLIGHT, live
        assert live["now"] == 0, live
        collect()
        assert fd_count() == before
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, saved)


def test_slow_reader_flow_control(ploop):
    async def main():
        transport, proto, peer = await _small_buffer_connection(ploop)
        try:
            transport.set_write_buffer_limits(high=64 * 1024, low=16 * 1024)
            # Numbered chunks, so order and completeness can be checked.
            chunks = [b"%08d" % i + bytes([i % 251]) * 4088 for i in range(1024)]  # 4 MiB
            data = b"".join(chunks)
            for c in chunks:
                transport.write(c)  # far past the high-water mark: pending sends
            assert proto.events == ["made", "pause"]
            got = bytearray()
            while len(got) < len(data):
                chunk = await asyncio.wait_for(ploop.sock_recv(peer, 16384), 5)
                assert chunk
                got += chunk
                if len(got) < 512 * 1024:
                    await asyncio.sleep(0.0005)  # slow at first
            assert got == data
            for _ in range(100):
                if transport.get_write_buffer_size() == 0 and "resume" in proto.events:
                    break
                await asyncio.sleep(0.01)
            assert transport.get_write_buffer_size() == 0
            assert proto.events == ["made", "pause", "resume"]
            # Once more, now with the writer honouring flow control.
            proto.events.clear()
            resumed = []
            for rnd in range(3):
                for c in chunks[:64]:
                    transport.write(c)
                assert proto.events[-1] == "pause"
                total = bytearray()
                while len(total) < 64 * 4096:
                    total += await asyncio.wait_for(ploop.sock_recv(peer, 16384), 5)
                assert bytes(total) == b"".join(chunks[:64])
                for _ in range(100):
                    if proto.events[-1] == "resume":
                        break
                    await asyncio.sleep(0.01)
                resumed.append(proto.events[-1])
            assert resumed == ["resume"] * 3
            assert proto.events == ["pause", "resume"] * 3
            transport.close()
            assert await asyncio.wait_for(proto.lost, 5) is None
        finally:
            peer.close()

    run_coro(ploop, main(), timeout=25)


def test_quick_open_close_no_crossed_data(ploop):
    before = fd_count()
    seen_by_server = []

    class IdEcho(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.buf = bytearray()

        def data_received(self, data):
            self.buf += data
            if self.buf.endswith(b";"):
                seen_by_server.append(bytes(self.buf))
                self.transport.write(bytes(self.buf))
                self.transport.close()  # the server side closes too: fd reuse both ways

    async def one(port, i):
        my_id = b"id=%d;" % i
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if i % 5 == 4:
            # Abortive churn: send and abort at once, freeing the fd early.
            writer.write(my_id)
            writer.transport.abort()
            return None
        writer.write(my_id)
        got = await reader.read()  # until the server's EOF
        writer.close()
        await writer.wait_closed()
        return got

    async def main():
        server = await ploop.create_server(IdEcho, "127.0.0.1", 0, backlog=1024)
        port = server.sockets[0].getsockname()[1]
        try:
            n = 0
            for wave in range(20):
                ids = range(n, n + 50)
                n += 50
                results = await asyncio.gather(*(one(port, i) for i in ids))
                for i, got in zip(ids, results):
                    if i % 5 != 4:
                        assert got == b"id=%d;" % i, (i, got)
        finally:
            server.close()
            await server.wait_closed()
        await asyncio.sleep(0.05)
        # Every id the server saw is whole, and none twice.
        assert len(set(seen_by_server)) == len(seen_by_server)
        for b in seen_by_server:
            assert b.startswith(b"id=") and b.count(b";") == 1, b
        # All the connections that were not aborted reached the server.
        normal = {b"id=%d;" % i for i in range(n) if i % 5 != 4}
        assert normal <= set(seen_by_server)

    run_coro(ploop, main(), timeout=25)
    collect()
    assert fd_count() == before


def _run_closing_with_nofile(loop, coro, nofile, timeout, before):
    """Run ``coro`` on ``loop`` with at least ``nofile`` descriptors allowed,
    close the loop, and check that at most one descriptor more than
    ``before`` is open."""
    saved = resource.getrlimit(resource.RLIMIT_NOFILE)
    _raise_nofile(nofile)
    try:
        _run_closing(loop, coro, timeout, before)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, saved)


def _run_closing(loop, coro, timeout, before):
    """Run ``coro`` on ``loop``, close the loop, and check that at most one
    descriptor more than ``before`` is open."""
    run_coro(loop, coro, timeout=timeout)
    loop.close()
    collect()
    assert fd_count() <= before + 1


@pytest.mark.timeout(60)
def test_paused_readers_do_not_starve_the_shared_recv_pool(ploop):
    # The proactor's stream transports read from one pool of 256 buffers
    # (multishot recv). 300 transports paused with bytes pending, some of
    # them holding pool buffers, must neither lose nor reorder a byte, nor
    # keep a new connection from being read.
    before = fd_count()
    count = 300
    servers = []

    class Pausing(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.got = bytearray()
            self.paused = False
            servers.append(self)

        def data_received(self, data):
            self.got += data
            if not self.paused:
                self.paused = True
                self.transport.pause_reading()
                self.transport.write(b"k")

    async def client(port, i, lazy):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        first, second = b"<%d:" % i, b"%s>" % (bytes([65 + i % 26]) * (i % 7 * 1000 + 10))
        if lazy:
            # The second message comes once the transport is paused: it
            # waits in the socket.
            w.write(first)
            assert await r.readexactly(1) == b"k"
            w.write(second)
        else:
            # Both at once: the second may reach a pool buffer before the
            # pause took effect, and waits in the transport.
            w.write(first + second)
            assert await r.readexactly(1) == b"k"
        await w.drain()
        return w, first + second

    async def main():
        server = await ploop.create_server(Pausing, "127.0.0.1", 0, backlog=1024)
        port = server.sockets[0].getsockname()[1]
        try:
            pairs = await asyncio.gather(*(client(port, i, i % 2 == 0) for i in range(count)))
            writers = [w for w, _ in pairs]
            await asyncio.sleep(0.1)
            assert all(s.paused for s in servers) and len(servers) == count
            assert all(s.transport.is_reading() is False for s in servers)
            # A new connection is read while all of them are paused.
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"new")
            assert await asyncio.wait_for(r.readexactly(1), 5) == b"k"
            w.close()
            servers.pop()
            # Resumed, every transport gets the rest, in order, once.
            for s in servers:
                s.transport.resume_reading()
            expected = {data[: data.index(b":") + 1]: data for _w, data in pairs}

            def sent_by(s):  # what the client whose tag `s` got first sent
                return expected[bytes(s.got[: s.got.index(b":") + 1])]

            for _ in range(500):
                if all(len(s.got) >= len(sent_by(s)) for s in servers):
                    break
                await asyncio.sleep(0.01)
            for s in servers:
                assert bytes(s.got) == sent_by(s)
            assert len({bytes(s.got) for s in servers}) == count
            for w in writers:
                w.close()
        finally:
            server.close()
            await server.wait_closed()
        await asyncio.sleep(0.05)

    _run_closing_with_nofile(ploop, main(), 2048, 50, before)


def test_the_recv_pool_grows_only_for_connections_reading_small(ploop):
    # The shared recv pool's ring starts with some of its 256 buffers and
    # grows when a multishot recv finds it empty. The first large messages
    # of many new connections drain it too, but those connections go on to
    # read into buffers of their own: growing for them would only make the
    # whole pool resident. Connections that read small, running it dry,
    # are what it grows for.
    before = fd_count()
    large, small = 40, 100

    class Count(asyncio.Protocol):
        def connection_made(self, transport):
            self.got = 0
            conns.append(self)

        def data_received(self, data):
            self.got += len(data)

    conns = []

    async def connect(port, n):
        first = len(conns)
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
        await until(lambda: len(conns) == first + n)
        return socks, conns[first:]

    async def burst(socks, protos, size):
        # Sent from the loop's own thread: every connection has its bytes
        # before the loop next looks, so they all come in one pass.
        want = [p.got + size for p in protos]
        for s in socks:
            assert s.send(b"x" * size) == size
        await until(lambda: all(p.got == w for p, w in zip(protos, want)))

    async def main():
        server = await ploop.create_server(Count, "127.0.0.1", 0, backlog=256)
        port = server.sockets[0].getsockname()[1]
        opened = []
        try:
            assert ploop._ff_recv_pool() is None  # made on first use
            socks, protos = await connect(port, 1)
            opened += socks
            await burst(socks, protos, 10)
            first, _ = ploop._ff_recv_pool()
            socks, protos = await connect(port, large)
            opened += socks
            await burst(socks, protos, 48 * 1024)
            in_ring, _ = ploop._ff_recv_pool()
            assert in_ring == first < large, (in_ring, first)
            socks, protos = await connect(port, small)
            opened += socks
            for _ in range(2):
                await burst(socks, protos, 100)
            grown, _ = ploop._ff_recv_pool()
            assert first < grown <= 256, (grown, first)
        finally:
            for s in opened:
                s.close()
            server.close()
            await server.wait_closed()
        await asyncio.sleep(0.05)

    _run_closing_with_nofile(ploop, main(), 1024, 30, before)


def test_a_quiet_pass_sends_its_reply_at_once_and_a_busy_pass_queues_them(ploop):
    # A small write is normally a send op that goes to the kernel with the
    # pass's one io_uring_enter, and counts in get_write_buffer_size() until
    # it completes. After a look at the ring that found one finished op (a
    # pass serving one connection), the first write is sent at once
    # instead, as the selector loop sends it: nothing stays buffered. After
    # a look that found many, the writes stay ops, sharing one system call.
    before = fd_count()
    size = 300

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.buffered = []
            conns.append(self)

        def data_received(self, data):
            self.transport.write(data)
            self.buffered.append(self.transport.get_write_buffer_size())

    conns = []

    def read_echo(sock, n):
        got = b""
        while len(got) < n:
            chunk = sock.recv(n - len(got))
            assert chunk
            got += chunk
        return got

    async def main():
        server = await ploop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        socks = []
        try:
            socks.append(socket.create_connection(("127.0.0.1", port)))
            await until(lambda: len(conns) == 1)
            one = conns[0]
            for i in range(5):
                msg = bytes([65 + i]) * size
                socks[0].sendall(msg)
                await until(lambda n=i + 1: len(one.buffered) == n)
                assert await ploop.run_in_executor(None, read_echo, socks[0], size) == msg
            assert one.buffered == [0] * 5, one.buffered

            many = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
            socks += many
            await until(lambda: len(conns) == 9)
            # Sent from the loop's own thread: every connection has its
            # bytes before the loop next looks, so they all come in one pass.
            for j, s in enumerate(many):
                s.sendall(bytes([97 + j]) * size)
            await until(lambda: all(len(p.buffered) == 1 for p in conns[1:]))
            sizes = [p.buffered[0] for p in conns[1:]]
            assert sizes.count(0) <= 1 and sizes.count(size) >= 7, sizes
            for j, s in enumerate(many):
                echoed = await ploop.run_in_executor(None, read_echo, s, size)
                assert echoed == bytes([97 + j]) * size
            assert all(p.transport.get_write_buffer_size() == 0 for p in conns)
        finally:
            for s in socks:
                s.close()
            server.close()
            await server.wait_closed()
        await asyncio.sleep(0.05)

    _run_closing(ploop, main(), 30, before)


def test_reads_switch_between_the_pool_and_an_own_buffer_losing_nothing(ploop):
    # Large reads leave the shared pool for a growing buffer of the
    # transport's own; small ones bring it back. Every switch ends one recv
    # op before the next starts: bytes must arrive whole and in order.
    class Collect(asyncio.Protocol):
        def connection_made(self, transport):
            self.got = bytearray()
            self.transport = transport

        def data_received(self, data):
            self.got += data
            self.transport.write(b"%d\n" % len(self.got))

    async def main():
        server_proto = Collect()
        server = await ploop.create_server(lambda: server_proto, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        sent = bytearray()
        try:
            for rnd in range(3):
                for size in [100_000, 300_000] + [50] * 6 + [70_000]:
                    piece = bytes((rnd * 7 + i) % 251 for i in range(size))
                    sent += piece
                    w.write(piece)
                    await w.drain()
                    # Wait for the server to have it all, so the small
                    # pieces arrive as small reads.
                    while len(server_proto.got) < len(sent):
                        line = await asyncio.wait_for(r.readline(), 5)
                        assert line
            assert server_proto.got == sent
        finally:
            w.close()
            server.close()
            await server.wait_closed()

    run_coro(ploop, main(), timeout=30)


def _large_reads_scenario(loop):
    """Large messages (the proactor reads them on readiness, straight into
    the bytes for data_received), a pause with more bytes and the EOF
    arriving meanwhile, then the end: what the protocol saw, in order."""
    log = []
    got = bytearray()
    done = loop.create_future()

    class Big(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.paused = False

        def data_received(self, data):
            got.extend(data)
            if len(got) >= 600_000 and not self.paused:
                self.paused = True
                self.transport.pause_reading()
                loop.call_later(0.2, self.resume)

        def resume(self):
            log.append(("resume", self.transport.is_reading()))
            self.transport.resume_reading()

        def eof_received(self):
            log.append(("eof", len(got)))

        def connection_lost(self, exc):
            log.append(("lost", exc))
            done.set_result(None)

    payload = bytes(i % 253 for i in range(2_000_000))

    async def main():
        server = await loop.create_server(Big, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _reader, w = await asyncio.open_connection("127.0.0.1", port)
        for i in range(0, len(payload), 100_000):
            w.write(payload[i : i + 100_000])
            await w.drain()
        w.write_eof()
        await asyncio.wait_for(done, 10)
        w.close()
        server.close()
        await server.wait_closed()

    run_coro(loop, main(), timeout=20)
    assert bytes(got) == payload
    return log


def test_large_reads_on_readiness_behave_as_asyncio(ploop):
    # Reads of large messages wait for readiness and recv on the spot:
    # pausing and an EOF that comes while paused must come out as on
    # asyncio's own loop, every byte once and in order.
    ref = asyncio.new_event_loop()
    try:
        expected = _large_reads_scenario(ref)
    finally:
        ref.close()
    assert _large_reads_scenario(ploop) == expected
    assert expected == [("resume", False), ("eof", 2_000_000), ("lost", None)]
