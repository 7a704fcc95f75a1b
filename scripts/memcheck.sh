#!/usr/bin/env bash
# Run part of the pytest suite under valgrind memcheck, against the installed
# ferroloop, and report the errors and leaks that involve ferroloop's own code.
#
#   bash scripts/memcheck.sh [pytest args...]     (default: a transport and
#                                                  scheduling subset)
#
# CPython is run with PYTHONMALLOC=malloc so valgrind sees every allocation;
# its own "possibly lost" blocks (interned objects, arenas) are not ferroloop's
# and are left out: the summary counts invalid reads/writes, uses of
# uninitialised values and definite leaks whose stack has a frame in
# _ferroloop. The full valgrind log is kept in $MEMCHECK_LOG
# (default: /tmp/ferroloop-memcheck.log). Needs valgrind (Debian: valgrind).
# The proactor loop is left out by default: valgrind does not follow what
# the kernel writes through an io_uring (its loops stalled under it here).
set -euo pipefail
cd "$(dirname "$0")/../tests"
PY=${PYTHON:-python3}
LOG=${MEMCHECK_LOG:-/tmp/ferroloop-memcheck.log}
if [ "$#" -eq 0 ]; then
    set -- test_handles.py test_ordering.py test_stats.py -k "not proactor"
fi
PYTHONMALLOC=malloc valgrind --tool=memcheck --leak-check=full \
    --show-leak-kinds=definite --errors-for-leak-kinds=definite \
    --num-callers=40 --log-file="$LOG" \
    "$PY" -m pytest -q -p no:cacheprovider -p no:randomly "$@" || status=$?
echo "pytest under memcheck: exit ${status:-0}; log: $LOG"
"$PY" - "$LOG" <<'EOF'
import re
import sys

text = open(sys.argv[1], errors="replace").read()
# Each error or leak record is a block of "==pid== " lines ending at a blank one.
blocks = re.split(r"\n==\d+== \n", text)
kinds = {"invalid read": 0, "invalid write": 0, "uninitialised": 0, "definitely lost": 0}
ours = {k: 0 for k in kinds}
# pyo3 builds each native class's type object once, at import, and keeps
# its member table for the life of the process: not a leak that grows.
once = 0
for block in blocks:
    low = block.lower()
    for k in kinds:
        if k in low:
            kinds[k] += 1
            if "_ferroloop" in block:
                if k == "definitely lost" and "create_type_object" in block:
                    once += 1
                else:
                    ours[k] += 1
for k in kinds:
    print(f"{k:16} {kinds[k]:5} records, {ours[k]:5} with a _ferroloop frame")
print(f"(and {once} blocks kept for good by pyo3's type objects, one per native class)")
sys.exit(1 if any(ours.values()) else 0)
EOF
