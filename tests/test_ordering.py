"""Ordering of callbacks and timers within and across loop passes, stop(),
and the loop clock."""

from __future__ import annotations

import asyncio
import time

from conftest import run_bounded, run_passes


def test_call_soon_is_fifo(loop):
    order = []
    for i in range(200):
        loop.call_soon(order.append, i)
    loop.call_soon(loop.stop)
    run_bounded(loop)
    assert order == list(range(200))


def test_call_soon_args_are_passed(loop):
    got = []
    loop.call_soon(lambda *a: got.append(a), 1, "two", None)
    loop.call_soon(loop.stop)
    run_bounded(loop)
    assert got == [(1, "two", None)]


def test_callbacks_scheduled_during_a_pass_run_in_the_next_pass(loop):
    log = []

    def a():
        log.append("a")
        loop.call_soon(b)

    def b():
        log.append("b")
        loop.call_soon(c)

    def c():
        log.append("c")

    loop.call_soon(a)
    run_passes(loop, 4, log)
    # a ran before the first marker: it was queued first.
    assert log == ["a", ("pass", 0), "b", ("pass", 1), "c", ("pass", 2), ("pass", 3)]


def test_a_pass_runs_only_what_was_ready_when_it_began(loop):
    # A callback that reschedules itself runs exactly once per pass.
    log = []

    def again(n):
        log.append(n)
        loop.call_soon(again, n + 1)

    loop.call_soon(again, 0)
    run_passes(loop, 5, log)
    expected = []
    for i in range(5):
        expected += [i, ("pass", i)]
    assert log == expected


def test_stop_lets_the_rest_of_the_pass_run(loop):
    log = []
    loop.call_soon(log.append, "before")
    loop.call_soon(loop.stop)
    loop.call_soon(log.append, "after")
    loop.call_soon(lambda: loop.call_soon(log.append, "next pass"))
    run_bounded(loop)
    assert log == ["before", "after"]
    assert not loop.is_running()
    # What was scheduled during the pass stays queued for the next run.
    loop.call_soon(loop.stop)
    run_bounded(loop)
    assert log == ["before", "after", "next pass"]


def test_stop_before_run_forever_runs_one_pass(loop):
    log = []
    loop.stop()
    loop.call_soon(log.append, 1)
    loop.call_soon(lambda: loop.call_soon(log.append, 2))
    loop.call_later(60, log.append, "timer")
    t0 = time.monotonic()
    loop.run_forever()
    assert time.monotonic() - t0 < 1.0
    assert log == [1]


def test_stop_does_not_wait_for_timers(loop):
    loop.call_later(60, loop.stop)
    loop.call_soon(loop.stop)
    t0 = time.monotonic()
    run_bounded(loop)
    assert time.monotonic() - t0 < 1.0


def test_stop_twice_in_a_pass_stops_once(loop):
    log = []
    loop.call_soon(loop.stop)
    loop.call_soon(loop.stop)
    run_bounded(loop)
    loop.call_soon(log.append, "x")
    loop.call_soon(loop.stop)
    run_bounded(loop)
    assert log == ["x"]


def test_timers_run_by_deadline(loop):
    order = []
    now = loop.time()
    loop.call_later(0.04, order.append, "d")
    loop.call_later(0.01, order.append, "a")
    loop.call_at(now + 0.03, order.append, "c")
    loop.call_later(0.02, order.append, "b")
    loop.call_at(now + 0.05, loop.stop)
    run_bounded(loop)
    assert order == ["a", "b", "c", "d"]


def test_timer_fires_after_its_delay(loop):
    fired = []
    t0 = time.monotonic()
    loop.call_later(0.05, lambda: (fired.append(time.monotonic()), loop.stop()))
    run_bounded(loop)
    elapsed = fired[0] - t0
    # asyncio runs a timer when when < now + clock resolution.
    assert 0.049 <= elapsed < 1.0


def test_call_at_in_the_past_runs_in_the_next_pass(loop):
    log = []

    def schedule():
        log.append("schedule")
        loop.call_at(loop.time() - 10, log.append, "past")
        loop.call_later(-1, log.append, "negative")
        loop.call_later(0, log.append, "zero")

    loop.call_soon(schedule)
    run_passes(loop, 3, log)
    assert log == [
        "schedule",
        ("pass", 0),
        ("pass", 1),
        "past",
        "negative",
        "zero",
        ("pass", 2),
    ]


def test_ready_callbacks_run_before_due_timers_in_a_pass(loop):
    log = []

    def schedule():
        # The timer is scheduled first, but in the next pass the callbacks
        # that were ready when it began (even the pass marker, queued after
        # the timer) run before the due timers, which are appended.
        loop.call_at(loop.time() - 1, log.append, "timer")
        loop.call_soon(log.append, "soon")

    loop.call_soon(schedule)
    run_passes(loop, 3, log)
    assert log == [("pass", 0), "soon", ("pass", 1), "timer", ("pass", 2)]


def test_cancelled_timers_never_run(loop):
    ran = []
    handles = [loop.call_later(0.001 * i, ran.append, i) for i in range(20)]
    for h in handles[::2]:
        h.cancel()
    loop.call_later(0.05, loop.stop)
    run_bounded(loop)
    assert ran == list(range(1, 20, 2))
    assert all(h.cancelled() for h in handles[::2])
    assert not any(h.cancelled() for h in handles[1::2])


