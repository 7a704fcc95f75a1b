#!/usr/bin/env bash
# Run part of the pytest suite under valgrind memcheck, against the installed
# ferroloop, and report the errors and leaks that involve ferroloop's own code.
#
#   bash scripts/memcheck.sh [pytest args...]     (default: a transport and
#                                                  scheduling subset)
#
# CPython is run with PYTHONMALLOC=malloc so valgrind sees every allocation.
# scripts/memcheck_report.py then counts invalid reads and writes, uses of
# uninitialised values and definite leaks, and says which are ferroloop's:
# in the process valgrind started (forked children are counted apart), with
# ferroloop's code below any Python frame on the stack, tracemalloc's and
# pyo3's once-only tables aside (its docstring has the rules; it can re-read
# a kept log). The full valgrind log is kept in $MEMCHECK_LOG
# (default: /tmp/ferroloop-memcheck.log). Needs valgrind (Debian: valgrind).
# The proactor loop is left out by default: valgrind does not follow what
# the kernel writes through an io_uring (its loops stalled under it here).
set -euo pipefail
SCRIPTS=$(cd "$(dirname "$0")" && pwd)
cd "$SCRIPTS/../tests"
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
"$PY" "$SCRIPTS/memcheck_report.py" "$LOG"
