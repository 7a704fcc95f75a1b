"""ferroloop's event loop policy."""

from __future__ import annotations

from asyncio import events

from ._loop import Loop

__all__ = ("EventLoopPolicy",)


# Python 3.14 renamed the base class when it deprecated the policy system.
if hasattr(events, "BaseDefaultEventLoopPolicy"):
    _BasePolicy = events.BaseDefaultEventLoopPolicy
else:
    _BasePolicy = events._BaseDefaultEventLoopPolicy


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

    # asyncio's Unix policy (3.8-3.13) also manages child watchers; they come
    # with subprocess support (issue #4).
    def get_child_watcher(self):
        raise NotImplementedError(
            "ferroloop: child watchers are not implemented yet; they come with "
            "issue #4 (pipes, subprocesses and signals)"
        )

    def set_child_watcher(self, watcher):
        raise NotImplementedError(
            "ferroloop: child watchers are not implemented yet; they come with "
            "issue #4 (pipes, subprocesses and signals)"
        )

    def __repr__(self):
        return f"<{type(self).__module__}.{type(self).__qualname__}>"
