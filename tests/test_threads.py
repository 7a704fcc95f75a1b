"""Threads: call_soon_threadsafe, waking a sleeping loop, executors,
asyncio.to_thread, and loops in non-main threads."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import socket
import threading
import time

import pytest
from conftest import make_loop, run_bounded, run_coro

THREADS = 4
PER_THREAD = 250


def test_call_soon_threadsafe_from_many_threads(loop):
    received = []
    done = threading.Event()
    start = threading.Barrier(THREADS)

    def producer(n):
        start.wait(timeout=5)
        for i in range(PER_THREAD):
            loop.call_soon_threadsafe(received.append, (n, i))

    def check():
        if len(received) == THREADS * PER_THREAD:
            done.set()
            loop.stop()
        else:
            loop.call_later(0.001, check)

    threads = [threading.Thread(target=producer, args=(n,)) for n in range(THREADS)]
    loop.call_soon(lambda: [t.start() for t in threads])
    loop.call_soon(check)
    try:
        run_bounded(loop, timeout=10)
    finally:
        for t in threads:
            t.join(timeout=5)
    assert done.is_set()
    assert len(received) == THREADS * PER_THREAD
    # Each producer's callbacks run in the order it scheduled them.
    for n in range(THREADS):
        assert [i for (m, i) in received if m == n] == list(range(PER_THREAD))


def _wake_latencies(loop, rounds=5, pause=0.05):
    """The loop sleeps on a 60 s timer; another thread schedules callbacks
    one at a time (letting the loop go back to sleep in between) and
    measures how long each takes to run."""
    latencies = []
    errors = []
    ran = threading.Event()

    def worker():
        try:
            for i in range(rounds):
                time.sleep(pause)
                ran.clear()
                t0 = time.monotonic()
                loop.call_soon_threadsafe(ran.set)
                if not ran.wait(timeout=3):
                    errors.append(f"round {i}: not woken within 3 s")
                    break
                latencies.append(time.monotonic() - t0)
        finally:
            loop.call_soon_threadsafe(loop.stop)

    loop.call_later(60, loop.stop)
    thread = threading.Thread(target=worker)
    thread.start()
    t0 = time.monotonic()
    try:
        run_bounded(loop, timeout=20)
    finally:
        thread.join(timeout=10)
    return latencies, errors, time.monotonic() - t0


def test_threadsafe_wakes_a_sleeping_loop(fd_loop):
    latencies, errors, total = _wake_latencies(fd_loop)
    assert errors == []
    assert len(latencies) == 5
    assert max(latencies) < 1.0
    assert total < 10


def test_threadsafe_wakes_a_loop_with_nothing_scheduled(fd_loop):
    # No timer at all: the loop waits with no timeout.
    ran = []

    def worker():
        time.sleep(0.1)
        fd_loop.call_soon_threadsafe(lambda: (ran.append(time.monotonic()), fd_loop.stop()))

    thread = threading.Thread(target=worker)
    thread.start()
    t0 = time.monotonic()
    # A watchdog timer would give the loop a timeout; use a thread instead.
    watchdog = threading.Timer(10, lambda: fd_loop.call_soon_threadsafe(fd_loop.stop))
    watchdog.start()
    try:
        fd_loop.run_forever()
    finally:
        watchdog.cancel()
        thread.join(timeout=5)
    assert ran and ran[0] - t0 < 1.5


def test_threadsafe_while_loop_is_running_callbacks(loop):
    # Callbacks arriving while the loop is busy (not sleeping) are not lost.
    count = [0]
    stop_at = 500
    finished = threading.Event()

    def busy():
        if not finished.is_set():
            loop.call_soon(busy)

    def incr():
        count[0] += 1
        if count[0] == stop_at:
            finished.set()
            loop.stop()

    def producer():
        for _ in range(stop_at):
            loop.call_soon_threadsafe(incr)

    loop.call_soon(busy)
    thread = threading.Thread(target=producer)
    loop.call_soon(thread.start)
    try:
        run_bounded(loop, timeout=10)
    finally:
        thread.join(timeout=5)
    assert count[0] == stop_at


def test_run_in_executor_result_and_exception(loop):
    def work(x):
        return x * 2, threading.current_thread() is not threading.main_thread()

    def fail():
        raise KeyError("in thread")

    async def main():
        r = await loop.run_in_executor(None, work, 21)
        with pytest.raises(KeyError, match="in thread"):
            await loop.run_in_executor(None, fail)
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            r2 = await loop.run_in_executor(ex, work, 5)
        return r, r2

    assert run_coro(loop, main()) == ((42, True), (10, True))


def test_set_default_executor(loop):
    ex = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="custom-default")

    async def main():
        return await loop.run_in_executor(None, lambda: threading.current_thread().name)

    loop.set_default_executor(ex)
    try:
        name = run_coro(loop, main())
    finally:
        ex.shutdown(wait=True)
    assert name.startswith("custom-default")


def test_shutdown_default_executor(loop):
    threads = []

    def work():
        threads.append(threading.current_thread())
        time.sleep(0.02)
        return "ok"

    async def main():
        r = await loop.run_in_executor(None, work)
        await loop.shutdown_default_executor()
        return r

    assert run_coro(loop, main()) == "ok"
    assert not threads[0].is_alive()
    with pytest.raises(RuntimeError, match="Executor shutdown has been called"):
        loop.run_in_executor(None, work)


def test_close_shuts_the_default_executor_down(loop):
    async def main():
        return await loop.run_in_executor(None, lambda: threading.current_thread())

    thread = run_coro(loop, main())
    loop.close()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_to_thread(loop):
    var = contextvars.ContextVar("v", default="unset")

    def work(a, b=0):
        return a + b, var.get(), threading.current_thread() is threading.main_thread()

    async def main():
        var.set("propagated")
        return await asyncio.to_thread(work, 1, b=2)

    assert run_coro(loop, main()) == (3, "propagated", False)


@pytest.mark.parametrize(
    "kind", ["asyncio", "ferroloop", "ferroloop-poll", "ferroloop-select", "ferroloop-proactor"]
)
def test_loop_in_a_non_main_thread(kind):
    result = {}

    def thread_main():
        lp = make_loop(kind)
        try:

            async def main():
                running = asyncio.get_running_loop()
                got = asyncio.get_event_loop()
                await asyncio.sleep(0.01)
                r = await lp.run_in_executor(None, lambda: 5)
                return running is lp, got is lp, r

            result["value"] = lp.run_until_complete(asyncio.wait_for(main(), 5))
            result["thread"] = threading.current_thread().name
        except BaseException as exc:  # noqa: BLE001 - reported below
            result["error"] = exc
        finally:
            lp.close()

    thread = threading.Thread(target=thread_main, name="loop-thread")
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert "error" not in result, result.get("error")
    assert result == {"value": (True, True, 5), "thread": "loop-thread"}


def test_threadsafe_from_a_thread_to_a_loop_in_another_thread():
    for kind in ("asyncio", "ferroloop"):
        ready = threading.Event()
        holder = {}
        got = []

        def thread_main(kind=kind, holder=holder, ready=ready):
            lp = make_loop(kind)
            holder["loop"] = lp
            lp.call_soon(ready.set)
            lp.call_later(60, lp.stop)
            lp.run_forever()
            lp.close()

        thread = threading.Thread(target=thread_main)
        thread.start()
        assert ready.wait(5)
        lp = holder["loop"]
        t0 = time.monotonic()
        lp.call_soon_threadsafe(
            lambda got=got, thread=thread: got.append(threading.current_thread() is thread)
        )
        lp.call_soon_threadsafe(lp.stop)
        thread.join(timeout=5)
        assert not thread.is_alive()
        assert got == [True]
        assert time.monotonic() - t0 < 1.5


def test_run_coroutine_threadsafe(loop):
    results = []

    async def compute(x):
        await asyncio.sleep(0.001)
        return x + 1

    def worker():
        futs = [asyncio.run_coroutine_threadsafe(compute(i), loop) for i in range(20)]
        results.extend(f.result(timeout=5) for f in futs)
        loop.call_soon_threadsafe(loop.stop)

    thread = threading.Thread(target=worker)
    loop.call_soon(thread.start)
    try:
        run_bounded(loop, timeout=10)
    finally:
        thread.join(timeout=5)
    assert results == list(range(1, 21))


def test_idle_loop_sleeps_instead_of_spinning(fd_loop):
    # Waiting for a timer (with a cancelled one in front and an idle socket
    # registered) must block in the selector, not burn CPU.
    a, b = socket.socketpair()
    try:
        fd_loop.add_reader(a, print)
        # Clocks read before the stop is scheduled: a preemption between
        # the two must not shorten the span measured.
        cpu0, wall0 = time.process_time(), time.monotonic()
        fd_loop.call_later(0.01, print).cancel()
        fd_loop.call_later(0.3, fd_loop.stop)
        run_bounded(fd_loop)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        fd_loop.remove_reader(a)
    finally:
        a.close()
        b.close()
    assert 0.29 <= wall < 2.0
    assert cpu < 0.1, f"{cpu:.3f} s of CPU while idle for {wall:.3f} s"
