"""ferroloop's transports: asyncio transport classes around native cores.

`SocketTransport` (TCP and Unix streams), `DatagramTransport` (UDP and
Unix datagrams), `ReadPipeTransport` and
`WritePipeTransport` (pipes, FIFOs, character devices, and the pipes of
subprocesses) keep their state and do their work in native cores.

A `SocketTransport` is an `asyncio.Transport` and, like asyncio's own, a
`_FlowControlMixin` (so `isinstance` checks and asyncio's own helpers, such as
the sendfile fallback, accept it) whose state and work live in a native
`StreamCore`: reads go from the socket straight to the protocol, writes are
tried at once and buffered in Rust, and flow control, EOF and the close /
abort ordering follow asyncio's `_SelectorSocketTransport`. This class only
builds the `extra` mapping, registers the transport with its loop and server,
and forwards; the hot methods (`write`, `is_closing`) are C methods of the
class that reach the core through its `_core` slot, so calling them costs no
Python frame and CPython can specialise their lookup.
"""

from __future__ import annotations

import _socket
import operator
import os
import stat
import warnings
from asyncio import constants, transports

from ._ferroloop import (
    DatagramCore,
    ReadPipeCore,
    RingStreamCore,
    StreamCore,
    WritePipeCore,
    _init_socket_extra,
    _install_transport_methods,
    _register_transport,
)

__all__ = (
    "DatagramTransport",
    "ReadPipeTransport",
    "RingSocketTransport",
    "SocketTransport",
    "WritePipeTransport",
)

_REPR_NAME = "_SelectorSocketTransport"


def _core_attr(name):
    """A read-only attribute of asyncio's (``_sock``, ``_conn_lost``, ...)
    that reads the core's ``name``."""
    return property(operator.attrgetter(f"_core.{name}"))


# The C-level attributes of a socket object (plain ints; the socket.socket
# properties convert them to enums on every read).
_raw_family = _socket.socket.family.__get__
_raw_type = _socket.socket.type.__get__
_raw_proto = _socket.socket.proto.__get__
_EVENT_READ = 1
_EVENT_WRITE = 2


class _WriteBufferMixin:
    """Write-buffer sizes, limits and counters, forwarded to the core (every
    transport that writes)."""

    _conn_lost = _core_attr("conn_lost")

    _protocol_paused = _core_attr("protocol_paused")

    def get_write_buffer_size(self):
        return self._core.get_write_buffer_size()

    def get_write_buffer_limits(self):
        return self._core.get_write_buffer_limits()

    def set_write_buffer_limits(self, high=None, low=None):
        self._core.set_write_buffer_limits(high, low)


class _StreamWriteMixin(_WriteBufferMixin):
    """The byte-stream writing methods (socket streams and write pipes)."""

    def write(self, data):
        self._core.write(data)

    def writelines(self, list_of_data):
        self._core.writelines(list_of_data)

    def write_eof(self):
        self._core.write_eof()

    def can_write_eof(self):
        return True


class _CoreForwardingMixin:
    """What every transport forwards to its core: the protocol, closing, and
    asyncio's attribute names for them."""

    _loop = _core_attr("loop")

    @property
    def _protocol(self):
        return self._core.get_protocol()

    @property
    def _closing(self):
        return self._core.is_closing()

    def is_closing(self):
        return self._core.is_closing()

    def close(self):
        self._core.close()

    def set_protocol(self, protocol):
        self._core.set_protocol(protocol)

    def get_protocol(self):
        return self._core.get_protocol()


class _ReadingMixin:
    """`pause_reading` and friends, for the transports that read."""

    _paused = _core_attr("paused")

    def is_reading(self):
        return self._core.is_reading()

    def pause_reading(self):
        self._core.pause_reading()

    def resume_reading(self):
        self._core.resume_reading()


