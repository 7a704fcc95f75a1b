import asyncio
import contextvars
import selectors
from asyncio import unix_events
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeAlias, TypeVar

_T = TypeVar("_T")

__version__: str

class Handle:
    def cancel(self) -> None: ...
    def cancelled(self) -> bool: ...
    def get_context(self) -> contextvars.Context: ...

class TimerHandle(Handle):
    def when(self) -> float: ...

_Selector: TypeAlias = None | str | selectors.BaseSelector

class Loop(unix_events._UnixSelectorEventLoop):
    def __init__(self, selector: _Selector = None) -> None: ...
    @property
    def backend(self) -> str: ...
    def call_soon(
        self,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> Handle: ...  # type: ignore[override]
    def call_soon_threadsafe(
        self,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> Handle: ...  # type: ignore[override]
    def call_later(
        self,
        delay: float,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> TimerHandle: ...  # type: ignore[override]
    def call_at(
        self,
        when: float,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> TimerHandle: ...  # type: ignore[override]
    def add_reader(self, fd: Any, callback: Callable[..., object], *args: Any) -> None: ...
    def add_writer(self, fd: Any, callback: Callable[..., object], *args: Any) -> None: ...
    def remove_reader(self, fd: Any) -> bool: ...
    def remove_writer(self, fd: Any) -> bool: ...

SelectorEventLoop = Loop

class ProactorEventLoop(Loop):
    def __init__(self) -> None: ...

_Kind: TypeAlias = Literal["selector", "proactor", "auto"]

DEFAULT_KIND: _Kind

class EventLoopPolicy(unix_events._UnixDefaultEventLoopPolicy):
    def get_event_loop(self) -> asyncio.AbstractEventLoop: ...
    def new_event_loop(self) -> asyncio.AbstractEventLoop: ...

class SelectorEventLoopPolicy(EventLoopPolicy): ...
class ProactorEventLoopPolicy(EventLoopPolicy): ...

def new_event_loop(selector: _Selector = None, *, kind: _Kind | None = None) -> Loop: ...
def proactor_unavailable_reason() -> str | None: ...
def install() -> None: ...
def run(main: Coroutine[Any, Any, _T], *, debug: bool | None = None) -> _T: ...
