"""gunicorn worker classes that run uvicorn on ferroloop.

    gunicorn -w 2 -k ferroloop.gunicorn.Worker app:app

gunicorn's master process forks the workers and never runs an event loop
itself; each worker runs one uvicorn server on one ferroloop loop. The loop
kinds:

* ``ferroloop.gunicorn.Worker`` -- what ``ferroloop.new_event_loop()`` makes:
  the kind ``FERROLOOP_LOOP`` names (``selector``, ``proactor`` or ``auto``),
  else ``ferroloop.DEFAULT_KIND``;
* ``ferroloop.gunicorn.SelectorWorker`` -- always ``ferroloop.SelectorEventLoop``
  (epoll);
* ``ferroloop.gunicorn.ProactorWorker`` -- always ``ferroloop.ProactorEventLoop``
  (io_uring; the worker fails to boot where io_uring is unavailable).

The classes subclass ``UvicornWorker`` from the ``uvicorn-worker`` package
(``uvicorn.workers``, which uvicorn deprecated in its favour, is used only
when that package is not installed) and change nothing but uvicorn's
``loop`` setting, so everything else (HTTP parser, keep-alive, TLS, access
log, ``max_requests``) behaves as with uvicorn's own worker.
"""

from __future__ import annotations

from typing import Any, ClassVar

try:
    from uvicorn_worker import UvicornWorker as _UvicornWorker
except ImportError:  # only uvicorn's deprecated copy is installed
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from uvicorn.workers import UvicornWorker as _UvicornWorker

__all__ = ("ProactorWorker", "SelectorWorker", "Worker")


class Worker(_UvicornWorker):
    """uvicorn's gunicorn worker on ``ferroloop.new_event_loop()``
    (the kind ``FERROLOOP_LOOP`` names)."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        **_UvicornWorker.CONFIG_KWARGS,
        "loop": "ferroloop:new_event_loop",
    }


class SelectorWorker(_UvicornWorker):
    """uvicorn's gunicorn worker on ``ferroloop.SelectorEventLoop`` (epoll)."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        **_UvicornWorker.CONFIG_KWARGS,
        "loop": "ferroloop:SelectorEventLoop",
    }


class ProactorWorker(_UvicornWorker):
    """uvicorn's gunicorn worker on ``ferroloop.ProactorEventLoop`` (io_uring)."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        **_UvicornWorker.CONFIG_KWARGS,
        "loop": "ferroloop:ProactorEventLoop",
    }
