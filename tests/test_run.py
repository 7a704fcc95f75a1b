"""run_until_complete, tasks and futures."""

from __future__ import annotations

import asyncio
import contextvars
import re

import pytest
from conftest import make_loop, run_coro


class Boom(Exception):
    pass


async def _value(v, delay=0):
    await asyncio.sleep(delay)
    return v


async def _fail(delay=0):
    await asyncio.sleep(delay)
    raise Boom("failed", delay)


def test_run_until_complete_coroutine_result(loop):
    assert loop.run_until_complete(_value(42)) == 42
    assert loop.run_until_complete(_value("x", 0.01)) == "x"


def test_run_until_complete_future(loop):
    fut = loop.create_future()
    loop.call_later(0.01, fut.set_result, "done")
    assert loop.run_until_complete(fut) == "done"
    # An already completed future returns at once.
    assert loop.run_until_complete(fut) == "done"


def test_run_until_complete_task(loop):
    task = loop.create_task(_value(7, 0.01))
    assert loop.run_until_complete(task) == 7
    assert task.done() and task.result() == 7


def test_run_until_complete_awaitable(loop):
    class Awaitable:
        def __await__(self):
            return _value("awaited").__await__()

    assert loop.run_until_complete(Awaitable()) == "awaited"


def test_run_until_complete_exception(loop):
    with pytest.raises(Boom) as info:
        loop.run_until_complete(_fail(0.01))
    assert info.value.args == ("failed", 0.01)
    fut = loop.create_future()
    exc = Boom("future")
    loop.call_soon(fut.set_exception, exc)
    with pytest.raises(Boom) as info:
        loop.run_until_complete(fut)
    assert info.value is exc


def test_run_until_complete_cancelled(loop):
    task = loop.create_task(_value(1, 10))
    loop.call_later(0.01, task.cancel)
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(task)
    assert task.cancelled()


def test_run_until_complete_stopped_before_done(loop):
    async def main():
        loop.stop()
        await asyncio.sleep(10)

    task = loop.create_task(main())
    with pytest.raises(RuntimeError) as info:
        loop.run_until_complete(task)
    assert str(info.value) == "Event loop stopped before Future completed."
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(task)


def test_run_until_complete_not_awaitable(loop_factory):
    messages = []
    for lp in (loop_factory(), make_loop("asyncio")):
        with pytest.raises(TypeError) as info:
            lp.run_until_complete(42)
        messages.append(str(info.value))
        lp.close()
    assert messages[0] == messages[1]
    assert "An asyncio.Future, a coroutine or an awaitable is required" in messages[0]


def test_run_until_complete_future_of_another_loop(loop):
    other = make_loop("asyncio")
    try:
        fut = other.create_future()
        with pytest.raises(ValueError, match="different loop"):
            loop.run_until_complete(fut)
    finally:
        other.close()


def test_task_result_with_gather_and_wait_for(loop):
    async def main():
        results = await asyncio.gather(*(_value(i, 0.001 * (5 - i)) for i in range(5)))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(_value(1, 10), 0.01)
        failed = await asyncio.gather(_fail(), return_exceptions=True)
        return results, type(failed[0])

    assert run_coro(loop, main()) == ([0, 1, 2, 3, 4], Boom)


def test_create_task_names(loop):
    async def main():
        t1 = loop.create_task(_value(1))
        t2 = loop.create_task(_value(2), name="second")
        t3 = asyncio.ensure_future(_value(3), loop=loop)
        t4 = asyncio.create_task(_value(4), name=42)
        await asyncio.gather(t1, t2, t3, t4)
        return [t.get_name() for t in (t1, t2, t3, t4)]

    names = run_coro(loop, main())
    assert re.fullmatch(r"Task-\d+", names[0])
    assert re.fullmatch(r"Task-\d+", names[2])
    assert names[1] == "second"
    assert names[3] == "42"
    assert int(names[2][5:]) > int(names[0][5:])


def test_create_task_context(loop):
    var = contextvars.ContextVar("v", default="default")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "explicit")

    async def read():
        return var.get()

    var_token = var.set("current")
    try:
        implicit = loop.create_task(read())
        explicit = loop.create_task(read(), context=ctx)
    finally:
        var.reset(var_token)
    assert loop.run_until_complete(implicit) == "current"
    assert loop.run_until_complete(explicit) == "explicit"


def test_create_task_returns_bound_task(loop):
    async def main():
        return asyncio.current_task()

    task = loop.create_task(main())
    assert isinstance(task, asyncio.Task)
    assert task.get_loop() is loop
    assert loop.run_until_complete(task) is task
    assert asyncio.all_tasks(loop) == set()


def test_set_task_factory_is_used(loop):
    calls = []

    class MyTask(asyncio.Task):
        pass

    def factory(lp, coro, **kwargs):
        calls.append((lp, sorted(kwargs)))
        return MyTask(coro, loop=lp, **kwargs)

    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory
    task = loop.create_task(_value(5), name="named")
    assert type(task) is MyTask
    assert task.get_name() == "named"
    ctx = contextvars.copy_context()
    task2 = loop.create_task(_value(6), context=ctx)
    assert type(task2) is MyTask
    assert loop.run_until_complete(task) == 5
    assert loop.run_until_complete(task2) == 6
    assert calls == [(loop, []), (loop, ["context"])]

    # Tasks made by asyncio functions go through the factory too.
    async def main():
        t = asyncio.ensure_future(_value(8))
        return type(t), await t

    assert loop.run_until_complete(main()) == (MyTask, 8)
    loop.set_task_factory(None)
    assert loop.get_task_factory() is None
    task3 = loop.create_task(_value(9))
    assert type(task3) is not MyTask
    assert loop.run_until_complete(task3) == 9


def test_create_future_is_bound_to_the_loop(loop):
    fut = loop.create_future()
    assert isinstance(fut, asyncio.Future)
    assert fut.get_loop() is loop
    assert not fut.done()

    async def waiter():
        return await fut

    loop.call_later(0.005, fut.set_result, "value")
    assert loop.run_until_complete(waiter()) == "value"


def test_future_done_callbacks_run_on_the_loop(loop):
    fut = loop.create_future()
    seen = []
    fut.add_done_callback(lambda f: seen.append((f.result(), asyncio.get_running_loop())))
    fut.set_result(3)
    assert seen == []  # scheduled with call_soon, not called synchronously
    loop.run_until_complete(_value(None))
    assert seen == [(3, loop)]


def test_run_until_complete_twice(loop):
    for i in range(3):
        assert loop.run_until_complete(_value(i, 0.001)) == i
    assert not loop.is_running()


def test_sleep_timing(loop):
    async def main():
        t0 = loop.time()
        await asyncio.sleep(0.05)
        return loop.time() - t0

    elapsed = run_coro(loop, main())
    assert 0.045 <= elapsed < 1.0
