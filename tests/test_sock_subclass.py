"""A ``socket.socket`` subclass handed to the loop as ``sock=``: asyncio's
transport reads and writes through the socket's own ``recv`` /
``recv_into`` / ``send``, so a subclass that overrides them (to count,
throttle, record or fake I/O) sees every byte. ferroloop's native
transports work on the descriptor, so such a socket gets asyncio's own
transport instead; a subclass that leaves the I/O methods alone keeps the
native one."""

from __future__ import annotations

import asyncio
import socket

import ferroloop
import pytest


class Recording(socket.socket):
    """Records what passes through its I/O methods."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.received = bytearray()
        self.sent = bytearray()

    def recv(self, n, *args):
        data = super().recv(n, *args)
        self.received += data
        return data

    def recv_into(self, buf, *args):
        n = super().recv_into(buf, *args)
        self.received += memoryview(buf)[:n]
        return n

    def send(self, data, *args):
        n = super().send(data, *args)
        self.sent += bytes(memoryview(data)[:n])
        return n


class Tagged(socket.socket):
    """A subclass that adds state but moves bytes as socket.socket does."""

    tag = "mine"


def adopt(cls, sock):
    new = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
    new.setblocking(False)
    return new


async def echo_through(loop, cls, payload):
    a, b = socket.socketpair()
    mine = adopt(cls, a)
    b.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=mine)
    try:
        writer.write(payload)
        await writer.drain()
        got = bytearray()
        while len(got) < len(payload):
            got += await loop.sock_recv(b, 65536)
        await loop.sock_sendall(b, payload[::-1])
        back = await reader.readexactly(len(payload))
        return mine, bytes(got), back, writer.transport
    finally:
        writer.close()
        await writer.wait_closed()
        b.close()


def test_overridden_io_methods_see_every_byte(loop):
    payload = bytes(range(256)) * 1000
    mine, got, back, _ = loop.run_until_complete(echo_through(loop, Recording, payload))
    assert got == payload
    assert back == payload[::-1]
    assert bytes(mine.sent) == payload
    assert bytes(mine.received) == payload[::-1]


def test_overridden_io_under_a_protocol(loop):
    """Through create_connection and a plain protocol, writes and reads both
    go through the subclass."""
    a, b = socket.socketpair()
    mine = adopt(Recording, a)

    class Proto(asyncio.Protocol):
        def __init__(self):
            self.data = bytearray()
            self.done = loop.create_future()

        def data_received(self, data):
            self.data += data
            if len(self.data) >= 5:
                self.done.set_result(None)

    async def main():
        transport, proto = await loop.create_connection(Proto, sock=mine)
        transport.write(b"ping!")
        b.sendall(b"pong!")
        await asyncio.wait_for(proto.done, 10)
        assert b.recv(100) == b"ping!"
        transport.close()
        return proto

    proto = loop.run_until_complete(main())
    b.close()
    assert bytes(proto.data) == b"pong!"
    assert bytes(mine.sent) == b"ping!"
    assert bytes(mine.received) == b"pong!"


def test_a_subclass_that_keeps_the_io_methods_keeps_the_native_transport(loop):
    payload = b"x" * 10000
    mine, got, back, transport = loop.run_until_complete(echo_through(loop, Tagged, payload))
    assert mine.tag == "mine"
    assert got == payload and back == payload
    native = type(transport).__module__ == "ferroloop._transports"
    assert native == isinstance(loop, ferroloop.Loop)


@pytest.mark.parametrize("bad", [object(), 123])
def test_not_a_socket(loop, bad):
    async def main():
        await loop.create_connection(asyncio.Protocol, sock=bad)

    with pytest.raises(AttributeError, match="has no attribute 'type'"):
        loop.run_until_complete(main())
