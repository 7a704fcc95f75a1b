#!/usr/bin/env python3
"""Draw the benchmark charts of docs/ from the benchmark JSON files.

Usage (from the repository root):

    python scripts/charts.py [--results DIR] [--net FILE] [--sched FILE] [--out DIR]

Reads the JSON that ``benches/net.py --json`` and ``benches/run.py --json``
write, by default the newest of each kind in ``docs/results/`` (newest by the
``date`` recorded inside the file, not by file time), and writes SVG charts
into ``docs/charts/``:

* ``headline.svg``: server CPU per message relative to asyncio, per loop, as
  the geometric mean over every network workload and for a few key ones (the
  README's chart);
* ``network-cpu.svg``: server CPU per message relative to asyncio for every
  network workload and loop, asyncio's own figure in µs beside each row;
* ``scheduling-cpu.svg``: CPU per operation relative to asyncio for every
  scheduling benchmark and loop (only when a scheduling JSON is found).

Only the medians in ``results`` are read, so a JSON whose raw per-run list
``runs`` was dropped to keep it small (as the committed ones in docs/results/
are) draws the same charts. The output is deterministic (fixed SVG id salt,
no date, text kept as text): running the script twice on the same JSON with
the same matplotlib gives identical files, which tests/test_charts.py checks.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS = ROOT / "docs" / "results"
DEFAULT_OUT = ROOT / "docs" / "charts"

BASELINE = "asyncio"

# Fixed colours and markers per loop, so every chart reads the same way.
LOOP_STYLE = {
    "asyncio": ("#7f7f7f", "s"),
    "uvloop": ("#1f77b4", "o"),
    "rloop": ("#ff7f0e", "^"),
    "ferroloop": ("#2ca02c", "D"),
    "ferroloop-proactor": ("#9467bd", "p"),
}
OTHER_STYLE = ("#17becf", "X")

# The few workloads the headline chart shows beside the geometric mean.
KEY_WORKLOADS = (
    ("http-wrk-c50", "HTTP/1.1\nwrk -c 50"),
    ("tcp-streams-1k-c50", "TCP streams\n1 KiB, 50 clients"),
    ("tcp-protocol-1k-c50", "TCP protocol\n1 KiB, 50 clients"),
    ("tls-protocol-1k-c50", "TLS\n1 KiB, 50 clients"),
)

UNIT_BY_CLIENT = {"churn": "µs/conn", "wrk": "µs/req"}


def _configure() -> None:
    matplotlib.rcParams.update(
        {
            "svg.hashsalt": "ferroloop-charts",  # fixed ids: identical files on re-run
            "svg.fonttype": "none",  # text stays text (searchable, smaller)
            # Layout is measured with DejaVu Sans (shipped with matplotlib, so the
            # same everywhere); a viewer without it falls back to a wide sans font.
            "font.family": "sans-serif",
            "font.sans-serif": ["DejaVu Sans", "Verdana", "Arial"],
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    )


def _save(fig: Any, path: Path) -> None:
    fig.savefig(
        path,
        format="svg",
        bbox_inches="tight",
        metadata={"Date": None, "Creator": "ferroloop scripts/charts.py (matplotlib)"},
    )
    plt.close(fig)


# ---------------------------------------------------------------------------
# Reading the JSON
# ---------------------------------------------------------------------------


def kind_of(data: dict[str, Any]) -> str | None:
    """``"net"``, ``"sched"`` or None for a benchmark JSON document."""
    config = data.get("config") or {}
    if not isinstance(data.get("results"), dict):
        return None
    if "workload_specs" in config or "workloads" in config:
        return "net"
    if "benches" in config:
        return "sched"
    return None


def newest(results_dir: Path, kind: str) -> Path | None:
    """The JSON of *kind* in *results_dir* with the latest recorded date."""
    best: tuple[str, str] | None = None
    best_path = None
    for path in sorted(results_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or kind_of(data) != kind:
            continue
        key = (str(data.get("date", "")), path.name)
        if best is None or key > best:
            best, best_path = key, path
    return best_path


def _loops(data: dict[str, Any]) -> list[str]:
    """The run's loops, known ones in LOOP_STYLE's order (same legend everywhere)."""
    loops = list(data["config"]["loops"])
    order = list(LOOP_STYLE)
    return sorted(
        loops, key=lambda n: (order.index(n) if n in order else len(order), loops.index(n))
    )


def net_cpu(data: dict[str, Any]) -> tuple[list[str], list[str], dict[str, dict[str, float]]]:
    """(workloads, loops, {workload: {loop: server CPU µs per op}})."""
    loops = _loops(data)
    workloads = list(data["config"].get("workloads") or data["results"])
    table: dict[str, dict[str, float]] = {}
    for workload in workloads:
        row = data["results"].get(workload) or {}
        table[workload] = {
            loop: float(rec["server_cpu_us_per_op"])
            for loop, rec in row.items()
            if isinstance(rec, dict) and rec.get("server_cpu_us_per_op")
        }
    return workloads, loops, table


def sched_cpu(data: dict[str, Any]) -> tuple[list[str], list[str], dict[str, dict[str, float]]]:
    """(benches, loops, {bench: {loop: CPU µs per op}})."""
    loops = _loops(data)
    benches = list(data["config"].get("benches") or data["results"])
    table: dict[str, dict[str, float]] = {}
    for bench in benches:
        row = data["results"].get(bench) or {}
        table[bench] = {
            loop: float(rec["cpu_us_per_op"])
            for loop, rec in row.items()
            if isinstance(rec, dict) and rec.get("cpu_us_per_op")
        }
    return benches, loops, table


def relative(table: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Each row divided by its baseline (asyncio) figure; rows without one dropped."""
    out = {}
    for name, row in table.items():
        base = row.get(BASELINE)
        if base:
            out[name] = {loop: value / base for loop, value in row.items()}
    return out


