"""The loop's native accept (`ferroloop._ferroloop._accept_nonblocking`,
used by servers on AF_INET, AF_INET6 and AF_UNIX listeners) against the
socket module: the peer address in exactly the socket module's form for
every shape of address, the new descriptor non-blocking and
non-inheritable, the same exceptions; and servers on every loop kind
reporting the peer as the client sees itself."""

from __future__ import annotations

import asyncio
import errno
import os
import socket

import pytest
from conftest import fd_count, make_loop
from ferroloop._ferroloop import _accept_nonblocking

HAS_IPV6 = socket.has_ipv6
try:
    socket.socket(socket.AF_INET6).close()
except OSError:
    HAS_IPV6 = False


def accept_both(listener, connect):
    """Two identical connections: one accepted natively, one by the socket
    module; (native fd, native address, module address, the two clients)."""
    c1 = connect()
    fd, addr = _accept_nonblocking(listener.fileno())
    c2 = connect()
    conn, addr2 = listener._accept()
    os.close(conn)
    return fd, addr, addr2, c1, c2


def without_port(addr):
    return (addr[0], *addr[2:]) if isinstance(addr, tuple) else addr


def tcp_listener(family, host):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.bind((host, 0))
    s.listen(8)
    return s


CASES = ["ipv4", "ipv6", "ipv4-mapped", "unix-unnamed", "unix-named", "unix-abstract", "unix-odd"]


