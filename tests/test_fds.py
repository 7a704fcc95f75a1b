"""add_reader / add_writer on socketpairs, pipes and odd descriptors, on
asyncio with each stdlib selector and on ferroloop with each backend (the
three native ones and a ``selectors.SelectSelector`` instance)."""

from __future__ import annotations

import contextvars
import errno
import os
import selectors
import socket
import time

import pytest
from conftest import make_loop, run_bounded, run_passes


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def pipe():
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    fds = [r, w]
    yield fds
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def test_reader_fires_when_data_arrives(fd_loop, pair):
    a, b = pair
    got = []

    def on_readable():
        got.append(a.recv(100))
        fd_loop.remove_reader(a)
        fd_loop.stop()

    fd_loop.add_reader(a, on_readable)
    fd_loop.call_later(0.02, b.send, b"hello")
    run_bounded(fd_loop)
    assert got == [b"hello"]


def test_reader_callback_gets_args(fd_loop, pair):
    a, b = pair
    got = []
    b.send(b"x")

    def cb(*args):
        got.append(args)
        fd_loop.remove_reader(a)
        fd_loop.stop()

    fd_loop.add_reader(a.fileno(), cb, 1, "two")
    run_bounded(fd_loop)
    assert got == [(1, "two")]


def test_reader_is_level_triggered(fd_loop, pair):
    a, b = pair
    b.send(b"pending")
    log = []
    # The reader never drains the socket: it fires again on every pass.
    fd_loop.add_reader(a, log.append, "r")
    run_passes(fd_loop, 4, log)
    # (The last pass, the one that stops, polls too.)
    assert log == [("pass", 0), "r", ("pass", 1), "r", ("pass", 2), "r", ("pass", 3), "r"]
    assert fd_loop.remove_reader(a) is True
    assert a.recv(100) == b"pending"


def test_writer_is_level_triggered(fd_loop, pair):
    a, _ = pair
    log = []
    fd_loop.add_writer(a, log.append, "w")
    run_passes(fd_loop, 3, log)
    assert log == [("pass", 0), "w", ("pass", 1), "w", ("pass", 2), "w"]
    assert fd_loop.remove_writer(a) is True


def test_ready_then_io_then_timers_in_one_pass(fd_loop, pair):
    a, b = pair
    log = []

    def schedule():
        fd_loop.call_at(fd_loop.time() - 1, log.append, "timer")
        fd_loop.call_soon(log.append, "soon")
        b.send(b"x")
        fd_loop.add_reader(a, lambda: (log.append("io"), fd_loop.remove_reader(a)))

    fd_loop.call_soon(schedule)
    run_passes(fd_loop, 3, log)
    assert log == [("pass", 0), "soon", ("pass", 1), "io", "timer", ("pass", 2)]


def test_remove_reader_and_writer_return_values(fd_loop, pair):
    a, b = pair
    assert fd_loop.remove_reader(a) is False
    assert fd_loop.remove_writer(a) is False
    fd_loop.add_reader(a, print)
    assert fd_loop.remove_writer(a) is False
    assert fd_loop.remove_reader(a) is True
    assert fd_loop.remove_reader(a) is False
    fd_loop.add_writer(a.fileno(), print)
    assert fd_loop.remove_reader(a.fileno()) is False
    assert fd_loop.remove_writer(a) is True
    assert fd_loop.remove_writer(a) is False
    assert fd_loop.remove_reader(b.fileno()) is False


def test_removed_reader_does_not_fire(fd_loop, pair):
    a, b = pair
    log = []
    b.send(b"data")
    fd_loop.add_reader(a, log.append, "r")
    fd_loop.remove_reader(a)
    run_passes(fd_loop, 3, log)
    assert log == [("pass", 0), ("pass", 1), ("pass", 2)]


