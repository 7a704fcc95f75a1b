"""add_signal_handler / remove_signal_handler: argument errors, handlers run
as loop callbacks, signal storms, the wakeup fd, and a signal waking a loop
blocked in its wait. pytest runs tests in the main thread, where handlers
can be installed; every test restores the process's signal state."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest
from conftest import IO_KINDS, LoopFactory, make_loop, normalise, run_bounded, run_coro

SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT, signal.SIGHUP, signal.SIGALRM)


@pytest.fixture(autouse=True)
def restore_signals():
    assert threading.current_thread() is threading.main_thread()
    saved = {sig: signal.getsignal(sig) for sig in SIGNALS}
    wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(wakeup)


def current_wakeup_fd() -> int:
    fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(fd)
    return fd


def test_argument_errors(loop):
    with pytest.raises(TypeError, match="sig must be an int"):
        loop.add_signal_handler("SIGUSR1", print)
    with pytest.raises(ValueError, match="invalid signal number 1000"):
        loop.add_signal_handler(1000, print)
    with pytest.raises(ValueError, match="invalid signal number 0"):
        loop.add_signal_handler(0, print)
    with pytest.raises(RuntimeError, match="^sig 9 cannot be caught$"):
        loop.add_signal_handler(signal.SIGKILL, print)
    with pytest.raises(RuntimeError, match="^sig 19 cannot be caught$"):
        loop.add_signal_handler(signal.SIGSTOP, print)

    async def coro_func():
        pass

    with pytest.raises(TypeError, match="coroutines cannot be used with add_signal_handler"):
        loop.add_signal_handler(signal.SIGUSR1, coro_func)
    coro = coro_func()
    with pytest.raises(TypeError, match="coroutines cannot be used with add_signal_handler"):
        loop.add_signal_handler(signal.SIGUSR1, coro)
    coro.close()
    with pytest.raises(TypeError, match="sig must be an int"):
        loop.remove_signal_handler(None)
    with pytest.raises(ValueError, match="invalid signal number"):
        loop.remove_signal_handler(1000)
    # Nothing was installed by the failed calls.
    assert loop.remove_signal_handler(signal.SIGUSR1) is False
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    assert current_wakeup_fd() == -1


def test_add_signal_handler_outside_the_main_thread(loop_factory):
    loop = loop_factory()
    result = {}

    def worker():
        try:
            loop.add_signal_handler(signal.SIGUSR1, print)
        except Exception as exc:  # noqa: BLE001 - compared below
            result["exc"] = exc
        result["removed"] = loop.remove_signal_handler(signal.SIGUSR1)

    t = threading.Thread(target=worker)
    t.start()
    t.join(5)
    exc = result["exc"]
    assert type(exc) is RuntimeError
    assert "main thread" in str(exc)
    assert result["removed"] is False
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_add_signal_handler_on_closed_loop(loop):
    loop.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.add_signal_handler(signal.SIGUSR1, print)
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_handler_runs_as_a_loop_callback_with_args(loop):
    calls = []

    def handler(*args):
        calls.append((args, asyncio.get_running_loop() is loop))
        loop.stop()

    loop.add_signal_handler(signal.SIGUSR1, handler, "a", 2)
    try:
        loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
        run_bounded(loop)
    finally:
        assert loop.remove_signal_handler(signal.SIGUSR1) is True
    assert calls == [(("a", 2), True)]


def _order_log(loop):
    """When, relative to other callbacks, a signal's handler runs."""
    log = []

    def a():
        log.append("a")
        os.kill(os.getpid(), signal.SIGUSR2)
        log.append("a-after-kill")
        loop.call_soon(b)

    def b():
        log.append("b")
        loop.call_soon(c)

    def c():
        log.append("c")
        loop.call_soon(d)

    def d():
        log.append("d")
        loop.stop()

    loop.add_signal_handler(signal.SIGUSR2, log.append, "handler")
    try:
        loop.call_soon(a)
        run_bounded(loop)
    finally:
        loop.remove_signal_handler(signal.SIGUSR2)
    return log


