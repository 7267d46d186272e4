#!/usr/bin/env bash
# Installs everything gradrs's tests need into a fresh virtual environment, builds
# the release wheel, installs it, and runs every check: the Rust tests and lints,
# ruff, the stub check and pytest against the installed package.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${GRADRS_TEST_VENV:-"$ROOT/.venv-test"}

step() { printf '\n==> %s\n' "$*"; }

step "fresh virtual environment in $VENV"
rm -rf "$VENV"
python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q "maturin>=1.9.4,<2"

step "system tools: Graphviz's dot, so a test renders a real SVG"
if ! command -v dot >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null) \
            || echo "warning: could not install graphviz; the SVG test will be skipped"
    else
        echo "warning: Graphviz's dot is missing and this is not root; the SVG test will be skipped"
    fi
fi

step "Rust: format, lints, unit tests"
cargo fmt --all --check
cargo clippy --workspace --all-targets --release -- -D warnings
cargo test --workspace --release -q

step "release wheel"
rm -rf dist
"$VENV/bin/maturin" build --release --out dist -q
WHEEL=$(ls dist/gradrs-*.whl)
"$PY" -m pip install -q "$WHEEL[test]"

step "Python: ruff, type stubs"
"$VENV/bin/ruff" check python tests examples
"$VENV/bin/ruff" format --check python tests examples
(cd /tmp && "$PY" -m mypy.stubtest gradrs._core --allowlist "$ROOT/tests/stubtest_allowlist.txt")

step "pytest against the installed wheel"
# Run from outside the source tree so `import gradrs` can only find the wheel.
cd /tmp
"$PY" -m pytest "$ROOT/tests" -p no:cacheprovider "$@"
