#!/usr/bin/env python3
"""User-space instructions per scheduling operation, under callgrind.

Usage (from the repository root; needs valgrind):

    python benches/cg_sched.py [--loops asyncio,uvloop,rloop,ferroloop,ferroloop-proactor]
                               [--bench call_soon_chain,call_later_cancel] [--n1 20000] [--n2 120000]

Each benchmark of ``benches/sched_benches.py`` runs under
``valgrind --tool=callgrind`` twice per loop, with N1 and then N2
operations; the difference of the two instruction totals divided by
N2 - N1 is the cost of one operation, the Python callback itself included,
with interpreter start-up, imports and loop creation cancelled out. Counts
do not depend on what else the machine is doing, so two builds can be
compared on a busy machine: point ``--python`` at another environment's
interpreter (the real binary, not a shim that execs it).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sched_benches import BENCHES

CHILD = r"""
import sys
sys.path.insert(0, {benches!r})
from sched_benches import BENCHES
name, kind, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if kind == "asyncio":
    import asyncio
    loop = asyncio.new_event_loop()
elif "-" in kind:  # ferroloop-proactor: ferroloop.new_event_loop(kind="proactor")
    module, _, loop_kind = kind.partition("-")
    loop = __import__(module).new_event_loop(kind=loop_kind)
else:
    loop = __import__(kind).new_event_loop()
bench = BENCHES[name]
got = bench.func(loop, n)
loop.close()
if got != bench.expected_ops(n):
    sys.exit(f"{{name}} on {{kind}}: {{got}} operations, expected {{bench.expected_ops(n)}}")
"""

RUN_TIMEOUT_S = 600.0


def instructions(python: str, script: str, bench: str, loop: str, n: int, out: str) -> int:
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    cmd += [python, script, bench, loop, str(n)]
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
        # A fixed hash seed: with a random one, start-up's dict lookups
        # vary between the two runs whose difference is measured.
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    if done.returncode != 0:
        raise RuntimeError(f"{bench} on {loop} failed: {done.stderr[-800:]}")
    m = re.search(r"Collected : (\d+)", done.stderr)
    if not m:
        raise RuntimeError(f"no callgrind total for {bench} on {loop}: {done.stderr[-500:]}")
    return int(m.group(1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loops", default="uvloop,rloop,ferroloop")
    ap.add_argument("--bench", default=",".join(BENCHES), help="comma-separated benchmark names")
    ap.add_argument("--n1", type=int, default=20_000)
    ap.add_argument("--n2", type=int, default=120_000)
    ap.add_argument("--python", default=sys.executable, help="interpreter to measure with")
    ap.add_argument("--keep", metavar="DIR", help="keep the callgrind files (cg.BENCH.LOOP.N) in DIR")
    args = ap.parse_args(argv)
    loops = args.loops.split(",")
    benches = args.bench.split(",")
    unknown = [b for b in benches if b not in BENCHES]
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(unknown)}")
    print("| benchmark | " + " | ".join(loops) + " |")
    print("|---|" + "---:|" * len(loops))
    with tempfile.TemporaryDirectory(prefix="ferroloop-cgs-") as tmp:
        out_dir = args.keep or tmp
        os.makedirs(out_dir, exist_ok=True)
        script = os.path.join(tmp, "child.py")
        with open(script, "w", encoding="utf-8") as f:
            f.write(CHILD.format(benches=os.path.dirname(os.path.abspath(__file__))))
        for bench in benches:
            cells = []
            for loop in loops:
                per = []
                for n in (args.n1, args.n2):
                    out = os.path.join(out_dir, f"cg.{bench}.{loop}.{n}")
                    per.append(instructions(args.python, script, bench, loop, n, out))
                cells.append(f"{(per[1] - per[0]) / (args.n2 - args.n1):,.0f}")
            print(f"| {bench} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
