"""Shared fixtures: every behaviour is checked on asyncio's own loop and on
ferroloop, so a test's expectations are validated by the reference loop.

* ``loop_factory`` / ``loop``: parametrized over ``asyncio`` and ``ferroloop``.
* ``fd_loop_factory`` / ``fd_loop``: for tests that watch file descriptors;
  asyncio on each of the stdlib selectors, ferroloop on its three native
  backends and on a ``selectors.SelectSelector`` instance.
* ``ferroloop_bug`` marker: ``@pytest.mark.ferroloop_bug("diagnosis")`` turns
  into ``xfail(strict=True, reason="ferroloop bug: ...")`` for the ferroloop
  parametrizations of a test only; the asyncio ones must keep passing.
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import selectors
import subprocess
import sys
import textwrap
import time

import ferroloop
import pytest

# Each test names the backend it runs on; a FERROLOOP_SELECTOR left in the
# environment would silently change what "ferroloop" (the default) means.
os.environ.pop("FERROLOOP_SELECTOR", None)

# The backstop for every test (pytest-timeout); tests bound themselves far
# tighter with loop watchdogs and explicit timeouts.
DEFAULT_TIMEOUT = 30

LOOP_KINDS = ["asyncio", "ferroloop", "ferroloop-proactor"]

# kind -> selector family ("epoll" / "poll" / "select")
FD_KINDS = {
    "asyncio": "epoll",
    "asyncio-poll": "poll",
    "asyncio-select": "select",
    "ferroloop": "epoll",
    "ferroloop-poll": "poll",
    "ferroloop-select": "select",
    "ferroloop-SelectSelector": "select",
    # The proactor watches descriptors with io_uring poll ops, which accept
    # what poll(2) accepts (regular files too, unlike epoll).
    "ferroloop-proactor": "poll",
}


def make_loop(kind: str) -> asyncio.AbstractEventLoop:
    """A new, not current, loop of the given kind (independent of the policy)."""
    if kind == "asyncio":
        return asyncio.SelectorEventLoop(selectors.EpollSelector())
    if kind == "asyncio-poll":
        return asyncio.SelectorEventLoop(selectors.PollSelector())
    if kind == "asyncio-select":
        return asyncio.SelectorEventLoop(selectors.SelectSelector())
    if kind == "ferroloop":
        return ferroloop.new_event_loop()
    if kind == "ferroloop-poll":
        return ferroloop.new_event_loop("poll")
    if kind == "ferroloop-select":
        return ferroloop.new_event_loop("select")
    if kind == "ferroloop-SelectSelector":
        return ferroloop.new_event_loop(selectors.SelectSelector())
    if kind == "ferroloop-proactor":
        return ferroloop.ProactorEventLoop()
    raise ValueError(kind)


def reference_kind(kind: str) -> str:
    """The asyncio kind that runs on the same selector family as ``kind``."""
    return {"epoll": "asyncio", "poll": "asyncio-poll", "select": "asyncio-select"}[FD_KINDS[kind]]


class LoopFactory:
    """Makes loops of one kind and closes them all at teardown."""

    def __init__(self, kind: str):
        self.kind = kind
        self.is_ferroloop = kind.startswith("ferroloop")
        self.family = FD_KINDS[kind]
        self.loops: list[asyncio.AbstractEventLoop] = []

    def __call__(self) -> asyncio.AbstractEventLoop:
        loop = make_loop(self.kind)
        self.loops.append(loop)
        return loop

    def reference(self) -> asyncio.AbstractEventLoop:
        """An asyncio loop on the same selector family, closed at teardown."""
        loop = make_loop(reference_kind(self.kind))
        self.loops.append(loop)
        return loop

    def close_all(self):
        for loop in self.loops:
            if not loop.is_closed() and not loop.is_running():
                loop.close()
        self.loops.clear()


@pytest.fixture(params=LOOP_KINDS)
def loop_factory(request):
    factory = LoopFactory(request.param)
    yield factory
    factory.close_all()


@pytest.fixture
def loop(loop_factory):
    return loop_factory()


@pytest.fixture(params=list(FD_KINDS))
def fd_loop_factory(request):
    factory = LoopFactory(request.param)
    yield factory
    factory.close_all()


@pytest.fixture
def fd_loop(fd_loop_factory):
    return fd_loop_factory()


@pytest.fixture
def restore_policy():
    """Restore asyncio's event loop policy (and close the loops the policies
    under test created) whatever the test does."""
    saved = asyncio.events._event_loop_policy
    yield
    current = asyncio.events._event_loop_policy
    for policy in {id(p): p for p in (saved, current) if p is not None}.values():
        local = getattr(policy, "_local", None)
        loop = getattr(local, "_loop", None)
        if loop is not None and policy is not saved and not loop.is_closed():
            loop.close()
    asyncio.set_event_loop_policy(saved)


# ---------------------------------------------------------------- helpers


class LoopTimeout(AssertionError):
    pass


def run_bounded(loop, timeout: float = 5.0) -> None:
    """``loop.run_forever()`` with a watchdog: fails if the loop has not
    stopped after ``timeout`` seconds."""
    fired = []

    def watchdog():
        fired.append(True)
        loop.stop()

    guard = loop.call_later(timeout, watchdog)
    try:
        loop.run_forever()
    finally:
        guard.cancel()
    if fired:
        raise LoopTimeout(f"loop did not stop within {timeout} s")


def run_passes(loop, n: int, log: list | None = None) -> list:
    """Run exactly ``n`` passes, recording ``("pass", i)`` in ``log`` at the
    start of each pass i (the marker is the first callback of its pass when
    nothing else was queued before it), then stop."""
    log = [] if log is None else log

    def marker(i):
        log.append(("pass", i))
        if i + 1 < n:
            loop.call_soon(marker, i + 1)
        else:
            loop.stop()

    loop.call_soon(marker, 0)
    run_bounded(loop)
    return log


def run_coro(loop, coro, timeout: float = 5.0):
    """``loop.run_until_complete`` bounded by ``asyncio.wait_for``."""
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


ADDR_RE = re.compile(r"0x[0-9a-fA-F]+")


def normalise(text: str) -> str:
    """Replace memory addresses, so reprs of equivalent objects compare."""
    return ADDR_RE.sub("0xADDR", text)


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def run_python(code: str, *, env=None, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter, bounded."""
    full_env = dict(os.environ)
    full_env.pop("PYTHONASYNCIODEBUG", None)
    full_env.pop("PYTHONDEVMODE", None)
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=full_env,
    )


