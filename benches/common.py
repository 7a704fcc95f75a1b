"""Parent-side helpers shared by the I/O harnesses (net.py and proc.py).

The scheduling harness (run.py) owns the original helpers: loop probing,
Markdown tables, geometric means, machine description.  This module reuses
them and adds what the I/O harnesses need on top: the report header, the
interleaving order, median summaries of arbitrary metrics and ratio columns
for both "higher is better" (throughput) and "lower is better" (CPU cost)
metrics.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import run as sched_run

md_table = sched_run._md_table
geomean = sched_run.geomean
ratio_pairs = sched_run.ratio_pairs
split_names = sched_run._split_names
positive_int = sched_run._positive_int
child_env = sched_run._child_env
last_json_line = sched_run._last_json_line
tail = sched_run._tail
describe_exit = sched_run._describe_exit
import_loop_module = sched_run._import_loop_module
loop_version = sched_run._loop_version
describe_loop = sched_run._describe_loop
emit = sched_run._emit
error_text = sched_run._error_text
loadavg = sched_run._loadavg
spawn = sched_run._spawn_script

DEFAULT_LOOPS = sched_run.DEFAULT_LOOPS


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine_busy() -> dict[str, float]:
    """Machine-wide CPU seconds from /proc/stat: busy (not idle/iowait) and steal.

    Tick-sampled, so only good for coarse checks (is the machine idle?)."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return {}
    # user nice system idle iowait irq softirq steal guest guest_nice
    busy = sum(fields[:3]) + sum(fields[5:8])
    return {"busy_s": busy / _CLK_TCK, "steal_s": fields[7] / _CLK_TCK}


def others_snapshot(exclude: set[int]) -> dict[int, tuple[str, int]]:
    """CPU ticks used so far by every process except those in *exclude*.

    For each pid: (start time, utime + stime + cutime + cstime) from
    ``/proc/PID/stat``.  cutime/cstime include children that were reaped, so
    short-lived processes (a test runner's workers) are counted through their
    parent.  Reading ~100 processes takes a few milliseconds.
    """
    snap: dict[int, tuple[str, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid in exclude:
            continue
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
                fields = fh.read().rpartition(")")[2].split()
            snap[pid] = (fields[19], sum(int(x) for x in fields[11:15]))
        except (OSError, ValueError, IndexError):
            continue
    return snap


def foreign_cpu(
    before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]], wall_s: float
) -> dict[str, float | None]:
    """CPU used by other processes between two :func:`others_snapshot` calls.

    ``foreign_cpu_s`` is in seconds (10 ms resolution per process);
    ``foreign_share`` is that as a fraction of all allowed CPUs over *wall_s*.
    Anything above ~5-10% means the run shared the machine with other work.
    Interrupt and softirq time (the loopback network stack) is not counted.  A
    process that reaps a long-lived child during the window has the child's
    whole CPU time added then, so this can overestimate; it is a noise flag.
    """
    if wall_s <= 0:
        return {"foreign_cpu_s": None, "foreign_share": None}
    ticks = 0
    for pid, (start, total) in after.items():
        old = before.get(pid)
        ticks += total - old[1] if old is not None and old[0] == start else total
    foreign = max(0.0, ticks / _CLK_TCK)
    ncpu = os.cpu_count() or 1
    return {"foreign_cpu_s": foreign, "foreign_share": min(1.0, foreign / (wall_s * ncpu))}


def busy_now(seconds: float = 1.0) -> float | None:
    """Fraction of all CPUs busy over the next *seconds* (a pre-run idle check)."""
    a = machine_busy()
    time.sleep(seconds)
    b = machine_busy()
    if not a or not b:
        return None
    return (b["busy_s"] - a["busy_s"]) / (seconds * (os.cpu_count() or 1))


def wait_idle(max_wait_s: float, threshold: float = 0.05, quiet_s: float = 3.0) -> bool:
    """Wait up to *max_wait_s* until the machine has been idle (below
    *threshold* of all CPUs) for *quiet_s* seconds in a row.  Returns whether
    it became idle."""
    deadline = time.monotonic() + max_wait_s
    quiet = 0.0
    announced = False
    while time.monotonic() < deadline:
        busy = busy_now(1.0)
        if busy is None:
            return True
        if busy < threshold:
            quiet += 1.0
            if quiet >= quiet_s:
                return True
        else:
            quiet = 0.0
            if not announced:
                log(f"waiting for the machine to be idle ({100 * busy:.0f}% busy) ...")
                announced = True
    return False


def add_noise_options(parser: Any) -> None:
    """--noisy-retries, --noisy-threshold and --wait-idle (net.py, proc.py)."""
    parser.add_argument(
        "--noisy-retries",
        type=int,
        default=2,
        help="measure a run again, up to this many times, when other processes used more "
        "than --noisy-threshold of the CPUs during it (default 2)",
    )
    parser.add_argument(
        "--noisy-threshold",
        type=float,
        default=0.10,
        help="share of all CPUs used by other processes above which a run is noisy (default 0.10)",
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="wait up to S seconds for the machine to be idle before starting and before "
        "each retry of a noisy run (default 0: do not wait)",
    )


