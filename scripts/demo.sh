#!/usr/bin/env bash
# Builds the release wheel, installs it into a fresh virtual environment, and runs the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${GRADRS_DEMO_VENV:-"$ROOT/.venv-demo"}
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "$ROOT[viz]"
cd /tmp
"$VENV/bin/python" "$ROOT/examples/quickstart.py" "$@"
