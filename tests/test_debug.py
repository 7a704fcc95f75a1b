"""Debug mode: PYTHONASYNCIODEBUG, slow callback warnings, source
tracebacks, coroutine origin tracking."""

from __future__ import annotations

import gc
import logging
import re
import sys
import time

import pytest
from conftest import make_loop, normalise, run_bounded, run_coro, run_python

DEBUG_SCRIPT = """
import asyncio, ferroloop
loops = [asyncio.SelectorEventLoop(), ferroloop.new_event_loop(), ferroloop.new_event_loop("poll")]
print([lp.get_debug() for lp in loops])
async def main():
    return asyncio.get_running_loop().get_debug()
print(ferroloop.run(main()))
for lp in loops:
    lp.close()
"""


@pytest.mark.parametrize(
    "env,expected",
    [
        ({}, False),
        ({"PYTHONASYNCIODEBUG": "1"}, True),
        ({"PYTHONDEVMODE": "1"}, True),
    ],
    ids=["default", "PYTHONASYNCIODEBUG", "devmode"],
)
def test_debug_from_environment(env, expected):
    proc = run_python(DEBUG_SCRIPT, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == [str([expected] * 3), str(expected)]


def test_set_debug(loop):
    assert loop.get_debug() is False
    loop.set_debug(True)
    assert loop.get_debug() is True
    assert "debug=True" in repr(loop)
    loop.set_debug(False)
    assert loop.get_debug() is False


def _slow(duration):
    time.sleep(duration)


def _slow_callback_messages(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.01
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.call_soon(_slow, 0.05)
        loop.call_soon(_slow, 0.0)
        loop.call_soon(loop.stop)
        run_bounded(loop)
    loop.set_debug(False)
    return [r.getMessage() for r in caplog.records if r.name == "asyncio"]


def test_slow_callback_warning(loop_factory, caplog):
    loop = loop_factory()
    assert loop.slow_callback_duration == 0.1
    messages = _slow_callback_messages(loop, caplog)
    ref = make_loop("asyncio")
    try:
        ref_messages = _slow_callback_messages(ref, caplog)
    finally:
        ref.close()
    assert len(messages) == 1, messages
    assert re.fullmatch(
        r"Executing <Handle _slow\(0\.05\) at .*test_debug\.py:\d+ created at .*:\d+> "
        r"took 0\.0[5-9]\d seconds",
        messages[0],
    ), messages[0]

    def strip(m):
        return re.sub(r"took \d+\.\d+ seconds", "took X seconds", normalise(m))

    assert [strip(m) for m in messages] == [strip(m) for m in ref_messages]


def test_slow_task_step_warning_names_the_task(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.01

    async def slow_task():
        time.sleep(0.03)  # noqa: ASYNC251 - a deliberately slow task step

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.run_until_complete(slow_task())
    messages = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert any(
        re.match(r"Executing <Task .*slow_task\(\).*> took 0\.0\d\d seconds", m) for m in messages
    ), messages


def _make_handles(loop):
    # All on one line, so frames compare across loops.
    return [
        loop.call_soon(print),
        loop.call_later(10, print),
        loop.call_at(1.0, print),
        loop.call_soon_threadsafe(print),
    ]


def test_source_traceback_in_debug_mode(loop_factory):
    loop = loop_factory()
    ref = make_loop("asyncio")
    try:
        frames = []
        for lp in (loop, ref):
            lp.set_debug(True)
            handles = _make_handles(lp)
            tbs = [h._source_traceback for h in handles]
            assert all(tbs)
            frames.append([(tb[-1].filename, tb[-1].lineno, tb[-1].name) for tb in tbs])
            for h in handles:
                h.cancel()
            lp.set_debug(False)
            handles = _make_handles(lp)
            assert [h._source_traceback for h in handles] == [None] * 4
            for h in handles:
                h.cancel()
        assert frames[0] == frames[1]
        assert frames[0][0][2] == "_make_handles"
        assert frames[0][0][0] == __file__
    finally:
        ref.close()


def test_debug_create_task_has_source_traceback(loop):
    loop.set_debug(True)

    async def coro():
        pass

    task = loop.create_task(coro())
    assert task._source_traceback
    assert task._source_traceback[-1].name == "test_debug_create_task_has_source_traceback"
    loop.run_until_complete(task)


def test_default_handler_logs_handle_traceback_in_debug(loop_factory, caplog):
    outputs = []
    for lp in (loop_factory(), make_loop("asyncio")):
        lp.set_debug(True)

        def raiser():
            raise ValueError("debug")

        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            lp.call_soon(raiser)
            lp.call_soon(lp.stop)
            run_bounded(lp)
        lp.set_debug(False)
        lp.close()
        text = "\n".join(r.getMessage() for r in caplog.records if r.name == "asyncio")
        outputs.append(text)
    assert "\nsource_traceback: Object created at (most recent call last):\n" in outputs[0]
    # Same message, handle repr, innermost source frame and exception traceback.
    lines = [normalise(o).splitlines() for o in outputs]
    assert lines[0][:2] == lines[1][:2]
    marker = "source_traceback: Object created at (most recent call last):"
    assert lines[0][2] == lines[1][2] == marker
    assert lines[0][-2:] == lines[1][-2:]
    assert lines[0][-1].strip() == "lp.call_soon(raiser)"


# Regression test for a bug this suite found (fixed in 5d4e9a9). Before the fix:
# crates/ferroloop-py/src/handle.rs extract_stack() calls
# format_helpers.extract_stack(sys._getframe(0)) with the default limit (DEBUG_STACK_DEPTH=10)
# starting at the caller, so every handle keeps 10 caller frames; asyncio extracts 10 frames
# starting inside its own scheduling method and then deletes its internal frames, keeping 8
# (call_soon, call_at, call_soon_threadsafe) or 7 (call_later) - the 'Object created at' section
# of logged errors is longer than asyncio's
def test_source_traceback_depth_matches_asyncio(loop_factory):
    lengths = []
    for lp in (loop_factory(), make_loop("asyncio")):
        lp.set_debug(True)
        handles = _make_handles(lp)
        lengths.append([len(h._source_traceback) for h in handles])
        for h in handles:
            h.cancel()
        lp.close()
    assert lengths[1] == [8, 7, 8, 8]
    assert lengths[0] == lengths[1]


def test_current_handle_in_debug_mode(loop):
    loop.set_debug(True)
    seen = []
    h = loop.call_soon(lambda: seen.append(loop._current_handle))
    loop.call_soon(loop.stop)
    run_bounded(loop)
    assert seen == [h]
    assert loop._current_handle is None


def test_coroutine_origin_tracking(loop):
    depths = []

    async def main():
        depths.append(sys.get_coroutine_origin_tracking_depth())

    loop.set_debug(True)
    run_coro(loop, main())
    loop.set_debug(False)
    run_coro(loop, main())
    assert depths[0] > 0 and depths[1] == 0
    assert sys.get_coroutine_origin_tracking_depth() == 0


def test_never_awaited_coroutine_warning_names_origin(loop):
    async def never():
        pass

    async def main():
        never()

    loop.set_debug(True)

    def run_and_collect():
        run_coro(loop, main())
        gc.collect()

    with pytest.warns(RuntimeWarning, match="was never awaited") as record:
        run_and_collect()
    assert any("Coroutine created at" in str(w.message) for w in record)


def test_debug_close_logs(loop, caplog):
    loop.set_debug(True)
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        loop.close()
    assert any(r.getMessage().startswith("Close <") for r in caplog.records)
