"""scripts/charts.py: the benchmark charts of docs/ come from the committed JSON.

Runs the script on docs/results/ into a temporary folder and checks that each
chart is there, names every workload (or bench) and every loop of its JSON,
and, with the matplotlib version requirements-dev.txt pins, is byte for byte
the chart committed in docs/charts/ (the script's output is deterministic).
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

matplotlib = pytest.importorskip("matplotlib", reason="matplotlib is not installed")

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "charts.py"
RESULTS = ROOT / "docs" / "results"
CHARTS = ROOT / "docs" / "charts"
CHART_NAMES = ("headline.svg", "network-cpu.svg", "scheduling-cpu.svg")


def _load_script():
    spec = importlib.util.spec_from_file_location("ferroloop_charts", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


charts = _load_script()


def _svg_text(path: Path) -> str:
    """All the text an SVG shows, one string (the script keeps text as text)."""
    tree = ET.parse(path)
    return "\n".join("".join(el.itertext()) for el in tree.iter("{http://www.w3.org/2000/svg}text"))


def _pinned_matplotlib() -> str | None:
    for line in (ROOT / "requirements-dev.txt").read_text().splitlines():
        m = re.match(r"\s*matplotlib==(\S+)", line)
        if m:
            return m.group(1)
    return None


@pytest.fixture(scope="module")
def drawn(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("charts")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return out


def _json(kind: str) -> dict:
    path = charts.newest(RESULTS, kind)
    assert path is not None, f"no {kind} JSON in docs/results"
    return json.loads(path.read_text())


def test_every_chart_is_written(drawn):
    for name in CHART_NAMES:
        path = drawn / name
        assert path.stat().st_size > 1000, name
        ET.parse(path)  # well-formed SVG


def test_network_chart_names_every_workload_and_loop(drawn):
    data = _json("net")
    text = _svg_text(drawn / "network-cpu.svg")
    for workload in data["config"]["workloads"]:
        assert workload in text, workload
    for loop in data["config"]["loops"]:
        assert loop in text, loop
    assert "µs/msg" in text and "log scale" in text


def test_headline_chart_names_every_loop(drawn):
    data = _json("net")
    text = _svg_text(drawn / "headline.svg")
    for loop in data["config"]["loops"]:
        assert loop in text, loop
    assert "geomean" in text
    assert f"{len(data['config']['workloads'])} workloads" in text


def test_scheduling_chart_names_every_bench_and_loop(drawn):
    data = _json("sched")
    text = _svg_text(drawn / "scheduling-cpu.svg")
    for bench in data["config"]["benches"]:
        assert bench in text, bench
    for loop in data["config"]["loops"]:
        assert loop in text, loop


def test_output_is_deterministic(drawn, tmp_path):
    subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)],
        capture_output=True,
        timeout=120,
        check=True,
    )
    for name in CHART_NAMES:
        assert (tmp_path / name).read_bytes() == (drawn / name).read_bytes(), name


def test_committed_charts_are_the_scripts_output(drawn):
    pinned = _pinned_matplotlib()
    if matplotlib.__version__ != pinned:
        pytest.skip(
            f"matplotlib {matplotlib.__version__} is installed, the charts are drawn "
            f"with the pinned {pinned}: layout may differ by a pixel"
        )
    for name in CHART_NAMES:
        committed = CHARTS / name
        assert committed.exists(), f"docs/charts/{name} is missing: run scripts/charts.py"
        assert committed.read_bytes() == (drawn / name).read_bytes(), (
            f"docs/charts/{name} is stale: run python scripts/charts.py and commit"
        )


def test_newest_goes_by_recorded_date(tmp_path):
    base = {"config": {"loops": ["asyncio"], "workloads": ["w"]}, "results": {"w": {}}}
    (tmp_path / "a-later.json").write_text(json.dumps({**base, "date": "2026-12-05T00:00:00"}))
    (tmp_path / "z-earlier.json").write_text(json.dumps({**base, "date": "2026-12-01T00:00:00"}))
    (tmp_path / "sched.json").write_text(
        json.dumps({"date": "2027-01-01", "config": {"benches": ["b"]}, "results": {}})
    )
    (tmp_path / "broken.json").write_text("{")
    assert charts.newest(tmp_path, "net").name == "a-later.json"
    assert charts.newest(tmp_path, "sched").name == "sched.json"


def test_relative_and_geomean():
    rel = charts.relative({"a": {"asyncio": 2.0, "x": 1.0}, "b": {"asyncio": 4.0, "x": 16.0}})
    assert rel == {"a": {"asyncio": 1.0, "x": 0.5}, "b": {"asyncio": 1.0, "x": 4.0}}
    gm = charts.geomeans(rel, ["asyncio", "x", "absent"])
    assert gm["x"] == (pytest.approx(2**0.5), 2)
    assert "absent" not in gm
