#!/usr/bin/env bash
# Builds the release wheel, installs it into a fresh virtual environment, and runs the main job:
# micrograd's moons demo trained on gradrs, with its pictures written to out/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${GRADRS_DEMO_VENV:-"$ROOT/.venv-demo"}
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "$ROOT[viz]"
cd /tmp
"$VENV/bin/python" -m gradrs demo --out "$ROOT/out" "$@"