def measure_quietly(
    measure: Any, args: Any, discarded: list[dict[str, Any]], label: str
) -> dict[str, Any]:
    """Run ``measure()`` and measure again while the result is noisy.

    Noisy results that were replaced go to *discarded*; the last result is
    returned whatever its noise (its ``foreign_share`` tells).
    """
    rec = measure()
    tries = 0
    while (
        rec.get("status") == "ok"
        and (rec.get("foreign_share") or 0.0) > args.noisy_threshold
        and tries < args.noisy_retries
    ):
        tries += 1
        log(
            f"      {label}: other processes used {100 * rec['foreign_share']:.0f}% of the "
            f"CPUs; measuring again ({tries}/{args.noisy_retries})"
        )
        discarded.append(rec)
        if args.wait_idle > 0:
            wait_idle(args.wait_idle)
        rec = measure()
    rec["noisy_retries"] = tries
    return rec


def noise_lines(report: dict[str, Any]) -> list[str]:
    """Report lines about runs re-measured or still noisy, and build changes."""
    cfg = report["config"]
    threshold = cfg.get("noisy_threshold", 0.1)
    key = "workload" if "workloads" in cfg else "bench"
    discarded = report.get("discarded_noisy_runs", [])
    noisy = [
        r
        for r in report["runs"]
        if r.get("status") == "ok" and (r.get("foreign_share") or 0.0) > threshold
    ]
    out = []
    if discarded:
        out.append(
            f"{len(discarded)} run(s) were measured again because other processes used more "
            f"than {100 * threshold:.0f}% of the CPUs during them."
        )
    if noisy:
        out.append(
            f"{len(noisy)} kept run(s) are still noisy (other processes > "
            f"{100 * threshold:.0f}% of the CPUs): "
            + ", ".join(
                f"{r['loop']}/{r[key]} rep {r['rep'] + 1} ({100 * r['foreign_share']:.0f}%)"
                for r in noisy
            )
        )
    if out:
        out.append("")
    return out + build_lines(report)


def loop_build(module: Any) -> str | None:
    """Identify the installed build of a loop module: its native extensions'
    names, sizes and modification times (None for pure-Python modules).

    A re-install of the module during a benchmark run shows up as two
    different builds among the runs of one loop; the report warns then.
    """
    path = getattr(module, "__file__", None)
    if not path:
        return None
    root = Path(path).parent
    if Path(path).name != "__init__.py":  # a single-file module
        return None
    parts = []
    for so in sorted(root.glob("*.so")):
        st = so.stat()
        stamp = _dt.datetime.fromtimestamp(st.st_mtime, _dt.UTC).isoformat(timespec="seconds")
        parts.append(f"{so.name}:{st.st_size}:{stamp}")
    return ";".join(parts) or None


def build_lines(report: dict[str, Any]) -> list[str]:
    """Warnings for loops whose runs saw more than one build of the module."""
    builds: dict[str, set[str]] = {}
    for r in report["runs"]:
        if r.get("loop_build"):
            builds.setdefault(r["loop"], set()).add(r["loop_build"])
    out = []
    for loop, seen in builds.items():
        if len(seen) > 1:
            out.append(
                f"WARNING: {loop} was re-installed during the run; its runs used "
                f"{len(seen)} different builds: {', '.join(sorted(seen))}"
            )
    if out:
        out.append("")
    return out


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def new_report(config: dict[str, Any], wait_idle_s: float = 0.0) -> dict[str, Any]:
    """The common top of a JSON report: date, Python, machine, git revision.

    First waits up to *wait_idle_s* seconds for the machine to be idle, then
    samples how busy it is for one second, and warns on stderr when it is not
    idle.
    """
    if wait_idle_s > 0:
        wait_idle(wait_idle_s)
    busy = busy_now(1.0)
    if busy is not None and busy > 0.1:
        log(
            f"WARNING: {100 * busy:.0f}% of the CPUs were busy before the start; "
            "results will be noisy (see the 'max foreign' column)"
        )
    machine = sched_run.machine_info()
    machine["busy_before_start"] = busy
    return {
        "schema": 1,
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
            "build": " ".join(platform.python_build()),
            "compiler": platform.python_compiler(),
        },
        "machine": machine,
        "git_revision": sched_run._git_revision(),
        "config": config,
        "started_monotonic": time.monotonic(),
    }


