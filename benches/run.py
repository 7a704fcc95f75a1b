#!/usr/bin/env python3
"""Scheduling benchmark harness for asyncio-compatible event loops.

Usage (from the repository root):

    python benches/run.py --loops asyncio,uvloop,rloop,ferroloop \\
        [--repeat N] [--json out.json] [--bench name,...] [--quick]

Every (loop, benchmark, repetition) triple runs in a fresh Python subprocess:

    python benches/run.py --worker LOOP BENCH N

which builds a new event loop, runs one benchmark of size N on it and prints
a single JSON line with the wall time, the CPU time of the process and the
number of operations it observed.  The parent collects the lines, takes
medians over the repetitions and prints Markdown tables (see README.md).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import gc
import importlib
import json
import math
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import sched_benches

HERE = Path(__file__).resolve().parent
SCRIPT = Path(__file__).resolve()

DEFAULT_LOOPS = "asyncio,uvloop,rloop,ferroloop-proactor,ferroloop"
DEFAULT_REPEAT = 5
QUICK_DIVISOR = 10
WORKER_TIMEOUT_S = 60.0
PROBE_TIMEOUT_S = 30.0
WARMUP_DIVISOR = 20  # warm-up run size = n // WARMUP_DIVISOR on a separate loop

# Exit status of a worker whose loop module cannot be imported / created.
EXIT_MISSING = 3
EXIT_FAILED = 4

# Environment variables that would change loop behaviour (debug mode makes
# every loop much slower and not comparably so).
_SCRUBBED_ENV = ("PYTHONASYNCIODEBUG", "PYTHONDEVMODE", "PYTHONTRACEMALLOC")


# ---------------------------------------------------------------------------
# Loops
# ---------------------------------------------------------------------------


def _import_loop_module(name: str) -> Any:
    """Import the module that provides ``new_event_loop()`` for loop *name*.

    The loop name is the module name: asyncio, uvloop, rloop, ferroloop, or
    any other importable module exposing ``new_event_loop()``; ``MODULE-KIND``
    (``ferroloop-proactor``) means ``MODULE.new_event_loop(kind=KIND)``.
    """
    base, sep, kind = name.partition("-")
    if sep:
        # "ferroloop-proactor": the module's new_event_loop(kind="proactor").
        module = importlib.import_module(base)
        return types.SimpleNamespace(
            new_event_loop=functools.partial(module.new_event_loop, kind=kind),
            __version__=getattr(module, "__version__", "unknown"),
        )
    module = importlib.import_module(name)
    if getattr(module, "new_event_loop", None) is None:
        raise ImportError(f"module {name!r} has no new_event_loop()")
    return module


def _loop_version(name: str, module: Any) -> str:
    if name == "asyncio":
        return f"stdlib (Python {platform.python_version()})"
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        version = getattr(module, "__version__", None)
        return str(version) if version is not None else "unknown"


def _new_loop(module: Any) -> Any:
    loop = module.new_event_loop()
    return loop


def _describe_loop(loop: Any) -> str:
    cls = type(loop)
    return f"{cls.__module__}.{cls.__qualname__}"


# ---------------------------------------------------------------------------
# Worker side (runs in the fresh subprocess)
# ---------------------------------------------------------------------------


def _emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record, sort_keys=True) + "\n")
    sys.stdout.flush()


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


async def _answer() -> int:
    return 42


def probe_main(loop_name: str) -> int:
    """Check that *loop_name* can be imported and can run a coroutine."""
    record: dict[str, Any] = {"mode": "probe", "loop": loop_name}
    try:
        module = _import_loop_module(loop_name)
    # Anything raised while importing (not only ImportError) means "missing".
    except Exception as exc:  # noqa: BLE001
        record.update(status="missing", error=_error_text(exc))
        _emit(record)
        return EXIT_MISSING
    record["version"] = _loop_version(loop_name, module)
    try:
        loop = _new_loop(module)
        try:
            if loop.run_until_complete(_answer()) != 42:
                raise RuntimeError("trivial coroutine returned a wrong value")
            record["loop_class"] = _describe_loop(loop)
        finally:
            loop.close()
    except Exception as exc:  # noqa: BLE001 - any failure means "broken"
        record.update(status="broken", error=_error_text(exc))
        _emit(record)
        return EXIT_FAILED
    record["status"] = "ok"
    _emit(record)
    return 0


def worker_main(loop_name: str, bench_name: str, n: int) -> int:
    """Run one benchmark once on a fresh loop and print one JSON line."""
    import asyncio

    record: dict[str, Any] = {
        "mode": "worker",
        "loop": loop_name,
        "bench": bench_name,
        "n": n,
    }
    bench = sched_benches.BENCHES.get(bench_name)
    if bench is None:
        record.update(status="error", error=f"unknown benchmark {bench_name!r}")
        _emit(record)
        return EXIT_FAILED
    try:
        module = _import_loop_module(loop_name)
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        record.update(status="missing", error=_error_text(exc))
        _emit(record)
        return EXIT_MISSING
    record["version"] = _loop_version(loop_name, module)

    try:
        # Warm-up on a throw-away loop: first-call costs (lazy imports,
        # method caches, allocator growth) should not land in the timing.
        warm_n = n // WARMUP_DIVISOR
        if warm_n > 0:
            warm_loop = _new_loop(module)
            try:
                asyncio.set_event_loop(warm_loop)
                bench.func(warm_loop, warm_n)
            finally:
                asyncio.set_event_loop(None)
                warm_loop.close()

        loop = _new_loop(module)
        record["loop_class"] = _describe_loop(loop)
        asyncio.set_event_loop(loop)
        try:
            gc.collect()
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
            cpu0 = time.process_time()
            t0 = time.perf_counter()
            ops = bench.func(loop, n)
            t1 = time.perf_counter()
            cpu1 = time.process_time()
            ru1 = resource.getrusage(resource.RUSAGE_SELF)
        finally:
            asyncio.set_event_loop(None)
            loop.close()
    except Exception as exc:  # noqa: BLE001 - the parent records the failure
        record.update(status="error", error=_error_text(exc))
        _emit(record)
        return EXIT_FAILED

    expected = bench.expected_ops(n)
    record.update(
        ops=ops,
        expected_ops=expected,
        wall_s=t1 - t0,
        cpu_s=cpu1 - cpu0,
        user_s=ru1.ru_utime - ru0.ru_utime,
        sys_s=ru1.ru_stime - ru0.ru_stime,
        voluntary_ctx_switches=ru1.ru_nvcsw - ru0.ru_nvcsw,
        involuntary_ctx_switches=ru1.ru_nivcsw - ru0.ru_nivcsw,
        max_rss_kib=ru1.ru_maxrss,
    )
    if ops != expected:
        record.update(status="error", error=f"observed {ops} ops, expected {expected}")
        _emit(record)
        return EXIT_FAILED
    record["status"] = "ok"
    _emit(record)
    return 0


# ---------------------------------------------------------------------------
# Parent side: spawning workers
# ---------------------------------------------------------------------------


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    for key in _SCRUBBED_ENV:
        env.pop(key, None)
    return env


def _last_json_line(text: str) -> dict[str, Any] | None:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


def _tail(text: str, limit: int = 600) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def _spawn(args: list[str], timeout: float) -> dict[str, Any]:
    """Run ``run.py ARGS`` in a fresh interpreter and return its JSON record."""
    return _spawn_script(SCRIPT, args, timeout)


def _spawn_script(script: Path, args: list[str], timeout: float) -> dict[str, Any]:
    """Run ``script ARGS`` in a fresh interpreter (from the script's folder)
    and return the last JSON line it printed, or a timeout / crash record."""
    cmd = [sys.executable, str(script), *args]
    try:
        proc = subprocess.run(
            cmd,
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_child_env(),
            cwd=str(script.parent),
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "error": f"no result within {timeout:g} s"}
    record = _last_json_line(proc.stdout)
    if record is None:
        detail = _tail(proc.stderr) or _tail(proc.stdout) or "no output"
        return {
            "status": "crashed",
            "error": f"{_describe_exit(proc.returncode)}: {detail}",
        }
    if record.get("status") == "ok" and proc.returncode != 0:
        record["status"] = "crashed"
        record["error"] = f"{_describe_exit(proc.returncode)} after reporting success"
    stderr = proc.stderr.strip()
    if stderr:
        record["stderr"] = _tail(stderr)
    return record


def probe_loops(names: list[str]) -> dict[str, dict[str, Any]]:
    info: dict[str, dict[str, Any]] = {}
    for name in names:
        rec = _spawn(["--probe", name], PROBE_TIMEOUT_S)
        entry = {
            "available": rec.get("status") == "ok",
            "status": rec.get("status"),
            "version": rec.get("version"),
            "loop_class": rec.get("loop_class"),
        }
        if rec.get("error"):
            entry["error"] = rec["error"]
        info[name] = entry
    return info


# ---------------------------------------------------------------------------
# Parent side: statistics and report
# ---------------------------------------------------------------------------


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Medians over the successful runs of one (loop, bench) pair."""
    ok = [r for r in runs if r.get("status") == "ok"]
    if not ok:
        return None
    throughputs = [r["ops"] / r["wall_s"] for r in ok if r["wall_s"] > 0]
    if not throughputs:
        return None
    med_ops_s = statistics.median(throughputs)
    med_wall = statistics.median(r["wall_s"] for r in ok)
    med_cpu = statistics.median(r["cpu_s"] for r in ok)
    ops = statistics.median(r["ops"] for r in ok)
    return {
        "runs_ok": len(ok),
        "runs_failed": len(runs) - len(ok),
        "ops": ops,
        "median_ops_per_s": med_ops_s,
        "min_ops_per_s": min(throughputs),
        "max_ops_per_s": max(throughputs),
        # half of the min..max range, relative to the median
        "spread_pct": 50.0 * (max(throughputs) - min(throughputs)) / med_ops_s,
        "median_wall_s": med_wall,
        "median_cpu_s": med_cpu,
        "wall_us_per_op": 1e6 * med_wall / ops,
        "cpu_us_per_op": 1e6 * med_cpu / ops,
        "cpu_utilisation": med_cpu / med_wall if med_wall > 0 else None,
    }


def ratio_pairs(loops: list[str]) -> list[tuple[str, str]]:
    """(numerator, denominator) pairs of loop names for the ratio columns.

    Every loop against asyncio, then the last-named loop against every other
    loop.  Duplicates and self-ratios are dropped.
    """
    pairs: list[tuple[str, str]] = []
    if "asyncio" in loops:
        pairs += [(name, "asyncio") for name in loops if name != "asyncio"]
    if loops:
        last = loops[-1]
        pairs += [(last, name) for name in loops if name != last]
    seen: set[tuple[str, str]] = set()
    unique = []
    for pair in pairs:
        if pair not in seen:
            seen.add(pair)
            unique.append(pair)
    return unique


def compute_ratios(
    results: dict[str, dict[str, dict[str, Any] | None]],
    pairs: list[tuple[str, str]],
) -> dict[str, dict[str, float | None]]:
    ratios: dict[str, dict[str, float | None]] = {}
    for bench, per_loop in results.items():
        row: dict[str, float | None] = {}
        for num, den in pairs:
            a, b = per_loop.get(num), per_loop.get(den)
            key = f"{num}/{den}"
            if a and b and b["median_ops_per_s"] > 0:
                row[key] = a["median_ops_per_s"] / b["median_ops_per_s"]
            else:
                row[key] = None
        ratios[bench] = row
    return ratios


def geomean(values: list[float]) -> float | None:
    values = [v for v in values if v and v > 0]
    if not values:
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _fmt_rate(summary: dict[str, Any] | None, status: str) -> str:
    if summary is None:
        return status
    return f"{summary['median_ops_per_s']:,.0f} ±{summary['spread_pct']:.1f}%"


def _fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _md_table(header: list[str], rows: list[list[str]], align: list[str]) -> str:
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]

    def line(cells: list[str]) -> str:
        out = []
        for cell, width, a in zip(cells, widths, align):
            out.append(cell.rjust(width) if a == "r" else cell.ljust(width))
        return "| " + " | ".join(out) + " |"

    sep = []
    for width, a in zip(widths, align):
        dashes = "-" * max(width, 3)
        sep.append(dashes[:-1] + ":" if a == "r" else dashes)
    return "\n".join(
        [line(header), "| " + " | ".join(sep) + " |"] + [line(r) for r in rows]
    )


