"""How the conformance worker points CPython's asyncio tests at a loop.

The pieces, all applied inside the worker process before the test module
is imported (see ``_worker.py``):

* :func:`bind_default_policy` makes ferroloop asyncio's *default* policy,
  not just the current one. Test modules reset the policy with
  ``asyncio.set_event_loop_policy(None)`` in ``tearDown``/``tearDownModule``;
  that stores ``None`` and the next ``get_event_loop_policy()`` rebuilds the
  default through ``asyncio.events._init_event_loop_policy()``. We replace
  that one function, so every reset -- through ``set_event_loop_policy(None)``,
  through assigning ``events._event_loop_policy = None``, from the C
  accelerator's ``get_event_loop()`` -- lands on ``ferroloop.EventLoopPolicy``
  again, while ``set_event_loop_policy`` itself keeps its exact behaviour
  (type checks, ``None`` accepted). Tests that install a policy of their own
  (``asyncio.DefaultEventLoopPolicy()``, test_runners' ``TestPolicy``) still
  get it: those tests are meant to exercise that policy.

* :class:`LoopTracker` records which loops *ran* during each test, by
  wrapping ``asyncio.events._set_running_loop`` (every loop that follows the
  asyncio protocol calls it when it starts running) and, for ferroloop,
  ``ferroloop.Loop.run_forever`` as well (some tests swap
  ``events._set_running_loop`` for the pure-Python one; the native core may
  one day set the running loop itself). It also notes ferroloop loops that
  were created but never run.

* :func:`bind_loop_classes` replaces, in the ferroloop run, the test
  classes that run on loops of asyncio's own (``asyncio.SelectorEventLoop``
  with a given selector, in test_events, test_sock_lowlevel, test_sendfile,
  test_server, test_buffered_proto, test_sslproto, test_unix_events) by
  subclasses that make ferroloop loops, and adds copies of the policy tests
  on ferroloop's policy (see ``LOOP_CLASSES``).

* :func:`bind_real_loop_variants` adds ``RealLoop_<Class>`` copies of the
  test classes of test_tasks, test_futures, test_base_events, test_pep492 and
  test_runners that run on the fake-clock ``test_utils.TestLoop`` or on a bare
  ``BaseEventLoop`` with a mocked selector: the copies run on a real loop of
  the run (ferroloop's, or asyncio's ``SelectorEventLoop`` in the asyncio
  run), so the same tests exercise the loop under test. Both runs define
  them, so their outcomes can be compared one to one.

* The loop *kind* of a ferroloop run (``run.py --kind``): ``selector`` (the
  default, ``ferroloop.SelectorEventLoop``) or ``proactor``
  (``ferroloop.ProactorEventLoop``, io_uring). run.py sets
  ``FERROLOOP_LOOP`` to it, so the policy's loops are of that kind; the
  factories here ask for it explicitly; and :class:`LoopTracker` checks every
  ferroloop loop created or run during a test (:func:`kind_problem`): a loop
  of another kind makes the test an error (see ``_worker.py``).
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import threading
import unittest
from unittest import mock

#: The loop kinds of a ferroloop run, and what ``loop.backend`` must be for
#: each (``None``: any of the selector loop's native backends).
KINDS = ("selector", "proactor")
PROACTOR_BACKEND = "io_uring"


def kind_problem(loop, kind):
    """None if ``loop`` (a ferroloop loop) is of the run's ``kind``; else a
    sentence saying what it is instead."""
    import ferroloop

    backend = getattr(loop, "backend", None)
    if kind == "proactor":
        if isinstance(loop, ferroloop.ProactorEventLoop) and (
            backend == PROACTOR_BACKEND or loop.is_closed()
        ):
            # A closed loop says backend 'closed' (tests call run_forever()
            # on one, expecting RuntimeError); its backend was checked when
            # it was made.
            return None
        return (
            f"a {type(loop).__qualname__} on backend {backend!r} in the proactor run "
            f"(expected ferroloop.ProactorEventLoop, backend {PROACTOR_BACKEND!r})"
        )
    if isinstance(loop, ferroloop.ProactorEventLoop) or backend == PROACTOR_BACKEND:
        return f"a {type(loop).__qualname__} on backend {backend!r} in the selector run"
    return None


# --------------------------------------------------------------------------
# Policy


def bind_default_policy(kind="selector"):
    """Make ``ferroloop.EventLoopPolicy`` asyncio's default policy, and check
    that its loops are of the run's ``kind`` (``FERROLOOP_LOOP``, set by
    run.py)."""
    import asyncio
    from asyncio import events

    import ferroloop

    def _init_event_loop_policy():
        with events._lock:
            if events._event_loop_policy is None:
                events._event_loop_policy = ferroloop.EventLoopPolicy()

    _init_event_loop_policy.__wrapped_original__ = events._init_event_loop_policy
    events._init_event_loop_policy = _init_event_loop_policy
    asyncio.set_event_loop_policy(None)
    policy = asyncio.get_event_loop_policy()
    assert isinstance(policy, ferroloop.EventLoopPolicy), policy
    loop = asyncio.new_event_loop()
    try:
        assert isinstance(loop, ferroloop.Loop), loop
        problem = kind_problem(loop, kind)
        if problem:
            raise AssertionError(
                f"conformance binding: asyncio.new_event_loop() made {type(loop).__qualname__}: "
                f"{problem} (FERROLOOP_LOOP={os.environ.get('FERROLOOP_LOOP')!r})"
            )
    finally:
        loop.close()


class PolicyGuard:
    """Undo asyncio-policy leaks between tests (ferroloop mode).

    Some tests install ``asyncio.DefaultEventLoopPolicy()`` and never restore
    the previous policy (test_events' ``PolicyTests.test_set_event_loop_policy``):
    on asyncio that is harmless, the leaked policy is the default one; here
    every later test of the module would silently run on asyncio's loops.
    Before each test, a policy whose type is exactly one of asyncio's stock
    policies is therefore reset to the default (ferroloop's). Custom policies
    are left alone: the tests that install them remove them themselves.
    """

    def __init__(self, loop_name):
        self.active = loop_name == "ferroloop"
        if self.active:
            import asyncio

            stock = {asyncio.DefaultEventLoopPolicy, asyncio.events.BaseDefaultEventLoopPolicy}
            unix = getattr(asyncio, "unix_events", None)
            if unix is not None:
                stock.add(unix._UnixDefaultEventLoopPolicy)
            self.stock = frozenset(stock)

    def check(self):
        """Reset a leaked stock policy; return its class name, or None."""
        if not self.active:
            return None
        from asyncio import events

        policy = events._event_loop_policy
        if policy is not None and type(policy) in self.stock:
            events._event_loop_policy = None
            return type(policy).__qualname__
        return None


def is_default_policy(policy, loop_name):
    """True if ``policy`` is the policy ``loop_name`` runs the tests under."""
    if policy is None:
        return True
    if loop_name == "ferroloop":
        import ferroloop

        return type(policy) is ferroloop.EventLoopPolicy
    import asyncio

    return type(policy) is asyncio.DefaultEventLoopPolicy


# --------------------------------------------------------------------------
# Which loops ran


def _class_name(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


class LoopTracker:
    """Per-test record of the loops that ran (and ferroloop loops created).

    ``target`` is the loop family under test: for ferroloop any instance of
    the native ``LoopCore`` (so ``ferroloop.Loop`` and its subclasses); for
    asyncio, a real selector loop (``BaseSelectorEventLoop``), so that the
    fake-clock ``test_utils.TestLoop`` and bare mocked ``BaseEventLoop``
    objects count as "not on the target loop" in both modes alike.
    """

    def __init__(self, loop_name, kind="selector"):
        self.loop_name = loop_name
        self.kind = kind
        self._lock = threading.Lock()
        self.ran = set()
        self.ran_target = False
        self.created_target = False
        #: loops of the wrong kind seen during the current test (sentences)
        self.wrong_kind = []
        if loop_name == "ferroloop":
            from ferroloop._ferroloop import LoopCore

            self._target = LoopCore
        else:
            from asyncio.selector_events import BaseSelectorEventLoop

            self._target = BaseSelectorEventLoop

    def reset(self):
        with self._lock:
            self.ran = set()
            self.ran_target = False
            self.created_target = False
            # wrong_kind is kept: a loop of the wrong kind made between tests
            # (setUpClass) is charged to the next test; take_wrong_kind()
            # clears it.

    def snapshot(self):
        with self._lock:
            return sorted(self.ran), self.ran_target, self.created_target

    def take_wrong_kind(self):
        with self._lock:
            out, self.wrong_kind = self.wrong_kind, []
            return out

    def _check_kind(self, loop, when):
        # called with the lock held, for ferroloop loops only
        problem = kind_problem(loop, self.kind)
        if problem and f"{when}: {problem}" not in self.wrong_kind:
            self.wrong_kind.append(f"{when}: {problem}")

    def note_running(self, loop):
        if loop is None:
            return
        with self._lock:
            self.ran.add(_class_name(type(loop)))
            if isinstance(loop, self._target):
                self.ran_target = True
                if self.loop_name == "ferroloop":
                    self._check_kind(loop, "ran")

    def note_created(self, loop):
        with self._lock:
            self.created_target = True
            self._check_kind(loop, "created")

    def install(self):
        import asyncio
        from asyncio import events

        original = events._set_running_loop
        note = self.note_running

        def _set_running_loop(loop):
            note(loop)
            return original(loop)

        _set_running_loop.__wrapped__ = original
        events._set_running_loop = _set_running_loop
        asyncio._set_running_loop = _set_running_loop

        if self.loop_name == "ferroloop":
            import ferroloop

            cls = ferroloop.Loop
            run_forever = cls.run_forever
            note_created = self.note_created

            @functools.wraps(run_forever)
            def tracked_run_forever(loop):
                note(loop)
                return run_forever(loop)

            cls.run_forever = tracked_run_forever

            # ProactorEventLoop.__init__ does not call Loop.__init__: wrap
            # both. The loop is noted once made (its backend is known then).
            def wrap_init(klass):
                init = klass.__init__

                @functools.wraps(init)
                def tracked_init(loop, *args, **kwargs):
                    init(loop, *args, **kwargs)
                    note_created(loop)

                return tracked_init

            cls.__init__ = wrap_init(cls)
            ferroloop.ProactorEventLoop.__init__ = wrap_init(ferroloop.ProactorEventLoop)


# --------------------------------------------------------------------------
# asyncio's loop classes -> ferroloop classes

#: Per module, the test classes that run on a loop of asyncio's own
#: (``asyncio.SelectorEventLoop(...)``, made in ``create_event_loop()``,
#: ``new_loop()`` or ``setUp()``): in the ferroloop run each is removed and a
#: subclass of it is added under the ferroloop name, with the loop made by
#: ``ferroloop.new_event_loop(backend)`` instead (``None``: the default
#: native backend, epoll, or ``FERROLOOP_SELECTOR`` under ``--backend``). The
#: subclass keeps everything else of asyncio's class: its setUp/tearDown
#: (test_events' child watcher included), its overrides and skips.
#: asyncio class -> (ferroloop class, native backend).
_PER_SELECTOR = {
    "EPollEventLoopTests": ("FerroloopEventLoopTests", None),
    "PollEventLoopTests": ("FerroloopPollEventLoopTests", "poll"),
    "SelectEventLoopTests": ("FerroloopSelectEventLoopTests", "select"),
    # not on Linux; removed if present, nothing stands for it
    "KqueueEventLoopTests": (None, None),
}
LOOP_CLASSES = {
    "test_events": _PER_SELECTOR,
    "test_sock_lowlevel": _PER_SELECTOR,
    "test_sendfile": _PER_SELECTOR,
    "test_server": {"SelectorStartServerTests": ("FerroloopStartServerTests", None)},
    "test_buffered_proto": {
        "BufferedProtocolSelectorTests": ("BufferedProtocolFerroloopTests", None)
    },
    "test_sslproto": {"SelectorStartTLSTests": ("FerroloopStartTLSTests", None)},
    "test_unix_events": {
        "SelectorEventLoopSignalTests": ("FerroloopSignalTests", None),
        "SelectorEventLoopUnixSocketTests": ("FerroloopUnixSocketTests", None),
    },
}

#: Classes that test asyncio's policy; the ferroloop run adds a copy on
#: ferroloop's (both run there). asyncio class -> ferroloop class.
POLICY_CLASSES = {
    "test_events": {"PolicyTests": "FerroloopPolicyTests"},
    "test_unix_events": {"PolicyTests": "FerroloopPolicyTests"},
}

#: module -> {ferroloop class: the asyncio class it stands for}; run.py uses
#: it to compare a ferroloop run with an asyncio run test by test.
COUNTERPARTS = {}
for _mod, _classes in LOOP_CLASSES.items():
    for _aio, (_ff, _backend) in _classes.items():
        if _ff:
            COUNTERPARTS.setdefault(_mod, {})[_ff] = _aio
for _mod, _classes in POLICY_CLASSES.items():
    for _aio, _ff in _classes.items():
        COUNTERPARTS.setdefault(_mod, {})[_ff] = _aio

#: The ferroloop classes that exist in the selector run only: in the
#: proactor run every loop is a ProactorEventLoop, whatever native selector
#: backend the class names, so the poll/select copies of the epoll class would
#: run the same tests on the same loop again; they are left out (asyncio's
#: classes are still removed).
SELECTOR_ONLY_CLASSES = frozenset({"FerroloopPollEventLoopTests", "FerroloopSelectEventLoopTests"})


def loop_classes(display, kind="selector"):
    """``LOOP_CLASSES[display]`` for a run of ``kind``: asyncio class ->
    (ferroloop class or None, native backend)."""
    classes = LOOP_CLASSES.get(display, {})
    if kind == "selector":
        return classes
    return {
        aio: ((None, None) if ff in SELECTOR_ONLY_CLASSES else (ff, backend))
        for aio, (ff, backend) in classes.items()
    }


def absent_classes(kind="selector"):
    """(module, ferroloop class) pairs that a run of ``kind`` does not have:
    entries of the expected list for them do not apply to that run."""
    if kind == "selector":
        return frozenset()
    return frozenset(
        (mod, ff)
        for mod, classes in LOOP_CLASSES.items()
        for ff, _ in classes.values()
        if ff in SELECTOR_ONLY_CLASSES
    )


#: The methods through which asyncio's test classes make their loop.
_FACTORY_METHODS = ("create_event_loop", "new_loop")


def new_loop_of_kind(kind="selector", backend=None):
    """A new ferroloop loop of the run's kind: ``ferroloop.new_event_loop(backend)``
    (selector; ``None``: epoll, or ``FERROLOOP_SELECTOR``), or
    ``ferroloop.new_event_loop(kind="proactor")``; checked (AssertionError
    if it is not of that kind)."""
    import ferroloop

    if kind == "proactor":
        loop = ferroloop.new_event_loop(kind="proactor")
    else:
        loop = ferroloop.new_event_loop(backend, kind="selector")
    problem = kind_problem(loop, kind)
    if problem:
        loop.close()
        raise AssertionError(f"conformance binding: {problem}")
    return loop


def _loop_factory(backend, kind="selector"):
    """Stands for ``asyncio.SelectorEventLoop(selector=None)``: a ferroloop
    loop on ``backend`` (or a proactor loop in the proactor run), whatever
    Python selector the test passes (the asyncio class named by the selector
    maps to that native backend)."""

    def new_loop(*args, **kwargs):
        return new_loop_of_kind(kind, backend)

    return new_loop


def _make_class(mod, name, bases, namespace):
    namespace = dict(namespace, __module__=mod.__name__, __qualname__=name)
    cls = type(name, bases, namespace)
    setattr(mod, name, cls)
    return cls


def bind_loop_classes(mod, display, kind="selector"):
    """Replace the module's asyncio-loop classes by ferroloop ones (see
    ``LOOP_CLASSES``) and add the policy copies (``POLICY_CLASSES``); return
    the names of the classes added.

    A class that makes its loop in a factory method of its own
    (``create_event_loop``, ``new_loop``; some tests call it again in their
    body) gets that method overridden; a class that makes it in ``setUp``
    (``self.loop = asyncio.SelectorEventLoop()``) runs its ``setUp`` with
    ``asyncio.SelectorEventLoop`` standing for the ferroloop factory.
    """
    import asyncio

    import ferroloop

    made = []
    for aio_name, (ff_name, backend) in loop_classes(display, kind).items():
        base = getattr(mod, aio_name, None)
        if base is None:
            continue
        delattr(mod, aio_name)
        if ff_name is None:
            continue
        factory = _loop_factory(backend, kind)
        own = [m for m in _FACTORY_METHODS if m in vars(base)]
        if own:
            namespace = {m: (lambda self, f=factory: f()) for m in own}
        else:

            def setUp(self, _base=base, _factory=factory):
                with mock.patch.object(asyncio, "SelectorEventLoop", _factory):
                    _base.setUp(self)
                # Loud if CPython's setUp stops making its loop that way.
                loop = getattr(self, "loop", None)
                self.assertIsInstance(loop, ferroloop.Loop, "conformance binding")
                self.assertIsNone(kind_problem(loop, kind), "conformance binding")

            namespace = {"setUp": setUp}
        _make_class(mod, ff_name, (base,), namespace)
        made.append(ff_name)

    def policy_setup(self, _base):
        patcher = mock.patch.object(asyncio, "DefaultEventLoopPolicy", ferroloop.EventLoopPolicy)
        patcher.start()
        self.addCleanup(patcher.stop)
        _base.setUp(self)

    for aio_name, ff_name in POLICY_CLASSES.get(display, {}).items():
        base = getattr(mod, aio_name, None)
        if base is None:
            continue
        _make_class(
            mod,
            ff_name,
            (base,),
            {"setUp": lambda self, _base=base: policy_setup(self, _base)},
        )
        made.append(ff_name)
    return made


# --------------------------------------------------------------------------
# Real-loop copies of fake-loop test classes

#: Modules that get ``RealLoop_<Class>`` copies.
REAL_LOOP_MODULES = (
    "test_tasks",
    "test_futures",
    "test_base_events",
    "test_pep492",
    "test_runners",
)


def real_loop_factory(loop_name, kind="selector"):
    """The loop class/factory of the run, called directly (not through the
    policy: test_runners installs a policy whose factory is our factory)."""
    if loop_name == "ferroloop":
        return functools.partial(new_loop_of_kind, kind)
    import asyncio

    return asyncio.SelectorEventLoop


_SELF_CALL = re.compile(r"\bself\.(\w+)")


def _uses_any(cls, method_name, pattern, seen=None):
    """True if the source of ``cls.method_name`` or of any ``self.<helper>``
    it reaches (transitively, within ``cls``) matches ``pattern``."""
    seen = set() if seen is None else seen
    if method_name in seen:
        return False
    seen.add(method_name)
    func = getattr(cls, method_name, None)
    if not callable(func):
        return False
    try:
        source = inspect.getsource(func)
    except (OSError, TypeError):
        return False
    if pattern.search(source):
        return True
    return any(_uses_any(cls, helper, pattern, seen) for helper in _SELF_CALL.findall(source))


_GEN_LOOP = re.compile(r"new_test_loop\(\s*[^)\s]")
_USES_LOOP = re.compile(r"\bloop\b|_loop\b")


def _defined_tests(mod):
    """The TestCase classes of ``mod`` that have tests, by name."""
    out = {}
    for name, obj in vars(mod).items():
        if (
            isinstance(obj, type)
            and issubclass(obj, unittest.TestCase)
            and obj.__module__ == mod.__name__
            and unittest.defaultTestLoader.getTestCaseNames(obj)
        ):
            out[name] = obj
    return out


def _setup_source(cls):
    try:
        return inspect.getsource(cls.setUp)
    except (OSError, TypeError):
        return ""


def bind_real_loop_variants(mod, display, loop_name, kind="selector"):
    """Add ``RealLoop_<Class>`` classes to ``mod``; return their names.

    * test_tasks, test_futures: classes whose setUp calls
      ``self.new_test_loop()`` (no time generator: such a TestLoop never
      advances its clock, so the tests do not depend on fake time). In the
      copy ``new_test_loop()`` without a generator returns a real loop;
      tests that call ``new_test_loop(gen)`` (they need the fake clock) and
      tests that do not touch a loop are left out of the copy.
    * test_base_events ``BaseEventLoopTests`` (a bare ``BaseEventLoop`` with a
      mocked selector) and ``BaseEventLoopWithSelectorTests`` (an explicit
      ``asyncio.SelectorEventLoop()``), test_pep492's classes (bare
      ``BaseEventLoop``): setUp makes a real loop instead.
    * test_runners: ``new_loop()`` (the factory of the test policy) makes a
      real loop, still recording that ``shutdown_asyncgens`` ran.
    """
    if display not in REAL_LOOP_MODULES:
        return []
    from test.test_asyncio import utils as test_utils

    factory = real_loop_factory(loop_name, kind)

    def real_loop(self):
        loop = factory()
        self.set_event_loop(loop)
        return loop

    def new_test_loop(self, gen=None):
        if gen is None:
            return real_loop(self)
        return test_utils.TestCase.new_test_loop(self, gen)

    def real_setup(self):
        test_utils.TestCase.setUp(self)
        self.loop = real_loop(self)

    def runners_new_loop(self):
        loop = factory()
        loop.shutdown_ag_run = False
        shutdown_asyncgens = loop.shutdown_asyncgens

        async def tracked_shutdown_asyncgens():
            loop.shutdown_ag_run = True
            await shutdown_asyncgens()

        loop.shutdown_asyncgens = tracked_shutdown_asyncgens
        return loop

    made = []
    for name, cls in _defined_tests(mod).items():
        if name.startswith(("RealLoop_", "Ferroloop")):
            continue
        keep = None
        if display in ("test_tasks", "test_futures"):
            if "new_test_loop()" not in _setup_source(cls):
                continue
            namespace = {"new_test_loop": new_test_loop}

            def keep(c, test):
                return not _uses_any(c, test, _GEN_LOOP) and _uses_any(c, test, _USES_LOOP)
        elif display == "test_base_events":
            if name not in ("BaseEventLoopTests", "BaseEventLoopWithSelectorTests"):
                continue
            namespace = {"setUp": real_setup, "new_test_loop": new_test_loop}
        elif display == "test_pep492":
            if not issubclass(cls, mod.BaseTest):
                continue
            namespace = {"setUp": real_setup}
        else:  # test_runners
            if not issubclass(cls, mod.BaseTest):
                continue
            namespace = {"new_loop": runners_new_loop}
        vname = f"RealLoop_{name}"
        variant = type(vname, (cls,), dict(namespace, __module__=mod.__name__, __qualname__=vname))
        if keep is not None:
            for test in unittest.defaultTestLoader.getTestCaseNames(variant):
                if not keep(variant, test):
                    setattr(variant, test, None)
            if not unittest.defaultTestLoader.getTestCaseNames(variant):
                continue
        setattr(mod, vname, variant)
        made.append(vname)
    return made
