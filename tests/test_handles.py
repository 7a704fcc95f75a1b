"""Handle / TimerHandle API, reprs, contexts, and what happens to exceptions
raised by callbacks."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import gc
import logging
import weakref

import pytest
from conftest import make_loop, normalise, run_bounded, run_passes

var = contextvars.ContextVar("var", default="unset")


def _callback(*args):
    pass


class _Obj:
    def method(self, x):
        pass


def _raiser(*args):
    raise ValueError("boom", args)


# One line creates every handle, so the "created at" part of debug reprs
# names the same file and line on both loops.
def _schedule(loop, how, callback, *args):
    if how == "soon":
        return loop.call_soon(callback, *args)
    if how == "later":
        return loop.call_later(100.5, callback, *args)
    if how == "at":
        return loop.call_at(1234.25, callback, *args)
    if how == "threadsafe":
        return loop.call_soon_threadsafe(callback, *args)
    raise ValueError(how)


def test_cancel_and_cancelled(loop):
    ran = []
    h = loop.call_soon(ran.append, 1)
    assert h.cancelled() is False
    assert h.cancel() is None
    assert h.cancelled() is True
    h.cancel()  # twice is fine
    assert h.cancelled() is True
    t = loop.call_later(0.001, ran.append, 2)
    t.cancel()
    t.cancel()
    assert t.cancelled()
    loop.call_later(0.02, loop.stop)
    run_bounded(loop)
    assert ran == []


def test_handles_made_after_many_were_freed_start_fresh(loop):
    """ferroloop makes new handles from the objects of freed ones. One made
    that way must be like a new one: tracked by the collector (so a cycle
    through it is collected, as with asyncio's handles), without weak
    references, not cancelled, with its own callback, arguments and context.
    """
    ran = []
    dead = []
    for i in range(300):
        h = loop.call_soon(ran.append, i)
        if i % 3 == 0:
            h.cancel()
        dead.append(weakref.ref(h))
        del h
    run_passes(loop, 1)
    assert ran == [i for i in range(300) if i % 3]
    assert all(r() is None for r in dead)

    token = var.set("second round")
    try:
        again = [loop.call_soon(lambda i: ran.append((i, var.get())), i) for i in range(300)]
    finally:
        var.reset(token)
    for h in again:
        assert gc.is_tracked(h)
        assert weakref.getweakrefcount(h) == 0
        assert not h.cancelled()
    del again
    ran.clear()
    run_passes(loop, 1)
    assert ran == [(i, "second round") for i in range(300)]

    class Holder:
        def cb(self):
            ran.append("held")

    holders = []
    for _ in range(50):
        o = Holder()
        o.h = loop.call_soon(o.cb)
        holders.append(weakref.ref(o))
        del o
    run_passes(loop, 1)
    gc.collect()
    assert ran.count("held") == 50
    assert all(r() is None for r in holders)


def test_cancel_after_run_marks_cancelled(loop):
    ran = []
    h = loop.call_soon(ran.append, 1)
    loop.call_soon(loop.stop)
    run_bounded(loop)
    h.cancel()
    assert ran == [1] and h.cancelled()


def _context_of(handle):
    # Handle.get_context() is new in Python 3.12; ferroloop offers it on
    # 3.11 too, and both keep the context in `_context`.
    if hasattr(handle, "get_context"):
        assert handle.get_context() is handle._context
        return handle.get_context()
    return handle._context


def test_get_context(loop_factory):
    loop = loop_factory()
    h = loop.call_soon(_callback)
    if loop_factory.is_ferroloop:
        assert callable(h.get_context)
    assert isinstance(_context_of(h), contextvars.Context)
    assert _context_of(h) is not contextvars.copy_context()
    ctx = contextvars.copy_context()
    h2 = loop.call_soon(_callback, context=ctx)
    assert _context_of(h2) is ctx
    t = loop.call_later(1, _callback, context=ctx)
    assert _context_of(t) is ctx
    t2 = loop.call_soon_threadsafe(_callback, context=ctx)
    assert _context_of(t2) is ctx
    for x in (h, h2, t, t2):
        x.cancel()


@pytest.mark.parametrize("debug", [False, True], ids=["nodebug", "debug"])
@pytest.mark.parametrize("how", ["soon", "later", "at", "threadsafe"])
@pytest.mark.parametrize(
    "callback,args",
    [
        (_callback, ()),
        (_callback, (1, "a", None)),
        (functools.partial(_callback, 1, k=2), (3,)),
        (_Obj().method, (5,)),
        (print, ("x",)),
        (lambda: None, ()),
    ],
    ids=["function", "args", "partial", "method", "builtin", "lambda"],
)
def test_repr_matches_asyncio(loop_factory, how, callback, args, debug):
    loop = loop_factory()
    ref = make_loop("asyncio")
    try:
        reprs = []
        for lp in (loop, ref):
            lp.set_debug(debug)
            h = _schedule(lp, how, callback, *args)
            text = [repr(h)]
            h.cancel()
            text.append(repr(h))
            if how == "later":
                text = [t.replace(f"when={h.when()!r}", "when=WHEN") for t in text]
            reprs.append([normalise(t) for t in text])
            lp.set_debug(False)
        assert reprs[0] == reprs[1]
        if how in ("later", "at"):
            assert reprs[0][0].startswith("<TimerHandle when=")
            assert reprs[0][1].startswith("<TimerHandle cancelled when=")
        else:
            assert reprs[0][0].startswith("<Handle ")
            assert reprs[0][1].startswith("<Handle cancelled")
        if debug:
            assert "created at " in reprs[0][0]
            # Debug mode keeps the callback in the repr of a cancelled handle.
            assert reprs[0][1] == reprs[0][0].replace("<Handle", "<Handle cancelled").replace(
                "<TimerHandle", "<TimerHandle cancelled"
            )
        else:
            assert "created at" not in reprs[0][0]
    finally:
        ref.close()


# Regression test for a bug this suite found (fixed in 5d4e9a9). Before the fix:
# crates/ferroloop-py/src/loop_core.rs LoopCore::call_at extracts `when` as f64 and handle.rs
# stores TimerData.when: f64, so call_at(5, cb).when() is 5.0 and the repr says when=5.0; asyncio
# keeps the object it was given (when() == 5, repr when=5)
def test_call_at_keeps_the_deadline_object(loop):
    h = loop.call_at(5, _callback)
    assert type(h.when()) is int
    code = _callback.__code__
    assert (
        repr(h) == f"<TimerHandle when=5 _callback() at {code.co_filename}:{code.co_firstlineno}>"
    )
    h.cancel()


def test_context_is_captured_when_scheduling(loop):
    seen = []
    token = var.set("at-schedule")
    try:
        loop.call_soon(lambda: seen.append(("soon", var.get())))
        loop.call_later(0.001, lambda: seen.append(("later", var.get())))
        loop.call_soon_threadsafe(lambda: seen.append(("threadsafe", var.get())))
    finally:
        var.reset(token)
    var_token = var.set("changed-after")
    try:
        loop.call_later(0.01, loop.stop)
        run_bounded(loop)
    finally:
        var.reset(var_token)
    assert sorted(seen) == [
        ("later", "at-schedule"),
        ("soon", "at-schedule"),
        ("threadsafe", "at-schedule"),
    ]


def test_callback_changes_do_not_leak(loop):
    seen = []

    def setter():
        var.set("inside")
        seen.append(var.get())

    loop.call_soon(setter)
    loop.call_soon(lambda: seen.append(var.get()))
    loop.call_soon(loop.stop)
    run_bounded(loop)
    assert seen == ["inside", "unset"]
    assert var.get() == "unset"


def test_explicit_context_is_used(loop):
    ctx = contextvars.copy_context()
    ctx.run(var.set, "explicit")
    seen = []

    def cb(tag):
        seen.append((tag, var.get()))
        var.set(f"set by {tag}")

    loop.call_soon(cb, "soon", context=ctx)
    loop.call_later(0.001, cb, "later", context=ctx)
    loop.call_at(loop.time() + 0.002, cb, "at", context=ctx)
    loop.call_soon_threadsafe(cb, "threadsafe", context=ctx)
    loop.call_later(0.02, loop.stop)
    run_bounded(loop)
    assert seen == [
        ("soon", "explicit"),
        ("threadsafe", "set by soon"),
        ("later", "set by threadsafe"),
        ("at", "set by later"),
    ]
    assert ctx[var] == "set by at"
    assert var.get() == "unset"


def test_task_context(loop):
    ctx = contextvars.copy_context()
    ctx.run(var.set, "task-ctx")

    async def main():
        before = var.get()
        var.set("set by task")
        await asyncio.sleep(0)
        return before

    task = loop.create_task(main(), context=ctx)
    assert loop.run_until_complete(task) == "task-ctx"
    assert ctx[var] == "set by task"
    assert var.get() == "unset"


def _exception_contexts(loop, debug=False):
    loop.set_debug(debug)
    seen = []
    loop.set_exception_handler(lambda lp, context: seen.append(dict(context)))
    h = loop.call_soon(_raiser, 1, 2)
    t = loop.call_later(0.001, _raiser, "t")
    after = []
    loop.call_later(0.002, after.append, "still running")
    loop.call_later(0.01, loop.stop)
    run_bounded(loop)
    loop.set_debug(False)
    return seen, (h, t), after


@pytest.mark.parametrize("debug", [False, True], ids=["nodebug", "debug"])
def test_callback_exception_goes_to_the_handler(loop_factory, debug):
    loop = loop_factory()
    ref = make_loop("asyncio")
    try:
        seen, handles, after = _exception_contexts(loop, debug)
        ref_seen, _, _ = _exception_contexts(ref, debug)
    finally:
        ref.close()
    assert after == ["still running"]
    assert len(seen) == 2
    for context, handle, ref_context in zip(seen, handles, ref_seen):
        assert sorted(context) == sorted(ref_context)
        expected_keys = {"message", "exception", "handle"}
        if debug:
            expected_keys.add("source_traceback")
        assert set(context) == expected_keys
        assert context["handle"] is handle
        assert normalise(context["message"]) == normalise(ref_context["message"])
        assert context["message"].startswith("Exception in callback _raiser(")
        exc = context["exception"]
        assert type(exc) is ValueError
        assert exc.args == ref_context["exception"].args
        if debug:
            frame = context["source_traceback"][-1]
            ref_frame = ref_context["source_traceback"][-1]
            assert (frame.filename, frame.lineno, frame.name) == (
                ref_frame.filename,
                ref_frame.lineno,
                ref_frame.name,
            )


def test_default_exception_handler_logs_like_asyncio(loop_factory, caplog):
    outputs = []
    for lp in (loop_factory(), make_loop("asyncio")):
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            lp.call_soon(_raiser, 7)
            lp.call_soon(lp.stop)
            run_bounded(lp)
        lp.close()
        records = [r for r in caplog.records if r.name == "asyncio"]
        assert len(records) == 1
        rec = records[0]
        assert rec.exc_info[0] is ValueError
        outputs.append((rec.levelname, normalise(rec.getMessage())))
    assert outputs[0] == outputs[1]
    assert outputs[0][1].startswith("Exception in callback _raiser(7)")


def test_base_exceptions_other_than_exit_and_interrupt_go_to_the_handler(loop):
    seen = []
    loop.set_exception_handler(lambda lp, context: seen.append(context["exception"]))

    def raise_cancelled():
        raise asyncio.CancelledError("cb")

    def raise_generator_exit():
        raise GeneratorExit

    loop.call_soon(raise_cancelled)
    loop.call_soon(raise_generator_exit)
    loop.call_soon(loop.stop)
    run_bounded(loop)
    assert [type(e) for e in seen] == [asyncio.CancelledError, GeneratorExit]


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_interrupt_and_exit_propagate_from_run_forever(loop, exc_type):
    log = []

    def raiser():
        raise exc_type("stop now")

    loop.call_soon(log.append, 1)
    loop.call_soon(raiser)
    loop.call_soon(log.append, 2)
    with pytest.raises(exc_type, match="stop now"):
        loop.run_forever()
    assert log == [1]
    assert not loop.is_running()
    assert asyncio.events._get_running_loop() is None
    # The rest of the pass is still queued and runs next time.
    loop.call_soon(loop.stop)
    run_bounded(loop)
    assert log == [1, 2]


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_interrupt_and_exit_propagate_from_run_until_complete(loop, exc_type):
    def raiser():
        raise exc_type("from callback")

    async def main():
        loop.call_soon(raiser)
        await asyncio.sleep(10)

    task = loop.create_task(main())
    with pytest.raises(exc_type, match="from callback"):
        loop.run_until_complete(task)
    assert not loop.is_running()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(task)


def test_interrupt_from_a_timer_propagates(loop):
    def raiser():
        raise KeyboardInterrupt

    loop.call_later(0.001, raiser)
    with pytest.raises(KeyboardInterrupt):
        run_bounded(loop)


def test_context_already_entered_is_reported(loop_factory):
    results = []
    for lp in (loop_factory(), make_loop("asyncio")):
        seen = []
        lp.set_exception_handler(lambda _lp, context, seen=seen: seen.append(context))
        ctx = contextvars.copy_context()
        ran = []
        lp.call_soon(ran.append, 1, context=ctx)
        lp.call_soon(lp.stop)
        ctx.run(run_bounded, lp)
        lp.close()
        assert ran == []
        assert len(seen) == 1
        exc = seen[0]["exception"]
        results.append((type(exc), normalise(str(exc)), normalise(seen[0]["message"])))
    assert results[0] == results[1]
    assert results[0][0] is RuntimeError


# Regression test for a bug this suite found (fixed in 5d4e9a9). Before the fix:
# crates/ferroloop-py/src/handle.rs Handle::run calls PyContext_Enter on the stored context, which
# raises TypeError('an instance of Context was expected') for a non-Context; asyncio's Handle._run
# calls self._context.run(...) and reports AttributeError
def test_non_context_object_error_matches_asyncio(loop_factory):
    results = []
    for lp in (loop_factory(), make_loop("asyncio")):
        seen = []
        lp.set_exception_handler(lambda _lp, context, seen=seen: seen.append(context))
        lp.call_soon(_callback, context=object())
        lp.call_soon(lp.stop)
        run_bounded(lp)
        lp.close()
        results.append([type(c["exception"]) for c in seen])
    assert results[0] == results[1] == [AttributeError]


def test_handle_after_exception_loop_keeps_running(loop):
    seen = []
    loop.set_exception_handler(lambda lp, context: seen.append(context["message"]))
    loop.call_soon(_raiser)
    log = run_passes(loop, 2)
    assert log == [("pass", 0), ("pass", 1)]
    assert len(seen) == 1


def test_exception_in_exception_handler_is_logged(loop_factory, caplog):
    outputs = []
    for lp in (loop_factory(), make_loop("asyncio")):
        caplog.clear()

        def bad_handler(_lp, context):
            raise RuntimeError("handler failed")

        lp.set_exception_handler(bad_handler)
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            lp.call_soon(_raiser)
            lp.call_soon(lp.stop)
            run_bounded(lp)
        lp.close()
        outputs.append(
            [
                (r.levelname, normalise(r.getMessage()))
                for r in caplog.records
                if r.name == "asyncio"
            ]
        )
    assert outputs[0] == outputs[1]
    assert outputs[0] and "Unhandled error in exception handler" in outputs[0][0][1]
