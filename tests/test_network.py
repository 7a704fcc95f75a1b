"""Sockets, transports and servers over loopback: asyncio's own Python code
for them runs on ferroloop's native fd watching, so every observable result
must be the one asyncio's loop gives (each test runs on both, and, where the
descriptors matter, on each of ferroloop's native backends)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import re
import socket
import struct
import uuid

import pytest
from conftest import BytesRecorder, make_loop, normalise, run_coro

HAS_IPV6 = False
if socket.has_ipv6:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as _s:
            _s.bind(("::1", 0))
        HAS_IPV6 = True
    except OSError:
        pass

HOSTS = ["127.0.0.1", pytest.param("::1", marks=pytest.mark.skipif(not HAS_IPV6, reason="no ::1"))]


class Recorder(asyncio.Protocol):
    """Records the callbacks it gets (runs of data_received collapsed to one
    "data" entry), the bytes, and resolves ``made`` / ``lost`` futures."""

    def __init__(self, loop, *, echo=False, keep_open_on_eof=False):
        self.loop = loop
        self.echo = echo
        self.keep_open_on_eof = keep_open_on_eof
        self.events = []
        self.data = bytearray()
        self.transport = None
        self.made = loop.create_future()
        self.lost = loop.create_future()
        self.eof = loop.create_future()
        self.lost_count = 0

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")
        self.made.set_result(transport)

    def data_received(self, data):
        if not self.events or self.events[-1] != "data":
            self.events.append("data")
        self.data += data
        if self.echo:
            self.transport.write(data)

    def eof_received(self):
        self.events.append("eof")
        if not self.eof.done():
            self.eof.set_result(None)
        return self.keep_open_on_eof

    def connection_lost(self, exc):
        self.lost_count += 1
        self.events.append(("lost", type(exc).__name__ if exc is not None else None))
        if not self.lost.done():
            self.lost.set_result(exc)


async def wait_for_bytes(proto, n, timeout=5.0):
    async with asyncio.timeout(timeout):
        while len(proto.data) < n:
            await asyncio.sleep(0.001)


# ---------------------------------------------------------------- TCP echo


@pytest.mark.parametrize("host", HOSTS)
def test_tcp_echo_with_protocols(io_loop, host):
    async def main():
        servers = []

        def factory():
            p = Recorder(io_loop, echo=True)
            servers.append(p)
            return p

        server = await io_loop.create_server(factory, host, 0)
        addr = server.sockets[0].getsockname()
        tr, client = await io_loop.create_connection(lambda: Recorder(io_loop), host, addr[1])
        payload = b"".join(b"line %d\n" % i for i in range(500))
        tr.write(payload[:100])
        tr.writelines([payload[100:2000], payload[2000:]])
        await wait_for_bytes(client, len(payload))
        assert bytes(client.data) == payload

        # The transports are asyncio's, with the extra info asyncio gives.
        await servers[0].made
        st = servers[0].transport
        for t in (tr, st):
            assert isinstance(t, asyncio.Transport)
            sock = t.get_extra_info("socket")
            assert isinstance(sock, asyncio.trsock.TransportSocket)
            assert sock.family == (socket.AF_INET6 if ":" in host else socket.AF_INET)
            assert t.get_extra_info("sockname") == sock.getsockname()
            assert t.get_extra_info("peername") == sock.getpeername()
            assert t.get_extra_info("nonexistent", "dflt") == "dflt"
            assert t.is_reading()
            assert not t.is_closing()
            assert t.can_write_eof()
        assert tr.get_extra_info("peername") == st.get_extra_info("sockname")
        assert tr.get_extra_info("peername")[:2] == addr[:2]

        tr.close()
        assert tr.is_closing()
        assert await client.lost is None
        assert await servers[0].lost is None
        server.close()
        await server.wait_closed()
        return client.events, servers[0].events, client.lost_count, servers[0].lost_count

    c_events, s_events, c_lost, s_lost = run_coro(io_loop, main())
    assert c_events == ["made", "data", ("lost", None)]
    assert s_events == ["made", "data", "eof", ("lost", None)]
    assert (c_lost, s_lost) == (1, 1)


@pytest.mark.parametrize("host", HOSTS)
def test_tcp_echo_with_streams(io_loop, host):
    async def handle(reader, writer):
        while line := await reader.readline():
            writer.write(line.upper())
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_server(handle, host, 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(host, port)
        got = []
        for i in range(50):
            writer.write(b"hello %d\n" % i)
            await writer.drain()
            got.append(await reader.readline())
        writer.write_eof()
        rest = await reader.read()
        assert reader.at_eof()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return got, rest, isinstance(writer.transport, asyncio.Transport)

    got, rest, is_transport = run_coro(io_loop, main())
    assert got == [b"HELLO %d\n" % i for i in range(50)]
    assert rest == b""
    assert is_transport


def test_connection_refused(io_loop):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connecting is refused

        async def main():
            with pytest.raises(ConnectionRefusedError):
                await io_loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", port)

        run_coro(io_loop, main())


# ---------------------------------------------------------------- Unix sockets


async def _unix_echo(loop, path):
    async def handle(reader, writer):
        data = await reader.read()
        writer.write(data[::-1])
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_unix_server(handle, path)
    sockname = server.sockets[0].getsockname()
    reader, writer = await asyncio.open_unix_connection(path)
    assert writer.get_extra_info("socket").family == socket.AF_UNIX
    payload = os.urandom(200_000)
    writer.write(payload)
    writer.write_eof()
    back = await reader.read()
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    return back == payload[::-1], sockname


def test_unix_echo_path(io_loop, tmp_path):
    path = str(tmp_path / "echo.sock")
    ok, sockname = run_coro(io_loop, _unix_echo(io_loop, path))
    assert ok
    assert sockname == path


def test_unix_echo_abstract_namespace(io_loop):
    name = f"\0ferroloop-test-{os.getpid()}-{uuid.uuid4().hex}"
    ok, sockname = run_coro(io_loop, _unix_echo(io_loop, name))
    assert ok
    assert sockname == name.encode()


def test_unix_protocol_connection_and_extra_info(io_loop, tmp_path):
    path = str(tmp_path / "p.sock")

    async def main():
        server_protos = []

        def factory():
            server_protos.append(Recorder(io_loop, echo=True))
            return server_protos[-1]

        server = await io_loop.create_unix_server(factory, path)
        tr, proto = await io_loop.create_unix_connection(lambda: Recorder(io_loop), path)
        tr.write(b"ping")
        await wait_for_bytes(proto, 4)
        assert tr.get_extra_info("peername") == path
        assert isinstance(tr, asyncio.Transport)
        tr.close()
        await proto.lost
        await server_protos[0].lost
        server.close()
        await server.wait_closed()
        return bytes(proto.data), proto.events, server_protos[0].events

    data, c_events, s_events = run_coro(io_loop, main())
    assert data == b"ping"
    assert c_events == ["made", "data", ("lost", None)]
    assert s_events == ["made", "data", "eof", ("lost", None)]


# ---------------------------------------------------------------- UDP


class DatagramRecorder(asyncio.DatagramProtocol):
    def __init__(self, loop, echo=False):
        self.echo = echo
        self.got = []
        self.errors = []
        self.transport = None
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.got.append((data, addr))
        if self.echo:
            self.transport.sendto(data.upper(), addr)

    def error_received(self, exc):
        self.errors.append(exc)

    def connection_lost(self, exc):
        self.lost.set_result(exc)


@pytest.mark.parametrize("host", HOSTS)
def test_udp_echo(io_loop, host):
    async def main():
        s_tr, s_proto = await io_loop.create_datagram_endpoint(
            lambda: DatagramRecorder(io_loop, echo=True), local_addr=(host, 0)
        )
        server_addr = s_tr.get_extra_info("sockname")
        c_tr, c_proto = await io_loop.create_datagram_endpoint(
            lambda: DatagramRecorder(io_loop), remote_addr=server_addr[:2]
        )
        # (Python 3.11's datagram transport is no asyncio.DatagramTransport;
        # ferroloop's native one derives from the same asyncio classes.)
        assert type(s_tr) is type(c_tr)
        assert isinstance(s_tr, asyncio.Transport)
        assert isinstance(s_tr, asyncio.transports._FlowControlMixin)
        assert not isinstance(s_tr, asyncio.DatagramTransport)
        assert repr(s_tr).startswith("<_SelectorDatagramTransport fd=")
        assert c_tr.get_extra_info("peername")[:2] == server_addr[:2]
        client_addr = c_tr.get_extra_info("sockname")
        n = 20
        # One at a time: loopback UDP does not drop a datagram that is
        # awaited before the next is sent.
        for i in range(n):
            c_tr.sendto(b"datagram %d" % i)
            async with asyncio.timeout(5):
                while len(c_proto.got) <= i:
                    await asyncio.sleep(0.001)
        c_tr.close()
        s_tr.close()
        assert await c_proto.lost is None
        assert await s_proto.lost is None
        return s_proto, c_proto, client_addr, server_addr

    s_proto, c_proto, client_addr, server_addr = run_coro(io_loop, main())
    assert [d for d, _ in s_proto.got] == [b"datagram %d" % i for i in range(20)]
    assert {a[:2] for _, a in s_proto.got} == {client_addr[:2]}
    assert [d for d, _ in c_proto.got] == [b"DATAGRAM %d" % i for i in range(20)]
    assert {a[:2] for _, a in c_proto.got} == {server_addr[:2]}
    assert s_proto.errors == c_proto.errors == []


class _DatagramChecker(asyncio.DatagramProtocol, BytesRecorder):
    """Records each datagram (see BytesRecorder) and acks it."""

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.record(data)
        self.transport.sendto(b"k", addr)


def test_udp_bytes_handed_to_datagram_received_are_each_their_own(io_loop):
    # As test_transports' stream test: one size, one datagram at a time.
    msgs = [bytes([i % 251]) * 300 + i.to_bytes(4, "big") for i in range(45)]

    async def main():
        tr, proto = await io_loop.create_datagram_endpoint(
            _DatagramChecker, local_addr=("127.0.0.1", 0)
        )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.setblocking(False)
            peer.connect(tr.get_extra_info("sockname"))
            for m in msgs:
                await io_loop.sock_sendall(peer, m)
                async with asyncio.timeout(5):
                    assert await io_loop.sock_recv(peer, 1) == b"k"
        tr.close()
        return proto

    p = run_coro(io_loop, main())
    assert p.count == len(msgs)
    assert p.fresh_hash == [True] * len(msgs)
    assert p.kept == msgs[::3]


def test_udp_sendto_and_is_closing_in_every_call_shape(io_loop):
    # Positional, keyword, explicit None address on a connected transport,
    # through the class; and a wrong call is a TypeError, as on asyncio.
    async def main():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind(("127.0.0.1", 0))
            peer.setblocking(False)
            tr, _ = await io_loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, remote_addr=peer.getsockname()
            )
            cls = type(tr)
            tr.sendto(b"one")
            tr.sendto(b"two", None)
            tr.sendto(data=b"three")
            tr.sendto(b"four", addr=None)
            cls.sendto(tr, b"five")
            errors = []
            for bad in ((), (b"x", None, 1)):
                try:
                    tr.sendto(*bad)
                except TypeError:
                    errors.append("TypeError")
            try:
                tr.sendto(b"x", bogus=1)
            except TypeError:
                errors.append("TypeError")
            got = []
            async with asyncio.timeout(5):
                while len(got) < 5:
                    got.append(await io_loop.sock_recv(peer, 100))
            states = [cls.is_closing(tr), tr.is_closing()]
            tr.close()
            states += [cls.is_closing(tr), tr.is_closing()]
            await asyncio.sleep(0)
            return got, errors, states

    got, errors, states = run_coro(io_loop, main())
    assert got == [b"one", b"two", b"three", b"four", b"five"]
    assert errors == ["TypeError"] * 3
    assert states == [False, False, True, True]


def test_udp_transport_left_open_warns_and_closes_its_socket(io_loop):
    # asyncio's datagram transport warns from __del__ and closes the socket.
    import gc
    import weakref

    async def main():
        tr, _ = await io_loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
        )
        tr.pause_reading()  # the loop holds no reference to it now
        return [tr]

    held = run_coro(io_loop, main())
    ref, sock = weakref.ref(held[0]), held[0].get_extra_info("socket")

    def drop():
        held.clear()
        gc.collect()

    with pytest.warns(ResourceWarning, match="unclosed transport"):
        drop()
    assert ref() is None
    assert sock.fileno() == -1  # closed


def test_udp_error_received_on_refused_port(io_loop):
    # A connected UDP socket gets ECONNREFUSED after sending to a closed
    # port on loopback (ICMP port unreachable): error_received.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        addr = s.getsockname()

    async def main():
        tr, proto = await io_loop.create_datagram_endpoint(
            lambda: DatagramRecorder(io_loop), remote_addr=addr
        )
        try:
            async with asyncio.timeout(5):
                while not proto.errors:
                    tr.sendto(b"x")
                    await asyncio.sleep(0.01)
        finally:
            tr.close()
        await proto.lost
        return proto.errors

    errors = run_coro(io_loop, main())
    assert isinstance(errors[0], ConnectionRefusedError)


# ---------------------------------------------------------------- sock_* methods


def _nonblocking(sock):
    sock.setblocking(False)
    return sock


def test_sock_tcp_methods(io_loop):
    async def main():
        with contextlib.ExitStack() as stack:
            listener = stack.enter_context(_nonblocking(socket.socket()))
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            client = stack.enter_context(_nonblocking(socket.socket()))
            accept = asyncio.ensure_future(io_loop.sock_accept(listener))
            await io_loop.sock_connect(client, listener.getsockname())
            conn, peer = await accept
            stack.enter_context(conn)
            assert peer == client.getsockname()
            assert conn.gettimeout() == 0

            big = os.urandom(3_000_000)
            send = asyncio.ensure_future(io_loop.sock_sendall(client, big))
            received = bytearray()
            while len(received) < len(big):
                chunk = await io_loop.sock_recv(conn, 65536)
                assert chunk
                received += chunk
            assert await send is None
            assert bytes(received) == big

            await io_loop.sock_sendall(conn, b"0123456789")
            buf = bytearray(4)
            got = bytearray()
            while len(got) < 10:
                n = await io_loop.sock_recv_into(client, buf)
                got += buf[:n]
            assert got == b"0123456789"

            # Receiving waits for data that comes later.
            pending = asyncio.ensure_future(io_loop.sock_recv(conn, 100))
            await asyncio.sleep(0.01)
            assert not pending.done()
            client.send(b"late")
            assert await pending == b"late"
            client.shutdown(socket.SHUT_WR)
            assert await io_loop.sock_recv(conn, 100) == b""
        return True

    assert run_coro(io_loop, main())


def test_sock_udp_methods(io_loop):
    async def main():
        with contextlib.ExitStack() as stack:
            a = stack.enter_context(_nonblocking(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)))
            b = stack.enter_context(_nonblocking(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)))
            a.bind(("127.0.0.1", 0))
            b.bind(("127.0.0.1", 0))
            pending = asyncio.ensure_future(io_loop.sock_recvfrom(b, 100))
            await asyncio.sleep(0.01)
            assert not pending.done()
            assert await io_loop.sock_sendto(a, b"one", b.getsockname()) == 3
            assert await pending == (b"one", a.getsockname())
            await io_loop.sock_sendto(b, b"two!", a.getsockname())
            buf = bytearray(10)
            nbytes, addr = await io_loop.sock_recvfrom_into(a, buf)
            assert (nbytes, bytes(buf[:nbytes]), addr) == (4, b"two!", b.getsockname())
            # nbytes limits what is read.
            await io_loop.sock_sendto(b, b"truncated", a.getsockname())
            nbytes, addr = await io_loop.sock_recvfrom_into(a, buf, 3)
            assert bytes(buf[:nbytes]) == b"tru"
        return True

    assert run_coro(io_loop, main())


def test_sock_methods_reject_blocking_sockets_in_debug(io_loop):
    io_loop.set_debug(True)

    async def main():
        msgs = []
        with contextlib.ExitStack() as stack:
            tcp = stack.enter_context(socket.socket())
            udp = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            udp.bind(("127.0.0.1", 0))
            calls = [
                io_loop.sock_recv(tcp, 1),
                io_loop.sock_recv_into(tcp, bytearray(1)),
                io_loop.sock_recvfrom(udp, 1),
                io_loop.sock_recvfrom_into(udp, bytearray(1)),
                io_loop.sock_sendall(tcp, b"x"),
                io_loop.sock_sendto(udp, b"x", udp.getsockname()),
                io_loop.sock_connect(tcp, ("127.0.0.1", 1)),
                io_loop.sock_accept(tcp),
            ]
            for coro in calls:
                with pytest.raises(ValueError) as info:
                    await coro
                msgs.append(str(info.value))
        return msgs

    assert run_coro(io_loop, main()) == ["the socket must be non-blocking"] * 8


def _assert_unregistered_then_reusable(loop, sock, peer):
    """No reader/writer is left on ``sock``: the selector does not know it,
    and a new add_reader on it works and fires."""
    with pytest.raises(KeyError):
        loop._selector.get_key(sock.fileno())
    assert loop.remove_reader(sock.fileno()) is False
    assert loop.remove_writer(sock.fileno()) is False
    fired = loop.create_future()
    loop.add_reader(sock.fileno(), lambda: fired.done() or fired.set_result(True))
    peer()
    return fired


def test_cancelled_sock_recv_leaves_no_registration(io_loop):
    async def main():
        a, b = socket.socketpair()
        with a, b:
            a.setblocking(False)
            for method, args in [
                (io_loop.sock_recv, (a, 10)),
                (io_loop.sock_recv_into, (a, bytearray(10))),
            ]:
                task = asyncio.ensure_future(method(*args))
                await asyncio.sleep(0.01)
                assert io_loop._selector.get_key(a.fileno()).events == 1  # EVENT_READ
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                fired = _assert_unregistered_then_reusable(io_loop, a, lambda: b.send(b"x"))
                assert await asyncio.wait_for(fired, 5)
                io_loop.remove_reader(a.fileno())
                assert a.recv(10) == b"x"
        return True

    assert run_coro(io_loop, main())


def test_cancelled_sock_accept_leaves_no_registration(io_loop):
    async def main():
        with _nonblocking(socket.socket()) as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            task = asyncio.ensure_future(io_loop.sock_accept(listener))
            await asyncio.sleep(0.01)
            assert io_loop._selector.get_key(listener.fileno()).events == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            client = socket.socket()
            with client:
                fired = _assert_unregistered_then_reusable(
                    io_loop, listener, lambda: client.connect(listener.getsockname())
                )
                assert await asyncio.wait_for(fired, 5)
                io_loop.remove_reader(listener.fileno())
                conn, _ = listener.accept()
                conn.close()
        return True

    assert run_coro(io_loop, main())


def test_cancelled_sock_sendall_leaves_no_registration(io_loop):
    async def main():
        a, b = socket.socketpair()
        with a, b:
            a.setblocking(False)
            task = asyncio.ensure_future(io_loop.sock_sendall(a, b"x" * 20_000_000))
            await asyncio.sleep(0.01)
            assert not task.done()
            assert io_loop._selector.get_key(a.fileno()).events == 2  # EVENT_WRITE
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            with pytest.raises(KeyError):
                io_loop._selector.get_key(a.fileno())
            assert io_loop.remove_writer(a.fileno()) is False
        return True

    assert run_coro(io_loop, main())


# ---------------------------------------------------------------- connection lifecycle


def test_peer_reset(io_loop):
    async def main():
        protos = []

        def factory():
            protos.append(Recorder(io_loop))
            return protos[-1]

        server = await io_loop.create_server(factory, "127.0.0.1", 0)
        client = _nonblocking(socket.socket())
        await io_loop.sock_connect(client, server.sockets[0].getsockname())
        async with asyncio.timeout(5):
            while not protos:
                await asyncio.sleep(0.001)
        await protos[0].made
        client.send(b"bye")
        await wait_for_bytes(protos[0], 3)
        # SO_LINGER with a zero timeout: close() sends a reset.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        exc = await asyncio.wait_for(protos[0].lost, 5)
        await asyncio.sleep(0.01)
        server.close()
        await server.wait_closed()
        return exc, protos[0].events, protos[0].lost_count

    exc, events, count = run_coro(io_loop, main())
    assert isinstance(exc, ConnectionResetError)
    assert events == ["made", "data", ("lost", "ConnectionResetError")]
    assert count == 1


def test_peer_reset_seen_by_stream_reader(io_loop):
    async def main():
        accepted = io_loop.create_future()

        async def handle(reader, writer):
            accepted.set_result(writer)
            try:
                await reader.read()
            except ConnectionResetError as exc:
                return exc

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        swriter = await accepted
        sock = swriter.get_extra_info("socket")
        # Reset from the server side: unread data plus linger 0.
        writer.write(b"unread")
        await writer.drain()
        await asyncio.sleep(0.01)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        swriter.transport.abort()
        with pytest.raises(ConnectionResetError):
            async with asyncio.timeout(5):
                await reader.read()
        writer.close()
        server.close()
        await server.wait_closed()
        return True

    assert run_coro(io_loop, main())


def test_half_close(io_loop):
    async def main():
        protos = []

        class Server(Recorder):
            def eof_received(self):
                super().eof_received()
                # Still open for writing after the peer's EOF.
                self.transport.write(b"reply to " + bytes(self.data))
                self.transport.close()
                return True

        def factory():
            protos.append(Server(io_loop))
            return protos[-1]

        server = await io_loop.create_server(factory, "127.0.0.1", 0)
        tr, client = await io_loop.create_connection(
            lambda: Recorder(io_loop, keep_open_on_eof=True),
            *server.sockets[0].getsockname(),
        )
        tr.write(b"question")
        assert tr.can_write_eof()
        tr.write_eof()
        assert not tr.is_closing()
        with pytest.raises(RuntimeError):
            tr.write(b"after eof")
        await client.eof
        # keep_open_on_eof: the transport stays open until closed.
        await asyncio.sleep(0.01)
        assert not client.lost.done()
        tr.close()
        await client.lost
        await protos[0].lost
        server.close()
        await server.wait_closed()
        return bytes(client.data), client.events, protos[0].events

    data, c_events, s_events = run_coro(io_loop, main())
    assert data == b"reply to question"
    assert c_events == ["made", "data", "eof", ("lost", None)]
    assert s_events == ["made", "data", "eof", ("lost", None)]


def test_eof_received_false_closes_transport(io_loop):
    async def main():
        protos = []

        def factory():
            protos.append(Recorder(io_loop))
            return protos[-1]

        server = await io_loop.create_server(factory, "127.0.0.1", 0)
        tr, client = await io_loop.create_connection(
            lambda: Recorder(io_loop), *server.sockets[0].getsockname()
        )
        tr.write(b"x")
        tr.write_eof()
        await protos[0].lost
        await client.lost
        server.close()
        await server.wait_closed()
        return client.events, protos[0].events

    c_events, s_events = run_coro(io_loop, main())
    assert s_events == ["made", "data", "eof", ("lost", None)]
    assert c_events == ["made", "eof", ("lost", None)]


def test_flow_control_with_slow_reader(io_loop):
    async def main():
        server_side = []

        def factory():
            p = Recorder(io_loop)
            server_side.append(p)
            return p

        server = await io_loop.create_server(factory, "127.0.0.1", 0)
        log = []
        paused = io_loop.create_future()
        resumed = io_loop.create_future()

        class Writer(Recorder):
            def pause_writing(self):
                log.append(("pause", self.transport.get_write_buffer_size() > 64 * 1024))
                paused.done() or paused.set_result(None)

            def resume_writing(self):
                log.append(("resume", self.transport.get_write_buffer_size() <= 16 * 1024))
                resumed.done() or resumed.set_result(None)

        tr, client = await io_loop.create_connection(
            lambda: Writer(io_loop), *server.sockets[0].getsockname()
        )
        tr.set_write_buffer_limits(high=64 * 1024, low=16 * 1024)
        assert tr.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        async with asyncio.timeout(5):
            while not server_side:
                await asyncio.sleep(0.001)
        reader = server_side[0]
        await reader.made
        reader.transport.pause_reading()
        assert not reader.transport.is_reading()
        chunk = b"z" * (256 * 1024)
        sent = 0
        # Bounded: the kernel buffers of a loopback connection hold a few MB.
        for _ in range(400):
            tr.write(chunk)
            sent += len(chunk)
            if paused.done():
                break
            await asyncio.sleep(0)
        assert paused.done()
        assert tr.get_write_buffer_size() > 64 * 1024
        reader.transport.resume_reading()
        await asyncio.wait_for(resumed, 5)
        await wait_for_bytes(reader, sent)
        assert tr.get_write_buffer_size() == 0
        tr.close()
        await client.lost
        await reader.lost
        server.close()
        await server.wait_closed()
        return log, len(reader.data) == sent

    log, all_received = run_coro(io_loop, main(), timeout=10)
    assert log == [("pause", True), ("resume", True)]
    assert all_received


def test_close_inside_data_received(io_loop):
    async def main():
        protos = []

        class Closer(Recorder):
            def data_received(self, data):
                super().data_received(data)
                self.transport.close()
                self.transport.close()  # a second close does nothing
                self.closing_seen = self.transport.is_closing()

        def factory():
            protos.append(Closer(io_loop))
            return protos[-1]

        server = await io_loop.create_server(factory, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        writer.write(b"first")
        await writer.drain()
        await protos[0].lost
        # The peer sees EOF; what it sends afterwards reaches no protocol.
        assert await reader.read() == b""
        with contextlib.suppress(ConnectionError):
            writer.write(b"second")
            await writer.drain()
        await asyncio.sleep(0.01)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        server.close()
        await server.wait_closed()
        p = protos[0]
        return bytes(p.data), p.events, p.lost_count, p.closing_seen

    data, events, count, closing = run_coro(io_loop, main())
    assert data == b"first"
    assert events == ["made", "data", ("lost", None)]
    assert count == 1
    assert closing


def test_connection_lost_once_after_close_and_abort(io_loop):
    async def main():
        server = await io_loop.create_server(lambda: Recorder(io_loop, echo=True), "127.0.0.1", 0)
        results = []
        for how in ("close", "abort", "close+abort", "abort+close"):
            tr, proto = await io_loop.create_connection(
                lambda: Recorder(io_loop), *server.sockets[0].getsockname()
            )
            tr.write(b"pending data")
            for step in how.split("+"):
                getattr(tr, step)()
            await proto.lost
            await asyncio.sleep(0.01)
            results.append((how, proto.events, proto.lost_count))
        server.close()
        await server.wait_closed()
        return results

    for how, events, count in run_coro(io_loop, main()):
        assert events == ["made", ("lost", None)], how
        assert count == 1, how


def test_many_concurrent_connections(io_loop):
    n = 100

    async def handle(reader, writer):
        data = await reader.readexactly(8)
        writer.write(data * 2)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def client(port, i):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"%08d" % i)
        data = await reader.read()
        writer.close()
        await writer.wait_closed()
        return data

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=n)
        port = server.sockets[0].getsockname()[1]
        results = await asyncio.gather(*(client(port, i) for i in range(n)))
        server.close()
        await server.wait_closed()
        return results

    assert run_coro(io_loop, main(), timeout=15) == [b"%08d" % i * 2 for i in range(n)]


# ---------------------------------------------------------------- servers


def test_server_object_api(io_loop):
    async def main():
        server = await io_loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        assert isinstance(server, asyncio.AbstractServer)
        assert isinstance(server.sockets, tuple)
        assert len(server.sockets) == 1
        assert isinstance(server.sockets[0], asyncio.trsock.TransportSocket)
        assert server.get_loop() is io_loop
        assert server.is_serving()
        server.close()
        assert not server.is_serving()
        await server.wait_closed()
        assert server.sockets == ()

        # start_serving=False, then start_serving().
        lazy = await io_loop.create_server(asyncio.Protocol, "127.0.0.1", 0, start_serving=False)
        assert not lazy.is_serving()
        await lazy.start_serving()
        assert lazy.is_serving()
        _reader, writer = await asyncio.open_connection(*lazy.sockets[0].getsockname())
        writer.close()
        await writer.wait_closed()
        lazy.close()
        await lazy.wait_closed()

        # serve_forever, cancelled: the server is closed.
        forever = await io_loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        task = asyncio.ensure_future(forever.serve_forever())
        await asyncio.sleep(0.01)
        assert forever.is_serving()
        with pytest.raises(RuntimeError):
            await forever.serve_forever()  # already being awaited
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not forever.is_serving()
        assert forever.sockets == ()

        # The async context manager closes it.
        async with await io_loop.create_server(asyncio.Protocol, "127.0.0.1", 0) as ctx:
            assert ctx.is_serving()
            addr = ctx.sockets[0].getsockname()
        assert not ctx.is_serving()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(*addr)
        return True

    assert run_coro(io_loop, main())


def test_server_with_several_sockets(io_loop):
    hosts = ["127.0.0.1", "::1"] if HAS_IPV6 else ["127.0.0.1", "127.0.0.2"]

    async def main():
        # One server listening on several addresses: one socket each.
        server = await io_loop.create_server(asyncio.Protocol, hosts, 0)
        names = sorted(s.getsockname()[0] for s in server.sockets)
        for s in server.sockets:
            _reader, writer = await asyncio.open_connection(*s.getsockname()[:2])
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()
        # create_server(sock=...): the server owns (and closes) that socket.
        given = socket.socket()
        given.bind(("127.0.0.1", 0))
        srv = await io_loop.create_server(asyncio.Protocol, sock=given)
        same = srv.sockets[0].getsockname() == given.getsockname()
        srv.close()
        await srv.wait_closed()
        return names, server.sockets, same, given.fileno()

    names, after, same, fd = run_coro(io_loop, main())
    assert names == sorted(hosts)
    assert after == ()
    assert same
    assert fd == -1


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT")
def test_create_server_reuse_port(io_loop):
    async def main():
        first = await io_loop.create_server(asyncio.Protocol, "127.0.0.1", 0, reuse_port=True)
        port = first.sockets[0].getsockname()[1]
        second = await io_loop.create_server(asyncio.Protocol, "127.0.0.1", port, reuse_port=True)
        opts = [
            srv.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0
            for srv in (first, second)
        ]
        # Without reuse_port the port is taken.
        with pytest.raises(OSError):
            await io_loop.create_server(asyncio.Protocol, "127.0.0.1", port)
        ports = {srv.sockets[0].getsockname()[1] for srv in (first, second)}
        for _ in range(4):
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
        for srv in (first, second):
            srv.close()
            await srv.wait_closed()
        return opts, ports == {port}

    assert run_coro(io_loop, main()) == ([True, True], True)


# ---------------------------------------------------------------- sendfile


@pytest.fixture
def data_file(tmp_path):
    data = os.urandom(6 * 1024 * 1024 + 123)
    path = tmp_path / "payload.bin"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest(), len(data)


def test_loop_sendfile(io_loop, data_file):
    path, digest, size = data_file

    async def main(f):
        protos = []

        def factory():
            protos.append(Recorder(io_loop))
            return protos[-1]

        server = await io_loop.create_server(factory, "127.0.0.1", 0)
        tr, client = await io_loop.create_connection(
            lambda: Recorder(io_loop), *server.sockets[0].getsockname()
        )
        sent = await io_loop.sendfile(tr, f)
        # With an offset and a count.
        sent2 = await io_loop.sendfile(tr, f, offset=10, count=100)
        pos = f.tell()
        # The transport still works afterwards.
        tr.write(b"tail")
        tr.write_eof()
        await protos[0].eof
        tr.close()
        await client.lost
        server.close()
        await server.wait_closed()
        data = bytes(protos[0].data)
        return sent, sent2, pos, data

    with open(path, "rb") as f:
        sent, sent2, pos, data = run_coro(io_loop, main(f), timeout=15)
    assert (sent, sent2, pos) == (size, 100, 110)
    assert hashlib.sha256(data[:size]).hexdigest() == digest
    assert data[size : size + 100] == path.read_bytes()[10:110]
    assert data[size + 100 :] == b"tail"


def test_sock_sendfile(io_loop, data_file):
    path, digest, size = data_file

    async def main(f):
        with contextlib.ExitStack() as stack:
            listener = stack.enter_context(_nonblocking(socket.socket()))
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            client = stack.enter_context(_nonblocking(socket.socket()))
            await io_loop.sock_connect(client, listener.getsockname())
            conn, _ = await io_loop.sock_accept(listener)
            stack.enter_context(conn)

            async def receive():
                got = bytearray()
                while chunk := await io_loop.sock_recv(conn, 1 << 20):
                    got += chunk
                return bytes(got)

            rx = asyncio.ensure_future(receive())
            sent = await io_loop.sock_sendfile(client, f)
            partial = await io_loop.sock_sendfile(client, f, 5, 7)
            pos = f.tell()
            client.shutdown(socket.SHUT_WR)
            data = await rx
            # The socket is no longer watched by the loop.
            with pytest.raises(KeyError):
                io_loop._selector.get_key(client.fileno())
        return sent, partial, pos, data

    with open(path, "rb") as f:
        sent, partial, pos, data = run_coro(io_loop, main(f), timeout=15)
    assert (sent, partial, pos) == (size, 7, 12)
    assert hashlib.sha256(data[:size]).hexdigest() == digest
    assert data[size:] == path.read_bytes()[5:12]


# ---------------------------------------------------------------- name resolution


GAI_QUERIES = [
    (("127.0.0.1", 80), {}),
    (("127.0.0.1", "http"), {"type": socket.SOCK_STREAM}),
    (("localhost", 0), {"family": socket.AF_INET, "type": socket.SOCK_DGRAM}),
    ((None, 8080), {"flags": socket.AI_PASSIVE, "type": socket.SOCK_STREAM}),
    (("::1", 443), {"proto": socket.IPPROTO_TCP}),
]
GNI_QUERIES = [
    (("127.0.0.1", 80), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV),
    (("127.0.0.1", 22), socket.NI_NUMERICHOST),
    (("::1", 443, 0, 0), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV),
]


def _resolve_all(loop):
    async def one(coro):
        try:
            return ("ok", await coro)
        except OSError as exc:
            return ("error", type(exc).__name__, exc.args)

    async def main():
        out = []
        for args, kwargs in GAI_QUERIES:
            out.append(await one(loop.getaddrinfo(*args, **kwargs)))
        for addr, flags in GNI_QUERIES:
            out.append(await one(loop.getnameinfo(addr, flags)))
        out.append(await one(loop.getaddrinfo("not a host", 80, flags=socket.AI_NUMERICHOST)))
        return out

    return run_coro(loop, main())


def test_getaddrinfo_getnameinfo_equal_asyncio(io_loop):
    reference = make_loop("asyncio")
    try:
        expected = _resolve_all(reference)
    finally:
        reference.close()
    got = _resolve_all(io_loop)
    assert got == expected
    assert got[0] == ("ok", socket.getaddrinfo("127.0.0.1", 80))
    assert got[-1][:2] == ("error", "gaierror")


# ---------------------------------------------------------------- more parity


FD_RE = re.compile(r"fd=\d+")


def _reprs(loop):
    async def main():
        server_side = []

        def factory():
            server_side.append(Recorder(loop))
            return server_side[-1]

        server = await loop.create_server(factory, "127.0.0.1", 0)
        tr, client = await loop.create_connection(
            lambda: Recorder(loop), *server.sockets[0].getsockname()
        )
        out = [repr(tr)]
        tr.pause_reading()
        out.append(repr(tr))
        tr.resume_reading()
        await server_side[0].made
        # Fill the buffers so a write waits: "write=<polling, bufsize=...>".
        server_side[0].transport.pause_reading()
        while tr.get_write_buffer_size() == 0:
            tr.write(b"x" * 65536)
        out.append(re.sub(r"bufsize=\d+", "bufsize=N", repr(tr)))
        tr.abort()
        out.append(repr(tr))
        await client.lost
        out.append(repr(tr))
        out.append(repr(server.sockets[0]).split(" laddr")[0])
        server.close()
        await server.wait_closed()
        dtr, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
        )
        out.append(repr(dtr))
        dtr.close()
        await asyncio.sleep(0)
        r, w = os.pipe()
        with os.fdopen(r, "rb", buffering=0) as rf, os.fdopen(w, "wb", buffering=0) as wf:
            rtr, _ = await loop.connect_read_pipe(asyncio.Protocol, rf)
            wtr, _ = await loop.connect_write_pipe(asyncio.Protocol, wf)
            out.append(repr(rtr))
            out.append(repr(wtr))
            rtr.close()
            wtr.close()
            out.append(repr(rtr))
            await asyncio.sleep(0.01)
        return [FD_RE.sub("fd=N", normalise(x)) for x in out]

    return run_coro(loop, main())


def test_transport_reprs_match_asyncio(io_loop):
    reference = make_loop("asyncio")
    try:
        expected = _reprs(reference)
    finally:
        reference.close()
    got = _reprs(io_loop)
    assert got == expected
    assert "read=polling" in expected[0]
    assert "read=idle" in expected[1]


def test_exception_in_data_received_goes_to_the_handler(io_loop):
    contexts = []
    io_loop.set_exception_handler(lambda loop, ctx: contexts.append(ctx))

    class Boom(Recorder):
        def data_received(self, data):
            super().data_received(data)
            raise ZeroDivisionError("boom")

    async def main():
        protos = []

        def factory():
            protos.append(Boom(io_loop))
            return protos[-1]

        server = await io_loop.create_server(factory, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        writer.write(b"trigger")
        exc = await asyncio.wait_for(protos[0].lost, 5)
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return exc, protos[0].events

    exc, events = run_coro(io_loop, main())
    assert isinstance(exc, ZeroDivisionError)
    assert events == ["made", "data", ("lost", "ZeroDivisionError")]
    assert len(contexts) == 1
    ctx = contexts[0]
    assert ctx["message"] == "Fatal error: protocol.data_received() call failed."
    assert isinstance(ctx["exception"], ZeroDivisionError)
    assert isinstance(ctx["transport"], asyncio.Transport)
    assert isinstance(ctx["protocol"], Boom)


def test_add_reader_refused_on_a_transport_socket(io_loop):
    async def main():
        server = await io_loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        tr, proto = await io_loop.create_connection(
            lambda: Recorder(io_loop), *server.sockets[0].getsockname()
        )
        fd = tr.get_extra_info("socket").fileno()
        msgs = []
        for method in (io_loop.add_reader, io_loop.add_writer):
            with pytest.raises(RuntimeError) as info:
                method(fd, print)
            msgs.append(FD_RE.sub("fd=N", normalise(str(info.value))))
        for method in (io_loop.remove_reader, io_loop.remove_writer):
            with pytest.raises(RuntimeError):
                method(fd)
        # sock_* methods refuse it too.
        with pytest.raises(RuntimeError):
            await io_loop.sock_recv(tr.get_extra_info("socket")._sock, 1)
        tr.close()
        await proto.lost
        server.close()
        await server.wait_closed()
        return msgs

    msgs = run_coro(io_loop, main())
    assert all(m.startswith("File descriptor ") and "is used by transport" in m for m in msgs)


def test_happy_eyeballs_falls_back_between_addresses(io_loop):
    # The name resolves to a dead address first, then to a live one.
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, not listening: refused

    async def main():
        server = await io_loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        live = server.sockets[0].getsockname()
        queried = []

        async def fake_getaddrinfo(host, port, **kwargs):
            queried.append((host, port))
            return [
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", dead.getsockname()),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", live),
            ]

        io_loop.getaddrinfo = fake_getaddrinfo
        got = []
        try:
            for kwargs in ({}, {"happy_eyeballs_delay": 0.05}, {"interleave": 1}):
                tr, _ = await io_loop.create_connection(
                    asyncio.Protocol, "fake.invalid", 1, **kwargs
                )
                got.append(tr.get_extra_info("peername") == live)
                tr.close()
            # All addresses refused: one OSError naming them all.
            io_loop.getaddrinfo = lambda *a, **k: _dead_only(dead)
            with pytest.raises(OSError, match="Multiple exceptions|Connect call failed"):
                await io_loop.create_connection(asyncio.Protocol, "fake.invalid", 1)
        finally:
            del io_loop.getaddrinfo
        server.close()
        await server.wait_closed()
        return got, queried

    with dead:
        got, queried = run_coro(io_loop, main())
    assert got == [True] * 3
    assert queried == [("fake.invalid", 1)] * 3


async def _dead_only(dead):
    return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", dead.getsockname())] * 2


def test_connect_accepted_socket_and_sock_argument(io_loop):
    async def main():
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with listener:
            client = socket.create_connection(listener.getsockname())
            conn, _ = listener.accept()
        _tr_s, p_s = await io_loop.connect_accepted_socket(
            lambda: Recorder(io_loop, echo=True), conn
        )
        tr_c, p_c = await io_loop.create_connection(lambda: Recorder(io_loop), sock=client)
        tr_c.write(b"via accepted socket")
        await wait_for_bytes(p_c, 19)
        tr_c.close()
        await p_c.lost
        await p_s.lost
        return bytes(p_c.data), p_s.events, conn.fileno(), client.fileno()

    data, events, fd1, fd2 = run_coro(io_loop, main())
    assert data == b"via accepted socket"
    assert events == ["made", "data", "eof", ("lost", None)]
    assert (fd1, fd2) == (-1, -1)


def test_sock_sendfile_fallback_for_non_regular_files(io_loop):
    payload = os.urandom(300_000)

    async def main():
        a, b = socket.socketpair()
        with a, b:
            a.setblocking(False)
            b.setblocking(False)

            async def receive():
                got = bytearray()
                while chunk := await io_loop.sock_recv(b, 65536):
                    got += chunk
                return bytes(got)

            rx = asyncio.ensure_future(receive())
            with pytest.raises(asyncio.SendfileNotAvailableError):
                await io_loop.sock_sendfile(a, io.BytesIO(payload), fallback=False)
            sent = await io_loop.sock_sendfile(a, io.BytesIO(payload))
            a.shutdown(socket.SHUT_WR)
            return sent, await rx

    sent, got = run_coro(io_loop, main())
    assert sent == len(payload)
    assert got == payload


def test_unix_datagram_endpoint(io_loop, tmp_path):
    server_path = str(tmp_path / "s.dgram")
    client_path = str(tmp_path / "c.dgram")

    async def main():
        s_tr, s_proto = await io_loop.create_datagram_endpoint(
            lambda: DatagramRecorder(io_loop, echo=True),
            local_addr=server_path,
            family=socket.AF_UNIX,
        )
        c_tr, c_proto = await io_loop.create_datagram_endpoint(
            lambda: DatagramRecorder(io_loop),
            local_addr=client_path,
            remote_addr=server_path,
            family=socket.AF_UNIX,
        )
        for i in range(5):
            c_tr.sendto(b"unix %d" % i)
            async with asyncio.timeout(5):
                while len(c_proto.got) <= i:
                    await asyncio.sleep(0.001)
        c_tr.close()
        s_tr.close()
        await c_proto.lost
        await s_proto.lost
        return s_proto.got, c_proto.got

    s_got, c_got = run_coro(io_loop, main())
    assert s_got == [(b"unix %d" % i, client_path) for i in range(5)]
    assert c_got == [(b"UNIX %d" % i, server_path) for i in range(5)]