@pytest.mark.parametrize("case", CASES)
def test_native_accept_gives_the_socket_modules_address(case, tmp_path):
    if case.startswith("ipv") and case != "ipv4" and not HAS_IPV6:
        pytest.skip("no IPv6 on this machine")  # a machine without ::1
    clients = []

    def client(family, bind=None, target=None):
        def connect():
            c = socket.socket(family, socket.SOCK_STREAM)
            if bind is not None:
                b = bind() if callable(bind) else bind
                c.bind(b)
            c.connect(target)
            clients.append(c)
            return c

        return connect

    names = iter(range(100))
    if case == "ipv4":
        listener = tcp_listener(socket.AF_INET, "127.0.0.1")
        connect = client(socket.AF_INET, target=listener.getsockname())
    elif case == "ipv6":
        listener = tcp_listener(socket.AF_INET6, "::1")
        connect = client(socket.AF_INET6, target=listener.getsockname()[:2])
    elif case == "ipv4-mapped":
        listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        listener.bind(("::", 0))
        listener.listen(8)
        connect = client(socket.AF_INET, target=("127.0.0.1", listener.getsockname()[1]))
    else:
        path = str(tmp_path / "l.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(8)
        bind = {
            "unix-unnamed": None,
            "unix-named": lambda: str(tmp_path / f"c{next(names)}.sock"),
            "unix-abstract": lambda: f"\0ferroloop-accept-{os.getpid()}-{next(names)}".encode(),
            # Not valid UTF-8: the socket module decodes it with surrogateescape.
            "unix-odd": lambda: os.fsencode(str(tmp_path)) + b"/\xff%d" % next(names),
        }[case]
        connect = client(socket.AF_UNIX, bind=bind, target=path)
    try:
        fd, addr, module_addr, c1, _ = accept_both(listener, connect)
        try:
            # What the client calls itself is the socket module's form of
            # the very address the native accept formatted.
            if case == "ipv4-mapped":
                assert addr[0] == "::ffff:127.0.0.1"
                assert addr[1] == c1.getsockname()[1]
            else:
                assert addr == c1.getsockname()
            assert type(addr) is type(module_addr)
            if case.startswith("ipv"):
                assert without_port(addr) == without_port(module_addr)
            elif case == "unix-unnamed":
                assert addr == module_addr == ""
            assert not os.get_blocking(fd)
            assert not os.get_inheritable(fd)
            conn = socket.socket(listener.family, listener.type | socket.SOCK_NONBLOCK, fileno=fd)
            with conn:
                assert conn.gettimeout() == 0.0
                assert conn.type == socket.SOCK_STREAM
                c1.sendall(b"ping")
                assert conn.recv(10) == b"ping"
        except BaseException:
            os.close(fd)
            raise
    finally:
        listener.close()
        for c in clients:
            c.close()


@pytest.mark.parametrize("peer", ["127.0.0.1", "127.10.200.5", "127.255.99.0", "127.100.9.90"])
def test_native_accept_writes_ipv4_peers_as_the_socket_module(peer):
    # ferroloop formats IPv4 addresses itself (not with inet_ntop): every
    # octet width, and zeros, against the socket module's text.
    listener = tcp_listener(socket.AF_INET, "127.0.0.1")
    clients = []

    def connect():
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.bind((peer, 0))
        c.connect(listener.getsockname())
        clients.append(c)
        return c

    try:
        fd, addr, addr2, c1, _c2 = accept_both(listener, connect)
        os.close(fd)
        assert addr == c1.getsockname()
        assert addr[0] == addr2[0] == peer
    finally:
        listener.close()
        for c in clients:
            c.close()


def test_native_sockname_is_the_socket_modules(tmp_path):
    # Transports take `extra['sockname']` from ferroloop's own getsockname
    # for plain sockets: the same value as the socket module's, for every
    # family and shape; a closed socket and a subclass go to the method.
    from ferroloop._ferroloop import _sockname

    socks = []

    def make(family, kind=socket.SOCK_STREAM, bind=None):
        s = socket.socket(family, kind)
        socks.append(s)
        if bind is not None:
            s.bind(bind)
        return s

    make(socket.AF_INET, bind=("127.0.0.1", 0))
    make(socket.AF_INET, socket.SOCK_DGRAM, bind=("127.0.0.1", 0))
    make(socket.AF_INET)  # unbound: 0.0.0.0
    make(socket.AF_UNIX, bind=str(tmp_path / "named"))
    make(socket.AF_UNIX)  # unnamed
    make(socket.AF_UNIX, bind="\0ferroloop-sockname-test")  # abstract
    a, b = socket.socketpair()
    socks += [a, b]
    if HAS_IPV6:
        make(socket.AF_INET6, bind=("::1", 0))

    class Sub(socket.socket):
        def getsockname(self):
            return "from the subclass"

    sub = Sub(socket.AF_INET)
    socks.append(sub)
    try:
        for s in socks[:-1]:
            assert _sockname(s) == s.getsockname(), s
        assert _sockname(sub) == "from the subclass"
        closed = socket.socket()
        closed.close()
        with pytest.raises(OSError) as native:
            _sockname(closed)
        with pytest.raises(OSError) as module:
            closed.getsockname()
        assert native.value.errno == module.value.errno
    finally:
        for s in socks:
            s.close()


def test_native_accept_raises_what_the_socket_module_raises(tmp_path):
    listener = tcp_listener(socket.AF_INET, "127.0.0.1")
    listener.setblocking(False)
    plain = socket.socket()
    try:
        # Where the socket module raises BlockingIOError (which ends
        # asyncio's accept loop for the pass), the native accept returns
        # None, the loop's cheaper signal for the same end.
        assert _accept_nonblocking(listener.fileno()) is None
        with pytest.raises(BlockingIOError):
            listener._accept()
        with pytest.raises(OSError) as native:
            _accept_nonblocking(plain.fileno())  # not listening
        with pytest.raises(OSError) as module:
            plain._accept()
        assert native.value.errno == module.value.errno == errno.EINVAL
        assert type(native.value) is type(module.value)
        before = fd_count()
        with pytest.raises(OSError) as native:
            _accept_nonblocking(-1)
        assert native.value.errno == errno.EBADF
        assert fd_count() == before
    finally:
        listener.close()
        plain.close()


KINDS = ["asyncio", "ferroloop", "ferroloop-poll", "ferroloop-select", "ferroloop-proactor"]


@pytest.mark.parametrize("family", ["ipv4", "ipv6", "unix"])
@pytest.mark.parametrize("kind", KINDS)
def test_servers_see_the_peer_as_the_client_sees_itself(kind, family, tmp_path):
    if family == "ipv6" and not HAS_IPV6:
        pytest.skip("no IPv6 on this machine")  # a machine without ::1
    loop = make_loop(kind)
    seen = []

    class Record(asyncio.Protocol):
        def connection_made(self, transport):
            sock = transport.get_extra_info("socket")
            seen.append((transport.get_extra_info("peername"), sock.gettimeout()))
            transport.close()

    async def main():
        if family == "unix":
            path = str(tmp_path / "s.sock")
            server = await loop.create_unix_server(Record, path)
            names = []
            for i in range(3):
                c = socket.socket(socket.AF_UNIX)
                if i:
                    c.bind(str(tmp_path / f"c{i}.sock"))
                c.setblocking(False)
                await loop.sock_connect(c, path)
                names.append(c.getsockname())
                await loop.sock_recv(c, 1)  # the server's close
                c.close()
        else:
            host = "127.0.0.1" if family == "ipv4" else "::1"
            server = await loop.create_server(Record, host, 0)
            port = server.sockets[0].getsockname()[1]
            names = []
            for _ in range(3):
                reader, writer = await asyncio.open_connection(host, port)
                names.append(writer.get_extra_info("sockname"))
                await reader.read()
                writer.close()
                await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return names

    try:
        names = loop.run_until_complete(asyncio.wait_for(main(), 10))
    finally:
        loop.close()
    assert [peer for peer, _ in seen] == names
    assert all(timeout == 0.0 for _, timeout in seen)


FERRO_KINDS = [k for k in KINDS if k.startswith("ferroloop")]


# ferroloop only: asyncio takes every waiting connection each time the
# listener is ready, so it has no one-at-a-time mode to check.
@pytest.mark.parametrize("kind", FERRO_KINDS)
def test_listener_takes_one_at_a_time_until_more_wait(kind):
    """A listener whose last readiness held one connection takes one per
    readiness (no failing accept after it); ready again at the very next
    look for I/O, it takes every connection waiting, in that one look.
    Which pass took each connection is read from the loop's statistics when
    the protocol factory is called; every pass here looks for I/O (the
    listener is watched)."""
    loop = make_loop(kind)
    taken_at = []

    def factory():
        taken_at.append(loop.stats().passes)
        return asyncio.Protocol()

    clients = []

    def connect(port, n):
        # Blocking connects on loopback: each is in the listener's queue
        # when connect returns, before the loop looks again.
        for _ in range(n):
            clients.append(socket.create_connection(("127.0.0.1", port)))

    async def served(n):
        for _ in range(1000):
            if len(taken_at) >= n:
                return
            await asyncio.sleep(0.001)
        raise AssertionError(f"{len(taken_at)} of {n} connections taken")

    async def main():
        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        connect(port, 1)  # alone: taken, then accept fails: one at a time
        await served(1)
        await asyncio.sleep(0.01)
        connect(port, 2)  # two at once: one, then the other a look later
        await served(3)
        await asyncio.sleep(0.01)
        connect(port, 4)  # one, then the other three in the next look
        await served(7)
        await asyncio.sleep(0.01)
        connect(port, 3)  # the last readiness held three: all at once
        await served(10)
        server.close()
        await server.wait_closed()

    try:
        loop.run_until_complete(asyncio.wait_for(main(), 10))
    finally:
        for c in clients:
            c.close()
        loop.close()
    first, pair, four, three = taken_at[:1], taken_at[1:3], taken_at[3:7], taken_at[7:]
    assert pair[1] == pair[0] + 1, taken_at
    assert four[1] == four[0] + 1 and four[1] == four[2] == four[3], taken_at
    assert three[0] == three[1] == three[2], taken_at
    assert first[0] < pair[0] < four[0] < three[0]
