#!/usr/bin/env bash
# Packaging check (see docs/install.md):
#   1. build the sdist with maturin and check what it carries (everything the
#      build needs, nothing large);
#   2. build a release wheel with `maturin build --release`, check that it
#      ships py.typed, the .pyi stubs and the license texts, and show what
#      `auditwheel show` says of its platform tag;
#   3. install the sdist into a fresh venv (pip builds it from source there,
#      as on a new machine), import it and run a small loop smoke test.
# Both builds share CARGO_TARGET_DIR (default: the repo's target/, which
# scripts/test.sh's `pip install .` has filled): the wheel build then has
# nothing to compile, and the sdist build (another source path, the venv's
# interpreter) recompiles only pyo3 and the two workspace crates (~30 s).
# Usage: bash scripts/check_package.sh   (PYTHON, CARGO_TARGET_DIR, and
# CHECK_PACKAGE_DIR for the scratch directory, are honoured)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
# The interpreter pip's build of `pip install .` saw: building the wheel for
# the same one keeps pyo3's build configuration, so nothing recompiles.
pyexe=$("$PY" -c 'import sys; print(sys.executable)')
if [ -n "${CHECK_PACKAGE_DIR:-}" ]; then
    WORK=$CHECK_PACKAGE_DIR
    rm -rf "$WORK/dist" "$WORK/wheels" "$WORK/venv"
    mkdir -p "$WORK"
else
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/ferroloop-package.XXXXXX")
    # A scratch directory of its own: removed when the check passes.
    trap 'if [ $? -eq 0 ]; then rm -rf "$WORK"; else echo "kept $WORK" >&2; fi' EXIT
fi

fail() {
    echo "check_package: $*" >&2
    exit 1
}

# Runs a build step with its output in $WORK/NAME.log, shown if it fails.
logged() {
    local name=$1
    shift
    if ! "$@" >"$WORK/$name.log" 2>&1; then
        tail -n 40 "$WORK/$name.log" >&2
        fail "$name failed (whole log: $WORK/$name.log)"
    fi
}

echo "== sdist (maturin sdist)"
SECONDS=0
logged sdist "$PY" -m maturin sdist --out "$WORK/dist"
sdist=$(echo "$WORK"/dist/ferroloop-*.tar.gz)
[ -f "$sdist" ] || fail "no sdist in $WORK/dist"
tar tzf "$sdist" | sed 's|^[^/]*/||' | sort >"$WORK/sdist-files.txt"
for need in Cargo.toml Cargo.lock pyproject.toml README.md LICENSE-MIT LICENSE-APACHE \
    crates/ferroloop-core/Cargo.toml crates/ferroloop-core/src/lib.rs \
    crates/ferroloop-py/Cargo.toml crates/ferroloop-py/src/lib.rs \
    python/ferroloop/__init__.py python/ferroloop/__init__.pyi python/ferroloop/py.typed; do
    grep -qx "$need" "$WORK/sdist-files.txt" || fail "the sdist lacks $need"
done
if grep -E '^(target|benches/results|conformance/cpython)/|\.so$' "$WORK/sdist-files.txt"; then
    fail "the sdist carries build output or bulk (above)"
fi
size=$(stat -c %s "$sdist")
[ "$size" -lt 2000000 ] || fail "the sdist is $size bytes"
echo "$(basename "$sdist"): $(wc -l <"$WORK/sdist-files.txt") files, $size bytes (${SECONDS}s)"

echo "== release wheel (maturin build --release)"
SECONDS=0
logged wheel "$PY" -m maturin build --release --interpreter "$pyexe" --out "$WORK/wheels"
wheel=$(echo "$WORK"/wheels/ferroloop-*.whl)
[ -f "$wheel" ] || fail "no wheel in $WORK/wheels"
unzip -l "$wheel" | awk 'NR > 3 && $4 != "" { print $4 }' >"$WORK/wheel-files.txt"
for need in ferroloop/py.typed ferroloop/__init__.pyi ferroloop/_ferroloop.pyi \
    ferroloop/_loop.pyi ferroloop/_policy.pyi ferroloop/_transports.pyi; do
    grep -qx "$need" "$WORK/wheel-files.txt" || fail "the wheel lacks $need"
done
grep -q '\.dist-info/licenses/LICENSE-MIT$' "$WORK/wheel-files.txt" || fail "the wheel lacks LICENSE-MIT"
grep -q '\.dist-info/licenses/LICENSE-APACHE$' "$WORK/wheel-files.txt" || fail "the wheel lacks LICENSE-APACHE"
echo "$(basename "$wheel"): py.typed, the stubs and both licenses are in it (${SECONDS}s)"

echo "== auditwheel show"
# Informational: a wheel built on this machine is tagged for what it links
# against; docs/install.md says what a manylinux build would need.
"$PY" -m auditwheel show "$wheel" || echo "(auditwheel show exited with $?)"

echo "== sdist installed into a fresh venv, smoke test"
SECONDS=0
"$PY" -m venv "$WORK/venv"
logged sdist-install "$WORK/venv/bin/python" -m pip install --disable-pip-version-check "$sdist"
echo "built and installed from the sdist (${SECONDS}s)"
# From $WORK, so the import is the installed package, not the source tree.
(cd "$WORK" && "$WORK/venv/bin/python" - <<'EOF'
import asyncio
import importlib.metadata
import socket

import ferroloop

assert importlib.metadata.version("ferroloop") == ferroloop.__version__
assert ferroloop.__file__.startswith(__import__("sys").prefix), ferroloop.__file__


async def main():
    loop = asyncio.get_running_loop()
    assert isinstance(loop, ferroloop.SelectorEventLoop), loop
    fired = loop.create_future()
    loop.call_later(0.01, fired.set_result, "timer")
    a, b = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=a)
    transport, _ = await loop.create_connection(asyncio.Protocol, sock=b)
    transport.write(b"ping")
    data = await reader.readexactly(4)
    transport.close()
    writer.close()
    await writer.wait_closed()
    return await fired, data


assert ferroloop.run(main()) == ("timer", b"ping")
why = ferroloop.proactor_unavailable_reason()
loop = ferroloop.new_event_loop(kind="auto")
try:
    assert loop.run_until_complete(asyncio.sleep(0, "ok")) == "ok"
finally:
    loop.close()
print(f"ferroloop {ferroloop.__version__}: run() and the {type(loop).__name__} work"
      + (f" (proactor unavailable: {why})" if why else ""))
EOF
)
"$WORK/venv/bin/python" -m ferroloop --info | sed 's/^/  /'
echo "== package check passed"