def _failure_status(runs: list[dict[str, Any]]) -> str:
    statuses = sorted({r.get("status", "?") for r in runs if r.get("status") != "ok"})
    return "/".join(statuses) if statuses else "no data"


def render_report(report: dict[str, Any]) -> str:
    loops_info = report["loops"]
    present = [
        name for name in report["config"]["loops"] if loops_info[name]["available"]
    ]
    missing = [
        name for name in report["config"]["loops"] if not loops_info[name]["available"]
    ]
    benches = report["config"]["benches"]
    results = report["results"]
    ratios = report["ratios"]
    pairs = [tuple(p.split("/")) for p in report["ratio_columns"]]
    runs_by_key: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in report["runs"]:
        runs_by_key.setdefault((run["bench"], run["loop"]), []).append(run)

    out: list[str] = []
    machine = report["machine"]
    out.append("# Event loop scheduling benchmarks")
    out.append("")
    out.append(
        f"- date: {report['date']}; Python {report['python']['version']} "
        f"({report['python']['implementation']})"
    )
    out.append(
        f"- machine: {machine['platform']}; cpu: {machine.get('cpu_model') or '?'}; "
        f"nproc {machine['nproc']} (affinity {machine['affinity']}); "
        f"loadavg at start {machine['loadavg_start']}"
    )
    out.append(
        f"- repeat: {report['config']['repeat']} fresh processes per (loop, bench), "
        f"medians shown{'; QUICK sizes' if report['config']['quick'] else ''}"
    )
    for name in report["config"]["loops"]:
        info = loops_info[name]
        if info["available"]:
            out.append(f"- {name}: {info['version']} ({info['loop_class']})")
        else:
            out.append(f"- {name}: {info['status'].upper()} — {info.get('error', '')}")
    if len(present) > 1:
        out.append(
            "- ratio A/B = median ops/s of A / median ops/s of B (>1: A is faster); "
            f"columns: every loop vs asyncio, then {present[-1]} "
            "(last available loop named) vs every other loop"
        )
    out.append("")

    if not present:
        out.append("No loop could be run.")
        return "\n".join(out) + "\n"

    # Throughput table with ratio columns.
    header = ["bench", "n"] + [f"{name} ops/s" for name in present]
    header += [f"{num}/{den}" for num, den in pairs]
    align = ["l"] + ["r"] * (len(header) - 1)
    rows = []
    for bench in benches:
        row = [bench, f"{report['config']['sizes'][bench]:,}"]
        for name in present:
            row.append(
                _fmt_rate(
                    results[bench].get(name),
                    _failure_status(runs_by_key.get((bench, name), [])),
                )
            )
        row += [_fmt_ratio(ratios[bench].get(f"{num}/{den}")) for num, den in pairs]
        rows.append(row)
    if pairs and len(benches) > 1:
        gm_row = ["geomean", ""] + [""] * len(present)
        gm_row += [
            _fmt_ratio(geomean([ratios[b].get(f"{num}/{den}") for b in benches]))
            for num, den in pairs
        ]
        rows.append(gm_row)
    out.append(
        "## Throughput (median ops/s, ± half the min-max spread; ratios >1 = numerator faster)"
    )
    out.append("")
    out.append(_md_table(header, rows, align))
    out.append("")

    # CPU cost table.
    header = ["bench", "op"] + [f"{name} CPU µs/op" for name in present]
    header += [f"{name} wall µs/op" for name in present]
    align = ["l", "l"] + ["r"] * (len(header) - 2)
    rows = []
    for bench in benches:
        row = [bench, sched_benches.BENCHES[bench].unit]
        for key in ("cpu_us_per_op", "wall_us_per_op"):
            for name in present:
                summary = results[bench].get(name)
                row.append("n/a" if summary is None else f"{summary[key]:.3f}")
        rows.append(row)
    out.append(
        "## Cost per operation (median µs/op; CPU = process time of the worker, all threads)"
    )
    out.append("")
    out.append(_md_table(header, rows, align))
    out.append("")

    failures = [r for r in report["runs"] if r.get("status") != "ok"]
    if failures:
        out.append("## Failed runs")
        out.append("")
        for r in failures:
            out.append(
                f"- {r['loop']} / {r['bench']} rep {r['rep'] + 1}: {r.get('status')}: {r.get('error', '')}"
            )
        out.append("")
    if missing:
        out.append(f"Missing loops (not benchmarked): {', '.join(missing)}")
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------------
# Parent side: machine description
# ---------------------------------------------------------------------------


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _git_revision() -> str | None:
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=str(HERE),
            check=False,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def machine_info() -> dict[str, Any]:
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    return {
        "nproc": os.cpu_count(),
        "affinity": affinity,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "loadavg_start": _loadavg(),
    }


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def _split_names(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    seen: set[str] = set()
    unique = []
    for name in names:
        if name not in seen:
            seen.add(name)
            unique.append(name)
    return unique


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Compare scheduling throughput of asyncio event loops.",
    )
    parser.add_argument(
        "--loops",
        default=DEFAULT_LOOPS,
        help=f"comma-separated loop modules; the last one is compared against "
        f"all others (default: {DEFAULT_LOOPS})",
    )
    parser.add_argument(
        "--repeat",
        type=_positive_int,
        default=None,
        help=f"fresh-process runs per (loop, bench); medians are reported "
        f"(default: {DEFAULT_REPEAT}, or 1 with --quick)",
    )
    parser.add_argument("--json", metavar="PATH", help="write the full results as JSON")
    parser.add_argument(
        "--bench",
        default=None,
        help="comma-separated benchmark names (default: all); see --list",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke test: sizes divided by {QUICK_DIVISOR}",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=WORKER_TIMEOUT_S,
        help=f"hard timeout per worker process in seconds (default: {WORKER_TIMEOUT_S:g})",
    )
    parser.add_argument("--list", action="store_true", help="list benchmarks and exit")
    parser.add_argument(
        "--worker",
        nargs=3,
        metavar=("LOOP", "BENCH", "N"),
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--probe", metavar="LOOP", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    if args.worker:
        loop_name, bench_name, n_text = args.worker
        return worker_main(loop_name, bench_name, int(n_text))
    if args.probe:
        return probe_main(args.probe)

    if args.list:
        for bench in sched_benches.BENCHES.values():
            doc = (bench.func.__doc__ or "").strip().splitlines()[0]
            print(f"{bench.name:24} n={bench.n:<9,} {doc}")
        return 0

    loops = _split_names(args.loops)
    if not loops:
        parser.error("--loops is empty")
    if args.bench:
        benches = _split_names(args.bench)
        unknown = [b for b in benches if b not in sched_benches.BENCHES]
        if unknown:
            parser.error(
                f"unknown benchmark(s): {', '.join(unknown)}; "
                f"known: {', '.join(sched_benches.BENCHES)}"
            )
    else:
        benches = list(sched_benches.BENCHES)
    repeat = (
        args.repeat
        if args.repeat is not None
        else (1 if args.quick else DEFAULT_REPEAT)
    )
    divisor = QUICK_DIVISOR if args.quick else 1
    sizes = {b: max(1, sched_benches.BENCHES[b].n // divisor) for b in benches}

    started = time.monotonic()
    report: dict[str, Any] = {
        "schema": 1,
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
            "build": " ".join(platform.python_build()),
            "compiler": platform.python_compiler(),
        },
        "machine": machine_info(),
        "git_revision": _git_revision(),
        "config": {
            "loops": loops,
            "benches": benches,
            "sizes": sizes,
            "repeat": repeat,
            "quick": args.quick,
            "timeout_s": args.timeout,
            "warmup_divisor": WARMUP_DIVISOR,
        },
    }

    log = sys.stderr
    print(f"probing loops: {', '.join(loops)}", file=log, flush=True)
    loops_info = probe_loops(loops)
    report["loops"] = loops_info
    for name in loops:
        info = loops_info[name]
        if info["available"]:
            print(
                f"  {name}: {info['version']} ({info['loop_class']})",
                file=log,
                flush=True,
            )
        else:
            print(
                f"  {name}: {info['status']}: {info.get('error')}", file=log, flush=True
            )
    present = [name for name in loops if loops_info[name]["available"]]

    runs: list[dict[str, Any]] = []
    total = repeat * len(benches) * len(present)
    done = 0
    for rep in range(repeat):
        # Rotate the loop order each repetition so no loop always runs first
        # (or right after a given other loop) on the shared cores.
        order = (
            present[rep % len(present) :] + present[: rep % len(present)]
            if present
            else []
        )
        for bench in benches:
            for name in order:
                done += 1
                rec = _spawn(["--worker", name, bench, str(sizes[bench])], args.timeout)
                rec.update(loop=name, bench=bench, rep=rep, n=sizes[bench])
                runs.append(rec)
                if rec.get("status") == "ok":
                    detail = (
                        f"{rec['ops'] / rec['wall_s']:>12,.0f} ops/s  "
                        f"wall {rec['wall_s']:.3f}s cpu {rec['cpu_s']:.3f}s"
                    )
                else:
                    detail = f"{rec.get('status')}: {rec.get('error')}"
                print(
                    f"[{done:>3}/{total}] rep {rep + 1} {bench:22} {name:10} {detail}",
                    file=log,
                    flush=True,
                )

    results: dict[str, dict[str, dict[str, Any] | None]] = {}
    for bench in benches:
        results[bench] = {}
        for name in present:
            subset = [r for r in runs if r["bench"] == bench and r["loop"] == name]
            results[bench][name] = summarize(subset)
    pairs = ratio_pairs(present)
    report["runs"] = runs
    report["results"] = results
    report["ratio_columns"] = [f"{a}/{b}" for a, b in pairs]
    report["ratios"] = compute_ratios(results, pairs)
    report["geomean_ratios"] = {
        f"{a}/{b}": geomean(
            [report["ratios"][bench].get(f"{a}/{b}") for bench in benches]
        )
        for a, b in pairs
    }
    report["machine"]["loadavg_end"] = _loadavg()
    report["elapsed_s"] = round(time.monotonic() - started, 2)

    print(render_report(report))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(report, indent=2, sort_keys=False) + "\n", encoding="utf-8"
        )
        print(f"full results written to {path}", file=log)

    failed = [r for r in runs if r.get("status") != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
