"""No descriptor leaks, and loops, handles and the cycles through them are
freed (by reference counting or by the cyclic garbage collector)."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import socket
import sys
import warnings
import weakref

import pytest
from conftest import FD_KINDS, collect, fd_count, make_loop, run_bounded, run_coro


def _exercise(loop):
    """Callbacks, timers, tasks, a reader: a bit of everything."""
    a, b = socket.socketpair()
    try:
        ran = []
        for i in range(50):
            loop.call_soon(ran.append, i)
            loop.call_later(0.0001 * i, ran.append, i)
        cancelled = [loop.call_later(10, ran.append, "never") for _ in range(20)]
        for h in cancelled:
            h.cancel()
        b.send(b"x")
        loop.add_reader(a, lambda: (ran.append(a.recv(1)), loop.remove_reader(a)))

        async def task(i):
            await asyncio.sleep(0)
            return i

        async def main():
            return await asyncio.gather(*(task(i) for i in range(20)))

        assert run_coro(loop, main()) == list(range(20))
        loop.call_later(0.01, loop.stop)
        run_bounded(loop)
        assert len(ran) == 101
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("kind", list(FD_KINDS))
def test_no_fd_leak_after_closing_loops(kind):
    collect()
    before = fd_count()
    for _ in range(50):
        lp = make_loop(kind)
        lp.call_soon(lp.stop)
        lp.run_forever()
        lp.close()
    for _ in range(3):
        lp = make_loop(kind)
        _exercise(lp)
        lp.close()
    del lp
    collect()
    assert fd_count() == before


@pytest.mark.parametrize("kind", list(FD_KINDS))
def test_no_fd_leak_with_registered_readers_at_close(kind):
    pairs = [socket.socketpair() for _ in range(5)]
    try:
        collect()
        before = fd_count()
        for _ in range(20):
            lp = make_loop(kind)
            for a, _ in pairs:
                lp.add_reader(a, print)
                lp.add_writer(a, print)
            lp.close()
        del lp
        collect()
        assert fd_count() == before
    finally:
        for a, b in pairs:
            a.close()
            b.close()


@pytest.mark.parametrize("kind", list(FD_KINDS))
def test_unclosed_loops_release_fds_when_collected(kind):
    collect()
    before = fd_count()

    def make_and_drop():
        for _ in range(20):
            lp = make_loop(kind)
            lp.call_soon(lp.stop)
            lp.run_forever()
            del lp
            collect()

    with pytest.warns(ResourceWarning, match="unclosed event loop"):
        make_and_drop()
    collect()
    assert fd_count() == before


def test_closed_loop_is_freed(loop_factory):
    lp = loop_factory()
    _exercise(lp)
    lp.close()
    loop_factory.loops.remove(lp)
    ref = weakref.ref(lp)
    del lp
    collect()
    assert ref() is None


def test_handles_are_freed_after_running(loop):
    class Callback:
        def __call__(self):
            pass

    refs = []
    for _ in range(20):
        cb = Callback()
        refs.append(weakref.ref(cb))
        handle = loop.call_soon(cb)
        refs.append(weakref.ref(handle))
        timer = loop.call_later(0, cb)
        refs.append(weakref.ref(timer))
    del cb, handle, timer
    loop.call_later(0.001, loop.stop)
    run_bounded(loop)
    # No cycles: reference counting alone frees them.
    assert [r() for r in refs] == [None] * len(refs)


def test_cancelled_handles_are_freed(loop):
    class Callback:
        def __call__(self):
            pass

    cb = Callback()
    ref_cb = weakref.ref(cb)
    h = loop.call_later(3600, cb)
    ref_h = weakref.ref(h)
    del cb
    assert ref_cb() is not None
    h.cancel()
    # cancel() drops the callback at once.
    assert ref_cb() is None
    del h
    # The next pass drops it from the head of the timer queue (no watchdog
    # timer here: it would sit in front of it).
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert ref_h() is None


def _pending_cycle(lp):
    """loop -> handle -> callback (closure) -> loop, and the same with a timer."""

    def cb():
        lp.stop()

    lp.call_soon(cb)
    lp.call_later(3600, cb)
    lp.call_soon(lp.stop)  # bound method: handle -> loop
    return weakref.ref(cb)


def test_pending_callback_cycle_freed_after_close(loop_factory):
    lp = loop_factory()
    loop_factory.loops.remove(lp)
    ref_cb = _pending_cycle(lp)
    ref = weakref.ref(lp)
    lp.close()
    del lp
    collect()
    assert ref() is None
    assert ref_cb() is None


def test_pending_callback_cycle_freed_without_close(loop_factory):
    lp = loop_factory()
    loop_factory.loops.remove(lp)
    ref_cb = _pending_cycle(lp)
    ref = weakref.ref(lp)
    del lp
    with pytest.warns(ResourceWarning, match="unclosed event loop"):
        collect()
    assert ref() is None
    assert ref_cb() is None


def test_reader_cycle_freed_without_close(loop_factory):
    a, b = socket.socketpair()
    try:
        lp = loop_factory()
        loop_factory.loops.remove(lp)
        lp.add_reader(a, lp.stop)  # loop -> reader handle -> bound method -> loop
        ref = weakref.ref(lp)
        del lp
        with pytest.warns(ResourceWarning, match="unclosed event loop"):
            collect()
        assert ref() is None
    finally:
        a.close()
        b.close()


def test_timer_handle_cycle_through_bound_method(loop):
    class Ticker:
        def __init__(self, lp):
            self.ticks = 0
            self.handle = lp.call_later(0.001, self.tick)

        def tick(self):
            self.ticks += 1

    ticker = Ticker(loop)
    ref = weakref.ref(ticker)
    ref_handle = weakref.ref(ticker.handle)
    loop.call_later(0.01, loop.stop)
    run_bounded(loop)
    assert ticker.ticks == 1
    # obj -> handle -> bound method -> obj: only the cycle collector frees it.
    del ticker
    collect()
    assert ref() is None
    assert ref_handle() is None


def test_pending_timer_handle_cycle_through_bound_method(loop):
    class Ticker:
        def __init__(self, lp):
            self.handle = lp.call_later(3600, self.tick)

        def tick(self):
            pass

    ticker = Ticker(loop)
    ref = weakref.ref(ticker)
    del ticker
    collect()
    assert ref() is not None  # the loop still holds the pending timer
    loop.close()
    collect()
    assert ref() is None


def test_handle_context_cycle(loop):
    # handle -> context -> value -> handle
    var = contextvars.ContextVar("cycle")

    class Holder:
        pass

    holder = Holder()
    ctx = contextvars.copy_context()
    ctx.run(var.set, holder)
    holder.handle = loop.call_soon(print, context=ctx)
    holder.handle.cancel()
    ref = weakref.ref(holder)
    del holder, ctx
    loop.call_soon(loop.stop)
    run_bounded(loop)
    collect()
    assert ref() is None


@pytest.mark.parametrize("how", ["soon", "later"])
def test_context_copy_cycle_of_a_handle_queued_among_many(loop, how):
    # obj -> handle -> its own context copy -> a variable's value -> obj,
    # made while the loop runs with hundreds of callbacks or timers queued
    # (where ferroloop hides a new handle's context copy from the collector
    # with the handle): once the loop lets go of the handle, the cycle is
    # collected. The handle's context is also shown to other hands tracked.
    var = contextvars.ContextVar("queued-cycle")
    refs = []
    seen = []
    ran = []

    class Holder:
        def cb(self):
            ran.append(1)

    def make():
        for _ in range(400):
            if how == "soon":
                loop.call_soon(ran.append, 0)
            else:
                loop.call_later(0.001, ran.append, 0)
        holder = Holder()
        token = var.set(holder)
        if how == "soon":
            holder.h = loop.call_soon(holder.cb)
        else:
            holder.h = loop.call_later(0.001, holder.cb)
        var.reset(token)
        refs.append(weakref.ref(holder))
        other = loop.call_soon(ran.append, 2)
        ctx = other._context
        seen.append((gc.is_tracked(ctx), ctx.get(var) is None))
        loop.call_later(0.05, check)

    def check():
        collect()
        seen.append(refs[0]() is None)
        loop.stop()

    loop.call_soon(make)
    run_bounded(loop)
    assert ran.count(1) == 1 and ran.count(2) == 1
    assert seen == [(True, True), True]


# Regression test for a bug this suite found (fixed in 5d4e9a9). Before the fix:
# crates/ferroloop-core/src/timers.rs TimerQueue::purge_cancelled drops the cancelled entries it
# pops (head purge and compaction) while crates/ferroloop-py/src/loop_core.rs run_once_impl holds
# self.st.borrow_mut() (poll_timeout is called inside the borrow); when that drop frees the last
# reference to the TimerHandle, its context or a weakref callback runs Python code that calls back
# into the loop (call_soon, is_running, cancel...), GilCell::borrow_mut panics with 'RefCell
# already borrowed' (PanicException) and the call is lost
@pytest.mark.parametrize("via", ["context", "weakref", "compaction"])
def test_loop_usable_from_finalizer_of_a_purged_timer(loop, via):
    ran = []

    def from_finalizer(*_):
        try:
            loop.call_soon(ran.append, "scheduled from finalizer")
        except BaseException as exc:  # noqa: BLE001 - PanicException is a BaseException
            ran.append(repr(exc))

    if via == "context":
        var = contextvars.ContextVar("finalizer")

        class Finalized:
            def __del__(self):
                from_finalizer()

        ctx = contextvars.copy_context()
        ctx.run(var.set, Finalized())
        handle = loop.call_later(3600, print, context=ctx)
        del ctx
        keep = None
    else:
        handle = loop.call_later(3600, print)
        keep = weakref.ref(handle, from_finalizer)
    handle.cancel()
    del handle
    if via == "compaction":
        # Over 100 timers, more than half cancelled, and ours behind a live
        # head: the whole queue is rebuilt without the cancelled ones.
        head = loop.call_later(1800, print)
        others = [loop.call_later(3600 + i, print) for i in range(150)]
        for h in others:
            h.cancel()
        del others
    unraisable = []
    old_hook = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The pass purges the cancelled timer at the head of the queue
            # (no watchdog timer: it would sit in front of it).
            loop.call_soon(loop.call_soon, loop.stop)
            loop.run_forever()
    finally:
        sys.unraisablehook = old_hook
    del keep
    if via == "compaction":
        head.cancel()
    assert ran == ["scheduled from finalizer"]
    assert unraisable == []


def test_many_loops_are_collected(loop_factory):
    refs = []
    for _ in range(30):
        lp = loop_factory()
        loop_factory.loops.remove(lp)
        lp.call_soon(lp.stop)
        lp.run_forever()
        lp.close()
        refs.append(weakref.ref(lp))
    del lp
    gc.collect()
    assert [r() for r in refs] == [None] * len(refs)


# Handles made while the loop runs are queued out of the cyclic collector's
# sight (see `Item` in crates/ferroloop-py/src/loop_core/mod.rs); these check
# that nothing the collector must see is lost by that, on every kind and on
# asyncio's loop, which tracks them throughout.


class _Node:
    """An object in a cycle of its own, so only the collector can free it;
    one the collector cleared by mistake has lost its attributes."""

    def __init__(self, hits):
        self.me = self
        self.hits = hits

    def hit(self):
        self.hits.append(self.me is self)


def test_queued_callbacks_survive_a_collection_while_running(loop):
    # Each node is reachable only through a queued handle's bound method
    # when the collector runs; every callback then finds its node whole.
    hits = []
    refs = []
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))

    def schedule():
        for _ in range(200):
            node = _Node(hits)
            refs.append(weakref.ref(node))
            loop.call_soon(node.hit)
            loop.call_later(0.002, node.hit)
        del node
        collect()
        loop.call_soon(collect)
        loop.call_later(0.05, loop.stop)

    loop.call_soon(schedule)
    run_bounded(loop)
    assert errors == []
    assert hits == [True] * 400
    collect()
    assert all(r() is None for r in refs)  # and all of it is freed after


def test_handle_made_while_running_and_kept_is_collected_after_it_ran(loop):
    # obj -> handle -> bound method -> obj, made while the loop runs: once
    # the loop lets go of the handle, the collector frees the cycle.
    class Ticker:
        def __init__(self):
            self.handle = loop.call_later(0.001, self.tick)
            self.ticks = 0

        def tick(self):
            self.ticks += 1

    refs = []
    alive_after = []

    def make():
        t = Ticker()
        refs.append(weakref.ref(t))
        refs.append(weakref.ref(t.handle))
        loop.call_later(0.02, check)

    def check():
        collect()
        alive_after.extend(r() is not None for r in refs)
        loop.stop()

    loop.call_soon(make)
    run_bounded(loop)
    assert alive_after == [False, False]


def test_handle_made_while_running_kept_in_a_cycle_of_a_dropped_loop(loop_factory):
    # Made while running, still queued when the loop stopped, and held by an
    # object in a cycle with the loop: the unclosed loop is collected (with
    # asyncio's warning) and so is the object.
    lp = loop_factory()
    loop_factory.loops.remove(lp)

    class Owner:
        pass

    refs = []

    def make(lp=lp):
        o = Owner()
        o.loop = lp
        o.handle = lp.call_later(3600, o.__init__)
        o.other = lp.call_soon(lp.stop)
        refs.append(weakref.ref(o))

    lp.call_soon(make)
    lp.run_forever()
    refs.append(weakref.ref(lp))
    del lp, make
    with pytest.warns(ResourceWarning, match="unclosed event loop"):
        collect()
    assert [r() for r in refs] == [None, None]


def test_handles_made_while_running_in_a_cycle_of_a_dropped_loop(loop_factory):
    # loop -> queued handle -> closure -> loop, made while running, handles
    # held by the loop only.
    lp = loop_factory()
    loop_factory.loops.remove(lp)
    refs = []

    def make(lp=lp):
        def cb(lp=lp):
            lp.stop()

        lp.call_later(3600, cb)
        lp.call_soon(cb)
        refs.append(weakref.ref(cb))

    lp.call_soon(make)
    lp.run_forever()
    refs.append(weakref.ref(lp))
    del lp, make
    with pytest.warns(ResourceWarning, match="unclosed event loop"):
        collect()
    assert [r() for r in refs] == [None, None]


def test_a_kept_handle_keeps_its_stopped_loop_whole(loop_factory):
    # The only way to the stopped loop is through a handle it still queues,
    # which the test keeps: a collection must take neither the loop nor what
    # the handle calls for garbage.
    lp = loop_factory()
    loop_factory.loops.remove(lp)
    kept = []
    hits = []
    node = _Node(hits)

    def make(lp=lp, node=node, kept=kept):
        kept.append(lp.call_later(3600, node.hit))
        kept.append(lp.call_soon(node.hit))
        lp.stop()

    lp.call_soon(make)
    lp.run_forever()  # runs make; node.hit stays queued twice
    ref = weakref.ref(lp)
    ref_node = weakref.ref(node)
    del lp, node, make
    collect()
    assert ref() is not None and ref_node() is not None
    assert ref_node().me is ref_node()  # not cleared by the collector
    lp = ref()
    lp.call_soon(lp.stop)
    lp.run_forever()  # the queued call_soon runs
    assert hits == [True]
    kept[0].cancel()
    lp.close()
    del lp, kept
    collect()
    assert ref() is None and ref_node() is None
