"""ferroloop's event loop policy."""

from __future__ import annotations

from asyncio import events, unix_events

from ._loop import Loop, ProactorEventLoop, new_event_loop

__all__ = ("EventLoopPolicy", "ProactorEventLoopPolicy", "SelectorEventLoopPolicy")


# asyncio's Unix policy: the default-policy contract plus the child-watcher
# API that Python 3.8-3.13 programs and test suites call (ferroloop's loop
# watches its children itself, through pidfds). Python 3.14 renamed it.
if hasattr(unix_events, "_UnixDefaultEventLoopPolicy"):
    _BasePolicy = unix_events._UnixDefaultEventLoopPolicy
else:
    _BasePolicy = unix_events._DefaultEventLoopPolicy


class EventLoopPolicy(_BasePolicy):
    """asyncio's default policy contract, with ferroloop loops.

    One loop per thread; in the main thread ``get_event_loop()`` creates one
    on first use, in other threads it raises ``RuntimeError`` until
    ``set_event_loop()`` gave the thread a loop; it never returns None.
    Called while a loop runs in this thread, it returns that loop.

    Subclass it the documented way: override ``new_event_loop()`` (or
    ``_loop_factory``) to make other loops, or ``get_event_loop()``.

    Its loops are what ``ferroloop.new_event_loop()`` makes: the kind
    ``FERROLOOP_LOOP`` names, else ``ferroloop.DEFAULT_KIND``.
    """

    _loop_factory = staticmethod(new_event_loop)

    def get_event_loop(self):
        running = events._get_running_loop()
        if running is not None:
            return running
        return super().get_event_loop()

    def __repr__(self):
        return f"<{type(self).__module__}.{type(self).__qualname__}>"


class SelectorEventLoopPolicy(EventLoopPolicy):
    """The policy contract with ``ferroloop.SelectorEventLoop`` loops."""

    _loop_factory = Loop


class ProactorEventLoopPolicy(EventLoopPolicy):
    """The policy contract with ``ferroloop.ProactorEventLoop`` loops (io_uring;
    creating a loop raises ``OSError`` where io_uring is unavailable)."""

    _loop_factory = ProactorEventLoop