class _SocketTransportMixin(_CoreForwardingMixin, _ReadingMixin):
    """What the stream and datagram transports share: asyncio's socket
    attributes, over the core (their finalizer is a C method of each class,
    see `_install_transport_methods`)."""

    # __del__ (warn and close the socket if left open) is a C method of
    # each class, installed with `write`/`sendto` below.

    _sock = _core_attr("sock")

    def abort(self):
        self._core.abort()

    def _force_close(self, exc):
        self._core._force_close(exc)

    def _fatal_error(self, exc, message="Fatal error on transport"):
        self._core._fatal_error(exc, message)

    @staticmethod
    def _io_mask(loop, core):
        # What the loop watches the socket for (the selector engine).
        return loop._ff_watch_mask(core.fd)

    def _repr_info(self, name):
        core = getattr(self, "_core", None)
        if core is None:
            return f"<{name} uninitialized>"
        info = [name]
        if core.sock is None:
            info.append("closed")
        elif core.is_closing():
            info.append("closing")
        info.append(f"fd={core.fd}")
        loop = core.loop
        if loop is not None and not loop.is_closed():
            mask = self._io_mask(loop, core)
            info.append("read=polling" if mask & _EVENT_READ else "read=idle")
            state = "polling" if mask & _EVENT_WRITE else "idle"
            info.append(f"write=<{state}, bufsize={core.get_write_buffer_size()}>")
        return "<{}>".format(" ".join(info))


class SocketTransport(
    _SocketTransportMixin, _StreamWriteMixin, transports._FlowControlMixin, transports.Transport
):
    """A TCP or Unix stream socket transport with a native core.

    Its repr names it as asyncio names its own (``_SelectorSocketTransport``),
    so logs and reprs read the same on both loops.
    """

    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE
    max_size = 256 * 1024

    # The core, in a slot: the C `write` and `is_closing` installed below
    # read it at a fixed place.
    __slots__ = ("_core",)

    _core_class = StreamCore

    # `__init__` is a C method of the class (`_install_transport_methods`
    # below): the extra info, the core (of `_core_class`) in the `_core`
    # slot, `_sock_fd`, the server's count, the `loop._transports` entry,
    # Nagle off as asyncio turns it off, and the core started. Calls of
    # another shape (keywords for the first three, too few or too many
    # arguments) come here first, for Python's argument errors.
    def _py_init(self, loop, sock, protocol, waiter=None, extra=None, server=None):
        SocketTransport.__init__(self, loop, sock, protocol, waiter, extra, server)

    def __repr__(self):
        return self._repr_info(_REPR_NAME)

    _server = _core_attr("server")

    _eof = _core_attr("eof")

    _empty_waiter = _core_attr("empty_waiter")

    # asyncio's internal interface, used by loop.sendfile.

    def _make_empty_waiter(self):
        return self._core._make_empty_waiter()

    def _reset_empty_waiter(self):
        self._core._reset_empty_waiter()


class RingSocketTransport(SocketTransport):
    """The proactor loop's stream transport: the same object for protocols,
    with a core that moves its bytes by io_uring ops (`RingStreamCore`)."""

    _core_class = RingStreamCore

    @staticmethod
    def _io_mask(loop, core):
        # What the socket has ops in flight for.
        reading, writing = core.io_state
        return (_EVENT_READ if reading else 0) | (_EVENT_WRITE if writing else 0)


_install_transport_methods([SocketTransport, RingSocketTransport])


class DatagramTransport(
    _SocketTransportMixin, _WriteBufferMixin, transports._FlowControlMixin, transports.Transport
):
    """A UDP or Unix datagram socket transport with a native core.

    Like asyncio's `_SelectorDatagramTransport`, it is an
    `asyncio.Transport` (not an `asyncio.DatagramTransport`), and its repr
    uses asyncio's class name.
    """

    # As SocketTransport's: `sendto` and `is_closing` read the core here.
    __slots__ = ("_core",)

    max_size = 256 * 1024

    def __init__(self, loop, sock, protocol, address=None, waiter=None, extra=None):
        _init_socket_extra(self, sock, extra)
        self._address = address
        core = DatagramCore(loop, sock, protocol, self, address, bool(self._extra["peername"]))
        self._core = core
        self._sock_fd = core.fd
        _register_transport(loop._transports, self._sock_fd, self)
        core._start(waiter)

    def __repr__(self):
        return self._repr_info("_SelectorDatagramTransport")


