"""A closed loop refuses work; a running loop refuses to be closed or run
again; a loop refuses to run inside another running loop."""

from __future__ import annotations

import asyncio
import socket

import pytest
from conftest import make_loop, run_bounded


def _cb():
    pass


async def _coro():
    return 1


def _closed_calls():
    """name -> action(loop, cleanup list)."""

    def coro_call(method):
        def action(lp, cleanup):
            coro = _coro()
            cleanup.append(coro.close)
            return getattr(lp, method)(coro)

        return action

    def fd_call(method):
        def action(lp, cleanup):
            a, b = socket.socketpair()
            cleanup.extend([a.close, b.close])
            return getattr(lp, method)(a, _cb)

        return action

    return {
        "call_soon": lambda lp, c: lp.call_soon(_cb),
        "call_later": lambda lp, c: lp.call_later(1, _cb),
        "call_at": lambda lp, c: lp.call_at(lp.time() + 1, _cb),
        "call_soon_threadsafe": lambda lp, c: lp.call_soon_threadsafe(_cb),
        "create_task": coro_call("create_task"),
        "run_until_complete": coro_call("run_until_complete"),
        "run_until_complete(future)": lambda lp, c: lp.run_until_complete(lp.create_future()),
        "run_forever": lambda lp, c: lp.run_forever(),
        "run_in_executor": lambda lp, c: lp.run_in_executor(None, _cb),
        "add_reader": fd_call("add_reader"),
        "add_writer": fd_call("add_writer"),
    }


CLOSED_CALLS = _closed_calls()


@pytest.mark.parametrize("name", list(CLOSED_CALLS))
def test_closed_loop_refuses(loop_factory, name):
    action = CLOSED_CALLS[name]
    for lp in (loop_factory(), make_loop("asyncio")):
        lp.close()
        assert lp.is_closed()
        cleanup = []
        try:
            with pytest.raises(RuntimeError) as info:
                action(lp, cleanup)
        finally:
            for fn in cleanup:
                fn()
        assert str(info.value) == "Event loop is closed"


def test_remove_reader_and_writer_on_closed_loop_return_false(loop_factory):
    a, b = socket.socketpair()
    try:
        for lp in (loop_factory(), make_loop("asyncio")):
            lp.add_reader(a, _cb)
            lp.add_writer(a, _cb)
            lp.close()
            assert lp.remove_reader(a) is False
            assert lp.remove_writer(a) is False
    finally:
        a.close()
        b.close()


def test_close_drops_pending_callbacks(loop):
    ran = []
    h = loop.call_soon(ran.append, 1)
    t = loop.call_later(0, ran.append, 2)
    loop.close()
    assert ran == []
    assert not h.cancelled() and not t.cancelled()


def test_close_twice_is_fine(loop):
    loop.close()
    loop.close()
    assert loop.is_closed()
    assert "closed=True" in repr(loop)


def test_repr(loop_factory):
    reprs = []
    for lp in (loop_factory(), make_loop("asyncio")):
        inside = []
        lp.call_soon(lambda lp=lp, inside=inside: inside.append(repr(lp)))
        lp.call_soon(lp.stop)
        run_bounded(lp)
        before = repr(lp)
        lp.close()
        reprs.append(
            (inside[0].split(" ", 1)[1], before.split(" ", 1)[1], repr(lp).split(" ", 1)[1])
        )
    assert (
        reprs[0]
        == reprs[1]
        == (
            "running=True closed=False debug=False>",
            "running=False closed=False debug=False>",
            "running=False closed=True debug=False>",
        )
    )


def test_close_running_loop_raises(loop):
    errors = []

    def try_close():
        try:
            loop.close()
        except RuntimeError as exc:
            errors.append(str(exc))
        loop.stop()

    loop.call_soon(try_close)
    run_bounded(loop)
    assert errors == ["Cannot close a running event loop"]
    assert not loop.is_closed()
    # The loop still works.
    assert loop.run_until_complete(_coro()) == 1


def test_nested_run_until_complete_raises(loop):
    async def main():
        inner = _coro()
        try:
            loop.run_until_complete(inner)
        except RuntimeError as exc:
            return str(exc)
        finally:
            inner.close()

    assert loop.run_until_complete(main()) == "This event loop is already running"


def test_nested_run_forever_raises(loop):
    errors = []

    def nested():
        try:
            loop.run_forever()
        except RuntimeError as exc:
            errors.append(str(exc))
        loop.stop()

    loop.call_soon(nested)
    run_bounded(loop)
    assert errors == ["This event loop is already running"]
    assert not loop.is_running()


@pytest.mark.parametrize("inner_kind", ["asyncio", "ferroloop"])
def test_running_another_loop_inside_raises(loop, inner_kind):
    inner = make_loop(inner_kind)
    try:

        async def main():
            coro = _coro()
            try:
                inner.run_until_complete(coro)
            except RuntimeError as exc:
                return str(exc)
            finally:
                coro.close()

        assert (
            loop.run_until_complete(main())
            == "Cannot run the event loop while another loop is running"
        )

        def forever():
            try:
                inner.run_forever()
            except RuntimeError as exc:
                return str(exc)

        async def main2():
            return forever()

        assert (
            loop.run_until_complete(main2())
            == "Cannot run the event loop while another loop is running"
        )
        assert not inner.is_running()
        # Once the outer loop stopped, the inner one runs.
        assert inner.run_until_complete(_coro()) == 1
    finally:
        inner.close()


def test_is_running_and_running_loop(loop):
    seen = []
    assert not loop.is_running()

    def check():
        seen.append((loop.is_running(), asyncio.get_running_loop() is loop))
        loop.stop()

    loop.call_soon(check)
    run_bounded(loop)
    assert seen == [(True, True)]
    assert not loop.is_running()
    with pytest.raises(RuntimeError, match="no running event loop"):
        asyncio.get_running_loop()
