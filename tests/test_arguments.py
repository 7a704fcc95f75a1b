"""Bad arguments raise the same exception type and message as asyncio."""

from __future__ import annotations

import concurrent.futures
import decimal
import threading

import pytest
from conftest import make_loop, run_bounded


def _cb():
    pass


async def _coro_fn():
    pass


def _outcome(func):
    try:
        result = func()
    except Exception as exc:  # noqa: BLE001 - the exception is the result
        return type(exc), str(exc)
    return "ok", result


def _compare(loop_factory, action, *, debug=False):
    """Run ``action(loop)`` on the loop under test and on asyncio's loop;
    return both outcomes (exception type and message)."""
    out = []
    for lp in (loop_factory(), make_loop("asyncio")):
        lp.set_debug(debug)
        out.append(_outcome(lambda lp=lp: action(lp)))
        lp.close()
    assert out[0] == out[1]
    return out[0]


def test_call_later_none_delay(loop_factory):
    assert _compare(loop_factory, lambda lp: lp.call_later(None, _cb)) == (
        TypeError,
        "delay must not be None",
    )


def test_call_at_none_when(loop_factory):
    assert _compare(loop_factory, lambda lp: lp.call_at(None, _cb)) == (
        TypeError,
        "when cannot be None",
    )


def test_call_later_str_delay(loop_factory):
    assert _compare(loop_factory, lambda lp: lp.call_later("x", _cb)) == (
        TypeError,
        "unsupported operand type(s) for +: 'float' and 'str'",
    )


def test_call_later_none_delay_on_closed_loop_is_still_type_error(loop_factory):
    def action(lp):
        lp.close()
        return lp.call_later(None, _cb)

    assert _compare(loop_factory, action) == (TypeError, "delay must not be None")


# Regression test for a bug this suite found (fixed in 5d4e9a9). Before the fix:
# crates/ferroloop-py/src/loop_core.rs LoopCore::call_later converts the delay with
# delay.extract::<f64>(), which accepts anything with __float__ (Decimal, numpy scalars...), and
# only falls back to `now + delay` on failure; asyncio computes self.time() + delay, which raises
# TypeError for a Decimal
def test_call_later_decimal_delay(loop_factory):
    outcome = _compare(loop_factory, lambda lp: lp.call_later(decimal.Decimal(1), _cb))
    assert outcome[0] is TypeError


@pytest.mark.parametrize(
    "method",
    ["call_soon", "call_later", "call_at", "call_soon_threadsafe"],
)
def test_non_callable_in_debug_mode(loop_factory, method):
    def action(lp):
        if method == "call_later":
            return lp.call_later(1, 42)
        if method == "call_at":
            return lp.call_at(1.0, 42)
        return getattr(lp, method)(42)

    expected_method = "call_at" if method == "call_later" else method
    assert _compare(loop_factory, action, debug=True) == (
        TypeError,
        f"a callable object was expected by {expected_method}(), got 42",
    )


@pytest.mark.parametrize("method", ["call_soon", "call_later", "call_soon_threadsafe"])
def test_coroutine_function_in_debug_mode(loop_factory, method):
    def action(lp):
        if method == "call_later":
            return lp.call_later(1, _coro_fn)
        return getattr(lp, method)(_coro_fn)

    expected_method = "call_at" if method == "call_later" else method
    assert _compare(loop_factory, action, debug=True) == (
        TypeError,
        f"coroutines cannot be used with {expected_method}()",
    )


def test_coroutine_object_in_debug_mode(loop_factory):
    coros = []

    def action(lp):
        coro = _coro_fn()
        coros.append(coro)
        return lp.call_soon(coro)

    assert _compare(loop_factory, action, debug=True) == (
        TypeError,
        "coroutines cannot be used with call_soon()",
    )
    for c in coros:
        c.close()


def test_non_callable_without_debug_fails_when_run(loop_factory):
    results = []
    for lp in (loop_factory(), make_loop("asyncio")):
        seen = []
        lp.set_exception_handler(lambda _lp, ctx, seen=seen: seen.append(ctx["exception"]))
        lp.call_soon(42)
        lp.call_soon(lp.stop)
        run_bounded(lp)
        lp.close()
        results.append([(type(e), str(e)) for e in seen])
    assert results[0] == results[1] == [(TypeError, "'int' object is not callable")]


def test_set_task_factory_non_callable(loop_factory):
    assert _compare(loop_factory, lambda lp: lp.set_task_factory(1)) == (
        TypeError,
        "task factory must be a callable or None",
    )


def test_set_exception_handler_non_callable(loop_factory):
    assert _compare(loop_factory, lambda lp: lp.set_exception_handler(1)) == (
        TypeError,
        "A callable object or None is expected, got 1",
    )


def test_set_default_executor_non_executor(loop_factory):
    assert _compare(loop_factory, lambda lp: lp.set_default_executor(object())) == (
        TypeError,
        "executor must be ThreadPoolExecutor instance",
    )
    with concurrent.futures.ProcessPoolExecutor(1) as ex:
        assert _compare(loop_factory, lambda lp: lp.set_default_executor(ex)) == (
            TypeError,
            "executor must be ThreadPoolExecutor instance",
        )


def test_none_task_factory_and_handler_are_accepted(loop_factory):
    def action(lp):
        lp.set_task_factory(None)
        lp.set_exception_handler(None)
        return lp.get_task_factory(), lp.get_exception_handler()

    assert _compare(loop_factory, action) == ("ok", (None, None))


