#!/usr/bin/env bash
# Builds the release wheel into a virtual environment (reused while the sources are unchanged),
# with the extras the demos need, and runs the main jobs: micrograd's moons demo, then the
# handwritten digits through gradrs.compile, their pictures written to out/. Arguments, if any,
# go to `gradrs demo` instead (e.g. `bash scripts/demo.sh digits --steps 500`).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${GRADRS_DEMO_VENV:-"$ROOT/.venv-demo"}
# viz: matplotlib and graphviz for the pictures; data: scikit-learn, which ships the digits.
EXTRAS="viz,data"
STAMP="$VENV/.gradrs-source-hash"

step() { printf '\n==> %s\n' "$*"; }

# A hash of everything the wheel is built from (the files git knows or would add under rust/,
# python/ and the build files, by content), the Python interpreter and the extras: the venv is
# rebuilt exactly when one of them changed.
source_hash() {
    python3 - "$ROOT" "$EXTRAS" <<'PY'
import hashlib
import subprocess
import sys
from pathlib import Path

root, extras = Path(sys.argv[1]), sys.argv[2]
inputs = ["rust", "python", "Cargo.toml", "Cargo.lock", "pyproject.toml", "README.md", "LICENSE"]
try:
    listed = subprocess.run(
        ["git", "-C", str(root), "ls-files", "--cached", "--others", "--exclude-standard", "--", *inputs],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()
except (OSError, subprocess.CalledProcessError):  # not a git checkout: every file but build output
    listed = [
        str(p.relative_to(root))
        for name in inputs
        for p in ([root / name] if (root / name).is_file() else sorted((root / name).rglob("*")))
        if p.is_file() and "__pycache__" not in p.parts and "target" not in p.parts and p.suffix != ".so"
    ]
digest = hashlib.sha256(f"{sys.version}\n{extras}\n".encode())
for name in sorted(set(listed)):
    path = root / name
    if path.is_file():  # a tracked file deleted from the work tree is simply gone
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
print(digest.hexdigest())
PY
}

step "checking the sources against the venv in $VENV"
HASH=$(source_hash)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ] && "$VENV/bin/python" -c "import gradrs, sklearn" 2>/dev/null; then
    echo "up to date (source hash ${HASH:0:12}): reusing it, nothing to build"
else
    if [ -f "$STAMP" ]; then
        echo "the sources changed since it was built: rebuilding"
    else
        echo "no venv built from these sources yet: building one"
    fi
    step "fresh virtual environment in $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    step "pip and maturin (the build tool) into it"
    "$VENV/bin/python" -m pip install --upgrade pip maturin
    step "building the release wheel (cargo compiles the Rust core: a minute or two the first time)"
    WHEELS="$VENV/wheels"
    "$VENV/bin/maturin" build --release --out "$WHEELS"
    WHEEL=$(ls "$WHEELS"/gradrs-*.whl)
    step "installing the wheel with its extras [$EXTRAS]"
    "$VENV/bin/python" -m pip install "$WHEEL[$EXTRAS]"
    echo "$HASH" > "$STAMP"
fi

cd /tmp
if [ $# -gt 0 ]; then
    step "gradrs demo $*"
    "$VENV/bin/gradrs" demo --out "$ROOT/out" "$@"
else
    step "gradrs demo: micrograd's moons demo"
    "$VENV/bin/gradrs" demo moons --out "$ROOT/out"
    step "gradrs demo digits: scikit-learn's handwritten digits through gradrs.compile"
    "$VENV/bin/gradrs" demo digits --out "$ROOT/out"
fi

step "done; to use gradrs from this venv afterwards:"
echo "    source ${VENV#"$ROOT/"}/bin/activate    # then: gradrs demo --help, python -c 'import gradrs'"