def test_remove_reader_from_an_earlier_callback_in_the_same_pass(fd_loop, pair):
    a, b = pair
    log = []
    b.send(b"data")
    fd_loop.add_reader(a, log.append, "r")

    def remover():
        log.append("remove")
        assert fd_loop.remove_reader(a) is True

    # Pass 0 runs what was ready (remover, marker) and then the reader the
    # poll found; remover cancels the queued reader, so it never runs.
    fd_loop.call_soon(remover)
    run_passes(fd_loop, 2, log)
    assert log == ["remove", ("pass", 0), ("pass", 1)]


def test_replace_reader_from_an_earlier_callback_in_the_same_pass(fd_loop, pair):
    a, b = pair
    log = []
    b.send(b"data")
    fd_loop.add_reader(a, log.append, "old")
    fd_loop.call_soon(fd_loop.add_reader, a, log.append, "new")
    run_passes(fd_loop, 2, log)
    assert log == [("pass", 0), ("pass", 1), "new"]
    assert fd_loop.remove_reader(a) is True


@pytest.mark.parametrize("how", ["close then reuse", "dup2 over"])
def test_a_descriptor_reused_in_the_pass_its_reader_was_queued(fd_loop, how):
    """The old socket's reader is queued (its socket is readable) when an
    earlier callback of the same pass removes it and puts a new socket on
    the same descriptor number, either after closing the old one or by
    ``dup2`` over it (no moment without a file there). The old reader never
    runs; the new socket's bytes reach only the new reader."""
    a, b = socket.socketpair()
    a.setblocking(False)
    number = a.fileno()
    log = []
    kept = []
    b.send(b"old")
    fd_loop.add_reader(number, lambda: log.append(("old", a.recv(100))))

    def swap():
        assert fd_loop.remove_reader(number) is True
        c0, d = socket.socketpair()
        if how == "close then reuse":
            a.close()
        os.dup2(c0.fileno(), number)  # closes the old file if still open
        c0.close()
        if how == "dup2 over":
            a.detach()  # the number is the new socket's now
        c = socket.socket(fileno=number)
        c.setblocking(False)
        kept.extend([c, d])
        d.send(b"new")
        fd_loop.add_reader(c, lambda: log.append(("new", c.recv(100))))

    fd_loop.call_soon(swap)
    try:
        run_passes(fd_loop, 3, log)
        assert fd_loop.remove_reader(number) is True
    finally:
        for s in [b, *kept]:
            s.close()
    assert log == [("pass", 0), ("pass", 1), ("new", b"new"), ("pass", 2)]


def test_replacing_a_reader(fd_loop, pair):
    a, b = pair
    log = []
    b.send(b"x")
    fd_loop.add_reader(a, log.append, "first")
    fd_loop.add_reader(a, log.append, "second")
    run_passes(fd_loop, 2, log)
    assert log == [("pass", 0), "second", ("pass", 1), "second"]
    assert fd_loop.remove_reader(a) is True
    assert fd_loop.remove_reader(a) is False


def test_replacing_a_reader_from_a_callback_in_the_same_pass(fd_loop, pair):
    a, b = pair
    log = []
    b.send(b"x")

    def first():
        log.append("first")
        fd_loop.add_reader(a, log.append, "second")

    fd_loop.add_reader(a, first)
    run_passes(fd_loop, 3, log)
    assert log == [("pass", 0), "first", ("pass", 1), "second", ("pass", 2), "second"]
    fd_loop.remove_reader(a)


def test_reader_and_writer_on_one_fd(fd_loop, pair):
    a, b = pair
    log = []
    b.send(b"x")
    fd_loop.add_reader(a, log.append, "r")
    fd_loop.add_writer(a, log.append, "w")
    run_passes(fd_loop, 2, log)
    assert log[0] == ("pass", 0)
    assert sorted(log[1:3]) == ["r", "w"]
    assert log[3] == ("pass", 1)
    assert sorted(log[4:]) == ["r", "w"]
    # Removing the writer keeps the reader, and the other way round.
    assert fd_loop.remove_writer(a) is True
    log.clear()
    run_passes(fd_loop, 2, log)
    assert log == [("pass", 0), "r", ("pass", 1), "r"]
    fd_loop.add_writer(a, log.append, "w")
    assert fd_loop.remove_reader(a) is True
    log.clear()
    run_passes(fd_loop, 2, log)
    assert log == [("pass", 0), "w", ("pass", 1), "w"]
    assert fd_loop.remove_writer(a) is True


