#!/usr/bin/env python3
"""Subprocess benchmarks for asyncio-compatible event loops.

Usage (from the repository root):

    python benches/proc.py --loops asyncio,uvloop,rloop,ferroloop \\
        [--repeat N] [--quick] [--json out.json] [--bench a,b]

Every (loop, benchmark, repetition) runs in a fresh interpreter:

    python benches/proc.py --worker LOOP BENCH N

which runs a warm-up, then one timed run of the benchmark on a new loop, and
prints one JSON line: wall time, the CPU time of the loop's process
(``RUSAGE_SELF``, every thread) and of its children (``RUSAGE_CHILDREN``),
and the number of operations observed.  The parent takes medians over the
repetitions and prints Markdown tables (see README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common

SCRIPT = Path(__file__).resolve()

DEFAULT_REPEAT = 3
QUICK_DIVISOR = 10
WORKER_TIMEOUT_S = 120.0
TRUE = "/bin/true"
CONCURRENCY = 50
READ_SIZE = 64 * 1024

EXIT_MISSING = 3
EXIT_FAILED = 4


# ---------------------------------------------------------------------------
# Benchmarks: async def bench(loop, n) -> operations observed
# ---------------------------------------------------------------------------


async def _spawn_true() -> int:
    proc = await asyncio.create_subprocess_exec(TRUE)
    code = await proc.wait()
    if code != 0:
        raise RuntimeError(f"{TRUE} exited with {code}")
    return 1


async def spawn_seq(loop: asyncio.AbstractEventLoop, n: int) -> int:
    """n children, one at a time: create_subprocess_exec('/bin/true') + wait()."""
    done = 0
    for _ in range(n):
        done += await _spawn_true()
    return done


async def spawn_conc50(loop: asyncio.AbstractEventLoop, n: int) -> int:
    """n children in batches of 50 running at once (gather of spawn + wait)."""
    done = 0
    while done < n:
        batch = min(CONCURRENCY, n - done)
        done += sum(await asyncio.gather(*(_spawn_true() for _ in range(batch))))
    return done


def _producer(nbytes: int) -> list[str]:
    return ["head", "-c", str(nbytes), "/dev/zero"]


async def pipe_stream(loop: asyncio.AbstractEventLoop, n: int) -> int:
    """Read n bytes from a child's stdout: create_subprocess_exec(stdout=PIPE),
    then ``await proc.stdout.read(64 KiB)`` until EOF."""
    proc = await asyncio.create_subprocess_exec(*_producer(n), stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    total = 0
    read = proc.stdout.read
    while True:
        chunk = await read(READ_SIZE)
        if not chunk:
            break
        total += len(chunk)
    code = await proc.wait()
    if code != 0:
        raise RuntimeError(f"producer exited with {code}")
    return total


class _CountingProtocol(asyncio.SubprocessProtocol):
    def __init__(self, done: asyncio.Future[int]) -> None:
        self.done = done
        self.total = 0
        self.exited = False
        self.pipe_closed = False

    def pipe_data_received(self, fd: int, data: bytes | bytearray) -> None:
        self.total += len(data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self.pipe_closed = True
        self._maybe_done()

    def process_exited(self) -> None:
        self.exited = True
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self.exited and self.pipe_closed and not self.done.done():
            self.done.set_result(self.total)


async def pipe_protocol(loop: asyncio.AbstractEventLoop, n: int) -> int:
    """Read n bytes from a child's stdout through loop.subprocess_exec and a
    SubprocessProtocol that only counts bytes (no StreamReader)."""
    done: asyncio.Future[int] = loop.create_future()
    transport, _ = await loop.subprocess_exec(
        lambda: _CountingProtocol(done),
        *_producer(n),
        stdin=None,
        stdout=asyncio.subprocess.PIPE,
        stderr=None,
    )
    try:
        total = await done
    finally:
        transport.close()
    if transport.get_returncode() != 0:
        raise RuntimeError(f"producer exited with {transport.get_returncode()}")
    return total


@dataclass(frozen=True)
class Bench:
    name: str
    func: Callable[[asyncio.AbstractEventLoop, int], Coroutine[Any, Any, int]]
    n: int
    unit: str  # what one op is
    rate_unit: str  # how the throughput is shown
    scale: float  # ops per rate unit (1 for spawns, 1e6 for bytes -> MB)
    warmup: int


BENCHES = {
    b.name: b
    for b in (
        Bench("spawn_seq", spawn_seq, 200, "spawn", "spawns/s", 1.0, 10),
        Bench("spawn_conc50", spawn_conc50, 200, "spawn", "spawns/s", 1.0, 50),
        Bench("pipe_stream", pipe_stream, 50_000_000, "byte", "MB/s", 1e6, 2_000_000),
        Bench("pipe_protocol", pipe_protocol, 50_000_000, "byte", "MB/s", 1e6, 2_000_000),
    )
}


# ---------------------------------------------------------------------------
# Worker side
# ---------------------------------------------------------------------------


def _ru_cpu(ru: resource.struct_rusage) -> tuple[float, float]:
    return ru.ru_utime, ru.ru_stime


def worker_main(loop_name: str, bench_name: str, n: int) -> int:
    record: dict[str, Any] = {"mode": "worker", "loop": loop_name, "bench": bench_name, "n": n}
    bench = BENCHES.get(bench_name)
    if bench is None:
        record.update(status="error", error=f"unknown benchmark {bench_name!r}")
        common.emit(record)
        return EXIT_FAILED
    try:
        module = common.import_loop_module(loop_name)
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        record.update(status="missing", error=common.error_text(exc))
        common.emit(record)
        return EXIT_MISSING
    record["version"] = common.loop_version(loop_name, module)
    record["loop_build"] = common.loop_build(module)
    try:
        loop = module.new_event_loop()
        record["loop_class"] = common.describe_loop(loop)
        asyncio.set_event_loop(loop)
        try:
            # Warm-up on the same loop: the first spawn pays for lazy imports
            # and for starting child-watching machinery.
            loop.run_until_complete(bench.func(loop, min(bench.warmup, n)))
            gc.collect()
            others = {os.getpid(), os.getppid()}
            foreign0 = common.others_snapshot(others)
            self0 = resource.getrusage(resource.RUSAGE_SELF)
            kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            ops = loop.run_until_complete(bench.func(loop, n))
            t1 = time.perf_counter()
            self1 = resource.getrusage(resource.RUSAGE_SELF)
            kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            foreign1 = common.others_snapshot(others)
        finally:
            asyncio.set_event_loop(None)
            loop.close()
    except Exception as exc:  # noqa: BLE001 - the parent records the failure
        record.update(status="error", error=common.error_text(exc))
        common.emit(record)
        return EXIT_FAILED
    record.update(
        ops=ops,
        expected_ops=n,
        wall_s=t1 - t0,
        user_s=self1.ru_utime - self0.ru_utime,
        sys_s=self1.ru_stime - self0.ru_stime,
        cpu_s=(self1.ru_utime - self0.ru_utime) + (self1.ru_stime - self0.ru_stime),
        children_cpu_s=(kids1.ru_utime - kids0.ru_utime) + (kids1.ru_stime - kids0.ru_stime),
        voluntary_ctx_switches=self1.ru_nvcsw - self0.ru_nvcsw,
        max_rss_kib=self1.ru_maxrss,
        **common.foreign_cpu(foreign0, foreign1, t1 - t0),
    )
    if ops != n:
        record.update(status="error", error=f"observed {ops} ops, expected {n}")
        common.emit(record)
        return EXIT_FAILED
    record["status"] = "ok"
    common.emit(record)
    return 0


# ---------------------------------------------------------------------------
# Parent side
# ---------------------------------------------------------------------------


def summarize(bench: Bench, runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    ok = [r for r in runs if r.get("status") == "ok" and r.get("wall_s")]
    if not ok:
        return None
    rates = [r["ops"] / bench.scale / r["wall_s"] for r in ok]
    per = bench.scale  # CPU per rate unit (per spawn, per MB)
    return {
        "runs_ok": len(ok),
        "runs_failed": len(runs) - len(ok),
        "ops": statistics.median(r["ops"] for r in ok),
        "rate": statistics.median(rates),
        "rate_spread_pct": common.spread_pct(rates),
        "cpu_us_per_unit": statistics.median(1e6 * r["cpu_s"] * per / r["ops"] for r in ok),
        "sys_share": statistics.median(r["sys_s"] / r["cpu_s"] if r["cpu_s"] else 0.0 for r in ok),
        "children_cpu_us_per_unit": statistics.median(
            1e6 * r["children_cpu_s"] * per / r["ops"] for r in ok
        ),
        "wall_us_per_unit": statistics.median(1e6 * r["wall_s"] * per / r["ops"] for r in ok),
        "max_rss_mib": statistics.median(r["max_rss_kib"] / 1024 for r in ok),
    }


def render(report: dict[str, Any]) -> str:
    cfg = report["config"]
    present = [n for n in cfg["loops"] if report["loops"][n]["available"]]
    out = common.header_lines(report, "Event loop subprocess benchmarks")
    if not present:
        out.append("No loop could be run.")
        return "\n".join(out) + "\n"
    names = cfg["benches"]
    results = report["results"]
    pairs = [tuple(p.split("/")) for p in report["ratio_columns"]]
    runs_by_key: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in report["runs"]:
        runs_by_key.setdefault((run["bench"], run["loop"]), []).append(run)
    fail = {key: common.failure_status(runs) for key, runs in runs_by_key.items()}

    def size(name: str) -> str:
        b = BENCHES[name]
        n = cfg["sizes"][name]
        return f"{n:,} spawns" if b.unit == "spawn" else f"{n / 1e6:g} MB"

    rows = [(name, [name, size(name), BENCHES[name].rate_unit]) for name in names]
    out.append(
        "## Throughput (median; ratio A/B > 1 = A faster)\n\n"
        + common.ratio_table(
            rows,
            present,
            results,
            "rate",
            lambda v: f"{v:,.0f}",
            pairs,
            ["bench", "n", "unit"],
            fail,
        )
    )
    out.append("")
    rows = [
        (name, [name, "µs/spawn" if BENCHES[name].unit == "spawn" else "µs/MB"]) for name in names
    ]
    out.append(
        "## CPU of the loop's process per spawn / per MB (median user+sys, all threads, "
        "children excluded; ratio A/B > 1 = A uses MORE CPU)\n\n"
        + common.ratio_table(
            rows,
            present,
            results,
            "cpu_us_per_unit",
            lambda v: f"{v:,.1f}",
            pairs,
            ["bench", "per"],
            fail,
        )
    )
    out.append("")
    header = ["bench"]
    header += [f"{n} sys share" for n in present]
    header += [f"{n} wall µs/unit" for n in present]
    header += [f"{n} children µs/unit" for n in present]
    header += [f"{n} max RSS MiB" for n in present]
    table = []
    for name in names:
        row = [name]
        for key, fmt in (
            ("sys_share", lambda v: f"{100 * v:.0f}%"),
            ("wall_us_per_unit", lambda v: f"{v:,.1f}"),
            ("children_cpu_us_per_unit", lambda v: f"{v:,.1f}"),
            ("max_rss_mib", lambda v: f"{v:.1f}"),
        ):
            for n_ in present:
                s = results[name].get(n_)
                row.append(fail.get((name, n_), "n/a") if s is None else fmt(s[key]))
        table.append(row)
    out.append(
        "## Details (sys share of the loop process's CPU; wall and children's CPU per "
        "spawn or per MB; peak RSS of the loop process)\n\n"
        + common.md_table(header, table, ["l"] + ["r"] * (len(header) - 1))
    )
    out.append("")
    out.extend(common.noise_lines(report))
    failures = [r for r in report["runs"] if r.get("status") != "ok"]
    if failures:
        out.append("## Failed runs")
        out.append("")
        for r in failures:
            out.append(
                f"- {r['loop']} / {r['bench']} rep {r['rep'] + 1}: "
                f"{r.get('status')}: {r.get('error', '')}"
            )
        out.append("")
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Subprocess benchmarks of asyncio event loops.")
    parser.add_argument(
        "--loops",
        default=common.DEFAULT_LOOPS,
        help="comma-separated loop modules; put the loop you care about last "
        f"(default: {common.DEFAULT_LOOPS})",
    )
    parser.add_argument(
        "--repeat",
        type=common.positive_int,
        default=None,
        help=f"fresh-process runs per (loop, bench) (default {DEFAULT_REPEAT}, 1 with --quick)",
    )
    parser.add_argument("--json", metavar="PATH", help="write the full results as JSON")
    parser.add_argument("--bench", default=None, help="comma-separated benchmarks; see --list")
    parser.add_argument(
        "--quick", action="store_true", help=f"smoke test: sizes divided by {QUICK_DIVISOR}"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=WORKER_TIMEOUT_S,
        help=f"hard timeout per worker process in seconds (default {WORKER_TIMEOUT_S:g})",
    )
    common.add_noise_options(parser)
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--worker", nargs=3, metavar=("LOOP", "BENCH", "N"), help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.worker:
        loop_name, bench_name, n_text = args.worker
        return worker_main(loop_name, bench_name, int(n_text))
    if args.list:
        for b in BENCHES.values():
            doc = " ".join((b.func.__doc__ or "").split())
            print(f"{b.name:14} n={b.n:<11,} {doc}")
        return 0

    loops = common.split_names(args.loops)
    if not loops:
        parser.error("--loops is empty")
    if args.bench:
        names = common.split_names(args.bench)
        unknown = [n for n in names if n not in BENCHES]
        if unknown:
            parser.error(f"unknown benchmark(s): {', '.join(unknown)}; see --list")
    else:
        names = list(BENCHES)
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else DEFAULT_REPEAT)
    divisor = QUICK_DIVISOR if args.quick else 1
    sizes = {n: max(1, BENCHES[n].n // divisor) for n in names}

    report = common.new_report(
        {
            "loops": loops,
            "benches": names,
            "sizes": sizes,
            "repeat": repeat,
            "quick": args.quick,
            "timeout_s": args.timeout,
            "noisy_retries": args.noisy_retries,
            "noisy_threshold": args.noisy_threshold,
            "wait_idle_s": args.wait_idle,
            "spawned": TRUE,
            "producer": " ".join(_producer(0)[:2]) + " N /dev/zero",
        },
        args.wait_idle,
    )
    loops_info, present = common.probe(loops)
    report["loops"] = loops_info

    runs: list[dict[str, Any]] = []
    discarded: list[dict[str, Any]] = []
    total = repeat * len(names) * len(present)
    done = 0
    for rep in range(repeat):
        order = common.rotated(present, rep)
        for name in names:
            bench = BENCHES[name]
            for loop_name in order:
                done += 1
                rec = common.measure_quietly(
                    functools.partial(
                        common.spawn,
                        SCRIPT,
                        ["--worker", loop_name, name, str(sizes[name])],
                        args.timeout,
                    ),
                    args,
                    discarded,
                    f"{name} {loop_name}",
                )
                rec.update(loop=loop_name, bench=name, rep=rep, n=sizes[name])
                for old in discarded:
                    old.setdefault("bench", name)
                    old.setdefault("loop", loop_name)
                    old.setdefault("rep", rep)
                runs.append(rec)
                if rec.get("status") == "ok":
                    detail = (
                        f"{rec['ops'] / bench.scale / rec['wall_s']:>10,.1f} {bench.rate_unit}  "
                        f"cpu {rec['cpu_s']:.3f}s children {rec['children_cpu_s']:.3f}s "
                        f"wall {rec['wall_s']:.3f}s"
                        f"  foreign {100 * (rec.get('foreign_share') or 0):3.0f}%"
                    )
                else:
                    detail = f"{rec.get('status')}: {rec.get('error')}"
                common.log(f"[{done:>3}/{total}] rep {rep + 1} {name:14} {loop_name:10} {detail}")

    results = {
        name: {
            loop_name: summarize(
                BENCHES[name], [r for r in runs if r["bench"] == name and r["loop"] == loop_name]
            )
            for loop_name in present
        }
        for name in names
    }
    pairs = common.ratio_pairs(present)
    report["runs"] = runs
    report["discarded_noisy_runs"] = discarded
    report["results"] = results
    report["ratio_columns"] = [f"{a}/{b}" for a, b in pairs]
    report["throughput_ratios"] = common.ratios_for(results, pairs, "rate")
    report["cpu_ratios"] = common.ratios_for(results, pairs, "cpu_us_per_unit")
    common.finish_report(report, args.json)
    print(render(report))
    if args.json:
        common.log(f"full results written to {args.json}")
    return 1 if any(r.get("status") != "ok" for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
