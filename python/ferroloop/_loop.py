"""ferroloop's event loop class.

`Loop` joins the native core (`ferroloop._ferroloop.LoopCore`: queues, timers,
selector, the loop's passes, fd watching) with asyncio's own Unix selector
loop classes, whose Python code provides the rarely used and intricate parts
unchanged: tasks and futures, `run_until_complete`, executors, async
generator hooks, exception handlers, debug helpers, DNS, and, on top of the
native fd watching, sockets, transports, servers, TLS, pipes, subprocesses
and signal handlers. The native class comes first in the method resolution
order, so every hot method (scheduling, timers, the loop's passes,
`add_reader` and friends) is the native one.
"""

from __future__ import annotations

import _socket
import collections.abc
import errno
import functools
import os
import selectors
import socket
import subprocess
import sys
import threading
import warnings
import weakref
from asyncio import (
    base_events,
    constants,
    events,
    exceptions,
    selector_events,
    sslproto,
    tasks,
    trsock,
    unix_events,
)
from asyncio.log import logger
from typing import NamedTuple

from ._ferroloop import Handle, LoopCore, SockCall, _accept_into, _socket_from_fd
from ._transports import (
    DatagramTransport,
    ReadPipeTransport,
    RingSocketTransport,
    SocketTransport,
    WritePipeTransport,
    _raw_family,
    _raw_proto,
    _raw_type,
)

# `sock_recv`, `sock_recv_into` and `sock_sendall` return a native object
# that speaks the coroutine protocol (sock_ops.rs): registered, it is a
# coroutine to `asyncio.iscoroutine`, `create_task` and `ensure_future`.
collections.abc.Coroutine.register(SockCall)

__all__ = ("Loop", "LoopStats", "ProactorEventLoop", "SelectorEventLoop", "new_event_loop")


class LoopStats(NamedTuple):
    """What ``loop.stats()`` returns: counters since the loop was made, and
    the recent maxima (from the last one to two minutes)."""

    #: Passes of the loop (each waits for I/O or timers, then runs callbacks).
    passes: int
    #: Callbacks run (handles, including tasks' steps and I/O callbacks).
    callbacks: int
    #: Seconds the loop ran: callbacks and its own work between waits.
    busy_time: float
    #: Seconds the loop spent waiting for I/O or timers.
    wait_time: float
    #: How late, in seconds, the last due timers ran after their deadline.
    lag: float
    #: The largest such lateness recently.
    max_lag: float
    #: The slowest callback recently, as asyncio formats a handle in its
    #: slow-callback warning (a task's step shows the task); None before any.
    slowest_callback: str | None
    #: How long it ran, in seconds.
    slowest_duration: float | None
    #: Callbacks ready to run now.
    ready: int
    #: Timers scheduled now (cancelled ones not yet dropped included).
    timers: int


# The socket methods asyncio's stream transport moves bytes with.
_STREAM_IO = ("recv", "recv_into", "send")


def _overrides_io(sock):
    """Whether ``sock``'s class replaces a method the stream transport reads
    or writes with. The native transports work on the descriptor and would
    bypass it, so such a socket gets asyncio's own transport, which calls
    the methods as a program overriding them expects."""
    cls = type(sock)
    if cls is socket.socket:
        return False
    return any(getattr(cls, m, None) is not getattr(socket.socket, m) for m in _STREAM_IO)


class _NativeSelectorView:
    """What ``loop._selector`` is on a native backend: enough of the
    ``selectors.BaseSelector`` API for code that inspects registrations
    (asyncio's transports do, in their repr); the loop itself never calls it."""

    def __init__(self, loop):
        self._loop = weakref.ref(loop)

    def get_key(self, fileobj):
        loop = self._loop()
        fd = selectors._fileobj_to_fd(fileobj)
        mask = loop._ff_watch_mask(fd) if loop is not None and not loop.is_closed() else 0
        if not mask:
            raise KeyError(f"{fileobj!r} is not registered")
        return selectors.SelectorKey(fileobj, fd, mask, None)

    def close(self):
        pass


