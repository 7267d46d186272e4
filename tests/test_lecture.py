"""The lecture walk-through runs and prints the lecture's numbers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(name: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_lecture_example():
    out = run("lecture.py")
    assert "slope (f(x+h) - f(x))/h = 14.0000" in out
    assert "dd/da = -3.0000" in out and "dd/db = 2.0000" in out and "dd/dc = 1.0000" in out
    assert "o = 0.7071" in out
    assert "by _backward steps: w1.grad = 1.0000" in out
    assert "w1.grad = 1.0000" in out and "x1.grad = -1.5000" in out
    assert "a.grad = 2.0" in out
    assert "f = (a*b) * (a+b): a.grad = -3.0, b.grad = -8.0" in out
    assert "o = 0.7071, w1.grad = 1.0000, x1.grad = -1.5000" in out
    assert "41 parameters" in out
    final = float(out.rsplit("final loss:", 1)[1])
    assert final < 0.01


def test_readme_quickstart():
    assert run("quickstart.py").split() == ["24.7041", "138.8338", "645.5773"]


def test_readme_examples_print_what_their_comments_say():
    """Every README block that prints numbers shows them in `# comment`s: run it and compare."""
    import contextlib
    import io
    import re

    readme = (EXAMPLES.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    checked = 0
    for block in blocks:
        expected = [m.group(1).split() for m in re.finditer(r"^print\(.*\)\s+# (.+)$", block, re.MULTILINE)]
        if not expected:
            continue
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(block, {})
        assert out.getvalue().split() == [word for line in expected for word in line], block
        checked += 1
    assert checked >= 2
