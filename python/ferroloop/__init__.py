"""ferroloop: asyncio's event loop, rebuilt in Rust.

Entry points:

* ``ferroloop.run(main())`` -- like ``asyncio.run``, on a ferroloop loop;
* ``ferroloop.install()`` -- make ferroloop asyncio's loop everywhere
  (``asyncio.set_event_loop_policy(ferroloop.EventLoopPolicy())``);
* ``ferroloop.new_event_loop(selector=None, *, kind=None)`` -- a new loop,
  e.g. as ``asyncio.Runner(loop_factory=ferroloop.new_event_loop)``;
* ``ferroloop.SelectorEventLoop`` (also ``ferroloop.Loop``) -- the
  readiness-based loop (epoll); ``ferroloop.ProactorEventLoop`` -- the
  completion-based loop (io_uring);
* ``python -m ferroloop script.py`` -- run an unmodified asyncio program.
"""

from __future__ import annotations

import asyncio as _asyncio
import sys as _sys

if _sys.version_info < (3, 11):  # noqa: UP036 -- the gate for what requires-python refuses
    raise ImportError(
        f"ferroloop needs Python 3.11 or newer; this is Python {_sys.version.split()[0]}"
    )

from ._ferroloop import Handle, TimerHandle, __version__
from ._loop import (
    DEFAULT_KIND,
    Loop,
    LoopStats,
    ProactorEventLoop,
    SelectorEventLoop,
    new_event_loop,
    proactor_unavailable_reason,
)
from ._policy import EventLoopPolicy, ProactorEventLoopPolicy, SelectorEventLoopPolicy

__all__ = (
    "DEFAULT_KIND",
    "EventLoopPolicy",
    "Handle",
    "Loop",
    "LoopStats",
    "ProactorEventLoop",
    "ProactorEventLoopPolicy",
    "SelectorEventLoop",
    "SelectorEventLoopPolicy",
    "TimerHandle",
    "__version__",
    "install",
    "new_event_loop",
    "proactor_unavailable_reason",
    "run",
)


def install() -> None:
    """Make ferroloop the loop asyncio creates (sets the event loop policy)."""
    _asyncio.set_event_loop_policy(EventLoopPolicy())


def run(main, *, debug=None):
    """Run coroutine ``main`` on a new ferroloop loop and return its result,
    as ``asyncio.run`` does: the loop is created, made current, and closed
    afterwards, with async generators and the default executor shut down."""
    if _asyncio.events._get_running_loop() is not None:
        raise RuntimeError("asyncio.run() cannot be called from a running event loop")
    with _asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
        return runner.run(main)