def test_handler_order_relative_to_callbacks_matches_asyncio(loop):
    reference = make_loop("asyncio")
    try:
        expected = _order_log(reference)
    finally:
        reference.close()
    assert _order_log(loop) == expected
    assert expected[:2] == ["a", "a-after-kill"]


def test_signal_storm(loop):
    count = [0]
    result = {}

    def handler():
        count[0] += 1

    def storm():
        for _ in range(200):
            os.kill(os.getpid(), signal.SIGUSR1)
        # Then the loop must still run timers and callbacks.
        loop.call_later(0.01, responsive, time.monotonic())

    def responsive(t0):
        result["timer_ran_after"] = time.monotonic() - t0
        loop.call_soon(loop.stop)

    loop.add_signal_handler(signal.SIGUSR1, handler)
    try:
        loop.call_soon(storm)
        run_bounded(loop, timeout=10)
        # Let any signal still in the self-pipe be handled.
        loop.call_later(0.02, loop.stop)
        run_bounded(loop)
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
    assert 1 <= count[0] <= 200
    assert result["timer_ran_after"] < 5


def test_signal_storm_from_another_thread(loop):
    count = [0]
    done = threading.Event()

    def handler():
        count[0] += 1
        if done.is_set():
            loop.stop()

    def storm():
        for _ in range(200):
            os.kill(os.getpid(), signal.SIGUSR1)
        done.set()
        os.kill(os.getpid(), signal.SIGUSR1)

    loop.add_signal_handler(signal.SIGUSR1, handler)
    t = threading.Thread(target=storm)
    try:
        loop.call_soon(t.start)
        run_bounded(loop, timeout=10)
    finally:
        t.join(5)
        loop.remove_signal_handler(signal.SIGUSR1)
    assert 1 <= count[0] <= 201


def test_handlers_added_and_removed_from_handlers(loop):
    log = []

    def first():
        log.append("first")
        assert loop.remove_signal_handler(signal.SIGUSR1) is True
        log.append(signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL)
        loop.add_signal_handler(signal.SIGUSR2, second, "x")
        os.kill(os.getpid(), signal.SIGUSR2)

    def second(arg):
        log.append(("second", arg))
        # Replacing the handler of the signal being handled.
        loop.add_signal_handler(signal.SIGUSR2, third)
        os.kill(os.getpid(), signal.SIGUSR2)

    def third():
        log.append("third")
        assert loop.remove_signal_handler(signal.SIGUSR2) is True
        assert loop.remove_signal_handler(signal.SIGUSR2) is False
        loop.stop()

    loop.add_signal_handler(signal.SIGUSR1, first)
    try:
        loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
        run_bounded(loop)
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
        loop.remove_signal_handler(signal.SIGUSR2)
    assert log == ["first", True, ("second", "x"), "third"]
    assert current_wakeup_fd() == -1


def test_cancelled_handler_is_not_run(loop):
    log = []

    def cancel_then_signal():
        os.kill(os.getpid(), signal.SIGUSR1)
        # Removed before the loop reads the self-pipe: the signal is dropped.
        loop.remove_signal_handler(signal.SIGUSR1)
        loop.add_signal_handler(signal.SIGUSR2, log.append, "usr2")
        os.kill(os.getpid(), signal.SIGUSR2)
        loop.call_later(0.05, loop.stop)

    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # (in case the default comes back first)
    loop.add_signal_handler(signal.SIGUSR1, log.append, "usr1")
    try:
        loop.call_soon(cancel_then_signal)
        run_bounded(loop)
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
        loop.remove_signal_handler(signal.SIGUSR2)
    assert log == ["usr2"]