def collect():
    for _ in range(3):
        gc.collect()


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


async def until(predicate, timeout: float = 5.0, interval: float = 0.005) -> None:
    """Inside a coroutine on the loop under test: let the loop run until
    ``predicate()`` holds; ``TimeoutError`` after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(interval)


# ---------------------------------------------------------------- hooks


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "ferroloop_bug(reason, kinds=None): xfail(strict=True) on the ferroloop "
        "parametrizations (or only on `kinds`) of a test",
    )


def _loop_kind_of(item) -> str | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    for name in ("loop_factory", "fd_loop_factory", "kind"):
        if name in callspec.params:
            return callspec.params[name]
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TIMEOUT))
        bug = item.get_closest_marker("ferroloop_bug")
        if bug is None:
            continue
        kind = _loop_kind_of(item)
        if kind is None or not kind.startswith("ferroloop"):
            continue
        kinds = bug.kwargs.get("kinds")
        if kinds is not None and kind not in kinds:
            continue
        item.add_marker(pytest.mark.xfail(strict=True, reason=f"ferroloop bug: {bug.args[0]}"))


# ---------------------------------------------------------------- I/O suites

# The loops the network / TLS / pipe / subprocess tests run on: asyncio, and
# ferroloop on its three native backends, on a selectors.SelectSelector, and
# the proactor loop (io_uring).
# (Modules parametrize a ``kind`` fixture with these, so the ``ferroloop_bug``
# marker sees the kind.)
IO_KINDS = [
    "asyncio",
    "ferroloop",
    "ferroloop-poll",
    "ferroloop-select",
    "ferroloop-SelectSelector",
    "ferroloop-proactor",
]


def children_of_self() -> list[int]:
    """PIDs of this process's children (zombies included), from /proc."""
    me = os.getpid()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == me:
            found.append(int(name))
    return found


# The networking, TLS, pipe and subprocess modules run each test on every
# IO_KINDS loop: ``kind`` names it, ``lf`` makes (and closes) its loops,
# ``io_loop`` is one of them. Modules that define their own ``kind`` fixture,
# or parametrize ``kind`` directly, override this one.


@pytest.fixture(params=IO_KINDS)
def kind(request):
    return request.param


@pytest.fixture
def lf(kind):
    factory = LoopFactory(kind)
    yield factory
    factory.close_all()


@pytest.fixture
def io_loop(lf):
    return lf()


class BytesRecorder:
    """For protocols that check the `bytes` objects a loop hands them:
    records, per message, whether its hash is the one a new copy of it
    computes (hash() caches the hash in the object), and keeps every third
    one as it is."""

    def __init__(self):
        self.fresh_hash = []
        self.kept = []
        self.count = 0

    def record(self, data):
        self.fresh_hash.append(hash(data) == hash(data[:1] + data[1:]))
        if self.count % 3 == 0:
            self.kept.append(data)
        self.count += 1
