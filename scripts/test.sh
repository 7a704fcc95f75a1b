#!/usr/bin/env bash
# Build ferroloop, install it, and run the whole test suite:
#   0. the type stubs checked against the installed package (mypy.stubtest),
#   1. Rust tests of the core (every backend: epoll, poll, select),
#   2. the pytest parity suite (asyncio and ferroloop side by side),
#   3. CPython's own test_asyncio modules against ferroloop (conformance/), on the
#      selector loop and on the io_uring proactor loop.
# Usage: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

echo "== build and install ferroloop"
"$PY" -m pip install -q -r requirements-dev.txt
"$PY" -m pip install -q --force-reinstall --no-deps .

echo "== type stubs (mypy.stubtest: the .pyi files against the installed ferroloop)"
"$PY" -m mypy.stubtest ferroloop

echo "== Rust tests (ferroloop-core: epoll, poll and select backends)"
cargo test -p ferroloop-core --release

echo "== pytest parity suite"
(cd tests && "$PY" -m pytest -q -p no:cacheprovider .)

echo "== CPython test_asyncio conformance"
"$PY" conformance/run.py
"$PY" conformance/run.py --kind proactor
