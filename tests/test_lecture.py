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
