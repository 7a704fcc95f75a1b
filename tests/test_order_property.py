"""Property-based differential test of scheduling order: random programs of
``call_soon``, ``call_soon_threadsafe``, ``call_later(0)``, ``call_at`` with
deadlines already past, cancellations, futures' done callbacks and tasks
that ``await asyncio.sleep(0)`` log the same order on asyncio and on each
ferroloop kind.

The programs use no real delays, so the order is fully defined by asyncio's
rules (what was ready when a pass began runs in that pass, due timers in
deadline order after it); deadlines are all distinct, because asyncio leaves
the order of equal deadlines undefined. Examples are derandomized, so a CI
run checks the same 200 programs each time.
"""

from __future__ import annotations

import asyncio

import pytest
from conftest import make_loop
from hypothesis import given, settings
from hypothesis import strategies as st

KINDS = ["ferroloop", "ferroloop-proactor"]

LEAF_KINDS = ["soon", "threadsafe", "later0", "at_past", "cancelled", "future", "task"]

# A program is a list of ops; an op is (kind, children, sleeps).
op = st.deferred(
    lambda: st.tuples(
        st.sampled_from(LEAF_KINDS),
        st.lists(op, max_size=3),
        st.integers(min_value=0, max_value=3),
    )
)
programs = st.lists(op, min_size=1, max_size=6)


def run_program(kind, program):
    """The order in which ``program``'s callbacks ran on a ``kind`` loop."""
    loop = make_loop(kind)
    log = []
    pending = [0]
    counter = [0]
    base = [0.0]

    def finished():
        pending[0] -= 1
        if pending[0] == 0:
            loop.stop()

    def label():
        counter[0] += 1
        return counter[0]

    def schedule(ops):
        for kind_, children, sleeps in ops:
            n = label()
            if kind_ == "cancelled":
                loop.call_soon(log.append, ("never", n)).cancel()
                continue
            pending[0] += 1
            if kind_ == "task":

                async def body(n=n, children=children, sleeps=sleeps):
                    log.append(("task", n, "start"))
                    for i in range(sleeps):
                        await asyncio.sleep(0)
                        log.append(("task", n, i))
                    schedule(children)
                    finished()

                loop.create_task(body())
                continue

            def cb(n=n, children=children, kind_=kind_):
                log.append((kind_, n))
                schedule(children)
                finished()

            if kind_ == "soon":
                loop.call_soon(cb)
            elif kind_ == "threadsafe":
                loop.call_soon_threadsafe(cb)
            elif kind_ == "later0":
                loop.call_later(0, cb)
            elif kind_ == "at_past":
                # Distinct deadlines, all long past: due at the next pass.
                loop.call_at(base[0] + n * 1e-6, cb)
            elif kind_ == "future":
                fut = loop.create_future()
                fut.add_done_callback(lambda f, cb=cb: cb())
                loop.call_soon(fut.set_result, None)

    def start():
        base[0] = loop.time() - 1000.0
        pending[0] += 1
        schedule(program)
        finished()

    loop.call_soon(start)
    try:
        loop.run_forever()
        # Whatever a last pass queued (nothing should log).
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()
    return log


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=200, derandomize=True, deadline=None)
@given(program=programs)
def test_same_order_as_asyncio(kind, program):
    expected = run_program("asyncio", program)
    assert run_program(kind, program) == expected
    assert all(entry[0] != "never" for entry in expected)
