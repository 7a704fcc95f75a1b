# ferroloop's event loop policies: asyncio's Unix default policy, with
# ferroloop loops.
import sys
from asyncio import AbstractEventLoop, unix_events

__all__ = ("EventLoopPolicy", "ProactorEventLoopPolicy", "SelectorEventLoopPolicy")

if sys.version_info >= (3, 14):
    _BasePolicy = unix_events._DefaultEventLoopPolicy
else:
    _BasePolicy = unix_events._UnixDefaultEventLoopPolicy

class EventLoopPolicy(_BasePolicy):
    """asyncio's default policy contract, with ferroloop loops."""

    def get_event_loop(self) -> AbstractEventLoop: ...

class SelectorEventLoopPolicy(EventLoopPolicy):
    """The policy contract with ferroloop.SelectorEventLoop loops."""

class ProactorEventLoopPolicy(EventLoopPolicy):
    """The policy contract with ferroloop.ProactorEventLoop loops."""
