"""Run one CPython test module in this process and record every test.

Started by ``run.py``, one process per module (and again after a crash or a
hang, with the tests already recorded excluded). Writes JSON lines to
``--out``: ``{"ev": "start", "id": ...}`` before each test,
``{"ev": "end", ...}`` after it, ``{"ev": "done"}`` at the end. Test output
goes to this process's stdout/stderr, which run.py sends to a log file.

A test that runs longer than ``--test-timeout`` seconds makes faulthandler
dump every thread's stack to stderr and exit the process; run.py then marks
that test as a hang and starts the module again without it.
"""

from __future__ import annotations

import argparse
import faulthandler
import fnmatch
import gc
import importlib
import json
import os
import sys
import time
import traceback
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bindings

TB_LIMIT = 8000

#: When a test reports several outcomes (subtests, errors in cleanups), the
#: one that ranks highest is kept.
PRIORITY = {"pass": 0, "xfail": 1, "skip": 2, "xpass": 3, "fail": 4, "error": 5}


def test_id(name, test):
    """``<module display name>.<Class>.<method>``; fixture errors
    (``setUpClass (...)``) become ``<module>.<Class>.setUpClass``."""
    method = getattr(test, "_testMethodName", None)
    if method is not None:
        return f"{name}.{type(test).__qualname__}.{method}"
    # unittest.suite._ErrorHolder: "setUpClass (pkg.mod.Class)" or
    # "setUpModule (pkg.mod)"
    desc = test.id()
    fixture, _, where = desc.partition(" (")
    where = where.rstrip(")")
    cls = where.rsplit(".", 1)[-1] if fixture.endswith("Class") else ""
    return ".".join(p for p in (name, cls, fixture) if p)


class Recorder(unittest.TestResult):
    """Records one JSON line per test, with the loops that ran during it."""

    def __init__(self, out, name, tracker, loop_name, test_timeout, verbose, kind="selector"):
        super().__init__()
        self.guard = bindings.PolicyGuard(loop_name)
        self.out = out
        self.name = name
        self.tracker = tracker
        self.loop_name = loop_name
        self.test_timeout = test_timeout
        self.verbose = verbose
        self.kind = kind
        self.cur = None

    def emit(self, record):
        self.out.write(json.dumps(record) + "\n")
        self.out.flush()

    def _set(self, status, err=None, test=None, reason=None):
        cur = self.cur
        if cur is None:
            return False
        if PRIORITY[status] >= PRIORITY[cur["status"]]:
            cur["status"] = status
        if err is not None:
            text = self._exc_info_to_string(err, test)
            cur["tb"] = ((cur.get("tb") or "") + text)[-TB_LIMIT:]
        if reason is not None:
            cur["reason"] = reason
        return True

    def _fixture(self, test, status, err=None, reason=None):
        """An error or skip outside a test (setUpClass, setUpModule...)."""
        record = {
            "ev": "end",
            "id": test_id(self.name, test),
            "status": status,
            "loops": [],
            "target": False,
            "created": False,
            "dur": 0.0,
        }
        if err is not None:
            record["tb"] = self._exc_info_to_string(err, test)[-TB_LIMIT:]
        if reason is not None:
            record["reason"] = reason
        self.emit(record)

    def startTest(self, test):
        super().startTest(test)
        tid = test_id(self.name, test)
        self.tracker.reset()
        self.cur = {"ev": "end", "id": tid, "status": "pass", "t0": time.monotonic()}
        reset = self.guard.check()
        if reset:
            self.cur["policy_reset"] = reset
        self.emit({"ev": "start", "id": tid})
        if self.verbose:
            print(f"--- {tid}", file=sys.stderr, flush=True)
        if self.test_timeout:
            faulthandler.dump_traceback_later(self.test_timeout, exit=True)

    def stopTest(self, test):
        if self.test_timeout:
            faulthandler.cancel_dump_traceback_later()
        cur, self.cur = self.cur, None
        if cur["status"] in ("fail", "error"):
            # Collect what the failed test left in reference cycles now, so
            # that its never-retrieved futures and pending tasks are not
            # reported (and logged) in the middle of a later test.
            gc.collect()
        wrong = self.tracker.take_wrong_kind()
        if wrong:
            # A loop of another kind than the run's: the binding is broken
            # for this test, whatever the test itself reported.
            cur["status"] = "error"
            cur["wrong_kind"] = wrong
            cur["tb"] = (
                (cur.get("tb") or "")
                + f"conformance binding (--kind {self.kind}): "
                + "; ".join(wrong)
                + "\n"
            )[-TB_LIMIT:]
            print(f"CONFORMANCE BINDING ERROR in {cur['id']}: {'; '.join(wrong)}", file=sys.stderr)
        ran, target, created = self.tracker.snapshot()
        cur["dur"] = round(time.monotonic() - cur.pop("t0"), 4)
        cur["loops"] = ran
        cur["target"] = target
        cur["created"] = created
        import asyncio.events

        policy = asyncio.events._event_loop_policy
        if not bindings.is_default_policy(policy, self.loop_name):
            cur["policy_left"] = type(policy).__qualname__
        self.emit(cur)
        if self.verbose:
            print(f"--- {cur['id']}: {cur['status']}", file=sys.stderr, flush=True)
        super().stopTest(test)

    def addError(self, test, err):
        super().addError(test, err)
        if not self._set("error", err, test):
            self._fixture(test, "error", err)

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._set("fail", err, test)

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            failure = issubclass(err[0], test.failureException)
            self._set("fail" if failure else "error", err, subtest)

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        if not self._set("skip", reason=reason):
            self._fixture(test, "skip", reason=reason)

    def addExpectedFailure(self, test, err):
        # unittest's own @expectedFailure: the test behaves as CPython expects.
        super().addExpectedFailure(test, err)
        self._set("xfail")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._set("xpass")


