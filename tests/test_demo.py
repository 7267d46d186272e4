"""The main job: micrograd's demo, reproduced."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gradrs.demo import train


def test_demo_reproduces_micrograds_numbers():
    # micrograd's notebook: step 0 loss 0.8958441028683222 at 50%, step 99 0.010978370135492717 at 100%
    _, result, _ = train(steps=100, seed=1337)
    assert result.losses[0] == pytest.approx(0.8958441028683222, rel=1e-9)
    assert result.accuracies[0] == 0.5
    assert result.losses[-1] == pytest.approx(0.010978370135492717, rel=1e-6)
    assert result.accuracies[-1] == 1.0
    assert min(k for k, a in enumerate(result.accuracies) if a == 1.0) == 40


def test_python_m_gradrs_demo_writes_its_pictures(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "gradrs", "demo", "--steps", "5", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "accuracy: " in result.stdout and "wall time:" in result.stdout
    png = tmp_path / "decision_boundary.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = tmp_path / "sample_loss_graph.svg"
    if svg.exists():
        assert "<svg" in svg.read_text()
    else:
        assert "dot' program was not found" in result.stdout


def test_no_plot_and_bad_arguments():
    ok = subprocess.run(
        [sys.executable, "-m", "gradrs", "demo", "--steps", "2", "--no-plot"], capture_output=True, text=True
    )
    assert ok.returncode == 0 and "wrote" not in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "gradrs", "demo", "--steps", "0"], capture_output=True, text=True
    )
    assert bad.returncode != 0 and "--steps must be positive" in bad.stderr
