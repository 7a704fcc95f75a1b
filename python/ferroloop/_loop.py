"""ferroloop's event loop class.

`Loop` joins the native core (`ferroloop._ferroloop.LoopCore`: queues, timers,
selector, the loop's passes, fd watching) with `asyncio.BaseEventLoop`, whose
Python code provides the rarely used and intricate parts unchanged: tasks and
futures, `run_until_complete`, executors, async generator hooks, exception
handlers, debug helpers, DNS. The native class comes first in the method
resolution order, so every hot method is the native one.
"""

from __future__ import annotations

import os
import sys
import threading
from asyncio import base_events, events

from ._ferroloop import LoopCore

__all__ = ("Loop", "SelectorEventLoop", "new_event_loop")

_LATER = {
    "networking": "issue #3 (networking on the selector loop)",
    "processes": "issue #4 (pipes, subprocesses and signals)",
}


def _not_yet(name: str, area: str, is_coroutine: bool):
    message = f"ferroloop: loop.{name}() is not implemented yet; it comes with {_LATER[area]}"

    if is_coroutine:

        async def method(self, *args, **kwargs):
            raise NotImplementedError(message)

    else:

        def method(self, *args, **kwargs):
            raise NotImplementedError(message)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = message
    return method


class Loop(LoopCore, base_events.BaseEventLoop):
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
        base_events.BaseEventLoop.__init__(self)
        # BaseEventLoop keeps its queues in these; the native core has its own.
        for name in ("_ready", "_scheduled", "_timer_cancelled_count"):
            self.__dict__.pop(name, None)
        if selector is None:
            # Force a backend for a whole program or test run.
            selector = os.environ.get("FERROLOOP_SELECTOR") or None
        if selector is not None:
            try:
                self._ff_set_selector(selector)
            except BaseException:
                self.close()
                raise

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

    def close(self):
        """Close the loop: drop pending callbacks, close the selector, and
        shut the default executor down without waiting for it."""
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self._closed:
            return
        if self._debug:
            base_events.logger.debug("Close %r", self)
        self._ff_close()
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is not None:
            self._default_executor = None
            executor.shutdown(wait=False)

    # What later issues bring. Each raises NotImplementedError with a message
    # naming the issue; coroutine methods raise when awaited, as asyncio's
    # coroutine methods report their errors.
    for _name, _area, _coro in (
        ("create_connection", "networking", True),
        ("create_server", "networking", True),
        ("create_unix_connection", "networking", True),
        ("create_unix_server", "networking", True),
        ("create_datagram_endpoint", "networking", True),
        ("connect_accepted_socket", "networking", True),
        ("start_tls", "networking", True),
        ("sendfile", "networking", True),
        ("sock_recv", "networking", True),
        ("sock_recv_into", "networking", True),
        ("sock_recvfrom", "networking", True),
        ("sock_recvfrom_into", "networking", True),
        ("sock_sendall", "networking", True),
        ("sock_sendto", "networking", True),
        ("sock_connect", "networking", True),
        ("sock_accept", "networking", True),
        ("sock_sendfile", "networking", True),
        ("connect_read_pipe", "processes", True),
        ("connect_write_pipe", "processes", True),
        ("subprocess_exec", "processes", True),
        ("subprocess_shell", "processes", True),
        ("add_signal_handler", "processes", False),
        ("remove_signal_handler", "processes", False),
    ):
        locals()[_name] = _not_yet(_name, _area, _coro)
    del _name, _area, _coro


SelectorEventLoop = Loop


def new_event_loop(selector=None) -> Loop:
    """A new ferroloop loop (not made current)."""
    return Loop(selector)