_install_transport_methods([DatagramTransport], datagram=True)


def _pipe_mode(fileno):
    mode = os.fstat(fileno).st_mode
    return stat.S_ISFIFO(mode), stat.S_ISSOCK(mode), stat.S_ISCHR(mode)


def _pipe_repr(name, core, event, bufsize):
    info = [name]
    pipe = core.pipe
    if pipe is None:
        info.append("closed")
    elif core.is_closing():
        info.append("closing")
    info.append(f"fd={core.fd}")
    loop = core.loop
    if pipe is not None and getattr(loop, "_selector", None) is not None:
        mask = loop._ff_watch_mask(core.fd)
        info.append("polling" if mask & event else "idle")
        if bufsize:
            info.append(f"bufsize={core.get_write_buffer_size()}")
    elif pipe is not None:
        info.append("open")
    else:
        info.append("closed")
    return "<{}>".format(" ".join(info))


class _PipeTransportMixin(_CoreForwardingMixin):
    """What both pipe transports share: the finalizer and asyncio's pipe
    attributes."""

    def __del__(self, _warn=warnings.warn):
        core = self.__dict__.get("_core")
        if core is not None and core.pipe is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            core._close_pipe()

    _pipe = _core_attr("pipe")

    @_pipe.setter
    def _pipe(self, value):
        self._core.pipe = value

    def _fatal_error(self, exc, message="Fatal error on pipe transport"):
        self._core._fatal_error(exc, message)

    def _call_connection_lost(self, exc):
        self._core._call_connection_lost(exc)


class ReadPipeTransport(_PipeTransportMixin, _ReadingMixin, transports.ReadTransport):
    """The read end of a pipe, FIFO, socket or character device."""

    max_size = 256 * 1024

    def __init__(self, loop, pipe, protocol, waiter=None, extra=None):
        super().__init__(extra)
        self._extra["pipe"] = pipe
        fileno = pipe.fileno()
        is_fifo, is_socket, is_char = _pipe_mode(fileno)
        if not (is_fifo or is_socket or is_char):
            raise ValueError("Pipe transport is for pipes/sockets only.")
        os.set_blocking(fileno, False)
        self._fileno = fileno
        self._core = core = ReadPipeCore(loop, pipe, fileno, protocol, self)
        core._start(waiter)

    def __repr__(self):
        core = self.__dict__.get("_core")
        if core is None:
            return "<_UnixReadPipeTransport uninitialized>"
        return _pipe_repr("_UnixReadPipeTransport", core, _EVENT_READ, False)

    def _close(self, exc):
        self._core._close(exc)


class WritePipeTransport(
    _PipeTransportMixin, _StreamWriteMixin, transports._FlowControlMixin, transports.WriteTransport
):
    """The write end of a pipe, FIFO, socket or character device."""

    def __init__(self, loop, pipe, protocol, waiter=None, extra=None):
        transports.BaseTransport.__init__(self, extra)
        self._extra["pipe"] = pipe
        fileno = pipe.fileno()
        is_fifo, is_socket, is_char = _pipe_mode(fileno)
        if not (is_fifo or is_socket or is_char):
            raise ValueError("Pipe transport is only for pipes, sockets and character devices")
        os.set_blocking(fileno, False)
        self._fileno = fileno
        self._core = core = WritePipeCore(loop, pipe, fileno, protocol, self)
        self.write = core.write
        core._start(waiter, is_socket or is_fifo)

    def __repr__(self):
        core = self.__dict__.get("_core")
        if core is None:
            return "<_UnixWritePipeTransport uninitialized>"
        return _pipe_repr("_UnixWritePipeTransport", core, _EVENT_WRITE, True)

    def abort(self):
        self._core.abort()

    def _close(self, exc=None):
        self._core._close(exc)
