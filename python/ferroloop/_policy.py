"""ferroloop's event loop policy."""

from __future__ import annotations

from asyncio import events, unix_events

from ._loop import Loop

__all__ = ("EventLoopPolicy",)


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
    """

    _loop_factory = Loop

    def get_event_loop(self):
        running = events._get_running_loop()
        if running is not None:
            return running
        return super().get_event_loop()

    def __repr__(self):
        return f"<{type(self).__module__}.{type(self).__qualname__}>"