def test_cancelling_a_due_timer_from_an_earlier_callback_of_the_same_pass(loop):
    ran = []
    now = loop.time()
    later = {}

    def first():
        ran.append("first")
        later["h"].cancel()

    loop.call_at(now - 2, first)
    later["h"] = loop.call_at(now - 1, ran.append, "second")
    run_passes(loop, 2, ran)
    # Both timers were due in pass 0; the second was cancelled after it had
    # been moved to the ready queue, and is skipped.
    assert ran == [("pass", 0), "first", ("pass", 1)]
    assert later["h"].cancelled()


def test_cancelling_a_ready_callback_from_an_earlier_one(loop):
    ran = []
    holder = {}
    loop.call_soon(lambda: holder["h"].cancel())
    holder["h"] = loop.call_soon(ran.append, "cancelled")
    loop.call_soon(ran.append, "kept")
    loop.call_soon(loop.stop)
    run_bounded(loop)
    assert ran == ["kept"]


def test_many_cancelled_timers_are_dropped_and_unscheduled(loop):
    # Over 100 timers with more than half cancelled: asyncio compacts the
    # heap and marks the cancelled handles unscheduled.
    ran = []
    far = [loop.call_later(3600 + i, ran.append, i) for i in range(300)]
    for h in far[:250]:
        h.cancel()
    loop.call_later(0.01, ran.append, "near")
    loop.call_later(0.02, loop.stop)
    run_bounded(loop)
    assert ran == ["near"]
    assert [h._scheduled for h in far[:250]] == [False] * 250
    assert [h._scheduled for h in far[250:]] == [True] * 50
    for h in far[250:]:
        h.cancel()


def test_timer_handle_when(loop):
    t0 = loop.time()
    h = loop.call_later(10, print)
    t1 = loop.time()
    assert t0 + 10 <= h.when() <= t1 + 10
    h2 = loop.call_at(1234.5, print)
    assert h2.when() == 1234.5
    assert isinstance(h2.when(), float)
    h.cancel()
    h2.cancel()


def test_timer_handles_compare_by_deadline(loop):
    a = loop.call_at(100.0, print)
    b = loop.call_at(200.0, print)
    c = loop.call_at(100.0, print)
    assert a < b and b > a and a <= b and b >= a
    assert a == c and (a != c) is False and a <= c and a >= c
    assert hash(a) == hash(100.0)
    c.cancel()
    assert a != c
    assert (a == 1) is False
    for h in (a, b):
        h.cancel()


def test_clock_is_monotonic_time(loop):
    for _ in range(100):
        before = time.monotonic()
        t = loop.time()
        after = time.monotonic()
        assert before - 1e-6 <= t <= after + 1e-6
    times = [loop.time() for _ in range(1000)]
    assert times == sorted(times)


# Regression test for a bug this suite found (fixed in 5d4e9a9). Before the fix:
# crates/ferroloop-py/src/loop_core.rs: call_later computes the deadline with MonotonicClock.now()
# and run_once_impl/poll_timeout decide which timers are due with MonotonicClock.now(), never
# calling self.time(); asyncio's call_later is self.time() + delay and _run_once compares with
# self.time(), so a loop whose time() is overridden (virtual clocks, offset clocks in tests) sees
# call_later deadlines on another clock and call_at(loop.time() + d) timers (asyncio.timeout) that
# never fire
def test_overridden_time_is_the_loop_clock(loop_factory):
    base = type(loop_factory())

    class OffsetClockLoop(base):
        def time(self):
            return time.monotonic() + 1000.0

    lp = OffsetClockLoop()
    loop_factory.loops.append(lp)
    before = lp.time()
    h = lp.call_later(5, print)
    after = lp.time()
    assert before + 5 <= h.when() <= after + 5
    h.cancel()

    async def main():
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(0.02):
                await asyncio.sleep(0.5)
        except TimeoutError:
            return "timed out", time.monotonic() - t0
        return "not timed out", time.monotonic() - t0

    outcome, elapsed = lp.run_until_complete(asyncio.wait_for(main(), 5))
    assert outcome == "timed out"
    assert elapsed < 0.4


def test_asyncio_timeout_reschedule(loop):
    async def main():
        t0 = loop.time()
        try:
            async with asyncio.timeout(0.01) as cm:
                cm.reschedule(loop.time() + 0.03)
                await asyncio.sleep(1)
        except TimeoutError:
            return loop.time() - t0, cm.expired()

    elapsed, expired = loop.run_until_complete(asyncio.wait_for(main(), 5))
    assert expired is True
    assert 0.029 <= elapsed < 0.5


# Regression test for a bug this suite found: the loop decided once, at
# creation, whether time() was overridden, so patching time on the class
# afterwards (as virtual-clock helpers do) was ignored by call_later and the
# pass. The core now re-checks the class whenever its version tag changes.
def test_time_patched_on_the_class_after_creation(loop_factory):
    base = type(loop_factory())

    class PatchableLoop(base):
        pass

    lp = PatchableLoop()
    loop_factory.loops.append(lp)
    PatchableLoop.time = lambda self: 5000.0
    try:
        h = lp.call_later(5, print)
        assert h.when() == 5005.0
        h.cancel()
    finally:
        del PatchableLoop.time
    h = lp.call_later(5, print)
    assert abs(h.when() - (time.monotonic() + 5)) < 1
    h.cancel()
