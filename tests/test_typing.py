"""ferroloop's type stubs, as a user's type checker sees them: mypy --strict
on tests/typing_sample.py (which the stubs must accept as written), then the
sample itself run, so what it type-checks is also code that works."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "typing_sample.py")


def test_typing_sample_type_checks(tmp_path):
    pytest.importorskip("mypy", reason="mypy is in requirements-dev.txt")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--warn-unused-ignores",
            "--cache-dir",
            str(tmp_path / "mypy-cache"),
            SAMPLE,
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_typing_sample_runs():
    proc = subprocess.run(
        [sys.executable, SAMPLE], check=False, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