def geomeans(rel: dict[str, dict[str, float]], loops: list[str]) -> dict[str, tuple[float, int]]:
    """Per loop: (geometric mean of its ratios, number of rows it has)."""
    out = {}
    for loop in loops:
        values = [row[loop] for row in rel.values() if loop in row]
        if values:
            out[loop] = (math.exp(sum(map(math.log, values)) / len(values)), len(values))
    return out


def _unit(data: dict[str, Any], workload: str) -> str:
    spec = (data["config"].get("workload_specs") or {}).get(workload) or {}
    return UNIT_BY_CLIENT.get(spec.get("client"), "µs/msg")


def _source_note(data: dict[str, Any], path: Path) -> str:
    rev = str(data.get("git_revision") or "")[:7]
    date = str(data.get("date", ""))[:10]
    repeat = data["config"].get("repeat")
    quick = ", quick sizes" if data["config"].get("quick") else ""
    return f"{path.name}: {date}, git {rev}, medians of {repeat} runs{quick}"


# ---------------------------------------------------------------------------
# Charts
# ---------------------------------------------------------------------------


def _log_axis(ax: Any, lo: float, hi: float, axis: str = "x") -> None:
    """A log axis with plain-number ticks (0.5, 1, 2), not powers of ten."""
    ticks = [
        t
        for t in (0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1, 1.5, 2, 3, 5, 10, 20)
        if lo <= t <= hi
    ]
    fmt = FuncFormatter(lambda v, _pos: f"{v:g}")
    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    (ax.set_xlim if axis == "x" else ax.set_ylim)(lo, hi)
    target.set_major_locator(FixedLocator(ticks))
    target.set_major_formatter(fmt)
    target.set_minor_locator(NullLocator())


def _limits(values: list[float]) -> tuple[float, float]:
    lo = min(min(values), 1.0) / 1.15
    hi = max(max(values), 1.0) * 1.15
    return lo, hi


def dot_plot(
    rows: list[str],
    row_labels: list[str],
    loops: list[str],
    rel: dict[str, dict[str, float]],
    title: str,
    xlabel: str,
    note: str,
    path: Path,
) -> None:
    """One row per workload, one marker per loop, on a log ratio axis."""
    height = 1.6 + 0.27 * len(rows)
    fig, ax = plt.subplots(figsize=(8.0, height), layout="constrained")
    ys = list(range(len(rows)))[::-1]
    values = [v for name in rows for v in rel.get(name, {}).values()]
    lo, hi = _limits(values)
    _log_axis(ax, lo, hi)
    ax.axvline(1.0, color=LOOP_STYLE[BASELINE][0], linewidth=1.0, zorder=1)
    for y in ys[::2]:
        ax.axhspan(y - 0.5, y + 0.5, color="#f2f2f2", zorder=0, linewidth=0)
    for loop in loops:
        if loop == BASELINE:
            continue
        colour, marker = LOOP_STYLE.get(loop, OTHER_STYLE)
        pts = [(rel[name][loop], y) for name, y in zip(rows, ys) if loop in rel.get(name, {})]
        if not pts:
            continue
        missing = len(rows) - len(pts)
        label = loop if not missing else f"{loop} ({missing} rows unsupported)"
        ax.scatter(
            [p[0] for p in pts],
            [p[1] for p in pts],
            color=colour,
            marker=marker,
            s=30,
            label=label,
            zorder=3,
            edgecolors="white",
            linewidths=0.4,
        )
    ax.set_yticks(ys)
    ax.set_yticklabels(row_labels)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.tick_params(axis="y", length=0)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", color="#dddddd", linewidth=0.6, zorder=0)
    _titles(fig, ax, title, note)
    handles, labels = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], color=LOOP_STYLE[BASELINE][0], linewidth=1.0))
    labels.append(f"{BASELINE} = 1")
    fig.legend(handles, labels, loc="outside lower center", ncol=5, frameon=False)
    _save(fig, path)


def _titles(fig: Any, ax: Any, title: str, note: str) -> None:
    """The chart's title above, the data's source in small grey under it."""
    fig.suptitle(title, x=0.01, ha="left", fontsize=10)
    ax.set_title(note, loc="left", fontsize=7, color="#555555")


