"""benches/net.py with the Rust load generator (``--loadgen rust``).

Builds benches/loadgen with cargo (skipped when cargo is not on PATH), runs a
few quick workloads on asyncio and ferroloop and checks that every run is
ok, was driven by the Rust load generator and completed exactly the expected
number of messages; and that TLS falls back to the Python client.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NET = ROOT / "benches" / "net.py"
WORKLOADS = [
    "tcp-protocol-1k-c1",
    "tcp-protocol-1k-c50",
    "unix-protocol-1k-c50",
    "udp-1k-c50",
    "tcp-churn-c50",
]

pytestmark = pytest.mark.skipif(shutil.which("cargo") is None, reason="cargo is not on PATH")


@pytest.fixture(scope="module")
def loadgen() -> Path:
    proc = subprocess.run(
        ["cargo", "build", "--release", "-p", "ferroloop-loadgen"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"cargo build failed: {proc.stderr[-2000:]}")
    return ROOT / "target" / "release" / "ferroloop-loadgen"


@pytest.mark.timeout(120)
def test_net_quick_with_rust_loadgen(loadgen: Path, tmp_path: Path) -> None:
    out = tmp_path / "net.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(NET),
            "--quick",
            "--loadgen",
            "rust",
            "--pin",
            "same",
            "--noisy-retries",
            "0",
            "--loops",
            "asyncio,ferroloop",
            "--workload",
            ",".join([*WORKLOADS, "tls-protocol-1k-c1"]),
            "--repeat",
            "1",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text(encoding="utf-8"))
    cfg = report["config"]
    assert cfg["loadgen"] == "rust"
    assert Path(cfg["loadgen_path"]) == loadgen
    skipped = set(report["skipped_workloads"])  # no TLS certificate on this machine
    assert cfg["loadgen_fallback"] == {"tls-protocol-1k-c1": "python"}
    assert "- load generator: rust" in proc.stdout
    runs = [r for r in report["runs"] if r["workload"] not in skipped]
    assert {(r["workload"], r["loop"]) for r in runs} >= {
        (w, loop) for w in WORKLOADS for loop in ("asyncio", "ferroloop")
    }
    for r in runs:
        assert r["status"] == "ok", r
        want = "python" if r["workload"].startswith("tls-") else "rust"
        assert r["loadgen"] == want, r
        assert r["ops"] == r["expected_ops"] == r["n"], r
        assert r["wall_s"] > 0 and r["client_cpu_s"] > 0, r
        assert r["server_cpu_s"] > 0, r


@pytest.mark.timeout(60)
def test_loadgen_errors_are_reported(loadgen: Path) -> None:
    """Nothing listening: the load generator prints an error line and exits 1."""
    proc = subprocess.run(
        [str(loadgen), "--kind", "echo", "--unix", "/nonexistent/echo.sock"]
        + ["--size", "1024", "--clients", "1", "--warmup", "1", "--n", "1", "--deadline-s", "5"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 1
    line = json.loads(proc.stdout.strip().splitlines()[-1])
    assert line["phase"] == "error" and "No such file" in line["error"], line