def test_fileobj_with_fileno(fd_loop, pair):
    a, b = pair

    class FileLike:
        def fileno(self):
            return a.fileno()

    log = []
    b.send(b"x")
    fd_loop.add_reader(FileLike(), log.append, "r")
    run_passes(fd_loop, 2, log)
    assert log == [("pass", 0), "r", ("pass", 1), "r"]
    # Registrations are keyed by descriptor number.
    assert fd_loop.remove_reader(a.fileno()) is True
    assert fd_loop.remove_reader(FileLike()) is False


def test_pipe_reader_and_writer(fd_loop, pipe):
    r, w = pipe
    got = []

    def on_writable():
        os.write(w, b"through the pipe")
        fd_loop.remove_writer(w)

    def on_readable():
        got.append(os.read(r, 100))
        fd_loop.remove_reader(r)
        fd_loop.stop()

    fd_loop.add_reader(r, on_readable)
    fd_loop.add_writer(w, on_writable)
    run_bounded(fd_loop)
    assert got == [b"through the pipe"]


def test_pipe_eof_is_readable(fd_loop, pipe):
    r, w = pipe
    got = []

    def on_readable():
        got.append(os.read(r, 100))
        fd_loop.remove_reader(r)
        fd_loop.stop()

    fd_loop.add_reader(r, on_readable)
    fd_loop.call_later(0.01, os.close, w)
    pipe.remove(w)
    run_bounded(fd_loop)
    assert got == [b""]


def test_peer_close_makes_socket_readable(fd_loop, pair):
    a, b = pair
    got = []

    def on_readable():
        got.append(a.recv(10))
        fd_loop.remove_reader(a)
        fd_loop.stop()

    fd_loop.add_reader(a, on_readable)
    fd_loop.call_later(0.01, b.close)
    run_bounded(fd_loop)
    assert got == [b""]


def test_many_descriptors(fd_loop):
    pairs = [socket.socketpair() for _ in range(40)]
    try:
        got = set()

        def on_readable(i, sock):
            got.add((i, sock.recv(10)))
            fd_loop.remove_reader(sock)
            if len(got) == len(pairs):
                fd_loop.stop()

        for i, (a, _) in enumerate(pairs):
            fd_loop.add_reader(a, on_readable, i, a)
        for i, (_, b) in enumerate(reversed(pairs)):
            b.send(b"%d" % (len(pairs) - 1 - i))
        run_bounded(fd_loop)
        assert got == {(i, b"%d" % i) for i in range(len(pairs))}
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_reader_exception_goes_to_handler_and_reader_stays(fd_loop, pair):
    a, b = pair
    seen = []
    fd_loop.set_exception_handler(lambda lp, ctx: seen.append(type(ctx["exception"])))

    def bad():
        raise ZeroDivisionError

    b.send(b"x")
    fd_loop.add_reader(a, bad)
    run_passes(fd_loop, 3)
    assert seen == [ZeroDivisionError] * 3
    assert fd_loop.remove_reader(a) is True


def test_invalid_fd(fd_loop):
    for method in ("add_reader", "add_writer", "remove_reader", "remove_writer"):
        args = (print,) if method.startswith("add") else ()
        with pytest.raises(ValueError) as info:
            getattr(fd_loop, method)(-1, *args)
        assert str(info.value) == "Invalid file descriptor: -1"


