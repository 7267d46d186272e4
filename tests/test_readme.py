"""Every Python block of README.md runs as written, top to bottom in one session.

The blocks run in order in one namespace, in a fresh interpreter whose working directory is an
empty temporary folder, as a reader pasting them into one Python session would run them. A block
whose first line is ``# needs: <module>`` (for something optional, such as ``torch``) runs only
where that module is installed; keep such marks rare. Where a block shows what it prints as
``print(...)  # output`` comments, the printed words must be those.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"

# Runs the blocks (a JSON list in argv[1]) in one namespace; each block's output goes to the JSON
# list in argv[2], and a failure names the block on stderr and exits 1.
DRIVER = r"""
import contextlib, importlib.util, io, json, sys, traceback

blocks = json.loads(open(sys.argv[1]).read())
namespace = {"__name__": "__main__"}
outputs = []
for number, block in enumerate(blocks, 1):
    first = block.split("\n", 1)[0]
    if first.startswith("# needs: ") and importlib.util.find_spec(first[len("# needs: "):].strip()) is None:
        outputs.append(None)
        continue
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(block, f"<README.md python block {number}>", "exec"), namespace)
    except BaseException:
        print(f"README.md python block {number} failed:", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
    outputs.append(out.getvalue())
open(sys.argv[2], "w").write(json.dumps(outputs))
"""


def python_blocks(markdown: str) -> list[str]:
    """The text of every fenced ```python block, in order."""
    return re.findall(r"^```python\n(.*?)^```", markdown, re.DOTALL | re.MULTILINE)


def shown_output(block: str) -> list[str]:
    """The words a block says it prints, from its ``print(...)  # output`` comments."""
    shown = re.findall(r"^print\(.*\)\s+# (.+)$", block, re.MULTILINE)
    return [word for line in shown for word in line.split()]


def test_blocks_are_found():
    blocks = python_blocks("text\n```python\na = 1\n```\n```bash\nls\n```\n```python\nprint(a)  # 1\n```\n")
    assert blocks == ["a = 1\n", "print(a)  # 1\n"]
    assert shown_output(blocks[1]) == ["1"]


def run_in_one_session(blocks: list[str], folder: Path) -> tuple[subprocess.CompletedProcess[str], list]:
    """Runs ``blocks`` in order in one fresh interpreter in ``folder``; the result and each
    block's output (None for a block skipped for want of an optional module)."""
    (folder / "blocks.json").write_text(json.dumps(blocks))
    (folder / "driver.py").write_text(DRIVER)
    result = subprocess.run(
        [sys.executable, "driver.py", "blocks.json", "outputs.json"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
    )
    outputs = json.loads((folder / "outputs.json").read_text()) if result.returncode == 0 else []
    return result, outputs


def test_the_session_shares_names_skips_only_marked_blocks_and_names_a_failing_block(tmp_path):
    blocks = [
        "a = 2\n",
        "# needs: no_such_module_for_gradrs\nimport no_such_module_for_gradrs\n",
        "print(a * 3)\n",
    ]
    result, outputs = run_in_one_session(blocks, tmp_path)
    assert result.returncode == 0, result.stderr
    assert outputs == ["", None, "6\n"]
    result, _ = run_in_one_session([*blocks, "print(X)\n"], tmp_path)
    assert result.returncode == 1 and "README.md python block 4 failed" in result.stderr
    assert "NameError: name 'X' is not defined" in result.stderr


def test_every_readme_block_runs_in_one_session(tmp_path):
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 4 and any("gradrs.compile" in block for block in blocks)
    marked = [block for block in blocks if block.startswith("# needs: ")]
    assert len(marked) <= 2, "blocks marked as needing something optional should stay rare"
    result, outputs = run_in_one_session(blocks, tmp_path)
    assert result.returncode == 0, result.stderr
    for number, (block, output) in enumerate(zip(blocks, outputs, strict=True), 1):
        expected = shown_output(block)
        if expected and output is not None:
            assert output.split() == expected, f"README.md python block {number} prints {output!r}"
