#!/usr/bin/env python3
"""Run CPython 3.11's own asyncio test modules against ferroloop.

    python3 conformance/run.py [--loop ferroloop|asyncio] [--kind selector|proactor]
                               [--module NAME ...] [--update-expected] [--verbose] [-j N]

Each module runs in its own subprocess (``_worker.py``) with a time limit;
the worker records every test, its outcome and which loops ran during it.
The outcomes are checked against ``expected_failures.txt`` (and, in the
``--kind proactor`` run, ``expected_failures_proactor.txt``); the exit status
is 1 if a test fails that is not listed there, a listed test passes, or a
listed id no longer exists. See README.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXPECTED = HERE / "expected_failures.txt"
#: Extra entries for the ``--kind proactor`` run (on top of EXPECTED).
EXPECTED_PROACTOR = HERE / "expected_failures_proactor.txt"
RESULTS = HERE / ".results"
WORKER = HERE / "_worker.py"

#: (display name, dotted module). test_asyncio's modules that apply to a Unix
#: selector loop (not test_selector_events: see README), then modules outside
#: it that run asyncio loops.
DEFAULT_MODULES = [
    ("test_base_events", "test.test_asyncio.test_base_events"),
    ("test_context", "test.test_asyncio.test_context"),
    ("test_events", "test.test_asyncio.test_events"),
    ("test_futures", "test.test_asyncio.test_futures"),
    ("test_futures2", "test.test_asyncio.test_futures2"),
    ("test_locks", "test.test_asyncio.test_locks"),
    ("test_pep492", "test.test_asyncio.test_pep492"),
    ("test_queues", "test.test_asyncio.test_queues"),
    ("test_runners", "test.test_asyncio.test_runners"),
    ("test_taskgroups", "test.test_asyncio.test_taskgroups"),
    ("test_tasks", "test.test_asyncio.test_tasks"),
    ("test_threads", "test.test_asyncio.test_threads"),
    ("test_timeouts", "test.test_asyncio.test_timeouts"),
    ("test_waitfor", "test.test_asyncio.test_waitfor"),
    # Networking, TLS, pipes, subprocesses, signals.
    ("test_sock_lowlevel", "test.test_asyncio.test_sock_lowlevel"),
    ("test_server", "test.test_asyncio.test_server"),
    ("test_streams", "test.test_asyncio.test_streams"),
    ("test_buffered_proto", "test.test_asyncio.test_buffered_proto"),
    ("test_sendfile", "test.test_asyncio.test_sendfile"),
    ("test_ssl", "test.test_asyncio.test_ssl"),
    ("test_sslproto", "test.test_asyncio.test_sslproto"),
    ("test_subprocess", "test.test_asyncio.test_subprocess"),
    ("test_unix_events", "test.test_asyncio.test_unix_events"),
    ("test_protocols", "test.test_asyncio.test_protocols"),
    ("test_transports", "test.test_asyncio.test_transports"),
    # Outside test_asyncio, but they run asyncio loops (through the policy).
    ("test_asyncgen", "test.test_asyncgen"),
    ("test_coroutines", "test.test_coroutines"),
    ("test_contextlib_async", "test.test_contextlib_async"),
    ("test_async_case", "unittest.test.test_async_case"),
]

#: Reasons starting with this apply to the asyncio run as well.
ASYNCIO_TOO = "fails on asyncio too"
#: Reasons starting with this apply to the asyncio run only.
ASYNCIO_ONLY = "asyncio only"

#: The reason categories, by prefix, for the summary.
CATEGORIES = [
    ("white-box (selector)", "white-box (selector)"),
    ("ferroloop bug (proactor)", "ferroloop bug (proactor)"),
    ("white-box", "white-box"),
    (ASYNCIO_TOO, ASYNCIO_TOO),
    (ASYNCIO_ONLY, ASYNCIO_ONLY),
    ("ferroloop bug", "ferroloop bug"),
    ("ferroloop difference", "ferroloop difference"),
]

MAX_RESTARTS = 25

#: In a reason, marks a test that hangs: it is not run, and counts as an
#: expected failure as long as it exists.
HANGS = "[hangs]"
STATUS_ORDER = ("pass", "fail", "error", "skip", "xfail", "xpass", "notrun")
FAILED = ("fail", "error", "xpass", "notrun")


# --------------------------------------------------------------------------
# Modules


def resolve_module(name):
    """``test_tasks`` / ``test_asyncgen`` / a dotted name -> (display, dotted)."""
    for display, dotted in DEFAULT_MODULES:
        if name in (display, dotted):
            return display, dotted
    candidates = [name] if "." in name else []
    candidates += [f"test.test_asyncio.{name}", f"test.{name}", name]
    for dotted in candidates:
        try:
            if importlib.util.find_spec(dotted) is not None:
                return dotted.rsplit(".", 1)[-1], dotted
        except (ImportError, ValueError):
            pass
    raise SystemExit(f"run.py: no test module named {name!r}")


# --------------------------------------------------------------------------
# Running one module


def read_events(path):
    events = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        events.append(json.loads(line))
                    except ValueError:
                        pass  # a line cut short by a crash
    except FileNotFoundError:
        pass
    return events


def log_tail(path, start, limit=6000):
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read().decode("utf-8", "replace")
    return data[-limit:]


def run_module(display, dotted, opts, workdir):
    """Run one module, restarting the worker after a crash or a hung test.
    Returns a dict with the per-test records and run information."""
    out = workdir / f"{display}.jsonl"
    log = workdir / f"{display}.log"
    excl = workdir / f"{display}.exclude"
    not_run = workdir / f"{display}.notrun"
    for p in (out, log, excl, not_run):
        if p.exists():
            p.unlink()
    records = {}
    notes = []
    deadline = time.monotonic() + opts.timeout
    t0 = time.monotonic()
    starts = 0
    done = False
    hangs = [t for t, r in opts.expected.items() if t.startswith(display + ".") and HANGS in r]
    not_run.write_text("".join(f"{t}\n" for t in hangs))
    while not done and starts <= MAX_RESTARTS:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            notes.append(f"module time limit ({opts.timeout:.0f}s) reached")
            break
        excl.write_text("".join(f"{tid}\n" for tid in records))
        cmd = [
            sys.executable,
            "-X",
            "faulthandler",
            str(WORKER),
            "--loop",
            opts.loop,
            "--kind",
            opts.kind,
            "--module",
            dotted,
            "--name",
            display,
            "--out",
            str(out),
            "--exclude",
            str(excl),
            "--not-run",
            str(not_run),
            "--test-timeout",
            str(min(opts.test_timeout, max(remaining - 5, 1))),
        ]
        if opts.verbose:
            cmd.append("--verbose")
        for pat in opts.patterns:
            cmd += ["-k", pat]
        env = dict(os.environ)
        env.pop("PYTHONASYNCIODEBUG", None)
        if opts.asyncio_debug:
            env["PYTHONASYNCIODEBUG"] = "1"
        env.pop("FERROLOOP_SELECTOR", None)
        if opts.backend:
            env["FERROLOOP_SELECTOR"] = opts.backend
        # The kind of loop ferroloop.new_event_loop() (and so the policy)
        # makes; the worker checks every ferroloop loop against it.
        env.pop("FERROLOOP_LOOP", None)
        if opts.loop == "ferroloop":
            env["FERROLOOP_LOOP"] = opts.kind
        env["PYTHONUNBUFFERED"] = "1"
        log_start = log.stat().st_size if log.exists() else 0
        with open(log, "ab") as logf, tempfile.TemporaryDirectory(prefix="ffconf-") as cwd:
            proc = subprocess.Popen(
                cmd,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                rc = proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
                rc = None
            except KeyboardInterrupt:
                # The worker runs in its own session: Ctrl-C does not reach it.
                os.killpg(proc.pid, 9)
                proc.wait()
                raise
            try:
                os.killpg(proc.pid, 9)  # leftover children of the tests
            except ProcessLookupError:
                pass
        starts += 1
        started = None
        for ev in read_events(out):
            if ev["ev"] == "start":
                started = ev["id"]
            elif ev["ev"] == "end":
                records[ev["id"]] = ev
                if ev["id"] == started:
                    started = None
            elif ev["ev"] == "done":
                done = True
        if done:
            break
        # The worker died: blame the test that had started, if any.
        why = "module time limit reached" if rc is None else f"worker exited with status {rc}"
        tail = log_tail(log, log_start)
        if started is not None and started not in records:
            hung = "Timeout (" in tail
            records[started] = {
                "ev": "end",
                "id": started,
                "status": "error",
                "loops": [],
                "target": False,
                "created": False,
                "dur": None,
                "crash": "hang" if hung else "crash",
                "tb": f"{'hung' if hung else 'crashed'}: {why}\n{tail}",
            }
            notes.append(f"{started}: {'hang' if hung else 'crash'} ({why})")
        else:
            notes.append(f"worker died outside a test ({why})")
            break
        if rc is None:
            break
    return {
        "module": display,
        "dotted": dotted,
        "records": records,
        "complete": done,
        "notes": notes,
        "seconds": round(time.monotonic() - t0, 1),
        "starts": starts,
        "log": str(log),
    }


# --------------------------------------------------------------------------
# Expected failures


def load_expected(path=EXPECTED):
    """{test id: reason}, in file order."""
    expected = {}
    if not path.exists():
        return expected
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        tid, sep, reason = line.partition(" # ")
        tid = tid.strip()
        if not sep or not reason.strip():
            raise SystemExit(f"{path}:{n}: expected '<test id> # <reason>'")
        if tid in expected:
            raise SystemExit(f"{path}:{n}: {tid} listed twice")
        expected[tid] = reason.strip()
    return expected


def expected_for_loop(expected, loop):
    if loop == "ferroloop":
        return {t: r for t, r in expected.items() if not r.startswith(ASYNCIO_ONLY)}
    return {t: r for t, r in expected.items() if r.startswith((ASYNCIO_TOO, ASYNCIO_ONLY))}


def applies_to_kind(tid, kind):
    """False for ids of classes the run of ``kind`` does not have (the
    poll/select copies of the ferroloop classes, in the proactor run)."""
    from bindings import absent_classes

    parts = tid.split(".")
    return len(parts) < 2 or (parts[0], parts[1]) not in absent_classes(kind)


def expected_for_run(all_expected, proactor_extra, loop, kind):
    """The expected failures of a run: the main list for the loop; in the
    proactor run, without the entries of classes that run lacks, and with
    ``expected_failures_proactor.txt`` on top (its reason wins for an id in
    both)."""
    expected = expected_for_loop(all_expected, loop)
    if loop == "ferroloop" and kind == "proactor":
        expected = {t: r for t, r in expected.items() if applies_to_kind(t, kind)}
        expected.update(proactor_extra)
    return expected


def category(reason):
    for prefix, name in CATEGORIES:
        if reason.startswith(prefix):
            return name
    return "other"


def guess_reason(rec):
    """A first reason for a new entry; to be replaced by hand."""
    if rec.get("crash") == "hang":
        return f"TODO: classify {HANGS}"
    if rec.get("crash"):
        return "TODO: classify (crashed the worker)"
    return "TODO: classify"


PROACTOR_HEADER = [
    "# Tests expected to fail in the proactor run (`run.py --kind proactor`, every loop a",
    "# ferroloop.ProactorEventLoop on io_uring) on top of expected_failures.txt, which",
    "# applies to that run as well (except its entries for the poll/select classes, which",
    "# the proactor run does not have). Same format; an id listed in both takes its reason",
    "# from here. Reason prefixes:",
    "#   white-box (selector): ...     the test inspects selector-loop internals a",
    "#                                 completion-based loop does not have",
    "#   ferroloop bug (proactor): ... a behaviour difference of the proactor loop",
    f"# '{HANGS}' as in expected_failures.txt. Maintained with",
    "# `python3 conformance/run.py --kind proactor --update-expected` (writes this file only).",
]


def write_expected(expected, module_order, path=EXPECTED, header=None):
    by_module = defaultdict(list)
    for tid, reason in expected.items():
        by_module[tid.split(".", 1)[0]].append((tid, reason))
    order = [m for m in module_order if m in by_module]
    order += sorted(m for m in by_module if m not in order)
    lines = header or [
        "# Tests of CPython 3.11's asyncio suite that are expected to fail on ferroloop.",
        "# One test id per line, then ' # ' and the reason. Reason prefixes:",
        "#   white-box: ...          the test inspects asyncio internals ferroloop does not have",
        f"#   {ASYNCIO_TOO}: ...  also expected to fail in the --loop asyncio run",
        f"#   {ASYNCIO_ONLY}: ...          expected to fail in the --loop asyncio run only",
        "#   ferroloop bug: ...      a behaviour difference in a public API, see BUGS.md",
        "#   ferroloop difference: ... a deliberate, documented difference",
        f"# '{HANGS}' in a reason: the test hangs; it is not run (it counts as an expected",
        "# failure as long as it exists).",
        "# Maintained with `python3 conformance/run.py --update-expected` (keeps the",
        "# reasons of entries that still fail; new entries need a reason by hand).",
    ]
    lines = list(lines)
    for module in order:
        lines += ["", f"# ===== {module} " + "=" * max(1, 60 - len(module))]
        width = max(len(t) for t, _ in by_module[module])
        for tid, reason in sorted(by_module[module]):
            lines.append(f"{tid.ljust(width)} # {reason}")
    path.write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------
# Report


def classify(results, expected, partial=False):
    """Per module: counts; overall: the problems that fail the run."""
    rows = []
    problems = {"unexpected_failures": [], "unexpected_passes": [], "stale": [], "incomplete": []}
    for res in results:
        recs = res["records"]
        c = Counter()
        for tid, rec in recs.items():
            st = rec["status"]
            listed = tid in expected
            failed = st in FAILED
            if st == "skip":
                c["skipped"] += 1
            elif failed and listed:
                c["xfail"] += 1
            elif failed:
                c["errors" if st == "error" else "failed"] += 1
                problems["unexpected_failures"].append(rec)
            elif listed:
                c["xpass"] += 1
                problems["unexpected_passes"].append(rec)
            else:
                c["passed"] += 1
                c["on_target" if rec.get("target") else "not_on_target"] += 1
                if not rec.get("target") and rec.get("created"):
                    c["created_only"] += 1
        prefix = res["module"] + "."
        if not res["complete"]:
            problems["incomplete"].append(res)
        elif not partial:
            for tid in expected:
                if tid.startswith(prefix) and tid not in recs:
                    problems["stale"].append(tid)
                    c["stale"] += 1
        rows.append((res, c))
    return rows, problems


def print_table(rows, loop):
    target = "on-ferro" if loop == "ferroloop" else "on-real"
    cols = [
        "module",
        "tests",
        "passed",
        "failed",
        "errors",
        "skipped",
        "xfail",
        "xpass",
        target,
        "not-on-loop",
        "secs",
    ]
    table = []
    total = Counter()
    secs = 0.0
    for res, c in rows:
        n = len(res["records"])
        vals = [
            n,
            c["passed"],
            c["failed"],
            c["errors"],
            c["skipped"],
            c["xfail"],
            c["xpass"],
            c["on_target"],
            c["not_on_target"],
        ]
        total.update(dict(zip(cols[1:], vals)))
        secs += res["seconds"]
        flag = "" if res["complete"] else " !"
        table.append([res["module"] + flag, *map(str, vals), f"{res['seconds']:.1f}"])
    table.append(["TOTAL", *(str(total[k]) for k in cols[1:-1]), f"{secs:.1f}"])
    widths = [max(len(r[i]) for r in table + [cols]) for i in range(len(cols))]

    def fmt(r):
        return "  ".join(
            r[i].ljust(widths[i]) if i == 0 else r[i].rjust(widths[i]) for i in range(len(r))
        )

    print(fmt(cols))
    print("  ".join("-" * w for w in widths))
    for r in table[:-1]:
        print(fmt(r))
    print("  ".join("-" * w for w in widths))
    print(fmt(table[-1]))
    return total


def excerpt(tb, lines=6):
    tb = (tb or "").rstrip().splitlines()
    return "\n".join("      " + s for s in tb[-lines:])


def counterpart_id(tid):
    """The id the same test has in the other loop's run (the ferroloop run
    replaces asyncio's loop classes by classes of its own, see
    ``bindings.LOOP_CLASSES``)."""
    from bindings import COUNTERPARTS

    parts = tid.split(".")
    if len(parts) == 3:
        aio = COUNTERPARTS.get(parts[0], {}).get(parts[1])
        if aio is not None:
            return f"{parts[0]}.{aio}.{parts[2]}"
    return tid


def compare(results, loop, expected, debug=False, against="asyncio"):
    """After a ferroloop run: tests that pass on asyncio (per the last
    saved asyncio run; ``against="ferroloop"``: per the last saved
    ferroloop selector run) but not in this run, by expected reason."""
    other = RESULTS / (against + ("-debug.json" if debug else ".json"))
    if loop != "ferroloop" or not other.exists():
        return
    label = "asyncio" if against == "asyncio" else "the selector loop"
    ids = against != "asyncio"
    saved = json.loads(other.read_text())["modules"]
    by_cat = Counter()
    wrong_asyncio_too = []
    listed_ids = defaultdict(list)
    for res in results:
        theirs = saved.get(res["module"], {}).get("records", {})
        for tid, rec in res["records"].items():
            if rec["status"] not in FAILED:
                continue
            twin = theirs.get(tid if ids else counterpart_id(tid))
            if twin is None:
                continue
            reason = expected.get(tid, "not listed")
            if twin["status"] in ("pass", "xfail"):
                cat = category(reason) if tid in expected else "not listed"
                by_cat[cat] += 1
                listed_ids[cat].append(tid)
                if reason.startswith(ASYNCIO_TOO):
                    wrong_asyncio_too.append(tid)
    if by_cat:
        print(f"\nPass on {label} (last saved {against} run) but fail in this run, by reason:")
        for cat, n in by_cat.most_common():
            print(f"  {n:5d}  {cat}")
            if ids:
                for tid in sorted(listed_ids[cat]):
                    print(f"           {tid}")
    for tid in wrong_asyncio_too:
        print(f"  WARNING: {tid} is listed as '{ASYNCIO_TOO}' but passed on asyncio")


def save_results(results, loop):
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{loop}.json"
    data = {"modules": {}}
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except ValueError:
            pass
    for res in results:
        data["modules"][res["module"]] = res
    data["python"] = sys.version
    path.write_text(json.dumps(data, indent=1, sort_keys=True))
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--loop",
        choices=("ferroloop", "asyncio"),
        default="ferroloop",
        help="the loop to run the tests on (default: ferroloop)",
    )
    ap.add_argument(
        "--module",
        nargs="+",
        action="extend",
        metavar="NAME",
        help="test modules (default: see README)",
    )
    ap.add_argument(
        "--update-expected",
        action="store_true",
        help="rewrite expected_failures.txt from this run (ferroloop only)",
    )
    ap.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="stream the test output and list every failure and "
        "every test that did not run on the loop",
    )
    ap.add_argument(
        "-k",
        dest="patterns",
        action="append",
        default=[],
        metavar="PATTERN",
        help="only tests whose id contains PATTERN or matches it as a glob "
        "(repeatable; no check for listed ids that did not run)",
    )
    ap.add_argument(
        "--asyncio-debug",
        action="store_true",
        help="exploratory: run with PYTHONASYNCIODEBUG=1 (asyncio debug mode "
        "everywhere); the expected list is written for the normal run",
    )
    ap.add_argument(
        "--backend",
        choices=("epoll", "poll", "select"),
        help="ferroloop's native backend for every loop the tests make with selector=None "
        "(sets FERROLOOP_SELECTOR; default: unset, i.e. epoll)",
    )
    ap.add_argument(
        "--kind",
        choices=("selector", "proactor"),
        default="selector",
        help="ferroloop run: the kind of every ferroloop loop the tests make, "
        "ferroloop.SelectorEventLoop (default) or ferroloop.ProactorEventLoop (io_uring; "
        "sets FERROLOOP_LOOP, checks loop.backend, adds expected_failures_proactor.txt)",
    )
    ap.add_argument("-j", "--jobs", type=int, default=1, help="modules run in parallel")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per module")
    ap.add_argument(
        "--test-timeout", type=float, default=60, help="seconds per test before it counts as hung"
    )
    opts = ap.parse_args(argv)
    if opts.update_expected and opts.loop != "ferroloop":
        ap.error("--update-expected applies to the ferroloop run")
    if opts.backend and opts.loop != "ferroloop":
        ap.error("--backend applies to the ferroloop run")
    if opts.kind != "selector" and opts.loop != "ferroloop":
        ap.error("--kind applies to the ferroloop run")
    if opts.kind == "proactor" and opts.backend:
        ap.error("--backend picks a selector backend; the proactor loop has one (io_uring)")
    if opts.update_expected and (opts.asyncio_debug or opts.backend):
        ap.error("--update-expected applies to the normal run (no --asyncio-debug/--backend)")
    if opts.update_expected and opts.patterns:
        ap.error("--update-expected needs whole modules (no -k)")

    t0 = time.monotonic()
    modules = [resolve_module(m) for m in opts.module] if opts.module else DEFAULT_MODULES
    run_name = opts.loop + ("-proactor" if opts.kind == "proactor" else "")
    run_name += f"-{opts.backend}" if opts.backend else ""
    run_name += "-debug" if opts.asyncio_debug else ""
    workdir = RESULTS / run_name
    workdir.mkdir(parents=True, exist_ok=True)
    all_expected = load_expected()
    proactor_extra = load_expected(EXPECTED_PROACTOR) if opts.kind == "proactor" else {}
    expected = expected_for_run(all_expected, proactor_extra, opts.loop, opts.kind)
    opts.expected = expected

    on = opts.loop if opts.loop == "asyncio" else f"ferroloop ({opts.kind} loop)"
    print(
        f"ferroloop conformance: {len(modules)} module(s) on {on}, python {sys.version.split()[0]}",
        flush=True,
    )
    results = []
    with concurrent.futures.ThreadPoolExecutor(max(1, opts.jobs)) as pool:
        futures = [pool.submit(run_module, d, m, opts, workdir) for d, m in modules]
        for fut in futures:
            res = fut.result()
            results.append(res)
            st = Counter(r["status"] for r in res["records"].values())
            detail = " ".join(f"{k}={st[k]}" for k in STATUS_ORDER if st[k])
            print(
                f"  {res['module']:<22} {res['seconds']:6.1f}s  {detail}"
                + ("" if res["complete"] else "  (INCOMPLETE)"),
                flush=True,
            )
            if opts.verbose:
                with open(res["log"], errors="replace") as f:
                    sys.stdout.write(f.read())
    print()
    saved = save_results(results, run_name)

    rows, problems = classify(results, expected, partial=bool(opts.patterns))
    total = print_table(rows, opts.loop)
    print(
        f"\n'{'on-ferro' if opts.loop == 'ferroloop' else 'on-real'}': passing tests during "
        f"which a {'ferroloop' if opts.loop == 'ferroloop' else 'real asyncio selector'} loop "
        "ran; 'not-on-loop': passing tests during which none did (test_utils.TestLoop, mocked "
        "BaseEventLoop, no loop at all)."
    )
    created_only = sum(c["created_only"] for _, c in rows)
    if created_only:
        print(
            f"Of the not-on-loop tests, {created_only} created a ferroloop loop without running it."
        )

    if opts.verbose:
        print("\nPassing tests not on the loop:")
        for res, _ in rows:
            for tid, rec in sorted(res["records"].items()):
                if rec["status"] in ("pass", "xfail") and not rec.get("target"):
                    print(f"  {tid}  loops={','.join(rec.get('loops') or []) or '-'}")

    listed = [expected[t] for res in results for t in res["records"] if t in expected]
    if listed:
        cats = Counter(category(r) for r in listed)
        print(
            "\nListed (expected-failure) tests in this run, by reason: "
            + ", ".join(f"{k}: {v}" for k, v in cats.most_common())
        )

    leaks = [
        rec["id"] for res in results for rec in res["records"].values() if rec.get("policy_left")
    ]
    resets = sum(1 for res in results for rec in res["records"].values() if rec.get("policy_reset"))
    if leaks:
        print(
            f"\nNote: {len(leaks)} test(s) ended with a non-default event loop policy "
            f"installed (first: {leaks[0]}); {resets} time(s) the worker put the default "
            "policy back before the next test (see bindings.PolicyGuard)."
        )

    for res in results:
        for note in res["notes"]:
            print(f"\n{res['module']}: {note}")

    compare(results, opts.loop, expected, opts.asyncio_debug)
    if opts.kind == "proactor":
        compare(results, opts.loop, expected, opts.asyncio_debug, against="ferroloop")

    bad = False
    wrong_kind = [
        rec for res in results for rec in res["records"].values() if rec.get("wrong_kind")
    ]
    if wrong_kind:
        # Whatever the expected list says: the run did not test what it claims.
        bad = True
        print(f"\nLOOPS OF THE WRONG KIND (--kind {opts.kind}) IN {len(wrong_kind)} TEST(S):")
        for rec in wrong_kind:
            print(f"  {rec['id']}: {'; '.join(rec['wrong_kind'])}")
    if problems["unexpected_failures"]:
        bad = True
        print(f"\nUNEXPECTED FAILURES ({len(problems['unexpected_failures'])}):")
        for rec in problems["unexpected_failures"]:
            print(f"  {rec['id']}  [{rec['status']}]")
            print(excerpt(rec.get("tb"), 12 if opts.verbose else 4))
    if problems["unexpected_passes"]:
        bad = True
        print(
            f"\nUNEXPECTED PASSES ({len(problems['unexpected_passes'])}) "
            "- remove them from expected_failures.txt:"
        )
        for rec in problems["unexpected_passes"]:
            print(f"  {rec['id']}  # was: {expected[rec['id']]}")
    if problems["stale"]:
        bad = True
        print(f"\nLISTED IDS THAT NO LONGER EXIST ({len(problems['stale'])}):")
        for tid in problems["stale"]:
            print(f"  {tid}")
    if problems["incomplete"]:
        bad = True
        print("\nINCOMPLETE MODULES: " + ", ".join(r["module"] for r in problems["incomplete"]))

    if opts.update_expected and opts.kind == "proactor":
        # Only expected_failures_proactor.txt is written: failing tests the
        # main list does not cover. A main-list entry that passes here shows
        # as an unexpected pass; it is left to be handled by hand.
        ran = {d for d, _ in modules}
        main = expected_for_run(all_expected, {}, opts.loop, opts.kind)
        new = {t: r for t, r in proactor_extra.items() if t.split(".", 1)[0] not in ran}
        added = 0
        for res in results:
            for tid, rec in res["records"].items():
                if rec["status"] not in FAILED:
                    continue
                reason = proactor_extra.get(tid)
                if reason is None:
                    if tid in main:
                        continue
                    added += 1
                    reason = guess_reason(rec)
                new[tid] = reason
        write_expected(
            new, [d for d, _ in DEFAULT_MODULES], path=EXPECTED_PROACTOR, header=PROACTOR_HEADER
        )
        todo = sum(1 for r in new.values() if r.startswith("TODO"))
        print(
            f"\nWrote {EXPECTED_PROACTOR.relative_to(HERE.parent)}: {len(new)} entries "
            f"({added} new, {todo} need a reason)."
        )
        bad = bool(problems["incomplete"])
    elif opts.update_expected:
        ran = {d for d, _ in modules}
        new = {
            t: r
            for t, r in all_expected.items()
            if t.split(".", 1)[0] not in ran or r.startswith(ASYNCIO_ONLY)
        }
        added = 0
        for res in results:
            for tid, rec in res["records"].items():
                reason = all_expected.get(tid)
                if rec["status"] in FAILED:
                    if reason is None or reason.startswith(ASYNCIO_ONLY):
                        added += 1
                        reason = guess_reason(rec)
                    new[tid] = reason
                elif reason and reason.startswith(ASYNCIO_TOO):
                    # passes on ferroloop now; still expected on asyncio
                    new[tid] = ASYNCIO_ONLY + reason[len(ASYNCIO_TOO) :]
        write_expected(new, [d for d, _ in DEFAULT_MODULES])
        todo = sum(1 for r in new.values() if r.startswith("TODO"))
        print(
            f"\nWrote {EXPECTED.relative_to(HERE.parent)}: {len(new)} entries "
            f"({added} new, {todo} need a reason)."
        )
        bad = bool(problems["incomplete"])

    print(
        f"\nResults: {saved.relative_to(HERE.parent)}; logs: "
        f"{workdir.relative_to(HERE.parent)}/<module>.log"
    )
    print(
        f"Total: {total['tests']} tests, {total['passed']} passed "
        f"({total['on-ferro' if opts.loop == 'ferroloop' else 'on-real']} on the loop), "
        f"{total['xfail']} expected failures; "
        f"{'FAILED' if bad else 'OK'} in {time.monotonic() - t0:.1f}s"
    )
    # The closing line in the plain "N passed, N failed" form: failures are the
    # tests that broke the expectations (unexpected failures and passes).
    n_bad = len(problems["unexpected_failures"]) + len(problems["unexpected_passes"])
    print(f"conformance: {total['passed']} passed, {n_bad} failed, {total['skipped']} skipped")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
