#!/usr/bin/env python3
"""Summarise a valgrind memcheck log of a pytest run (scripts/memcheck.sh).

    python scripts/memcheck_report.py LOG

Counts invalid reads and writes, uses of uninitialised values and definite
leaks, and says which of them are ferroloop's. Exit status 1 when any is.

What counts as ferroloop's:

* Only the process valgrind started (the first in the log). Children that
  forked from it without exec (fork tests) write to the same log and leave
  through ``os._exit``, so whatever only their lost threads referenced shows
  up as "definitely lost"; they are counted apart.
* A record whose stack has a ``_ferroloop`` frame inside (below) the first
  frame of the Python interpreter's eval loop: ferroloop's code did the
  access or the allocation itself (directly or through the C API). When
  Python code ran between the loop and the record (a callback the loop
  called), the record is that Python code's, or CPython's.
* Not tracemalloc's own bookkeeping (its per-trace tracebacks, kept in its
  tables), which tests that start tracemalloc leave behind whoever made the
  traced object.
* Not pyo3's type objects, made once per native class at import.
"""

from __future__ import annotations

import re
import sys
from collections import Counter

KINDS = ("invalid read", "invalid write", "uninitialised", "definitely lost")
FRAME = re.compile(r"(?:at|by) 0x[0-9A-Fa-f]+: (\S+)(?: \((.*?)\))?")
EVAL = "_PyEval_EvalFrameDefault"


def records(text: str) -> dict[str, list[str]]:
    """The log's records, per process id, in order of first appearance."""
    lines: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = re.match(r"==(\d+)== ?(.*)", line)
        if m:
            lines.setdefault(m.group(1), []).append(m.group(2))
    out: dict[str, list[str]] = {}
    for pid, body in lines.items():
        out[pid] = [b for b in "\n".join(body).split("\n\n") if b.strip()]
    return out


def kind_of(block: str) -> str | None:
    low = block.lower()
    for k in KINDS:
        if k in low:
            return k
    return None


def is_ours(block: str) -> bool:
    frames = [(fn, where or "") for fn, where in FRAME.findall(block)]
    if any("create_type_object" in fn for fn, _ in frames):
        return False
    if any(fn in ("traceback_new", "tracemalloc_add_trace") for fn, _ in frames[:4]):
        return False
    for fn, where in frames:
        if fn.startswith(EVAL):
            return False
        if "ferroloop" in fn or "ferroloop" in where:
            return True
    return False


def main(path: str) -> int:
    with open(path, errors="replace") as f:
        per_pid = records(f.read())
    if not per_pid:
        print("no valgrind records in", path)
        return 1
    main_pid, *children = per_pid
    total, ours = Counter(), Counter()
    for block in per_pid[main_pid]:
        k = kind_of(block)
        if k:
            total[k] += 1
            if is_ours(block):
                ours[k] += 1
    for k in KINDS:
        print(f"{k:16} {total[k]:6} records, {ours[k]:4} ferroloop's")
    if children:
        kids = Counter(k for pid in children for b in per_pid[pid] if (k := kind_of(b)))
        print(f"(forked children: {len(children)}, {dict(kids)}; not counted)")
    return 1 if any(ours.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
