"""What ferroloop's always-on statistics (``loop.stats()``) cost on the
call_soon benchmarks: two builds of ferroloop side by side, one per Python
interpreter (e.g. two virtual environments), in the same run.

    python benches/stats_cost.py --python base=/path/to/venv-base/bin/python \\
        --python stats=/path/to/venv/bin/python \\
        --python off=/path/to/venv/bin/python@FERROLOOP_STATS_CLOCK=off \\
        [--kind selector,proactor] [--rounds 15] [--callgrind]

Each round runs every (build, kind, bench) in a fresh process pinned to one
CPU, interleaved, and records CPU time per callback; the report gives the
minimum and the median over the rounds (the minimum is the least disturbed
by the shared machine) and each build's ratio to the first. ``--callgrind``
adds user-space instructions per callback (valgrind, the difference between
runs of n and 2n callbacks, so start-up cancels out), which do not depend on
the machine's load.

A baseline build without the statistics is the commit before them:
``git worktree add /tmp/base <commit>; python -m venv --system-site-packages
/tmp/venv-base; (cd /tmp/base && /tmp/venv-base/bin/pip install --no-deps .)``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

BENCHES = {"call_soon_chain": 200_000, "call_soon_100_chains": 400_000}

CHILD = r"""
import json, sys, time
sys.path.insert(0, {here!r})
import ferroloop, sched_benches
kind, bench, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
loop = ferroloop.new_event_loop(kind=kind)
fn = getattr(sched_benches, bench)
fn(loop, 2000)  # warm up
t0 = time.process_time()
done = fn(loop, n)
dt = time.process_time() - t0
loop.close()
print(json.dumps({{"ns": dt / done * 1e9, "done": done}}))
"""


def split_build(spec: str) -> tuple[str, dict[str, str]]:
    """``PATH[@VAR=VALUE,...]``: the interpreter and environment additions."""
    python, _, extra = spec.partition("@")
    env = dict(kv.split("=", 1) for kv in extra.split(",") if kv)
    return python, env


def run_child(spec: str, kind: str, bench: str, n: int, cpu: int | None) -> float:
    python, extra = split_build(spec)
    code = CHILD.format(here=str(HERE))
    cmd = [python, "-c", code, kind, bench, str(n)]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    out = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, **extra},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["ns"]


def callgrind_ir(spec: str, kind: str, bench: str, n: int) -> int:
    python, extra = split_build(spec)
    code = CHILD.format(here=str(HERE))
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "cg.out"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                python,
                "-c",
                code,
                kind,
                bench,
                str(n),
            ],
            capture_output=True,
            text=True,
            # Fixed string hashing: dict lookups then cost the same every run.
            env={**os.environ, **extra, "PYTHONHASHSEED": "0"},
            timeout=900,
            check=True,
        )
        for line in out.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError("no callgrind totals")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--python",
        action="append",
        required=True,
        metavar="NAME=PATH[@VAR=VALUE,...]",
        help="a build to measure: a name, the interpreter that imports it, and optionally"
        " environment variables to set (e.g. @FERROLOOP_STATS_CLOCK=off)",
    )
    ap.add_argument("--kind", default="selector,proactor")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--cpu", type=int, default=1, help="CPU to pin to (-1: no pinning)")
    ap.add_argument("--callgrind", action="store_true")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()

    builds = dict(p.split("=", 1) for p in args.python)
    kinds = args.kind.split(",")
    cpu = None if args.cpu < 0 else args.cpu
    samples: dict[tuple[str, str, str], list[float]] = {}
    for rnd in range(args.rounds):
        names = list(builds)
        if rnd % 2:
            names.reverse()
        for kind in kinds:
            for bench, n in BENCHES.items():
                for name in names:
                    ns = run_child(builds[name], kind, bench, n, cpu)
                    samples.setdefault((name, kind, bench), []).append(ns)
        print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr)

    ir: dict[tuple[str, str, str], float] = {}
    if args.callgrind:
        for kind in kinds:
            for bench in BENCHES:
                for name, py in builds.items():
                    n = 20_000
                    a = callgrind_ir(py, kind, bench, n)
                    b = callgrind_ir(py, kind, bench, 2 * n)
                    ir[(name, kind, bench)] = (b - a) / n

    first = next(iter(builds))
    print(f"CPU time per callback, {args.rounds} rounds; ratios to {first!r}\n")
    head = "| kind | bench | build | min ns | median ns | min ratio | median ratio |"
    if ir:
        head += " instr/callback | instr ratio |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    rows = []
    for kind in kinds:
        for bench in BENCHES:
            base = samples[(first, kind, bench)]
            for name in builds:
                s = samples[(name, kind, bench)]
                row = {
                    "kind": kind,
                    "bench": bench,
                    "build": name,
                    "min_ns": min(s),
                    "median_ns": statistics.median(s),
                    "min_ratio": min(s) / min(base),
                    "median_ratio": statistics.median(s) / statistics.median(base),
                    "samples_ns": s,
                }
                line = (
                    f"| {kind} | {bench} | {name} | {row['min_ns']:.1f} | "
                    f"{row['median_ns']:.1f} | {row['min_ratio']:.3f} | "
                    f"{row['median_ratio']:.3f} |"
                )
                if ir:
                    row["instr_per_callback"] = ir[(name, kind, bench)]
                    row["instr_ratio"] = ir[(name, kind, bench)] / ir[(first, kind, bench)]
                    line += f" {row['instr_per_callback']:.0f} | {row['instr_ratio']:.3f} |"
                print(line)
                rows.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps({"builds": builds, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