class _TLSProtocol(sslproto.SSLProtocol):
    """asyncio's TLS protocol, with the read staging buffer of its loop.

    asyncio gives every TLS connection a ``max_size`` (256 KiB) bytearray
    that the transport reads ciphertext into; ``buffer_updated`` moves the
    bytes into the connection's ``MemoryBIO`` before it does anything else.
    A loop's transports call ``get_buffer``, read and ``buffer_updated`` in
    one go, so one such buffer per loop serves all its connections: 50
    connections would hold 12.5 MiB of them otherwise. ``get_buffer`` still
    makes a buffer of the connection's own when asked for more than the
    shared one holds (``max_size`` raised after the loop made it).
    """

    def __init__(self, loop, *args, **kwargs):
        # asyncio's __init__ sizes the connection's buffer by max_size.
        self.max_size = 0
        try:
            super().__init__(loop, *args, **kwargs)
        finally:
            del self.max_size
        _share_tls_staging(loop, self)


def _share_tls_staging(loop, ssl_protocol):
    """Point `ssl_protocol`'s read staging buffer at `loop`'s."""
    view = loop._ff_tls_staging
    if view is None or len(view) < ssl_protocol.max_size:
        view = loop._ff_tls_staging = memoryview(bytearray(ssl_protocol.max_size))
    ssl_protocol._ssl_buffer = view.obj
    ssl_protocol._ssl_buffer_view = view


# The stream transports that call a BufferedProtocol's get_buffer, read and
# call its buffer_updated in one go.
_OWN_STREAMS = (SocketTransport, RingSocketTransport, selector_events._SelectorSocketTransport)


def _run_foreign_handle(handle):
    # An asyncio.Handle queued through _add_callback (asyncio's signal code
    # makes those): run it unless it was cancelled meanwhile, as asyncio's
    # pass does.
    if not handle._cancelled:
        handle._run()