def test_invalid_file_object(fd_loop):
    obj = object()
    for method in ("add_reader", "add_writer", "remove_reader", "remove_writer"):
        args = (print,) if method.startswith("add") else ()
        with pytest.raises(ValueError) as info:
            getattr(fd_loop, method)(obj, *args)
        assert str(info.value) == f"Invalid file object: {obj!r}"

    class BadFileno:
        def fileno(self):
            return "not a number"

    bad = BadFileno()
    with pytest.raises(ValueError) as info:
        fd_loop.add_reader(bad, print)
    assert str(info.value) == f"Invalid file object: {bad!r}"


def test_closed_socket_object(fd_loop):
    a, b = socket.socketpair()
    a.close()
    b.close()
    with pytest.raises(ValueError) as info:
        fd_loop.add_reader(a, print)
    assert str(info.value) == "Invalid file descriptor: -1"


# Regression test for a bug this suite found (fixed in 5d4e9a9). Before the fix:
# crates/ferroloop-py/src/loop_core.rs LoopCore::unwatch (remove_reader/remove_writer) maps the
# file object to an fd with fileobj_to_fd and raises ValueError('Invalid file descriptor: -1')
# once the socket is closed; asyncio's selectors fall back to an exhaustive search of the
# registered file objects (_BaseSelectorImpl._fileobj_lookup), so remove_reader(closed_sock)
# unregisters it and returns True
def test_remove_reader_of_a_closed_socket_object(fd_loop):
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    fd_loop.add_reader(a, print)
    fd_loop.add_writer(c, print)
    for s in (a, b, c, d):
        s.close()
    assert fd_loop.remove_reader(a) is True
    assert fd_loop.remove_writer(c) is True
    # Once unregistered, the closed object cannot be resolved any more.
    with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
        fd_loop.remove_reader(a)


def _regular_file_outcome(loop, path):
    with open(path, "rb") as f:
        log = []
        try:
            loop.add_reader(f, log.append, "r")
        except OSError as exc:
            return ("add", type(exc), exc.errno)
        try:
            run_passes(loop, 2, log)
        except OSError as exc:
            return ("run", type(exc), exc.errno)
        finally:
            loop.remove_reader(f)
        return ("ran", log.count("r"))


def test_add_reader_on_a_regular_file(fd_loop_factory, tmp_path):
    path = tmp_path / "regular"
    path.write_bytes(b"content")
    outcome = _regular_file_outcome(fd_loop_factory(), path)
    reference = _regular_file_outcome(fd_loop_factory.reference(), path)
    assert outcome == reference
    if fd_loop_factory.family == "epoll":
        # epoll refuses regular files.
        assert outcome == ("add", PermissionError, errno.EPERM)
    else:
        # poll and select report them always readable (one call per pass).
        assert outcome == ("ran", 2)


def _closed_fd_outcome(loop):
    r, w = os.pipe()
    os.close(w)
    os.close(r)
    log = []
    try:
        loop.add_reader(r, log.append, "r")
    except OSError as exc:
        return ("add", type(exc), exc.errno)
    try:
        run_passes(loop, 2, log)
    except OSError as exc:
        return ("run", type(exc), exc.errno)
    finally:
        loop.remove_reader(r)
    return ("ran", log.count("r"))


def test_add_reader_on_a_closed_fd(fd_loop_factory):
    loop = fd_loop_factory()
    ref = fd_loop_factory.reference()
    outcome = _closed_fd_outcome(loop)
    reference = _closed_fd_outcome(ref)
    assert outcome == reference
    family = fd_loop_factory.family
    if family == "epoll":
        assert outcome == ("add", OSError, errno.EBADF)
    elif family == "select":
        assert outcome == ("run", OSError, errno.EBADF)
    else:
        # poll reports POLLNVAL, which selectors turn into "readable".
        assert outcome == ("ran", 2)


