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

from ._ferroloop import Handle, TimerHandle, __version__
from ._loop import (
    DEFAULT_KIND,
    Loop,
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
    if _sys.version_info >= (3, 11):
        if _asyncio.events._get_running_loop() is not None:
            raise RuntimeError("asyncio.run() cannot be called from a running event loop")
        with _asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
            return runner.run(main)
    return _run_legacy(main, debug)


def _run_legacy(main, debug):
    """``asyncio.run`` for Pythons without ``asyncio.Runner``."""
    if _asyncio.events._get_running_loop() is not None:
        raise RuntimeError("asyncio.run() cannot be called from a running event loop")
    if not _asyncio.iscoroutine(main):
        raise ValueError(f"a coroutine was expected, got {main!r}")
    loop = new_event_loop()
    try:
        _asyncio.set_event_loop(loop)
        if debug is not None:
            loop.set_debug(debug)
        return loop.run_until_complete(main)
    finally:
        try:
            pending = [t for t in _asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(_asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            _asyncio.set_event_loop(None)
            loop.close()