@pytest.mark.parametrize("method", ["call_soon", "call_later", "call_at"])
def test_debug_mode_rejects_calls_from_other_threads(loop_factory, method):
    results = []
    for lp in (loop_factory(), make_loop("asyncio")):
        lp.set_debug(True)
        out = []

        def other_thread(lp=lp, out=out):
            if method == "call_later":
                out.append(_outcome(lambda: lp.call_later(1, _cb)))
            elif method == "call_at":
                out.append(_outcome(lambda: lp.call_at(1.0, _cb)))
            else:
                out.append(_outcome(lambda: lp.call_soon(_cb)))
            # call_soon_threadsafe is allowed from any thread.
            lp.call_soon_threadsafe(lp.stop)

        def start(lp=lp):
            threading.Thread(target=other_thread).start()

        lp.call_soon(start)
        run_bounded(lp)
        lp.close()
        results.append(out)
    assert (
        results[0]
        == results[1]
        == [
            (
                RuntimeError,
                "Non-thread-safe operation invoked on an event loop other than the current one",
            )
        ]
    )


# Regression test for a bug this suite found (fixed in 5d4e9a9). Before the fix:
# crates/ferroloop-py/src/loop_core.rs fileobj_to_fd rejects fds above i32::MAX with
# ValueError('Invalid file descriptor: N') (and raises OverflowError about a C long above i64);
# asyncio passes the int to the selector, whose register raises OverflowError('Python int too
# large to convert to C int')
def test_huge_fd(loop_factory):
    outcome = _compare(loop_factory, lambda lp: lp.add_reader(2**40, _cb))
    assert outcome[0] is OverflowError


def test_selector_argument_validation():
    import ferroloop

    with pytest.raises(ValueError, match="unknown selector .kqueue."):
        ferroloop.new_event_loop("kqueue")
    with pytest.raises(TypeError, match="selector must be None"):
        ferroloop.new_event_loop(42)


# The scheduling methods parse their own arguments (fastcall.rs): every
# shape of call gets what asyncio gives, result or TypeError and message.
_SCHEDULING_CALLS = [
    lambda lp: lp.call_soon(),
    lambda lp: lp.call_soon(callback=_cb),
    lambda lp: lp.call_soon(_cb, 1, 2),
    lambda lp: lp.call_soon(_cb, context=None),
    lambda lp: lp.call_soon(_cb, 1, context=None),
    lambda lp: lp.call_soon(_cb, foo=1),
    lambda lp: lp.call_soon(_cb, 1, callback=_cb),
    lambda lp: lp.call_soon(_cb, context=None, other=2),
    lambda lp: lp.call_soon_threadsafe(),
    lambda lp: lp.call_soon_threadsafe(callback=_cb, context=None),
    lambda lp: lp.call_soon_threadsafe(_cb, bar=3),
    lambda lp: lp.call_later(),
    lambda lp: lp.call_later(1),
    lambda lp: lp.call_later(delay=1),
    lambda lp: lp.call_later(callback=_cb, delay=1),
    lambda lp: lp.call_later(1, _cb, 2, 3, context=None),
    lambda lp: lp.call_later(1, _cb, delay=2),
    lambda lp: lp.call_later(1, callback=_cb, when=2),
    lambda lp: lp.call_at(),
    lambda lp: lp.call_at(1),
    lambda lp: lp.call_at(when=1, callback=_cb),
    lambda lp: lp.call_at(1, _cb, 2, callback=_cb),
]


def _shape(lp, call):
    """The call's outcome, a handle reduced to its class name and repr's
    callback part (its address and the clock differ between loops)."""
    result = call(lp)
    return type(result).__name__, repr(result).split(" ")[-1]


@pytest.mark.parametrize("index", range(len(_SCHEDULING_CALLS)))
def test_scheduling_call_shapes_match_asyncio(loop_factory, index):
    call = _SCHEDULING_CALLS[index]
    _compare(loop_factory, lambda lp: _shape(lp, call))


def test_scheduling_arguments_reach_the_callback(loop_factory):
    import contextvars

    var = contextvars.ContextVar("var", default="unset")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "in ctx")
    seen = []

    def record(*args):
        seen.append((args, var.get()))

    lp = loop_factory()
    try:
        lp.call_soon(record, 1, "two", context=ctx)
        lp.call_soon(record, *range(40))
        lp.call_later(0, record, 3, context=None)
        lp.call_at(lp.time(), record, 4, 5)
        lp.call_soon(callback=record)
        lp.call_later(0.001, lp.stop)
        run_bounded(lp)
    finally:
        lp.close()
    assert seen == [
        ((1, "two"), "in ctx"),
        (tuple(range(40)), "unset"),
        ((), "unset"),
        ((3,), "unset"),
        ((4, 5), "unset"),
    ]


_WRITE_SHAPES = [
    lambda t: t.write(),
    lambda t: t.write(b"x", b"y"),
    lambda t: t.write(data=b"kw"),
    lambda t: t.write(dat=b"x"),
    lambda t: t.write(b"x", data=b"y"),
    lambda t: t.write("text"),
    lambda t: t.write(memoryview(b"view")),
]


@pytest.mark.parametrize("index", range(len(_WRITE_SHAPES)))
def test_transport_write_call_shapes_match_asyncio(loop_factory, index):
    """A stream transport's `write` (native on ferroloop) takes and refuses
    the arguments asyncio's does, with its messages."""
    import asyncio
    import socket

    def action(lp):
        a, b = socket.socketpair()

        async def go():
            t, _ = await lp.connect_accepted_socket(asyncio.Protocol, a)
            try:
                _WRITE_SHAPES[index](t)
                await asyncio.sleep(0.01)
                b.setblocking(False)
                try:
                    return b.recv(100)
                except BlockingIOError:
                    return b""
            finally:
                t.close()

        try:
            return lp.run_until_complete(go())
        finally:
            b.close()

    _compare(loop_factory, action)