def test_fd_registered_on_two_loops(fd_loop_factory, pair):
    a, b = pair
    l1, l2 = fd_loop_factory(), fd_loop_factory()
    log = []
    b.send(b"x")
    l1.add_reader(a, log.append, 1)
    l2.add_reader(a, log.append, 2)
    run_passes(l1, 2)
    run_passes(l2, 2)
    assert log == [1, 1, 2, 2]
    assert l1.remove_reader(a) and l2.remove_reader(a)


@pytest.mark.parametrize(
    "kind,expected",
    [
        ("ferroloop", "epoll"),
        ("ferroloop-poll", "poll"),
        ("ferroloop-select", "select"),
        ("ferroloop-SelectSelector", "selectors:SelectSelector"),
        ("ferroloop-proactor", "io_uring"),
    ],
)
def test_backend_names(kind, expected):
    loop = make_loop(kind)
    try:
        assert loop.backend == expected
        # loop._selector is the Python selector when the loop runs on one; on
        # a native backend it is a read-only view of the registrations.
        is_python = isinstance(loop._selector, selectors.BaseSelector)
        assert is_python == (kind == "ferroloop-SelectSelector")
    finally:
        loop.close()
    assert loop.backend == "closed"


def test_reader_that_removes_and_readds_itself(fd_loop, pair):
    a, b = pair
    log = []

    def reader(n):
        log.append(n)
        assert fd_loop.remove_reader(a) is True
        if n < 3:
            fd_loop.add_reader(a, reader, n + 1)
        else:
            a.recv(100)

    b.send(b"x")
    fd_loop.add_reader(a, reader, 0)
    run_passes(fd_loop, 6, log)
    assert [e for e in log if not isinstance(e, tuple)] == [0, 1, 2, 3]
    assert fd_loop.remove_reader(a) is False


_var = contextvars.ContextVar("fd_var", default="unset")


def test_reader_runs_in_the_context_of_add_reader(fd_loop, pair):
    a, b = pair
    seen = []
    token = _var.set("at add_reader")
    try:
        fd_loop.add_reader(a, lambda: seen.append(_var.get()))
        fd_loop.add_writer(a, lambda: seen.append(_var.get()))
    finally:
        _var.reset(token)
    b.send(b"x")
    run_passes(fd_loop, 1)
    fd_loop.remove_reader(a)
    fd_loop.remove_writer(a)
    assert seen == ["at add_reader"] * 2


# Regression test for a bug this suite found (fixed in 5d4e9a9). Before the fix:
# crates/ferroloop-py/src/loop_core.rs add_watch() checks check_closed() before resolving the file
# object and unwatch() returns False on a closed loop before resolving it; asyncio's
# add_reader/remove_reader first run _ensure_fd_no_transport(), so a bad file object raises
# ValueError('Invalid file object: ...') even on a closed loop
def test_invalid_file_object_on_a_closed_loop(fd_loop):
    fd_loop.close()
    obj = object()
    for method in ("add_reader", "add_writer", "remove_reader", "remove_writer"):
        args = (print,) if method.startswith("add") else ()
        with pytest.raises(ValueError) as info:
            getattr(fd_loop, method)(obj, *args)
        assert str(info.value) == f"Invalid file object: {obj!r}"


def test_cancelled_reader_handle_is_unregistered_when_ready(fd_loop, pair):
    # asyncio's _process_events unregisters a reader whose handle was
    # cancelled (without remove_reader) the first time its fd is ready;
    # leaving it registered would make every level-triggered wait return at
    # once and the loop spin.
    a, b = pair
    handle = fd_loop._add_reader(b.fileno(), lambda: None)
    handle.cancel()
    a.send(b"x")
    fd_loop.call_later(0.2, fd_loop.stop)
    start = time.process_time()
    fd_loop.run_forever()
    used = time.process_time() - start
    assert used < 0.1, f"the loop spun for {used:.3f} s of CPU"
    assert fd_loop.remove_reader(b) is False
