# ferroloop's loop classes: asyncio's Unix selector loop with a native core
# (ferroloop._ferroloop.LoopCore, left out of the bases here: it restates
# asyncio's methods, and the asyncio signatures are the ones users see).
import selectors
from asyncio import unix_events
from collections.abc import Callable
from contextvars import Context
from typing import Final, Literal, NamedTuple, TypeAlias, TypeVarTuple, Unpack, overload

from ._ferroloop import Handle, TimerHandle

_Ts = TypeVarTuple("_Ts")

__all__ = ("Loop", "LoopStats", "ProactorEventLoop", "SelectorEventLoop", "new_event_loop")

# What `selector` may name: a native backend or a Python selector object.
_Selector: TypeAlias = Literal["epoll", "poll", "select"] | selectors.BaseSelector | None
_Kind: TypeAlias = Literal["selector", "proactor", "auto"]

class LoopStats(NamedTuple):
    """What ``loop.stats()`` returns."""

    passes: int
    callbacks: int
    busy_time: float
    wait_time: float
    lag: float
    max_lag: float
    slowest_callback: str | None
    slowest_duration: float | None
    ready: int
    timers: int

class Loop(unix_events._UnixSelectorEventLoop):
    """An asyncio event loop whose core runs in Rust (readiness-based: epoll,
    poll, select or a Python selector)."""

    def __init__(self, selector: _Selector = None) -> None: ...
    @property
    def backend(self) -> str: ...
    def stats(self) -> LoopStats: ...
    # The call_* methods return ferroloop's own handles, which have asyncio's
    # handle interface (cancel, cancelled, get_context, when) but are not
    # asyncio.Handle subclasses: hence the narrower-than-allowed overrides.
    def call_soon(  # type: ignore[override]
        self,
        callback: Callable[[Unpack[_Ts]], object],
        *args: *_Ts,
        context: Context | None = None,
    ) -> Handle: ...
    def call_soon_threadsafe(  # type: ignore[override]
        self,
        callback: Callable[[Unpack[_Ts]], object],
        *args: *_Ts,
        context: Context | None = None,
    ) -> Handle: ...
    def call_later(  # type: ignore[override]
        self,
        delay: float,
        callback: Callable[[Unpack[_Ts]], object],
        *args: *_Ts,
        context: Context | None = None,
    ) -> TimerHandle: ...
    def call_at(  # type: ignore[override]
        self,
        when: float,
        callback: Callable[[Unpack[_Ts]], object],
        *args: *_Ts,
        context: Context | None = None,
    ) -> TimerHandle: ...

SelectorEventLoop = Loop

class ProactorEventLoop(Loop):
    """A completion-based loop on Linux io_uring; OSError where io_uring
    cannot be used."""

    def __init__(self) -> None: ...

DEFAULT_KIND: Final[_Kind]

def proactor_unavailable_reason() -> str | None: ...
@overload
def new_event_loop(selector: None = None, *, kind: Literal["proactor"]) -> ProactorEventLoop: ...
@overload
def new_event_loop(selector: _Selector = None, *, kind: _Kind | None = None) -> Loop: ...
