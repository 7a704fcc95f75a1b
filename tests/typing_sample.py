"""User code that must type-check against ferroloop's stubs (``mypy --strict``).

tests/test_typing.py runs mypy on this file and then runs it, so every line
here is also real, working code. ``assert_type`` pins what the stubs say;
the ``type: ignore`` lines are errors mypy must report (``--warn-unused-ignores``
fails the check if one stops being an error).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import assert_type

import ferroloop


async def add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


async def echo_roundtrip(loop: asyncio.AbstractEventLoop) -> bytes:
    """Streams over a socket pair: the transports are asyncio's types."""
    a, b = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=a)
    transport, _ = await loop.create_connection(asyncio.Protocol, sock=b)
    assert_type(transport, asyncio.Transport)
    transport.write(b"ping")
    data = await reader.readexactly(4)
    transport.close()
    writer.close()
    await writer.wait_closed()
    return data


async def sock_roundtrip(loop: ferroloop.Loop) -> bytes:
    """sock_* on ferroloop's own loop type: awaitables of asyncio's results."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    try:
        sent = loop.sock_sendall(b, b"pong")
        assert_type(await sent, None)
        buf = bytearray(2)
        assert_type(await loop.sock_recv_into(a, buf), int)
        rest = loop.create_task(loop.sock_recv(a, 2))  # a coroutine to create_task
        assert_type(rest, asyncio.Task[bytes])
        return bytes(buf) + await rest
    finally:
        a.close()
        b.close()


def check_run() -> None:
    assert_type(ferroloop.run(add(1, 2)), int)
    assert ferroloop.run(add(1, 2), debug=False) == 3


def check_new_event_loop() -> None:
    loop = ferroloop.new_event_loop()
    assert_type(loop, ferroloop.Loop)
    try:
        assert_type(loop.backend, str)
        handle = loop.call_soon(print, "scheduled", "once")
        assert_type(handle, ferroloop.Handle)
        handle.cancel()
        timer = loop.call_later(0.01, loop.stop)
        assert_type(timer, ferroloop.TimerHandle)
        assert_type(timer.when(), float)
        loop.run_forever()
        assert_type(loop.run_until_complete(add(2, 3)), int)
        assert loop.run_until_complete(echo_roundtrip(loop)) == b"ping"
        assert loop.run_until_complete(sock_roundtrip(loop)) == b"pong"
        loop.call_soon(add, 1)  # type: ignore[arg-type]  # a coroutine function is no callback
        loop.call_soon(print, 1, context=None)
        stats = loop.stats()
        assert_type(stats, ferroloop.LoopStats)
        assert_type(stats.slowest_duration, float | None)
        assert stats.callbacks >= 2
    finally:
        loop.close()
    poll_loop = ferroloop.new_event_loop("poll")
    poll_loop.close()
    selector_loop = ferroloop.SelectorEventLoop(selector="select")
    assert_type(selector_loop, ferroloop.Loop)
    selector_loop.close()
    try:
        ferroloop.new_event_loop(kind="bogus")  # type: ignore[call-overload]
    except ValueError:
        pass
    else:
        raise AssertionError("kind='bogus' was accepted")


def check_proactor() -> None:
    if ferroloop.proactor_unavailable_reason() is not None:
        return  # io_uring blocked here: the types are what this checks
    loop = ferroloop.new_event_loop(kind="proactor")
    assert_type(loop, ferroloop.ProactorEventLoop)
    try:
        assert loop.run_until_complete(add(20, 22)) == 42
    finally:
        loop.close()


def check_runner() -> None:
    factory: Callable[[], asyncio.AbstractEventLoop] = ferroloop.new_event_loop
    with asyncio.Runner(loop_factory=ferroloop.new_event_loop) as runner:
        assert runner.run(add(1, 1)) == 2
    with asyncio.Runner(loop_factory=factory) as runner:
        assert runner.run(add(2, 2)) == 4
    with asyncio.Runner(loop_factory=ferroloop.SelectorEventLoop) as runner:
        assert runner.run(add(3, 3)) == 6


def check_policy() -> None:
    policy: asyncio.AbstractEventLoopPolicy = ferroloop.EventLoopPolicy()
    loop = policy.new_event_loop()
    loop.close()
    ferroloop.install()
    try:
        assert asyncio.run(add(3, 4)) == 7
    finally:
        asyncio.set_event_loop_policy(None)
    kind: str = ferroloop.DEFAULT_KIND
    assert kind in ("selector", "proactor", "auto")
    assert_type(ferroloop.__version__, str)


def main() -> None:
    check_run()
    check_new_event_loop()
    check_proactor()
    check_runner()
    check_policy()


if __name__ == "__main__":
    main()
