#!/usr/bin/env bash
# Installs everything gradrs's tests need into a fresh virtual environment, builds
# the release wheel, installs it, and runs every check: the Rust tests and lints,
# ruff, mypy --strict, the stub check, the sdist built and installed into a second
# fresh environment, and pytest against the installed package.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${GRADRS_TEST_VENV:-"$ROOT/.venv-test"}
# Python runs from an empty folder of its own, so `import gradrs` finds only the installed package
# and no stray file (an `attr.py` left in /tmp hid the real attrs module once) shadows a module.
RUN_DIR=$(mktemp -d)
trap 'rm -rf "$RUN_DIR"' EXIT

step() { printf '\n==> %s\n' "$*"; }

step "fresh virtual environment in $VENV"
rm -rf "$VENV"
python3 -m venv "$VENV"
PY="$VENV/bin/python"
# pip 25.1 is the first to install PEP 735 dependency groups (`--group`).
"$PY" -m pip install -q --upgrade "pip>=25.1"
# maturin and the test and lint tools, from pyproject.toml's [dependency-groups].
"$PY" -m pip install -q --group dev

# Installs Debian's package $2 when the command $1 is missing (apt-get needs root). The tests that
# need the command say what they do without it: skip, or under CI=true fail.
system_tool() {
    local command=$1 package=$2
    if command -v "$command" >/dev/null; then
        return
    fi
    if [ "$(id -u)" = 0 ]; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null) \
            || echo "warning: could not install $package; the tests that need $command will be skipped"
    else
        echo "warning: $command is missing and this is not root; the tests that need it will be skipped"
    fi
}

step "system tools: Graphviz's dot (a test renders a real SVG), Debian's chromium (tests open the graph page)"
system_tool dot graphviz
system_tool chromium chromium

step "Rust: format, lints, unit tests"
cargo fmt --all --check
cargo clippy --workspace --all-targets --release -- -D warnings
cargo test --workspace --release -q

step "release wheel"
rm -rf dist
"$VENV/bin/maturin" build --release --out dist -q
WHEEL=$(ls dist/gradrs-*.whl)
"$PY" -m pip install -q "$WHEEL"

step "Python: ruff, mypy --strict, type stubs"
PY_DIRS=(python tests examples)
if [ -d benchmarks ]; then
    PY_DIRS+=(benchmarks)
fi
"$VENV/bin/ruff" check "${PY_DIRS[@]}"
"$VENV/bin/ruff" format --check "${PY_DIRS[@]}"
# The source package, so its own _core.pyi stands for the extension (configured in pyproject.toml).
"$VENV/bin/mypy" --strict python/gradrs
(cd "$RUN_DIR" && "$PY" -m mypy.stubtest gradrs._core --allowlist "$ROOT/tests/stubtest_allowlist.txt")

step "sdist: builds, installs into a second fresh virtual environment, and runs"
"$VENV/bin/maturin" sdist --out dist
SDIST=$(ls dist/gradrs-*.tar.gz)
SDIST_VENV="$VENV-sdist"
rm -rf "$SDIST_VENV"
python3 -m venv "$SDIST_VENV"
"$SDIST_VENV/bin/python" -m pip install -q --upgrade pip
# Without CARGO_TARGET_DIR the crate compiles from the sdist's own files in pip's temporary build
# directory (about a minute here). With target/ shared, cargo finds the artifacts built from the
# working tree fresh and compiles nothing, so the sdist's sources would go untested.
env -u CARGO_TARGET_DIR "$SDIST_VENV/bin/python" -m pip install -q "$SDIST"
(cd "$RUN_DIR" && "$SDIST_VENV/bin/python" -c '
import math

import gradrs

x = gradrs.Value(3.0)
y = x * x + 2 * x
y.backward()
assert (y.data, x.grad) == (15.0, 8.0), (y.data, x.grad)
w = gradrs.Value(0.5)
f = gradrs.compile(lambda v: (w * v).tanh())
f(1.0)
out = f(2.0)  # replays the program recorded by the first call
out.backward()
assert math.isclose(out.data, math.tanh(1.0)), out.data
assert math.isclose(w.grad, 2 * (1 - math.tanh(1.0) ** 2)), w.grad
print("the sdist installs and runs:", gradrs.__file__)
')

step "pytest against the installed wheel"
# Run from outside the source tree so `import gradrs` can only find the wheel.
cd "$RUN_DIR"
"$PY" -m pytest "$ROOT/tests" -p no:cacheprovider "$@"
