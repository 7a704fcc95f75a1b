"""Transports closed or aborted from inside their own protocol's callbacks,
and from another task in the middle of a large write: each scenario runs on
asyncio's loop and on every ferroloop kind, and the protocol's events
(``connection_lost`` exactly once, with what) and the bytes the peer got
must be the same."""

from __future__ import annotations

import asyncio
import socket

import pytest
from conftest import make_loop

FERRO_KINDS = ["ferroloop", "ferroloop-proactor"]
BIG = 8 * 1024 * 1024


class Logged(asyncio.Protocol):
    """Logs its events; ``on`` maps an event name to an action on the
    transport ("close", "abort", "write+close", "write+abort")."""

    def __init__(self, loop, on):
        self.loop = loop
        self.on = on
        self.events = []
        self.lost = loop.create_future()
        self.transport = None

    def act(self, event):
        action = self.on.get(event)
        if action is None:
            return
        if action.startswith("write+"):
            self.transport.write(b"w" * BIG)
            action = action[len("write+") :]
        getattr(self.transport, action)()
        self.events.append(f"{action} in {event}")

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")
        self.act("made")

    def data_received(self, data):
        if not self.events or self.events[-1] != "data":
            self.events.append("data")
        self.act("data")

    def eof_received(self):
        self.events.append("eof")
        self.act("eof")

    def pause_writing(self):
        self.events.append("pause")
        self.act("pause")

    def resume_writing(self):
        self.events.append("resume")

    def connection_lost(self, exc):
        self.events.append(("lost", type(exc).__name__ if exc else None))
        if not self.lost.done():
            self.lost.set_result(None)


SCENARIOS = {
    "close in connection_made": {"made": "close"},
    "abort in connection_made": {"made": "abort"},
    "close in data_received": {"data": "close"},
    "abort in data_received": {"data": "abort"},
    "big write then close in data_received": {"data": "write+close"},
    "big write then abort in data_received": {"data": "write+abort"},
    "close in eof_received": {"eof": "close"},
    "abort in pause_writing": {"data": "write+close", "pause": "abort"},
}


async def scenario(loop, on, peer_sends_eof):
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    try:
        _, proto = await loop.connect_accepted_socket(lambda: Logged(loop, on), a)
        try:
            await loop.sock_sendall(b, b"hello")
            if peer_sends_eof:
                b.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the transport closed before the peer wrote
        got = 0
        while True:
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(b, 1 << 20), 5)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            got += len(chunk)
        await asyncio.wait_for(proto.lost, 10)
        await asyncio.sleep(0.05)  # a second connection_lost would come now
        return proto.events, got
    finally:
        a.close()
        b.close()


def run(kind, on, peer_sends_eof):
    loop = make_loop(kind)
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx.get("message")))
    try:
        events, got = loop.run_until_complete(scenario(loop, on, peer_sends_eof))
    finally:
        loop.close()
    return events, got, errors


@pytest.mark.parametrize("kind", FERRO_KINDS)
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_closing_from_the_protocols_own_callbacks(kind, name):
    on = SCENARIOS[name]
    eof = "eof" in on
    expected = run("asyncio", on, eof)
    assert run(kind, on, eof) == expected
    events = expected[0]
    assert sum(1 for e in events if isinstance(e, tuple) and e[0] == "lost") == 1


async def big_write_then(loop, how):
    """A task writes BIG bytes; another closes or aborts the transport while
    the write is still buffered. What the peer received, and the events."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    try:
        transport, proto = await loop.connect_accepted_socket(lambda: Logged(loop, {}), a)

        async def writer():
            transport.write(b"z" * BIG)

        async def closer():
            await asyncio.sleep(0)
            getattr(transport, how)()

        await asyncio.gather(writer(), closer())
        got = 0
        while True:
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(b, 1 << 20), 5)
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += len(chunk)
        await asyncio.wait_for(proto.lost, 10)
        await asyncio.sleep(0.05)
        return proto.events, got == BIG if how == "close" else got < BIG
    finally:
        a.close()
        b.close()


def run_big(kind, how):
    loop = make_loop(kind)
    try:
        return loop.run_until_complete(big_write_then(loop, how))
    finally:
        loop.close()


@pytest.mark.parametrize("kind", FERRO_KINDS)
@pytest.mark.parametrize("how", ["close", "abort"])
def test_close_or_abort_from_another_task_during_a_big_write(kind, how):
    expected = run_big("asyncio", how)
    events, as_expected = run_big(kind, how)
    # close() flushes what was written first; abort() drops it.
    assert as_expected and expected[1]
    assert events == expected[0]
    assert events[-1] == ("lost", None) and events.count(("lost", None)) == 1