def probe(loops: list[str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Probe every loop in a fresh process; return (info, available names)."""
    log(f"probing loops: {', '.join(loops)}")
    info = sched_run.probe_loops(loops)
    for name in loops:
        entry = info[name]
        if entry["available"]:
            log(f"  {name}: {entry['version']} ({entry['loop_class']})")
        else:
            log(f"  {name}: {entry['status']}: {entry.get('error')}")
    return info, [name for name in loops if info[name]["available"]]


def rotated(names: list[str], rep: int) -> list[str]:
    """Loop order for repetition *rep*: rotated so no loop always runs first."""
    if not names:
        return []
    k = rep % len(names)
    return names[k:] + names[:k]


def median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def spread_pct(values: list[float]) -> float:
    """Half the min..max range relative to the median, in percent."""
    if not values:
        return 0.0
    med = statistics.median(values)
    return 50.0 * (max(values) - min(values)) / med if med else 0.0


def ratios_for(
    results: dict[str, dict[str, dict[str, Any] | None]],
    pairs: list[tuple[str, str]],
    key: str,
) -> dict[str, dict[str, float | None]]:
    """``results[row][loop][key]`` of the numerator loop / the denominator loop."""
    out: dict[str, dict[str, float | None]] = {}
    for row_name, per_loop in results.items():
        row: dict[str, float | None] = {}
        for num, den in pairs:
            a, b = per_loop.get(num), per_loop.get(den)
            va = a.get(key) if a else None
            vb = b.get(key) if b else None
            row[f"{num}/{den}"] = va / vb if va is not None and vb else None
        out[row_name] = row
    return out


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def header_lines(report: dict[str, Any], title: str) -> list[str]:
    machine = report["machine"]
    cfg = report["config"]
    out = [f"# {title}", ""]
    out.append(
        f"- date: {report['date']}; Python {report['python']['version']} "
        f"({report['python']['implementation']}); git {report.get('git_revision') or '?'}"
    )
    out.append(
        f"- machine: {machine['platform']}; cpu: {machine.get('cpu_model') or '?'}; "
        f"nproc {machine['nproc']} (affinity {machine['affinity']}); "
        f"loadavg start {machine['loadavg_start']}, end {machine.get('loadavg_end')}"
    )
    out.append(
        f"- repeat: {cfg['repeat']} fresh processes per (loop, workload), medians shown"
        f"{'; QUICK sizes' if cfg.get('quick') else ''}; elapsed {report.get('elapsed_s')} s"
    )
    idle = machine.get("busy_before_start")
    if idle is not None:
        out.append(
            f"- machine busy before start: {100 * idle:.0f}% of all CPUs"
            + (" — WARNING: the machine was not idle" if idle > 0.1 else "")
        )
    for name in cfg["loops"]:
        info = report["loops"][name]
        if info["available"]:
            out.append(f"- {name}: {info['version']} ({info['loop_class']})")
        else:
            out.append(f"- {name}: {str(info['status']).upper()} — {info.get('error', '')}")
    out.append("")
    return out


def ratio_table(
    rows: list[tuple[str, list[str]]],
    present: list[str],
    results: dict[str, dict[str, dict[str, Any] | None]],
    key: str,
    fmt: Any,
    pairs: list[tuple[str, str]],
    first_cols: list[str],
    fail_status: dict[tuple[str, str], str],
) -> str:
    """A table of ``results[row][loop][key]`` per loop, then ratio columns.

    *rows* is a list of (row name, leading cells); *fmt* formats one value.
    The last row is the geometric mean of every ratio column.
    """
    ratios = ratios_for(results, pairs, key)
    header = first_cols + [f"{name}" for name in present]
    header += [f"{num}/{den}" for num, den in pairs]
    align = ["l"] + ["r"] * (len(header) - 1)
    table_rows = []
    for row_name, lead in rows:
        row = list(lead)
        for name in present:
            summary = results[row_name].get(name)
            value = summary.get(key) if summary else None
            row.append(
                fmt(value) if value is not None else fail_status.get((row_name, name), "n/a")
            )
        row += [fmt_ratio(ratios[row_name].get(f"{num}/{den}")) for num, den in pairs]
        table_rows.append(row)
    if pairs and len(rows) > 1:
        gm = ["geomean"] + [""] * (len(first_cols) - 1) + [""] * len(present)
        gm += [
            fmt_ratio(geomean([ratios[r].get(f"{num}/{den}") for r, _ in rows]))
            for num, den in pairs
        ]
        table_rows.append(gm)
    return md_table(header, table_rows, align)


def failure_status(runs: list[dict[str, Any]]) -> str:
    statuses = sorted({str(r.get("status", "?")) for r in runs if r.get("status") != "ok"})
    return "/".join(statuses) if statuses else "no data"


def finish_report(report: dict[str, Any], json_path: str | None) -> None:
    report["machine"]["loadavg_end"] = loadavg()
    report["elapsed_s"] = round(time.monotonic() - report.pop("started_monotonic"), 1)
    if json_path:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