def test_sigint_handler_removed_restores_default_int_handler(loop):
    signal.signal(signal.SIGINT, signal.default_int_handler)
    got = []
    loop.add_signal_handler(signal.SIGINT, lambda: (got.append("int"), loop.stop()))
    try:
        assert signal.getsignal(signal.SIGINT) not in (signal.default_int_handler, signal.SIG_DFL)
        loop.call_soon(os.kill, os.getpid(), signal.SIGINT)
        run_bounded(loop)  # no KeyboardInterrupt: the loop's handler runs
    finally:
        removed = loop.remove_signal_handler(signal.SIGINT)
    assert got == ["int"]
    assert removed is True
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # Other signals get SIG_DFL back.
    loop.add_signal_handler(signal.SIGHUP, print)
    loop.remove_signal_handler(signal.SIGHUP)
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL


def test_wakeup_fd_is_restored_after_the_last_handler(loop):
    assert current_wakeup_fd() == -1
    loop.add_signal_handler(signal.SIGUSR1, print)
    fd = current_wakeup_fd()
    assert fd >= 0
    assert fd == loop._csock.fileno()
    loop.add_signal_handler(signal.SIGUSR2, print)
    assert current_wakeup_fd() == fd
    loop.remove_signal_handler(signal.SIGUSR1)
    assert current_wakeup_fd() == fd  # one handler left
    loop.remove_signal_handler(signal.SIGUSR2)
    assert current_wakeup_fd() == -1
    # Again, and this time close() removes the handlers.
    loop.add_signal_handler(signal.SIGUSR1, print)
    loop.add_signal_handler(signal.SIGHUP, print)
    assert current_wakeup_fd() >= 0
    loop.close()
    assert current_wakeup_fd() == -1
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
    assert loop._signal_handlers == {}


@pytest.mark.parametrize("kind", IO_KINDS)
def test_signal_wakes_a_loop_blocked_in_its_wait(kind):
    lf = LoopFactory(kind)
    loop = lf()
    got = {}

    def handler(t0):
        got["latency"] = time.monotonic() - t0[0]
        loop.stop()

    sent = [0.0]
    loop.add_signal_handler(signal.SIGUSR1, handler, sent)

    def sender():
        # Give the loop time to block in its wait (nothing else is due for
        # 30 s), then signal the process from this thread.
        time.sleep(0.1)
        sent[0] = time.monotonic()
        os.kill(os.getpid(), signal.SIGUSR1)

    t = threading.Thread(target=sender)
    try:
        loop.call_soon(t.start)
        run_bounded(loop, timeout=30)
    finally:
        t.join(5)
        loop.remove_signal_handler(signal.SIGUSR1)
        lf.close_all()
    assert got["latency"] < 5


def test_signal_handler_with_asyncio_run_style_task(loop):
    # A typical use: a signal sets an event a task waits on.
    async def main():
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGHUP, stop.set)
        try:
            loop.call_later(0.01, os.kill, os.getpid(), signal.SIGHUP)
            await asyncio.wait_for(stop.wait(), 5)
            return True
        finally:
            loop.remove_signal_handler(signal.SIGHUP)

    assert run_coro(loop, main())


def _failing_handler_context(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: (contexts.append(ctx), lp.stop()))

    def handler(arg):
        raise ValueError(arg)

    loop.add_signal_handler(signal.SIGUSR1, handler, "bad")
    try:
        # Sent before the loop runs: handled in its first passes.
        os.kill(os.getpid(), signal.SIGUSR1)
        run_bounded(loop)
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
    (ctx,) = contexts
    return {
        "message": normalise(ctx["message"]),
        "exception": repr(ctx["exception"]),
        "handle": normalise(repr(ctx["handle"])),
        "handle_type": type(ctx["handle"]).__name__,
    }


def test_exception_in_signal_handler_goes_to_the_exception_handler(loop):
    reference = make_loop("asyncio")
    try:
        expected = _failing_handler_context(reference)
    finally:
        reference.close()
    got = _failing_handler_context(loop)
    assert got == expected
    assert got["exception"] == "ValueError('bad')"
    assert got["message"].startswith("Exception in callback")