def iter_tests(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from iter_tests(item)
        else:
            yield item


def filter_suite(suite, keep):
    out = unittest.TestSuite()
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            out.addTest(filter_suite(item, keep))
        elif keep(item):
            out.addTest(item)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--loop", choices=("ferroloop", "asyncio"), required=True)
    ap.add_argument(
        "--kind", choices=bindings.KINDS, default="selector", help="ferroloop loop kind"
    )
    ap.add_argument("--module", required=True, help="dotted module name")
    ap.add_argument("--name", required=True, help="display name used in test ids")
    ap.add_argument("--out", required=True)
    ap.add_argument("--exclude", help="file of test ids not to run (already recorded)")
    ap.add_argument("--not-run", help="file of test ids not to run, recorded as 'notrun'")
    ap.add_argument("--test-timeout", type=float, default=0)
    ap.add_argument(
        "-k",
        dest="patterns",
        action="append",
        default=[],
        help="only tests whose id matches this fnmatch pattern (or contains it)",
    )
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()

    def read_ids(path):
        if not path:
            return set()
        with open(path) as f:
            return {line.strip() for line in f if line.strip()}

    exclude = read_ids(args.exclude)
    not_run = read_ids(args.not_run) - exclude

    with open(args.out, "a") as out:
        tracker = bindings.LoopTracker(args.loop, args.kind)
        recorder = Recorder(
            out, args.name, tracker, args.loop, args.test_timeout, args.verbose, args.kind
        )

        try:
            if args.loop == "ferroloop":
                # Raises (reported as <module>.<import>) if the policy's
                # loops are not of the run's kind.
                bindings.bind_default_policy(args.kind)
            tracker.install()
            mod = importlib.import_module(args.module)
            if args.loop == "ferroloop":
                bindings.bind_loop_classes(mod, args.name, args.kind)
            bindings.bind_real_loop_variants(mod, args.name, args.loop, args.kind)
            suite = unittest.defaultTestLoader.loadTestsFromModule(mod)
        except Exception:  # noqa: BLE001 - any import failure is reported as a result
            recorder.emit(
                {
                    "ev": "end",
                    "id": f"{args.name}.<import>",
                    "status": "error",
                    "tb": traceback.format_exc()[-TB_LIMIT:],
                    "loops": [],
                    "target": False,
                    "created": False,
                    "dur": 0.0,
                }
            )
            recorder.emit({"ev": "done"})
            return 1

        if not_run:
            for test in iter_tests(suite):
                tid = test_id(args.name, test)
                if tid in not_run:
                    recorder.emit(
                        {
                            "ev": "end",
                            "id": tid,
                            "status": "notrun",
                            "loops": [],
                            "target": False,
                            "created": False,
                            "dur": 0.0,
                            "tb": "not run: listed as hanging in expected_failures.txt",
                        }
                    )
        if args.patterns:

            def wanted(tid):
                return any(p in tid or fnmatch.fnmatchcase(tid, p) for p in args.patterns)

            suite = filter_suite(suite, lambda t: wanted(test_id(args.name, t)))
        if exclude or not_run:
            skip = exclude | not_run
            suite = filter_suite(suite, lambda t: test_id(args.name, t) not in skip)
        suite.run(recorder)
        recorder.emit({"ev": "done"})
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: a module's leftovers (threads, loops) must
    # not turn a finished run into a hang or a crash.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
