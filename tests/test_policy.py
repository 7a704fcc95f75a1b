"""ferroloop.EventLoopPolicy, install(), run(), and asyncio.Runner with
ferroloop loops. The policy contract is checked on asyncio's default policy
too, so both satisfy the same expectations."""

from __future__ import annotations

import asyncio
import threading
import warnings

import ferroloop
import pytest

pytestmark = pytest.mark.usefixtures("restore_policy")


def _asyncio_loop_type():
    lp = asyncio.SelectorEventLoop()
    lp.close()
    return type(lp)


ASYNCIO_LOOP = _asyncio_loop_type()


def _policy(kind):
    if kind == "asyncio":
        return asyncio.DefaultEventLoopPolicy(), ASYNCIO_LOOP
    return ferroloop.EventLoopPolicy(), ferroloop.Loop


@pytest.fixture(params=["asyncio", "ferroloop"])
def kind(request):
    return request.param


def _in_thread(fn):
    result = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - returned to the test
            result["error"] = exc

    t = threading.Thread(target=target, name="policy-thread")
    t.start()
    t.join(timeout=10)
    assert not t.is_alive()
    return result


def test_get_event_loop_in_main_thread(kind):
    policy, loop_type = _policy(kind)
    asyncio.set_event_loop_policy(policy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loop = asyncio.get_event_loop()
        again = asyncio.get_event_loop()
    assert type(loop) is loop_type
    assert loop is again
    assert policy.get_event_loop() is loop
    assert not loop.is_closed()


def test_get_event_loop_in_other_thread_raises(kind):
    policy, _ = _policy(kind)
    asyncio.set_event_loop_policy(policy)
    result = _in_thread(asyncio.get_event_loop)
    assert isinstance(result.get("error"), RuntimeError)
    assert str(result["error"]) == "There is no current event loop in thread 'policy-thread'."


def test_set_event_loop_in_other_thread(kind):
    policy, loop_type = _policy(kind)
    asyncio.set_event_loop_policy(policy)

    def body():
        lp = asyncio.new_event_loop()
        try:
            asyncio.set_event_loop(lp)
            got = asyncio.get_event_loop()
            asyncio.set_event_loop(None)
            try:
                asyncio.get_event_loop()
            except RuntimeError as exc:
                after_none = str(exc)
            return type(lp), got is lp, after_none
        finally:
            lp.close()

    result = _in_thread(body)
    assert "error" not in result, result.get("error")
    assert result["value"] == (
        loop_type,
        True,
        "There is no current event loop in thread 'policy-thread'.",
    )


def test_set_event_loop_rejects_non_loops(kind):
    policy, _ = _policy(kind)
    with pytest.raises(TypeError, match="loop must be an instance of AbstractEventLoop"):
        policy.set_event_loop(object())


def test_new_event_loop_and_run_use_the_policy(kind):
    policy, loop_type = _policy(kind)
    asyncio.set_event_loop_policy(policy)
    lp = asyncio.new_event_loop()
    try:
        assert type(lp) is loop_type
    finally:
        lp.close()

    async def main():
        running = asyncio.get_running_loop()
        return type(running), asyncio.get_event_loop() is running

    assert asyncio.run(main()) == (loop_type, True)
    with asyncio.Runner() as runner:
        assert runner.run(main()) == (loop_type, True)
        assert type(runner.get_loop()) is loop_type


def test_set_event_loop_policy_none_restores_asyncio():
    ferroloop.install()
    assert isinstance(asyncio.get_event_loop_policy(), ferroloop.EventLoopPolicy)
    asyncio.set_event_loop_policy(None)
    assert not isinstance(asyncio.get_event_loop_policy(), ferroloop.EventLoopPolicy)
    lp = asyncio.new_event_loop()
    try:
        assert type(lp) is ASYNCIO_LOOP
    finally:
        lp.close()


def test_install():
    ferroloop.install()
    policy = asyncio.get_event_loop_policy()
    assert type(policy) is ferroloop.EventLoopPolicy
    lp = asyncio.new_event_loop()
    try:
        assert type(lp) is ferroloop.Loop
    finally:
        lp.close()
    assert repr(policy) == "<ferroloop._policy.EventLoopPolicy>"


def test_subclass_overriding_new_event_loop():
    made = []

    class PollPolicy(ferroloop.EventLoopPolicy):
        def new_event_loop(self):
            lp = ferroloop.new_event_loop("poll")
            made.append(lp)
            return lp

    asyncio.set_event_loop_policy(PollPolicy())

    async def main():
        return asyncio.get_running_loop().backend

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        lp = asyncio.get_event_loop()
    try:
        assert lp.backend == "poll"
        assert asyncio.run(main()) == "poll"
        assert len(made) == 2 and made[0] is lp
    finally:
        lp.close()


def test_subclass_overriding_loop_factory():
    class MyLoop(ferroloop.Loop):
        pass

    class MyPolicy(ferroloop.EventLoopPolicy):
        _loop_factory = MyLoop

    asyncio.set_event_loop_policy(MyPolicy())

    async def main():
        return type(asyncio.get_running_loop())

    assert asyncio.run(main()) is MyLoop


def test_get_event_loop_inside_a_coroutine_returns_the_running_loop(kind):
    policy, _ = _policy(kind)
    asyncio.set_event_loop_policy(policy)
    other = ferroloop.new_event_loop() if kind == "asyncio" else asyncio.SelectorEventLoop()
    asyncio.set_event_loop(other)  # the running loop wins over the set one
    try:

        async def main():
            running = asyncio.get_running_loop()
            return (
                asyncio.get_event_loop() is running,
                policy.get_event_loop() is running,
            )

        lp = policy.new_event_loop()
        try:
            got = lp.run_until_complete(main())
        finally:
            lp.close()
    finally:
        asyncio.set_event_loop(None)
        other.close()
    # asyncio's policy.get_event_loop() does not look at the running loop;
    # ferroloop's documents that it does.
    assert got == ((True, False) if kind == "asyncio" else (True, True))


def test_runner_with_loop_factory():
    async def main():
        return type(asyncio.get_running_loop())

    with asyncio.Runner(loop_factory=ferroloop.new_event_loop) as runner:
        assert runner.run(main()) is ferroloop.Loop
        lp = runner.get_loop()
        assert runner.run(main()) is ferroloop.Loop
        assert runner.get_loop() is lp
    assert lp.is_closed()


def test_runner_with_debug_and_factory():
    async def main():
        return asyncio.get_running_loop().get_debug()

    with asyncio.Runner(debug=True, loop_factory=ferroloop.new_event_loop) as runner:
        assert runner.run(main()) is True


def test_ferroloop_run():
    seen = {}

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            seen["agen finalized"] = True

    async def main():
        lp = asyncio.get_running_loop()
        seen["loop"] = lp
        seen["debug"] = lp.get_debug()
        g = agen()
        await g.__anext__()
        seen["gen"] = g
        seen["thread"] = await lp.run_in_executor(None, threading.current_thread)
        return "result"

    assert ferroloop.run(main(), debug=True) == "result"
    lp = seen["loop"]
    assert type(lp) is ferroloop.Loop
    assert seen["debug"] is True
    assert lp.is_closed()
    assert seen.get("agen finalized") is True
    seen["thread"].join(timeout=5)
    assert not seen["thread"].is_alive()


def test_ferroloop_run_propagates_exceptions_and_cancels_leftovers():
    state = {}

    async def leftover():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            state["cancelled"] = True
            raise

    async def main():
        asyncio.get_running_loop().create_task(leftover())
        await asyncio.sleep(0)
        raise LookupError("main failed")

    with pytest.raises(LookupError, match="main failed"):
        ferroloop.run(main())
    assert state == {"cancelled": True}


def test_ferroloop_run_inside_a_running_loop_raises():
    async def inner():
        pass

    async def outer():
        coro = inner()
        try:
            ferroloop.run(coro)
        except RuntimeError as exc:
            return str(exc)
        finally:
            coro.close()

    assert ferroloop.run(outer()) == "asyncio.run() cannot be called from a running event loop"


def test_ferroloop_run_rejects_non_coroutines():
    with pytest.raises(ValueError, match="a coroutine was expected"):
        ferroloop.run(42)


def test_ferroloop_run_does_not_touch_the_policy():
    before = asyncio.get_event_loop_policy()

    async def main():
        return type(asyncio.get_running_loop())

    assert ferroloop.run(main()) is ferroloop.Loop
    assert asyncio.get_event_loop_policy() is before


def test_loop_is_an_abstract_event_loop():
    lp = ferroloop.new_event_loop()
    try:
        assert isinstance(lp, asyncio.AbstractEventLoop)
        assert isinstance(lp, asyncio.BaseEventLoop)
        assert ferroloop.SelectorEventLoop is ferroloop.Loop
    finally:
        lp.close()
