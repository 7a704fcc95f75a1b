# ferroloop's transports: asyncio's transport classes, with native cores
# (ferroloop._ferroloop). Loops make them; users get them from
# create_connection(), create_server(), create_datagram_endpoint(),
# connect_read_pipe() and friends, typed as asyncio's transports there.
import socket
from asyncio import BaseProtocol, Future, base_events, transports
from collections.abc import Mapping
from typing import Any, ClassVar

from _typeshed import ReadableBuffer

from ._loop import Loop

__all__ = (
    "DatagramTransport",
    "ReadPipeTransport",
    "RingSocketTransport",
    "SocketTransport",
    "WritePipeTransport",
)

class SocketTransport(transports._FlowControlMixin, transports.Transport):
    """A TCP or Unix stream socket transport (the selector loop's)."""

    max_size: ClassVar[int]
    def __init__(
        self,
        loop: Loop,
        sock: socket.socket,
        protocol: BaseProtocol,
        waiter: Future[Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        server: base_events.Server | None = None,
    ) -> None: ...
    def __del__(self) -> None: ...

class RingSocketTransport(SocketTransport):
    """The proactor loop's stream transport (io_uring ops)."""

class DatagramTransport(transports._FlowControlMixin, transports.Transport):
    """A UDP or Unix datagram socket transport. Like asyncio's own, an
    asyncio.Transport (not an asyncio.DatagramTransport) with sendto()."""

    max_size: ClassVar[int]
    def __init__(
        self,
        loop: Loop,
        sock: socket.socket,
        protocol: BaseProtocol,
        address: Any = None,
        waiter: Future[Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None: ...
    def sendto(self, data: ReadableBuffer, addr: Any = None) -> None: ...
    def __del__(self) -> None: ...

class ReadPipeTransport(transports.ReadTransport):
    """The read end of a pipe, FIFO, socket or character device."""

    max_size: ClassVar[int]
    def __init__(
        self,
        loop: Loop,
        pipe: Any,
        protocol: BaseProtocol,
        waiter: Future[Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None: ...

class WritePipeTransport(transports._FlowControlMixin, transports.WriteTransport):
    """The write end of a pipe, FIFO, socket or character device."""

    def __init__(
        self,
        loop: Loop,
        pipe: Any,
        protocol: BaseProtocol,
        waiter: Future[Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None: ...
