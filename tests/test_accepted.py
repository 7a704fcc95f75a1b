"""What an accepted connection's transport is built from, made natively
(`ferroloop._ferroloop._socket_from_fd`, `_init_socket_extra`,
`_server_attach` and the core's detach): the same socket object, extra
info and server bookkeeping as asyncio's Python functions give, the same
errors, and the Python function itself wherever a class or an instance was
changed."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from asyncio import base_events, trsock

import pytest
from conftest import LOOP_KINDS, make_loop, run_coro
from ferroloop._ferroloop import _socket_from_fd


def _pair_fd():
    a, b = socket.socketpair()
    fd = os.dup(a.fileno())
    a.close()
    return fd, b


def test_socket_from_fd_is_the_socket_modules_socket():
    fd, peer = _pair_fd()
    fd2 = os.dup(fd)
    try:
        ours = _socket_from_fd(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK, 0, fd)
        theirs = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK, 0, fd2)
        assert type(ours) is socket.socket
        for attr in ("family", "type", "proto", "_io_refs", "_closed"):
            assert getattr(ours, attr) == getattr(theirs, attr), attr
        assert ours.fileno() == fd
        assert ours.gettimeout() == theirs.gettimeout() == 0.0
        assert ours.getsockname() == theirs.getsockname()
        peer.sendall(b"x")
        assert ours.recv(1) == b"x"
        # A makefile() user keeps its descriptor open, as the module's.
        f = ours.makefile("rb")
        ours.close()
        assert ours._closed and ours.fileno() == fd
        os.fstat(fd)
        f.close()
        assert ours.fileno() == -1
        with pytest.raises(OSError) as e:
            os.fstat(fd)
        assert e.value.errno == errno.EBADF
        theirs.close()
    finally:
        peer.close()


@pytest.mark.parametrize("what", ["file", "closed"])
def test_socket_from_fd_raises_what_the_socket_module_raises(what, tmp_path):
    def make():
        if what == "file":
            return os.open(tmp_path / "f", os.O_CREAT | os.O_RDWR)
        fd = os.open(tmp_path / "g", os.O_CREAT | os.O_RDWR)
        os.close(fd)
        return fd

    fd = make()
    try:
        with pytest.raises(OSError) as theirs:
            socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fd)
    finally:
        if what == "file":
            os.close(fd)
    fd = make()
    try:
        with pytest.raises(OSError) as ours:
            _socket_from_fd(socket.AF_INET, socket.SOCK_STREAM, 0, fd)
        if what == "file":
            os.fstat(fd)  # left open for the caller to close, as the module's
    finally:
        if what == "file":
            os.close(fd)
    assert type(ours.value) is type(theirs.value)
    assert ours.value.errno == theirs.value.errno


def test_socket_from_fd_calls_a_replaced_init(monkeypatch):
    calls = []
    original = socket.socket.__init__

    def init(self, *args, **kwargs):
        calls.append(args)
        original(self, *args, **kwargs)

    fd, peer = _pair_fd()
    monkeypatch.setattr(socket.socket, "__init__", init)
    try:
        s = _socket_from_fd(socket.AF_UNIX, socket.SOCK_STREAM, 0, fd)
        s.close()
    finally:
        peer.close()
    assert calls == [(socket.AF_UNIX, socket.SOCK_STREAM, 0, fd)]


def _run(loop, coro):
    """Run ``coro`` to its end (bounded), then close the loop."""
    try:
        return run_coro(loop, coro)
    finally:
        loop.close()


async def _until(done):
    """Let the loop run until ``done()`` (at most about a second)."""
    for _ in range(500):
        if done():
            return
        await asyncio.sleep(0.002)


async def _serve(loop, clients):
    made = []

    class Proto(asyncio.Protocol):
        def connection_made(self, transport):
            made.append(transport)

    server = await loop.create_server(Proto, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(clients)]
    await _until(lambda: len(made) == clients)
    return server, socks, made


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_accepted_transports_extra_info(kind):
    loop = make_loop(kind)

    async def main():
        server, socks, made = await _serve(loop, 2)
        try:
            got = []
            for t, c in zip(made, socks):
                s = t.get_extra_info("socket")
                got.append(
                    (
                        type(s),
                        s.fileno() == t._sock.fileno(),
                        t.get_extra_info("sockname") == c.getpeername(),
                        t.get_extra_info("peername") == c.getsockname(),
                        sorted(t._extra),
                    )
                )
            return got
        finally:
            for c in socks:
                c.close()
            server.close()
            await server.wait_closed()

    got = _run(loop, main())
    want = (trsock.TransportSocket, True, True, True, ["peername", "socket", "sockname"])
    assert got == [want, want]


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_server_counts_its_transports_and_wakes_when_the_last_goes(kind):
    loop = make_loop(kind)

    async def main():
        server, socks, made = await _serve(loop, 3)
        counts = [server._active_count]
        server.close()
        # (Python 3.11's wait_closed returns at once after close(); the
        # waiters list is what the last transport's detach empties.)
        waiters = [server._waiters is not None]
        for t in made[:2]:
            t.close()
        await asyncio.sleep(0.01)
        counts.append(server._active_count)
        waiters.append(server._waiters is not None)
        made[2].close()
        await asyncio.sleep(0.01)
        counts.append(server._active_count)
        waiters.append(server._waiters is not None)
        for c in socks:
            c.close()
        return counts, waiters

    counts, waiters = _run(loop, main())
    assert counts == [3, 1, 0]
    assert waiters == [True, True, False]


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_server_methods_replaced_on_the_instance_or_a_subclass_are_called(kind, monkeypatch):
    loop = make_loop(kind)
    log = []

    class MyServer(base_events.Server):
        def _attach(self):
            log.append("attach")
            super()._attach()

    async def main():
        server, socks, made = await _serve(loop, 1)
        real = server._detach

        def detach():
            log.append("detach")
            real()

        server._detach = detach
        made[0].close()
        await asyncio.sleep(0.01)
        # A subclass (its class differs from asyncio's Server).
        server.__class__ = MyServer
        socks.append(socket.create_connection(server.sockets[0].getsockname()))
        await _until(lambda: "attach" in log)
        for c in socks:
            c.close()
        server.close()
        await server.wait_closed()

    _run(loop, main())
    assert log[:2] == ["detach", "attach"]


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_failing_protocol_factory_is_reported_in_debug_mode(kind):
    loop = make_loop(kind)
    loop.set_debug(True)
    contexts = []
    loop.set_exception_handler(lambda loop, ctx: contexts.append(ctx))
    error = ZeroDivisionError("no protocol")

    def factory():
        raise error

    async def main():
        server = await loop.create_server(factory, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        _, w = await asyncio.open_connection(*addr)
        w.close()
        await w.wait_closed()
        await _until(lambda: contexts)
        server.close()
        await server.wait_closed()

    _run(loop, main())
    assert [(c["message"], c["exception"], sorted(c)) for c in contexts] == [
        ("Error on transport creation for incoming connection", error, ["exception", "message"])
    ]


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_tcp_transports_turn_nagle_off(kind, tmp_path):
    """Accepted and connected TCP transports have TCP_NODELAY set, as
    asyncio's; a socket.socket subclass gets its own setsockopt called."""
    loop = make_loop(kind)
    calls = []

    class MySock(socket.socket):
        def setsockopt(self, *args):
            calls.append(args)
            super().setsockopt(*args)

    async def main():
        server, socks, made = await _serve(loop, 1)
        accepted = made[0].get_extra_info("socket")
        port = server.sockets[0].getsockname()[1]
        client, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        connected = client.get_extra_info("socket")
        flags = [
            s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0 for s in (accepted, connected)
        ]
        raw = MySock(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        raw.setblocking(False)
        await loop.sock_connect(raw, ("127.0.0.1", port))
        t = loop._make_socket_transport(raw, asyncio.Protocol())
        await asyncio.sleep(0)
        mine = raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        for tr in (t, client, *made):
            tr.close()
        for c in socks:
            c.close()
        server.close()
        await server.wait_closed()
        return flags, mine

    flags, mine = _run(loop, main())
    assert flags == [True, True]
    assert mine and calls == [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


@pytest.mark.parametrize("kind", ["ferroloop", "ferroloop-proactor"])
def test_stream_transport_init_call_shapes(kind):
    """The transports' C `__init__` takes the positional shape; keywords
    for any parameter and wrong counts go through the Python signature."""
    loop = make_loop(kind)
    made = []

    class P(asyncio.Protocol):
        def connection_made(self, transport):
            made.append(transport)

    async def main():
        cls = loop._ff_stream_transport
        results = []
        for how in ("positional", "keywords", "server-keyword"):
            a, b = socket.socketpair()
            a.setblocking(False)
            waiter = loop.create_future()
            if how == "positional":
                t = cls(loop, a, P(), waiter, None, None)
            elif how == "keywords":
                t = cls(protocol=P(), sock=a, loop=loop, waiter=waiter)
            else:
                t = cls(loop, a, P(), waiter=waiter, extra={"x": 1}, server=None)
            await asyncio.wait_for(waiter, 2)
            b.sendall(b"")
            results.append((type(t) is cls, t.get_extra_info("socket") is not None))
            t.close()
            b.close()
        with pytest.raises(TypeError):
            cls(loop, a)
        with pytest.raises(TypeError):
            cls(loop, a, P(), None, None, None, "extra")
        with pytest.raises(TypeError):
            cls(loop, a, P(), bogus=1)
        await asyncio.sleep(0.01)
        return results

    results = _run(loop, main())
    assert results == [(True, True)] * 3
    assert len(made) == 3


@pytest.mark.parametrize("change", ["subclass", "core_class"])
@pytest.mark.parametrize("kind", ["ferroloop", "ferroloop-proactor"])
def test_a_changed_stream_transport_class_is_called_as_it_is(kind, change, monkeypatch):
    """The standard stream transport classes are made, and their cores
    made and started, without calls through Python; a subclass the loop
    uses gets its own ``__init__`` called, and a class whose
    ``_core_class`` was replaced gets that called, on accepted and on
    connected transports alike."""
    loop = make_loop(kind)
    base = loop._ff_stream_transport
    calls = []
    if change == "subclass":

        class Mine(base):
            def __init__(self, *args, **kwargs):
                calls.append(type(args[2]).__name__)
                super().__init__(*args, **kwargs)

        loop._ff_stream_transport = Mine
    else:
        make_core = base._core_class

        def core_class(*args):
            calls.append(type(args[2]).__name__)
            return make_core(*args)

        monkeypatch.setattr(base, "_core_class", staticmethod(core_class))

    async def main():
        server, socks, made = await _serve(loop, 1)
        tr, _client = await loop.create_connection(
            asyncio.Protocol, *server.sockets[0].getsockname()
        )
        await _until(lambda: len(made) == 2)
        socks[0].setblocking(False)
        made[0].write(b"ok")
        assert await asyncio.wait_for(loop.sock_recv(socks[0], 2), 2) == b"ok"
        kinds = [type(t) is loop._ff_stream_transport for t in (*made, tr)]
        for t in (*made, tr):
            t.close()
        for c in socks:
            c.close()
        server.close()
        await server.wait_closed()
        return kinds

    kinds = _run(loop, main())
    assert kinds == [True, True, True]
    # Two accepted transports (the plain client's and the loop's client's)
    # and the loop's client's own, made with asyncio's protocol.
    assert sorted(calls) == ["Proto", "Proto", "Protocol"]


@pytest.mark.parametrize("kind", ["ferroloop", "ferroloop-proactor"])
def test_accept_general_path_and_failures(kind, tmp_path):
    """The Python accept path (families the loop does not accept natively,
    here driven directly on a Unix listener) takes every waiting connection
    non-blocking; an `OSError` other than running out of resources is
    raised, EMFILE is reported and the listener watched again later."""
    loop = make_loop(kind)
    made = []
    contexts = []
    loop.set_exception_handler(lambda loop, ctx: contexts.append(ctx))

    class P(asyncio.Protocol):
        def connection_made(self, transport):
            made.append(transport)

    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "l.sock"))
    listener.listen(8)
    listener.setblocking(False)
    clients = [socket.socket(socket.AF_UNIX) for _ in range(2)]

    async def main():
        for c in clients:
            c.connect(str(tmp_path / "l.sock"))
        loop._ff_accept_general(P, listener)
        await _until(lambda: len(made) == 2)
        timeouts = [t.get_extra_info("socket").gettimeout() for t in made]
        with pytest.raises(OSError) as raised:
            loop._ff_accept_failed(OSError(errno.EBADF, "bad"), P, listener)
        loop._ff_accept_failed(OSError(errno.EMFILE, "too many"), P, listener)
        for t in made:
            t.close()
        await asyncio.sleep(0)
        return timeouts, raised.value.errno

    try:
        timeouts, raised = _run(loop, main())
    finally:
        listener.close()
        for c in clients:
            c.close()
    assert timeouts == [0.0, 0.0]
    assert raised == errno.EBADF
    assert [c["message"] for c in contexts] == ["socket.accept() out of system resource"]