def network_chart(data: dict[str, Any], src: Path, path: Path) -> None:
    workloads, loops, table = net_cpu(data)
    rel = relative(table)
    rows = [w for w in workloads if w in rel]
    labels = [f"{w}  ({table[w][BASELINE]:.1f} {_unit(data, w)})" for w in rows]
    dot_plot(
        rows,
        labels,
        loops,
        rel,
        "Server CPU per message, relative to asyncio (lower is better)",
        "server CPU (user + sys) per message / asyncio's, log scale; "
        "asyncio's own figure beside each workload",
        _source_note(data, src),
        path,
    )


def scheduling_chart(data: dict[str, Any], src: Path, path: Path) -> None:
    benches, loops, table = sched_cpu(data)
    rel = relative(table)
    gm = geomeans(rel, loops)
    rows = [b for b in benches if b in rel]
    labels = [f"{b}  ({table[b][BASELINE]:.2f} µs/op)" for b in rows]
    rel = dict(rel)
    rel["geomean"] = {loop: value for loop, (value, _n) in gm.items()}
    rows.append("geomean")
    labels.append("geomean")
    note = _source_note(data, src)
    if data["config"].get("quick"):
        note += " (indicative: short runs on a shared machine)"
    dot_plot(
        rows,
        labels,
        loops,
        rel,
        "Scheduling: CPU per operation, relative to asyncio (lower is better)",
        "process CPU per operation / asyncio's, log scale; asyncio's own figure beside each bench",
        note,
        path,
    )


def headline_chart(data: dict[str, Any], src: Path, path: Path) -> None:
    _workloads, loops, table = net_cpu(data)
    rel = relative(table)
    gm = geomeans(rel, loops)
    shown = [loop for loop in loops if loop != BASELINE and loop in gm]
    groups = [(f"geomean,\n{len(rel)} workloads", {k: v for k, (v, _n) in gm.items()})]
    groups += [(label, rel[w]) for w, label in KEY_WORKLOADS if w in rel]
    fig, ax = plt.subplots(figsize=(7.6, 3.4), layout="constrained")
    width = 0.8 / max(len(shown), 1)
    values = []
    for i, loop in enumerate(shown):
        colour, _marker = LOOP_STYLE.get(loop, OTHER_STYLE)
        xs, hs = [], []
        for g, (_label, row) in enumerate(groups):
            if loop in row:
                xs.append(g - 0.4 + width * (i + 0.5))
                hs.append(row[loop])
        values += hs
        label = loop
        if loop in gm and gm[loop][1] < len(rel):
            label = f"{loop} (geomean of the {gm[loop][1]} it runs)"
        ax.bar(xs, hs, width=width * 0.92, color=colour, label=label, zorder=2)
        for x, h in zip(xs, hs):
            ax.text(x, h, f"{h:.2f}", ha="center", va="bottom", fontsize=6.5, zorder=3)
    ax.axhline(1.0, color=LOOP_STYLE[BASELINE][0], linewidth=1.0, zorder=1)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([g[0] for g in groups])
    ax.set_ylim(0, max(values + [1.0]) * 1.12)
    ax.set_ylabel("server CPU per message\n/ asyncio's")
    ax.grid(axis="y", color="#dddddd", linewidth=0.6, zorder=0)
    _titles(
        fig,
        ax,
        "Server CPU per message on loopback, relative to asyncio (lower is better)",
        _source_note(data, src),
    )
    handles, labels = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], color=LOOP_STYLE[BASELINE][0], linewidth=1.0))
    labels.append(f"{BASELINE} = 1")
    fig.legend(handles, labels, loc="outside lower center", ncol=3, frameon=False)
    _save(fig, path)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--results",
        type=Path,
        default=DEFAULT_RESULTS,
        help="folder searched for the newest JSON of each kind (default: docs/results)",
    )
    parser.add_argument("--net", type=Path, help="network JSON (benches/net.py --json)")
    parser.add_argument("--sched", type=Path, help="scheduling JSON (benches/run.py --json)")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output folder (default: docs/charts)"
    )
    args = parser.parse_args(argv)

    net = args.net or newest(args.results, "net")
    sched = args.sched or newest(args.results, "sched")
    if net is None:
        parser.error(f"no network benchmark JSON in {args.results} (give --net)")
    _configure()
    args.out.mkdir(parents=True, exist_ok=True)

    net_data = json.loads(net.read_text())
    if kind_of(net_data) != "net":
        parser.error(f"{net} is not a benches/net.py JSON")
    written = []
    headline_chart(net_data, net, args.out / "headline.svg")
    network_chart(net_data, net, args.out / "network-cpu.svg")
    written += ["headline.svg", "network-cpu.svg"]
    if sched is not None:
        sched_data = json.loads(sched.read_text())
        if kind_of(sched_data) != "sched":
            parser.error(f"{sched} is not a benches/run.py JSON")
        scheduling_chart(sched_data, sched, args.out / "scheduling-cpu.svg")
        written.append("scheduling-cpu.svg")
    print(f"from {net.name}" + (f" and {sched.name}" if sched else ""))
    for name in written:
        print(args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
