"""A socket closed while a ``sock_*`` call waits on it.

asyncio leaves the waiting coroutine hanging forever on epoll (poll reports
the closed descriptor; select fails the whole loop with EBADF), and on epoll
its stale registration leaves the next socket that gets the number unheard.
ferroloop ends the wait with the ``OSError`` (``EBADF``) the socket's own
call gives once it is closed, within about a second, and a new socket on the
same number works at once (docs/differences.md). Each case runs on asyncio
too, to show what it does there.
"""

from __future__ import annotations

import asyncio
import errno
import socket

import pytest
from conftest import FD_KINDS

# How long a closed socket's wait may take to end on ferroloop (the loop
# looks once a second), and how long asyncio is watched hanging.
WAIT = 2.5


# Every test runs on asyncio and ferroloop with each selector family
# (conftest's ``fd_loop``); ``kind`` names the loop's kind.


@pytest.fixture
def kind(fd_loop_factory):
    return fd_loop_factory.kind


@pytest.fixture
def loop(fd_loop):
    return fd_loop


def nonblocking_pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def fill(sock):
    """Fill ``sock``'s send buffer, so a ``sock_sendall`` has to wait."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    try:
        while True:
            sock.send(b"x" * 65536)
    except BlockingIOError:
        pass


async def closed_while_waiting(loop, op):
    """Start ``op`` on a socket, close the socket while it waits; the
    outcome: the exception the wait ended with, or "hang"."""
    a, b = nonblocking_pair()
    listener = None
    try:
        if op == "sock_recv":
            coro = loop.sock_recv(a, 100)
        elif op == "sock_recv_into":
            coro = loop.sock_recv_into(a, bytearray(100))
        elif op == "sock_sendall":
            fill(a)
            coro = loop.sock_sendall(a, b"y" * 1_000_000)
        elif op == "sock_recvfrom":
            a.close()
            a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            a.setblocking(False)
            a.bind(("127.0.0.1", 0))
            coro = loop.sock_recvfrom(a, 100)
        elif op == "sock_connect":
            # A listener whose accept queue is full drops new handshakes
            # (Linux), so a connect to it waits.
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))
            listener.listen(0)
            fillers = []
            for _ in range(4):
                f = socket.socket()
                f.setblocking(False)
                f.connect_ex(listener.getsockname())
                fillers.append(f)
            await asyncio.sleep(0.1)
            a.close()
            a = socket.socket()
            a.setblocking(False)
            coro = loop.sock_connect(a, listener.getsockname())
            b.close()
            b = fillers.pop()
            for f in fillers:
                f.close()
        elif op == "sock_accept":
            listener = socket.socket()
            listener.setblocking(False)
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            a.close()
            a = listener
            coro = loop.sock_accept(listener)
        else:
            raise ValueError(op)
        task = asyncio.ensure_future(coro)
        await asyncio.sleep(0.05)
        assert not task.done()
        a.close()
        try:
            await asyncio.wait_for(task, WAIT)
        except TimeoutError:
            return "hang"
        except OSError as exc:
            return exc
        return "completed"
    finally:
        a.close()
        b.close()
        if listener is not None:
            listener.close()


OPS = [
    "sock_recv",
    "sock_recv_into",
    "sock_recvfrom",
    "sock_sendall",
    "sock_accept",
    "sock_connect",
]


@pytest.mark.parametrize("op", OPS)
def test_a_wait_on_a_closed_socket_ends(loop, kind, op):
    family = FD_KINDS[kind]
    if kind.startswith("asyncio") and family == "select":
        # select() refuses the closed descriptor: the loop itself fails.
        with pytest.raises(OSError) as info:
            loop.run_until_complete(closed_while_waiting(loop, op))
        assert info.value.errno == errno.EBADF
        return
    outcome = loop.run_until_complete(closed_while_waiting(loop, op))
    if kind.startswith("asyncio") and family == "epoll":
        # The kernel drops a closed descriptor from the epoll set silently.
        assert outcome == "hang"
    elif kind.startswith("asyncio"):
        # poll() reports POLLNVAL, and the wait's callback meets EBADF.
        assert isinstance(outcome, OSError) and outcome.errno == errno.EBADF
    else:
        assert isinstance(outcome, OSError), outcome
        assert outcome.errno == errno.EBADF


async def reuse_the_number(loop):
    """A ``sock_recv`` waits on A; A is closed and a new socket B takes
    its descriptor number; then a ``sock_recv`` on B. Returns what B's
    receive gave (or raised) and how A's wait ended."""
    a, a_peer = nonblocking_pair()
    old = asyncio.ensure_future(loop.sock_recv(a, 100))
    await asyncio.sleep(0.05)
    number = a.fileno()
    a.close()
    b, b_peer = nonblocking_pair()
    try:
        if number not in (b.fileno(), b_peer.fileno()):
            pytest.skip(f"the new sockets did not get descriptor {number}")
        if b_peer.fileno() == number:
            b, b_peer = b_peer, b
        # The data comes after the receive began to wait (sock_recv tries
        # the socket first, which would take data sent before).
        loop.call_later(0.05, b_peer.send, b"hello")
        try:
            got = await asyncio.wait_for(loop.sock_recv(b, 100), WAIT)
        except (TimeoutError, OSError) as exc:
            got = exc
        try:
            await asyncio.wait_for(old, WAIT)
            ended = "completed"
        except TimeoutError:
            ended = "hang"
        except OSError as exc:
            ended = exc
        return got, ended
    finally:
        old.cancel()
        for s in (a_peer, b, b_peer):
            s.close()


def test_a_new_socket_on_the_number_works_at_once(loop, kind):
    got, ended = loop.run_until_complete(reuse_the_number(loop))
    if kind.startswith("asyncio"):
        # asyncio takes the new wait for a change of the old one's callback
        # and makes no system call: epoll never learns of the new socket
        # (the wait hangs); poll and select, asked afresh each time, deliver.
        if FD_KINDS[kind] == "epoll":
            assert isinstance(got, asyncio.TimeoutError)
        else:
            assert got == b"hello"
        return
    assert got == b"hello"
    assert isinstance(ended, OSError) and ended.errno == errno.EBADF


def test_open_sockets_keep_waiting(loop, kind):
    """The loop's look for closed sockets leaves live waits alone."""

    async def main():
        a, b = nonblocking_pair()
        try:
            task = asyncio.ensure_future(loop.sock_recv(a, 100))
            await asyncio.sleep(1.5)  # past a look
            assert not task.done()
            b.send(b"late")
            return await asyncio.wait_for(task, WAIT)
        finally:
            a.close()
            b.close()

    assert loop.run_until_complete(main()) == b"late"
