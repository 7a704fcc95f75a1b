"""Wrong calls across the public API (the table in ``bad_calls.py``, 160
of them): each ferroloop kind raises the exception type asyncio's loop on
the same selector family raises, or accepts what it accepts, and nothing
crashes the interpreter. Each kind's calls run in a subprocess, so a crash
or a hang is caught and names the call that caused it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import FD_KINDS, reference_kind

HERE = os.path.dirname(os.path.abspath(__file__))

KINDS = [k for k in FD_KINDS if k.startswith("ferroloop")]

# Where ferroloop differs on purpose (docs/differences.md): its select
# backend refuses at once a descriptor that select() cannot watch, and a
# number too large for a descriptor is refused at registration on every
# backend; asyncio's SelectSelector takes both and its next select() fails.
KNOWN = {
    ("ferroloop-select", "add_reader huge fd"): ("ok", "OverflowError"),
    ("ferroloop-select", "add_writer huge fd"): ("ok", "OverflowError"),
    ("ferroloop-select", "add_reader not-open fd"): ("ok", "ValueError"),
    ("ferroloop-SelectSelector", "add_reader huge fd"): ("ok", "OverflowError"),
    ("ferroloop-SelectSelector", "add_writer huge fd"): ("ok", "OverflowError"),
}

_cache: dict[str, dict[str, str]] = {}


def outcomes(kind):
    if kind not in _cache:
        proc = subprocess.run(
            [sys.executable, os.path.join(HERE, "bad_calls.py"), kind],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        got = {d["name"]: d["outcome"] for d in lines if "name" in d}
        done = [d["done"] for d in lines if "done" in d]
        assert proc.returncode == 0 and done, (
            f"{kind}: the run ended (rc {proc.returncode}) after {len(got)} calls; "
            f"the next one crashed or hung:\n{proc.stderr[-3000:]}"
        )
        assert done[0] == len(got)
        _cache[kind] = got
    return _cache[kind]


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_calls_raise_what_asyncio_raises(kind):
    ref = outcomes(reference_kind(kind))
    mine = outcomes(kind)
    assert len(ref) >= 100
    assert mine.keys() == ref.keys()
    differ = {}
    for name, expected in ref.items():
        pair = (expected, mine[name])
        if (kind, name) in KNOWN:
            assert pair == KNOWN[(kind, name)], (name, pair)
        elif pair[0] != pair[1]:
            differ[name] = pair
    assert not differ, f"asyncio / {kind}: {differ}"
