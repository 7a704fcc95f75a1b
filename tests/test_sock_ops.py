"""``sock_recv``, ``sock_recv_into`` and ``sock_sendall``: ferroloop's
native awaitables (sock_ops.rs) against asyncio's coroutines.

Each test runs on asyncio and every ferroloop kind: results, errors and
what stays registered with the loop must be the same.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import ssl
import time

import pytest
from conftest import make_loop


def _pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def _run(loop, coro, timeout=10.0):
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def test_they_are_coroutines_to_asyncio(loop):
    a, b = _pair()
    try:
        calls = [
            loop.sock_recv(a, 1),
            loop.sock_recv_into(a, bytearray(1)),
            loop.sock_sendall(b, b""),
        ]
        for c in calls:
            assert asyncio.iscoroutine(c)
            c.close()
    finally:
        a.close()
        b.close()


def test_recv_ready_and_waiting(loop):
    a, b = _pair()

    async def main():
        b.send(b"ready")
        first = await loop.sock_recv(a, 100)
        task = loop.create_task(loop.sock_recv(a, 100))
        await asyncio.sleep(0.01)
        assert not task.done()
        await loop.sock_sendall(b, b"later")
        second = await task
        return first, second

    try:
        assert _run(loop, main()) == (b"ready", b"later")
        # The wait's reader is gone once it is done.
        assert loop.remove_reader(a.fileno()) is False
    finally:
        a.close()
        b.close()


def test_reader_that_replaced_a_wait_is_left_alone(loop):
    """A reader added on the socket while a read waits replaces the wait's
    (asyncio's rule); ending the wait afterwards must not remove it."""
    a, b = _pair()

    async def main():
        task = loop.create_task(loop.sock_recv(a, 10))
        await asyncio.sleep(0.01)
        seen = []
        loop.add_reader(a.fileno(), lambda: seen.append(a.recv(10)))
        b.send(b"x")
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        b.send(b"y")
        await asyncio.sleep(0.05)
        return seen

    try:
        assert _run(loop, main()) == [b"x", b"y"]
        assert loop.remove_reader(a.fileno()) is True
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("file_lives_on", [False, True])
def test_socket_closed_after_a_wait_then_its_number_reused(fd_loop, file_lives_on):
    """After a wait, ferroloop's epoll loop leaves the descriptor registered
    but disarmed (one-shot) for the next wait. The socket is then closed,
    its file possibly kept alive under another number (a duplicate, or a
    forked child's copy), and the number taken by a new socket: the new
    socket's wait must work, and the old file's activity must wake
    nothing (a registration left armed would make the loop spin)."""
    loop = fd_loop
    a, b = _pair()

    async def main():
        loop.call_soon(b.send, b"1")
        assert await loop.sock_recv(a, 10) == b"1"
        keep = a.dup() if file_lives_on else None
        number = a.fileno()
        a.close()
        c, d = _pair()
        try:
            if keep is not None:
                b.send(b"the old file is readable")
            start = time.process_time()
            await asyncio.sleep(0.1)
            spent = time.process_time() - start
            loop.call_soon(d.send, b"2")
            got = await loop.sock_recv(c, 10)
            return got, spent, c.fileno() == number
        finally:
            c.close()
            d.close()
            if keep is not None:
                keep.close()

    try:
        got, spent, reused = _run(loop, main())
        assert got == b"2"
        assert reused, "the new socket did not take the old number"
        assert spent < 0.05, f"the loop ran {spent:.3f} s of CPU in a 0.1 s sleep"
    finally:
        b.close()


def test_wait_whose_data_was_taken_waits_on(fd_loop_factory):
    """The wait's descriptor reports, but another reader takes the data
    first: the wait must go on and get what comes next. (Which reader runs
    first is up to the selector; on epoll, which reports in the order of
    readiness, the other one does. Either way no byte may be lost.)"""
    loop = fd_loop_factory()
    c, d = _pair()
    a, b = _pair()
    stolen = []

    async def main():
        def steal():
            loop.remove_reader(c.fileno())
            c.recv(10)
            try:
                stolen.append(a.recv(10))
            except BlockingIOError:
                pass

        loop.add_reader(c.fileno(), steal)
        task = loop.create_task(loop.sock_recv(a, 10))
        await asyncio.sleep(0.01)
        d.send(b"!")
        b.send(b"taken")
        await asyncio.sleep(0.05)
        assert task.done() != bool(stolen)
        b.send(b"later")
        return await task

    try:
        got = _run(loop, main())
        assert (stolen, got) in (([b"taken"], b"later"), ([], b"taken"))
        if fd_loop_factory.family == "epoll":
            assert stolen, "epoll reports c first: its reader takes the data"
    finally:
        for s in (a, b, c, d):
            s.close()


def test_recv_into_and_sendall_large_partial_sends(loop):
    """A send larger than the socket buffer goes out in parts: the rest
    after the first, partial send must follow, byte for byte."""
    a, b = _pair()
    data = bytes(range(256)) * 20_000  # 5 MB

    async def reader():
        buf = bytearray(65536)
        got = bytearray()
        while len(got) < len(data):
            n = await loop.sock_recv_into(a, buf)
            got += buf[:n]
        return bytes(got)

    async def main():
        task = loop.create_task(reader())
        await loop.sock_sendall(b, data)
        return await task

    try:
        assert _run(loop, main()) == data
        assert loop.remove_writer(b.fileno()) is False
    finally:
        a.close()
        b.close()


def test_recv_returns_what_recv_would_through_small_and_large_reads(loop):
    """``sock_recv(sock, n)`` returns what ``sock.recv(n)`` would: at most
    ``n`` bytes, what is queued, in order, then ``b""`` at the end. ferroloop
    reads small messages through a scratch buffer and, after a large read,
    into a ``bytes`` sized by what is queued: each way is checked, with
    sizes below, at and above what is queued and beyond the scratch buffer
    (256 KiB)."""
    a, b = _pair()
    data = bytes(i % 251 for i in range(1_000_000))

    async def exact(n, queued):
        got = await loop.sock_recv(a, n)
        assert len(got) == min(n, queued), (n, queued, len(got))
        return got

    async def main():
        out = bytearray()
        # Queued and known: 1,000 bytes, read in two (small reads).
        b.sendall(data[:1000])
        out += await exact(100, 1000)
        out += await exact(10_000, 900)
        # A large read (70,000 queued), then the small ones after it.
        await loop.sock_sendall(b, data[1000:71_000])
        while len(out) < 71_000:
            out += await loop.sock_recv(a, 262_144)
        b.sendall(data[71_000:72_000])
        out += await exact(100, 1000)
        out += await exact(10_000, 900)
        # The rest, sent by a task, read with sizes from 1 byte to more
        # than the scratch buffer holds.
        sender = loop.create_task(loop.sock_sendall(b, data[72_000:]))
        sizes = [1, 300_000, 64, 262_144, 40_000, 7]
        i = 0
        while len(out) < len(data):
            n = sizes[i % len(sizes)]
            i += 1
            got = await loop.sock_recv(a, n)
            assert 0 < len(got) <= n
            out += got
        await sender
        b.shutdown(socket.SHUT_WR)
        end = await loop.sock_recv(a, 262_144)
        return bytes(out), end

    try:
        out, end = _run(loop, main())
        assert out == data
        assert end == b""
    finally:
        a.close()
        b.close()


def test_sendall_of_each_bytes_like(loop):
    a, b = _pair()
    items = [b"bytes", bytearray(b"array"), memoryview(b"xxview")[2:], b""]

    async def main():
        for item in items:
            await loop.sock_sendall(b, item)
        await asyncio.sleep(0.01)
        return a.recv(100)

    try:
        assert _run(loop, main()) == b"bytesarrayview"
    finally:
        a.close()
        b.close()


def test_cancel_while_waiting_unregisters(loop):
    a, b = _pair()

    async def main():
        task = loop.create_task(loop.sock_recv(a, 10))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Nothing left watching the socket: a new wait works and gets the
        # next bytes.
        b.send(b"next")
        return await loop.sock_recv(a, 10)

    try:
        assert _run(loop, main()) == b"next"
        assert loop.remove_reader(a.fileno()) is False
    finally:
        a.close()
        b.close()


def _outcome(loop, make):
    a, b = _pair()
    try:
        got = loop.run_until_complete(make(loop, a, b))
    except Exception as exc:  # noqa: BLE001 - the exception is the outcome
        return type(exc), str(exc)
    finally:
        a.close()
        b.close()
    return "ok", got


def _blocking_socket(loop, a, b):
    # Bytes are waiting, so without debug mode the call does not block.
    b.send(b"x")
    a.setblocking(True)
    return loop.sock_recv(a, 1)


def _ssl_socket(loop, a, b):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    s = ctx.wrap_socket(socket.socket(), server_hostname="x", do_handshake_on_connect=False)

    async def go():
        try:
            await loop.sock_recv(s, 1)
        finally:
            s.close()

    return go()


def _closed_socket(loop, a, b):
    a.close()
    return loop.sock_recv(a, 1)


def _bad_size(loop, a, b):
    return loop.sock_recv(a, "ten")


def _bad_buffer(loop, a, b):
    return loop.sock_recv_into(a, b"read-only")


def _bad_data(loop, a, b):
    return loop.sock_sendall(b, "text")


def _reset_peer(loop, a, b):
    b.close()

    async def go():
        await loop.sock_sendall(a, b"x")

    return go()


def _negative_size(loop, a, b):
    return loop.sock_recv(a, -1)


def _zero_size(loop, a, b):
    return loop.sock_recv(a, 0)


def _huge_size(loop, a, b):
    return loop.sock_recv(a, 1 << 62)


def _oversized_size(loop, a, b):
    return loop.sock_recv(a, 1 << 64)


def _socket_with_timeout(loop, a, b):
    # A timeout is not non-blocking mode: the socket module's own call.
    b.send(b"timed")
    a.settimeout(5.0)
    return loop.sock_recv(a, 10)


def _eof_while_waiting(loop, a, b):
    async def go():
        loop.call_later(0.01, b.close)
        return await loop.sock_recv(a, 10)

    return go()


def _reset_while_waiting(loop, a, b):
    # A TCP peer that resets the connection while the read waits.
    async def go():
        with socket.create_server(("127.0.0.1", 0)) as ls:
            c = socket.create_connection(ls.getsockname())
            s, _ = ls.accept()
            s.setblocking(False)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            loop.call_later(0.01, c.close)
            try:
                return await loop.sock_recv(s, 10)
            finally:
                s.close()

    return go()


def _recv_into_waiting(loop, a, b):
    async def go():
        buf = bytearray(8)
        loop.call_later(0.01, b.send, b"abc")
        n = await loop.sock_recv_into(a, memoryview(buf)[2:])
        return n, bytes(buf)

    return go()


@pytest.mark.parametrize(
    "make",
    [
        _blocking_socket,
        _ssl_socket,
        _closed_socket,
        _bad_size,
        _bad_buffer,
        _bad_data,
        _reset_peer,
        _negative_size,
        _zero_size,
        _huge_size,
        _oversized_size,
        _socket_with_timeout,
        _eof_while_waiting,
        _reset_while_waiting,
        _recv_into_waiting,
    ],
)
@pytest.mark.parametrize("debug", [False, True])
def test_errors_match_asyncio(loop_factory, make, debug):
    lp = loop_factory()
    lp.set_debug(debug)
    ref = make_loop("asyncio")
    ref.set_debug(debug)
    try:
        assert _outcome(lp, make) == _outcome(ref, make)
    finally:
        ref.close()


def test_coroutine_protocol_edges(loop):
    a, b = _pair()
    try:
        c = loop.sock_recv(a, 1)
        with pytest.raises(TypeError, match="just-started"):
            c.send(1)
        c.close()
        with pytest.raises(RuntimeError, match="cannot reuse"):
            c.send(None)

        c = loop.sock_recv(a, 1)
        with pytest.raises(KeyError):
            c.throw(KeyError("thrown"))

        b.send(b"z")
        c = loop.sock_sendall(b, b"")
        with pytest.raises(StopIteration) as stop:
            c.send(None)
        assert stop.value.value is None
        c = loop.sock_recv(a, 1)
        with pytest.raises(StopIteration) as stop:
            c.__await__().__next__()
        assert stop.value.value == b"z"
    finally:
        a.close()
        b.close()


def test_socket_subclass_methods_are_called(loop):
    calls = []

    class Counting(socket.socket):
        def recv(self, *args):
            calls.append("recv")
            return super().recv(*args)

        def send(self, *args):
            calls.append("send")
            return super().send(*args)

    a0, b0 = socket.socketpair()
    a = Counting(fileno=a0.detach())
    b = Counting(fileno=b0.detach())
    a.setblocking(False)
    b.setblocking(False)

    async def main():
        await loop.sock_sendall(b, b"hi")
        return await loop.sock_recv(a, 10)

    try:
        assert _run(loop, main()) == b"hi"
        assert calls == ["send", "recv"]
    finally:
        a.close()
        b.close()


def test_abandoned_wait_is_collected(loop_factory):
    """A task waiting in sock_recv, dropped with its loop, is freed by the
    collector (the awaitable takes part in cycle collection)."""
    import weakref

    lp = loop_factory()
    a, b = _pair()

    class Marker:
        pass

    marker = Marker()
    ref = weakref.ref(marker)

    async def waiter(m):
        await lp.sock_recv(a, 1)

    task = lp.create_task(waiter(marker))
    lp.run_until_complete(asyncio.sleep(0.01))
    assert not task.done()
    task.cancel()
    lp.run_until_complete(asyncio.sleep(0))
    del task, marker
    gc.collect()
    assert ref() is None
    a.close()
    b.close()


_CALL_SHAPES = [
    lambda lp, s: lp.sock_recv(s),
    lambda lp, s: lp.sock_recv(),
    lambda lp, s: lp.sock_recv(s, 1, 2),
    lambda lp, s: lp.sock_recv(s, n=1, x=2),
    lambda lp, s: lp.sock_recv(s, 1, sock=s),
    lambda lp, s: lp.sock_recv(sock=s, n=1),
    lambda lp, s: lp.sock_recv(s, 1, context=None),
    lambda lp, s: lp.sock_recv_into(s),
    lambda lp, s: lp.sock_recv_into(sock=s, buf=bytearray(1)),
    lambda lp, s: lp.sock_sendall(data=b""),
    lambda lp, s: lp.sock_sendall(s, b"", b""),
]


@pytest.mark.parametrize("index", range(len(_CALL_SHAPES)))
def test_call_shapes_match_asyncio(loop_factory, index):
    """Argument errors come at call time with asyncio's message; a good
    call gives a coroutine (closed here, never run)."""

    def outcome(lp):
        s = socket.socket()
        try:
            c = _CALL_SHAPES[index](lp, s)
        except TypeError as exc:
            return "TypeError", str(exc)
        finally:
            s.close()
        ok = asyncio.iscoroutine(c)
        c.close()
        return "coroutine", ok

    lp = loop_factory()
    ref = make_loop("asyncio")
    try:
        assert outcome(lp) == outcome(ref)
    finally:
        ref.close()


def test_keyboard_interrupt_in_a_wait_leaves_it_waiting(fd_loop):
    """KeyboardInterrupt raised by the socket's recv while a read waits
    stops the loop, as asyncio's reader lets it; run again, the wait goes
    on and gets the bytes."""
    loop = fd_loop

    class Boom(socket.socket):
        boom = False

        def recv(self, n):
            if self.boom:
                self.boom = False
                raise KeyboardInterrupt
            return super().recv(n)

    a0, b = _pair()
    a = Boom(a0.family, a0.type, a0.proto, fileno=a0.detach())
    a.setblocking(False)
    try:
        task = loop.create_task(loop.sock_recv(a, 10))
        loop.run_until_complete(asyncio.sleep(0.01))
        a.boom = True
        b.send(b"kept")
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(asyncio.sleep(1))
        assert not task.done()
        assert loop.run_until_complete(asyncio.wait_for(task, 5)) == b"kept"
    finally:
        a.close()
        b.close()
