# gunicorn worker classes running uvicorn on ferroloop. Their base,
# uvicorn-worker's UvicornWorker (or uvicorn.workers'), ships no types.
from typing import Any, ClassVar

_UvicornWorker: Any

__all__ = ("ProactorWorker", "SelectorWorker", "Worker")

class Worker(_UvicornWorker):
    """uvicorn's gunicorn worker on ``ferroloop.new_event_loop()``."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]]

class SelectorWorker(_UvicornWorker):
    """uvicorn's gunicorn worker on ``ferroloop.SelectorEventLoop``."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]]

class ProactorWorker(_UvicornWorker):
    """uvicorn's gunicorn worker on ``ferroloop.ProactorEventLoop``."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]]
