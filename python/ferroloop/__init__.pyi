# Type stubs for ferroloop (checked against the runtime by
# `python -m mypy.stubtest ferroloop`; see scripts/test.sh).
from collections.abc import Coroutine
from typing import Any, TypeVar

# Names in __all__ are re-exported (PEP 484 stub rules).
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

_T = TypeVar("_T")

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

def run(main: Coroutine[Any, Any, _T], *, debug: bool | None = None) -> _T:
    """Run coroutine ``main`` on a new ferroloop loop and return its result,
    as ``asyncio.run`` does."""
