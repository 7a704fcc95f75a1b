"""scripts/memcheck_report.py, the judge of scripts/memcheck.sh, on records
shaped as valgrind writes them: ferroloop's own errors and leaks count
(so the check can fail); what Python code called by the loop did, what
tracemalloc and pyo3 keep for good, and forked children do not."""

from __future__ import annotations

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPORT = os.path.join(HERE, os.pardir, "scripts", "memcheck_report.py")

FERRO = "(in /x/site-packages/ferroloop/_ferroloop.cpython-311-x86_64-linux-gnu.so)"


def record(pid, head, *frames):
    lines = [head] + [
        f"   {'at' if i == 0 else 'by'} 0x4{i:07X}: {f}" for i, f in enumerate(frames)
    ]
    return "\n".join(f"=={pid}== {line}" for line in lines) + f"\n=={pid}== \n"


MAIN, CHILD = 100, 200
# ferroloop allocated a bytes object and lost it: ferroloop's.
OURS_LEAK = record(
    MAIN,
    "1,024 bytes in 1 blocks are definitely lost in loss record 1 of 9",
    "malloc (in /usr/libexec/valgrind/vgpreload_memcheck-amd64-linux.so)",
    "PyBytes_FromStringAndSize (bytesobject.c:120)",
    f"_ferroloop::link::UninitBytes::new (link.rs:497) {FERRO}",
    "_PyEval_EvalFrameDefault (ceval.c:4769)",
)
# ferroloop read memory it should not have: ferroloop's.
OURS_READ = record(
    MAIN,
    "Invalid read of size 8",
    f"_ferroloop::selector::stream::StreamCore::read_ready (stream.rs:155) {FERRO}",
    "_PyEval_EvalFrameDefault (ceval.c:4769)",
)
# A Python callback the loop ran allocated and lost it: not ferroloop's.
PYTHON_LEAK = record(
    MAIN,
    "48 bytes in 1 blocks are definitely lost in loss record 2 of 9",
    "malloc (in /usr/libexec/valgrind/vgpreload_memcheck-amd64-linux.so)",
    "PyList_New (listobject.c:160)",
    "_PyEval_EvalFrameDefault (ceval.c:4769)",
    f"_ferroloop::handle::Handle::run (handle.rs:228) {FERRO}",
)
# tracemalloc's record of an object ferroloop made: tracemalloc's table.
TRACEMALLOC = record(
    MAIN,
    "24 bytes in 1 blocks are definitely lost in loss record 3 of 9",
    "malloc (in /usr/libexec/valgrind/vgpreload_memcheck-amd64-linux.so)",
    "raw_malloc (_tracemalloc.c:260)",
    "traceback_new (_tracemalloc.c:452)",
    "tracemalloc_add_trace (_tracemalloc.c:534)",
    "PyUnicode_New (unicodeobject.c:1425)",
    f"_ferroloop::loop_core::LoopCore::call_soon (mod.rs:300) {FERRO}",
)
# pyo3's member table, made once per class at import.
PYO3_TYPE = record(
    MAIN,
    "80 bytes in 1 blocks are definitely lost in loss record 4 of 9",
    "malloc (in /usr/libexec/valgrind/vgpreload_memcheck-amd64-linux.so)",
    f"pyo3::pyclass::create_type_object::inner (create_type_object.rs:100) {FERRO}",
)
# A forked child's exit: not counted, whatever its stack.
CHILD_LEAK = OURS_LEAK.replace(f"=={MAIN}==", f"=={CHILD}==")


def run(*blocks):
    log = "".join(blocks)
    path = os.path.join(HERE, f".memcheck-report-{os.getpid()}.log")
    try:
        with open(path, "w") as f:
            f.write(f"=={MAIN}== Memcheck, a memory error detector\n=={MAIN}== \n" + log)
        return subprocess.run(
            [sys.executable, REPORT, path], capture_output=True, text=True, check=False
        )
    finally:
        os.unlink(path)


def test_ferroloops_own_leak_and_bad_read_fail_the_check():
    proc = run(OURS_LEAK, OURS_READ, PYTHON_LEAK)
    assert proc.returncode == 1, proc.stdout
    assert "definitely lost       2 records,    1 ferroloop's" in proc.stdout
    assert "invalid read          1 records,    1 ferroloop's" in proc.stdout


def test_what_the_loop_only_called_or_others_keep_is_not_ferroloops():
    proc = run(PYTHON_LEAK, TRACEMALLOC, PYO3_TYPE, CHILD_LEAK)
    assert proc.returncode == 0, proc.stdout
    assert "definitely lost       3 records,    0 ferroloop's" in proc.stdout
    assert "forked children: 1" in proc.stdout
