"""The seccomp harness (``_seccomp``) really blocks io_uring, and only io_uring.

Every filter is installed in a child process: a seccomp filter cannot be
removed, so the test process itself must stay unfiltered.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys

import _seccomp
import pytest

CHILD_TIMEOUT = 20  # seconds; each child normally exits within ~50 ms

# A child prints one JSON line: how each io_uring system call fails there.
PROBE = """
import json, _seccomp
print(json.dumps({
    "setup": _seccomp.io_uring_setup_errno(),
    "enter": _seccomp.syscall_errno(_seccomp.NR_IO_URING_ENTER, -1, 0, 0, 0, 0, 0),
    "register": _seccomp.syscall_errno(_seccomp.NR_IO_URING_REGISTER, -1, 0, 0, 0),
}))
"""


def _status() -> dict[str, str]:
    """This process's seccomp-related /proc/self/status fields."""
    with open("/proc/self/status") as f:
        fields = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    return {k: v for k, v in fields.items() if k in ("NoNewPrivs", "Seccomp", "Seccomp_filters")}


def _json_of(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _unfiltered_probe() -> dict:
    """PROBE's result in this (unfiltered) process."""
    return {
        "setup": _seccomp.io_uring_setup_errno(),
        "enter": _seccomp.syscall_errno(_seccomp.NR_IO_URING_ENTER, -1, 0, 0, 0, 0, 0),
        "register": _seccomp.syscall_errno(_seccomp.NR_IO_URING_REGISTER, -1, 0, 0, 0),
    }


@pytest.fixture(scope="module")
def io_uring_works() -> None:
    """Skip unless io_uring works here: otherwise a child's failure proves nothing."""
    err = _seccomp.io_uring_setup_errno()
    if err is not None:
        pytest.skip(
            f"io_uring does not work on this machine (io_uring_setup failed with "
            f"{errno.errorcode.get(err, err)}), so blocking it cannot be told apart"
        )


def test_unfiltered_process_has_io_uring(io_uring_works: None) -> None:
    assert _seccomp.io_uring_setup_errno() is None


@pytest.mark.parametrize("err", [errno.ENOSYS, errno.EPERM], ids=["ENOSYS", "EPERM"])
def test_blocked_child_gets_chosen_errno(io_uring_works: None, err: int) -> None:
    before = _unfiltered_probe()
    # Without the filter enter/register on fd -1 fail in their own way
    # (EBADF/EINVAL), so the chosen errno below can only come from the filter.
    assert before["setup"] is None
    assert err not in (before["enter"], before["register"])

    child = _json_of(_seccomp.run_blocked(PROBE, err, timeout=CHILD_TIMEOUT))
    assert child == {"setup": err, "enter": err, "register": err}


def test_blocked_child_ordinary_syscalls_work(io_uring_works: None) -> None:
    code = """
    import json, os, select, socket, threading
    import _seccomp

    a, b = socket.socketpair()
    a.sendall(b"ping")
    assert b.recv(4) == b"ping"

    ep = select.epoll()
    ep.register(b.fileno(), select.EPOLLIN)
    assert ep.poll(0) == []

    result = {}
    def worker():
        result["pid"] = os.getpid()
        result["setup"] = _seccomp.io_uring_setup_errno()  # threads inherit the filter
        a.sendall(b"pong")
    t = threading.Thread(target=worker)
    t.start()
    t.join(10)
    assert not t.is_alive()
    assert ep.poll(5) == [(b.fileno(), select.EPOLLIN)]
    assert b.recv(4) == b"pong"
    ep.close()
    a.close()
    b.close()

    r, w = os.pipe()
    pid = os.fork()  # so do forked children
    if pid == 0:
        os.write(w, json.dumps(_seccomp.io_uring_setup_errno()).encode())
        os._exit(0)
    os.close(w)
    forked = json.loads(os.read(r, 100))
    os.waitpid(pid, 0)

    status = dict(line.rstrip("\\n").split(":\\t", 1) for line in open("/proc/self/status")
                  if ":\\t" in line)
    print(json.dumps({"pid": os.getpid(), "thread_pid": result["pid"],
                      "thread_setup": result["setup"], "forked_setup": forked,
                      "seccomp": status["Seccomp"], "no_new_privs": status["NoNewPrivs"]}))
    """
    out = _json_of(_seccomp.run_blocked(code, errno.ENOSYS, timeout=CHILD_TIMEOUT))
    assert out["pid"] == out["thread_pid"] > 0
    assert out["thread_setup"] == errno.ENOSYS
    assert out["forked_setup"] == errno.ENOSYS
    assert out["seccomp"] == "2"  # SECCOMP_MODE_FILTER
    assert out["no_new_privs"] == "1"


def test_threads_started_before_the_filter_are_blocked(io_uring_works: None) -> None:
    # No prelude here: a thread exists before block_io_uring runs (TSYNC).
    code = f"""
import sys, threading
sys.path.insert(0, {_seccomp.TESTS_DIR!r})
import _seccomp
go, result = threading.Event(), []
def worker():
    go.wait(10)
    result.append(_seccomp.io_uring_setup_errno())
t = threading.Thread(target=worker)
t.start()
_seccomp.block_io_uring({errno.EPERM})
go.set()
t.join(10)
print(result[0])
"""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(errno.EPERM)]


def test_parent_unaffected(io_uring_works: None) -> None:
    status = _status()
    before = _unfiltered_probe()
    proc = _seccomp.run_blocked(PROBE, errno.EPERM, timeout=CHILD_TIMEOUT)
    assert _json_of(proc)["setup"] == errno.EPERM
    assert _unfiltered_probe() == before
    assert _seccomp.io_uring_setup_errno() is None
    assert _status() == status


def test_run_blocked_reports_child_output_and_failure() -> None:
    proc = _seccomp.run_blocked(
        "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)", errno.EPERM, 10
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "out\n", "err\n")


@pytest.mark.parametrize("bad", [0, -1, _seccomp.MAX_ERRNO + 1, "38"])
def test_invalid_errno_rejected_before_anything_is_installed(bad: object) -> None:
    status = _status()
    with pytest.raises(ValueError):
        _seccomp.block_io_uring(bad)  # type: ignore[arg-type]
    assert _status() == status