class Loop(LoopCore, unix_events._UnixSelectorEventLoop):
    """An asyncio event loop whose core runs in Rust.

    ``selector`` picks what the loop waits on: ``None`` for the best native
    backend (epoll on Linux), ``"epoll"``, ``"poll"`` or ``"select"`` for a
    given native backend, or any ``selectors.BaseSelector`` instance (for
    example ``selectors.SelectSelector()`` for character devices), which the
    loop then drives through its Python API. ``loop.backend`` says which.
    With ``selector=None``, the environment variable ``FERROLOOP_SELECTOR``
    (``epoll``, ``poll`` or ``select``) forces a native backend.
    """

    def __init__(self, selector=None):
        self._ff_init_state()
        if selector is None:
            # Force a backend for a whole program or test run.
            selector = os.environ.get("FERROLOOP_SELECTOR") or None
        if selector is not None:
            try:
                self._ff_set_selector(selector)
            except BaseException:
                self.close()
                raise
            self._selector = self._ff_python_selector() or self._selector

    def _ff_init_state(self):
        # BaseEventLoop's state; BaseSelectorEventLoop.__init__ is not called:
        # the native core is the selector and wakes itself with an eventfd.
        base_events.BaseEventLoop.__init__(self)
        # BaseEventLoop keeps its queues in these; the native core has its own.
        for name in ("_ready", "_scheduled", "_timer_cancelled_count"):
            self.__dict__.pop(name, None)
        self._transports = weakref.WeakValueDictionary()
        self._signal_handlers = {}
        self._unix_server_sockets = {}  # Python 3.12+ keeps server paths here
        # asyncio's self-pipe carries signal numbers (set_wakeup_fd); it is
        # made on first use, so a loop without signal handlers watches no fd.
        self._ff_self_pipe = None
        self._ff_children = {}  # pid -> pidfd, for children still running
        self._ff_tls_staging = None  # see _TLSProtocol
        self._selector = _NativeSelectorView(self)

    # The self-pipe, made when asyncio's signal code first asks for it.

    def _make_self_pipe(self):
        ssock, csock = socket.socketpair()
        ssock.setblocking(False)
        csock.setblocking(False)
        self._ff_self_pipe = (ssock, csock)
        self._internal_fds += 1
        self._add_reader(ssock.fileno(), self._read_from_self)

    def _close_self_pipe(self):
        if self._ff_self_pipe is None:
            return
        ssock, csock = self._ff_self_pipe
        self._ff_self_pipe = None
        self._remove_reader(ssock.fileno())
        ssock.close()
        csock.close()
        self._internal_fds -= 1

    def _ff_get_self_pipe(self):
        if self._ff_self_pipe is None:
            self._check_closed()
            self._make_self_pipe()
        return self._ff_self_pipe

    @property
    def _ssock(self):
        return self._ff_get_self_pipe()[0]

    @property
    def _csock(self):
        return self._ff_get_self_pipe()[1]

    # The public fd methods also refuse a descriptor a transport owns, as
    # asyncio's do; the check costs nothing while no transport exists.

    def add_reader(self, fd, callback, *args):
        if self._transports:
            self._ensure_fd_no_transport(fd)
        LoopCore.add_reader(self, fd, callback, *args)

    def add_writer(self, fd, callback, *args):
        if self._transports:
            self._ensure_fd_no_transport(fd)
        LoopCore.add_writer(self, fd, callback, *args)

    def remove_reader(self, fd):
        if self._transports:
            self._ensure_fd_no_transport(fd)
        return LoopCore.remove_reader(self, fd)

    def remove_writer(self, fd):
        if self._transports:
            self._ensure_fd_no_transport(fd)
        return LoopCore.remove_writer(self, fd)

    def _add_callback(self, handle):
        if isinstance(handle, Handle):
            LoopCore._add_callback(self, handle)
        elif not handle._cancelled:
            self._call_soon(_run_foreign_handle, (handle,), None)

    def _add_callback_signalsafe(self, handle):
        self._add_callback(handle)
        self._write_to_self()

    # Sockets get the native transports: streams (TCP and Unix, plain or
    # under TLS, whose SSLProtocol sits on top) and datagrams (UDP, Unix).

    # The native stream transport of this loop kind (the proactor's moves
    # bytes with ring ops).
    _ff_stream_transport = SocketTransport

    def _make_socket_transport(self, sock, protocol, waiter=None, *, extra=None, server=None):
        if _overrides_io(sock):
            return selector_events._SelectorSocketTransport(
                self, sock, protocol, waiter, extra, server
            )
        return self._ff_stream_transport(self, sock, protocol, waiter, extra, server)

    def _make_ssl_transport(
        self,
        rawsock,
        protocol,
        sslcontext,
        waiter=None,
        *,
        server_side=False,
        server_hostname=None,
        extra=None,
        server=None,
        ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT,
    ):
        # asyncio's TLS protocol, over this loop's own stream transport for
        # the socket (asyncio's method puts it over its Python transport).
        ssl_protocol = _TLSProtocol(
            self,
            protocol,
            sslcontext,
            waiter,
            server_side,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        self._make_socket_transport(rawsock, ssl_protocol, extra=extra, server=server)
        return ssl_protocol._app_transport

    async def start_tls(
        self,
        transport,
        protocol,
        sslcontext,
        *,
        server_side=False,
        server_hostname=None,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
    ):
        # asyncio's, which makes its own TLS protocol with a buffer of its
        # own; once the handshake is done, the protocol reads through the
        # loop's staging buffer instead, if the transport is one of this
        # loop's (they read and hand over in one go).
        app_transport = await super().start_tls(
            transport,
            protocol,
            sslcontext,
            server_side=server_side,
            server_hostname=server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        ssl_protocol = getattr(app_transport, "_ssl_protocol", None)
        if type(ssl_protocol) is sslproto.SSLProtocol and type(transport) in _OWN_STREAMS:
            _share_tls_staging(self, ssl_protocol)
        return app_transport

    def _make_datagram_transport(self, sock, protocol, address=None, waiter=None, extra=None):
        return DatagramTransport(self, sock, protocol, address, waiter, extra)

    # Accepting. asyncio wraps every accepted connection in a task
    # (`_accept_connection2`) that builds the transport and then awaits its
    # waiter, only to log errors in debug mode. Without TLS there is nothing
    # to await, so ferroloop builds the protocol and the transport in the
    # accept callback itself, each connection in a copy of the context as a
    # task would have it; `connection_made` follows in the next pass. TLS
    # servers keep asyncio's task, which awaits the handshake (and so do
    # listeners that are not real sockets, e.g. mocks in tests).

    # The listener's callback, as `_start_serving` registers it: for a
    # real socket of a family the loop accepts natively and no TLS, all
    # native (LoopCore._ff_accept_connection); otherwise, and for a
    # backlog that is not an int, `_ff_accept_general` below.
    _accept_connection = LoopCore._ff_accept_connection

    def _ff_accept_general(
        self,
        protocol_factory,
        sock,
        sslcontext=None,
        server=None,
        backlog=100,
        ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT,
    ):
        serving = (sslcontext, server, backlog, ssl_handshake_timeout, ssl_shutdown_timeout)
        if sslcontext is not None or not issubclass(type(sock), _socket.socket):
            return super()._accept_connection(protocol_factory, sock, *serving)
        # A family the loop does not accept natively: what socket.accept()
        # does, without its per-call enum conversions of the listener's
        # family and type.
        family, type_, proto = _raw_family(sock), _raw_type(sock), _raw_proto(sock)
        for _ in range(backlog):
            try:
                fd, addr = sock._accept()
                try:
                    conn = _socket_from_fd(family, type_, proto, fd)
                except BaseException:
                    os.close(fd)
                    raise
                if self._debug:
                    logger.debug("%r got a new connection from %r: %r", server, addr, conn)
                conn.setblocking(False)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return None  # nothing more to accept in this pass
            except OSError as exc:
                self._ff_accept_failed(exc, protocol_factory, sock, *serving)
                return None
            else:
                # The protocol and the transport, in a copy of the context
                # as a task would have it; an error is reported in debug
                # mode only, as asyncio's accept task reports it.
                _accept_into(self, self._ff_stream_transport, protocol_factory, conn, addr, server)
        return None

    def _ff_accept_failed(self, exc, protocol_factory, sock, *serving):
        # An OSError ended a readiness's accepts (this one's or the native
        # one's). Out of descriptors or memory: reported, and, as the
        # listener stays readable, not watched for a while (as asyncio's
        # accept loop). Anything else goes to the loop's exception handler.
        if exc.errno not in _OUT_OF_RESOURCES:
            raise exc
        self.call_exception_handler(
            {
                "message": "socket.accept() out of system resource",
                "exception": exc,
                "socket": trsock.TransportSocket(sock),
            }
        )
        self._remove_reader(sock.fileno())
        self.call_later(
            constants.ACCEPT_RETRY_DELAY, self._start_serving, protocol_factory, sock, *serving
        )

    # Pipes (connect_read_pipe / connect_write_pipe and subprocess pipes).

    def _make_read_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        return ReadPipeTransport(self, pipe, protocol, waiter, extra)

    def _make_write_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        return WritePipeTransport(self, pipe, protocol, waiter, extra)

    # Child processes: watched through a pidfd on the loop itself (no global
    # child watcher, works from any thread), or by a waiting thread where
    # pidfd_open is missing.

    async def _make_subprocess_transport(
        self, protocol, args, shell, stdin, stdout, stderr, bufsize, extra=None, **kwargs
    ):
        spawn = (protocol, args, shell, stdin, stdout, stderr, bufsize, extra, kwargs)
        watcher = _policy_child_watcher()
        if watcher is None:
            return await self._ff_subprocess(self._ff_watch_child, *spawn)
        # A child watcher was set on the policy (Python 3.8-3.13): honour it
        # as asyncio does, so watchers that reap every child (FastChildWatcher's
        # waitpid(-1)) cannot take ours; its context spans the spawn.
        with watcher as watcher:  # asyncio uses what __enter__ gives
            if not watcher.is_active():
                raise RuntimeError(
                    "asyncio.get_child_watcher() is not activated, "
                    "subprocess support is not installed."
                )

            def watch(pid, transp):
                watcher.add_child_handler(pid, self._child_watcher_callback, transp)

            return await self._ff_subprocess(watch, *spawn)

    async def _ff_subprocess(
        self, watch, protocol, args, shell, stdin, stdout, stderr, bufsize, extra, kwargs
    ):
        waiter = self.create_future()
        if kwargs.get("preexec_fn") is not None:
            # The parent waits in Popen until the child execs, so a slow
            # preexec_fn would stall the loop (as it does on asyncio and
            # uvloop): spawn from the default executor instead.
            proc = await self._ff_spawn_in_executor(
                args, shell, stdin, stdout, stderr, bufsize, kwargs
            )
            cls, kwargs = _SpawnedSubprocessTransport, {"_ff_proc": proc}
        else:
            cls = unix_events._UnixSubprocessTransport
        transp = cls(
            self,
            protocol,
            args,
            shell,
            stdin,
            stdout,
            stderr,
            bufsize,
            waiter=waiter,
            extra=extra,
            **kwargs,
        )
        watch(transp.get_pid(), transp)
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transp.close()
            await transp._wait()
            raise
        return transp

    async def _ff_spawn_in_executor(self, args, shell, stdin, stdout, stderr, bufsize, kwargs):
        spawn = functools.partial(
            subprocess.Popen,
            args,
            shell=shell,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            universal_newlines=False,
            bufsize=bufsize,
            **kwargs,
        )
        fut = self.run_in_executor(None, spawn)
        try:
            return await tasks.shield(fut)
        except exceptions.CancelledError:
            # The child is (or will be) running: do not leave it behind.
            fut.add_done_callback(self._ff_discard_spawned)
            raise

    def _ff_discard_spawned(self, fut):
        if fut.cancelled() or fut.exception() is not None:
            return
        self.run_in_executor(None, _kill_and_reap, fut.result())

    def _ff_watch_child(self, pid, transp):
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            thread = threading.Thread(
                target=self._ff_wait_child_thread,
                args=(pid, transp),
                daemon=True,
                name=f"ferroloop-waitpid-{pid}",
            )
            thread.start()
            return
        self._ff_children[pid] = pidfd
        self._add_reader(pidfd, self._ff_child_ready, pid, pidfd, transp)

    def _ff_child_ready(self, pid, pidfd, transp):
        self._remove_reader(pidfd)
        self._ff_children.pop(pid, None)
        os.close(pidfd)
        self._child_watcher_callback(pid, _reap(pid, transp), transp)

    def _ff_wait_child_thread(self, pid, transp):
        returncode = _reap(pid, transp)
        if not self.is_closed():
            self._child_watcher_callback(pid, returncode, transp)

    def _ff_release_children(self):
        # The loop closes with children still running: nobody will read
        # their pidfds any more, so reap them from a thread instead (no
        # zombie, no fd left open).
        children, self._ff_children = self._ff_children, {}
        for pid, pidfd in children.items():
            self._remove_reader(pidfd)
            os.close(pidfd)
            threading.Thread(
                target=_reap, args=(pid, None), daemon=True, name=f"ferroloop-waitpid-{pid}"
            ).start()

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if name == "time":
            # asyncio reads its clock through self.time(); so does the native
            # core once time() is patched on the instance.
            self._ff_set_custom_time(True)

    def __delattr__(self, name):
        super().__delattr__(name)
        if name == "time":
            self._ff_set_custom_time(False)

    def run_forever(self):
        """Run until stop() is called."""
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(self._debug)
        saved_hooks = sys.get_asyncgen_hooks()
        try:
            self._thread_id = threading.get_ident()
            sys.set_asyncgen_hooks(
                firstiter=self._asyncgen_firstiter_hook,
                finalizer=self._asyncgen_finalizer_hook,
            )
            events._set_running_loop(self)
            self._ff_run()
        finally:
            self._stopping = False
            self._thread_id = None
            events._set_running_loop(None)
            self._set_coroutine_origin_tracking(False)
            sys.set_asyncgen_hooks(*saved_hooks)

    def stats(self) -> LoopStats:
        """The loop's statistics, always kept (see ``LoopStats``); cheap to
        read, from any thread (a metrics exporter may poll it)."""
        return LoopStats(*self._ff_stats())

    def close(self):
        """Close the loop: drop pending callbacks, close the selector, shut
        the default executor down without waiting for it, and remove the
        signal handlers."""
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self._closed:
            return
        if self._debug:
            base_events.logger.debug("Close %r", self)
        self._close_self_pipe()
        self._ff_release_children()
        self._ff_close()
        # As asyncio's close(): transports' reprs read loop._selector.
        self._selector = None
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is not None:
            self._default_executor = None
            executor.shutdown(wait=False)
        if not sys.is_finalizing():
            for sig in list(self._signal_handlers):
                self.remove_signal_handler(sig)
        elif self._signal_handlers:
            warnings.warn(
                f"Closing the loop {self!r} on interpreter shutdown stage, "
                "skipping signal handlers removal",
                ResourceWarning,
                source=self,
            )
            self._signal_handlers.clear()


_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class _SpawnedSubprocessTransport(unix_events._UnixSubprocessTransport):
    """asyncio's Unix subprocess transport around a child that was already
    spawned (by `Loop._ff_spawn_in_executor`)."""

    def _start(self, args, shell, stdin, stdout, stderr, bufsize, _ff_proc, **kwargs):
        self._proc = _ff_proc


def _kill_and_reap(proc):
    # A child whose spawning was cancelled: end it, reap it, close its pipes.
    try:
        proc.kill()
    except ProcessLookupError:
        pass
    proc.wait()
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if f is not None:
            f.close()


def _policy_child_watcher():
    """The child watcher set on (or already made by) the current policy, if
    the policy has the child-watcher API; None otherwise."""
    policy = events._event_loop_policy
    watcher = getattr(policy, "_watcher", None) if policy is not None else None
    return watcher if hasattr(watcher, "add_child_handler") else None


def _reap(pid, transp):
    """Wait for child `pid` and return its exit code (negative: killed by
    that signal). When it was reaped already, by `Popen` itself (sending a
    signal polls the child first) the code is on the transport's `Popen`;
    otherwise it is lost and reported as 255, as asyncio does."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        proc = getattr(transp, "_proc", None)
        if proc is not None and proc.returncode is not None:
            return proc.returncode
        base_events.logger.warning(
            "child process pid %d exit status already read:  will report returncode 255", pid
        )
        return 255
    return os.waitstatus_to_exitcode(status)


SelectorEventLoop = Loop


class ProactorEventLoop(Loop):
    """A completion-based loop on Linux io_uring.

    Everything the selector loop offers, on the same scheduling core; stream
    transports (TCP and Unix, also under TLS) move their bytes with ring ops
    submitted together with the loop's wait (one ``io_uring_enter`` per pass),
    and fd watching (``add_reader``, ``sock_*``, accepting, datagrams, pipes)
    runs on the ring's one-shot poll ops, level-triggered as asyncio needs.

    Raises ``OSError`` naming io_uring and the cause (``errno`` tells which)
    where io_uring cannot be used: a seccomp filter, the
    ``kernel.io_uring_disabled`` sysctl, an old kernel or memlock limits.
    """

    def __init__(self):
        self._ff_init_state()
        try:
            self._ff_use_ring()
        except BaseException:
            self.close()
            raise

    _ff_stream_transport = RingSocketTransport


_KINDS = ("selector", "proactor", "auto")
# What new_event_loop() makes when neither its argument nor FERROLOOP_LOOP
# says: see docs/proactor.md for the measurements behind it.
DEFAULT_KIND = "selector"

_proactor_error = None  # why io_uring failed here, once "auto" found out


def proactor_unavailable_reason():
    """None if a ProactorEventLoop can be made here; else why not (the
    message of the OSError its constructor raises)."""
    try:
        ProactorEventLoop().close()
    except OSError as exc:
        return str(exc)
    return None


def _auto_loop():
    global _proactor_error
    if _proactor_error is None:
        try:
            return ProactorEventLoop()
        except OSError as exc:
            _proactor_error = exc
    return Loop()


def new_event_loop(selector=None, *, kind=None) -> Loop:
    """A new ferroloop loop (not made current).

    ``kind`` is ``"selector"`` (``SelectorEventLoop(selector)``),
    ``"proactor"`` (``ProactorEventLoop()``; ``OSError`` where io_uring is
    unavailable) or ``"auto"`` (the proactor where io_uring works, else the
    epoll selector loop). Without it, the environment variable
    ``FERROLOOP_LOOP`` decides, else ``DEFAULT_KIND``; a ``selector``
    argument always means the selector loop.
    """
    if selector is not None:
        if kind not in (None, "selector"):
            raise ValueError(f"a selector applies to the selector loop, not kind={kind!r}")
        return Loop(selector)
    if kind is None:
        kind = os.environ.get("FERROLOOP_LOOP") or DEFAULT_KIND
    if kind == "selector":
        return Loop()
    if kind == "proactor":
        return ProactorEventLoop()
    if kind == "auto":
        return _auto_loop()
    raise ValueError(f"unknown loop kind {kind!r}: expected one of {', '.join(map(repr, _KINDS))}")
