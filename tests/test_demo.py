"""The main job: micrograd's demo, reproduced."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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


def test_the_compiled_demo_trains_to_the_same_numbers_step_by_step():
    _, eager, _ = train(steps=100, seed=1337)
    _, compiled, _ = train(steps=100, seed=1337, compiled=True)
    assert compiled.accuracies == eager.accuracies
    for a, b in zip(eager.losses, compiled.losses, strict=True):
        assert abs(a - b) <= 1e-12 * max(1.0, abs(a)), (a, b)
    assert compiled.accuracies[-1] == 1.0


def demo(*args: str) -> str:
    """``python -m gradrs demo ARGS``'s output; the command must succeed."""
    result = subprocess.run(
        [sys.executable, "-m", "gradrs", "demo", *args], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_demo_compile_prints_both_wall_times():
    out = demo("--steps", "5", "--no-plot", "--compile")
    assert "compiled and eager losses agree step by step (1e-12): True" in out
    assert out.count("wall time") >= 2, out


def test_python_m_gradrs_demo_writes_its_pictures(tmp_path):
    out = demo("--steps", "5", "--out", str(tmp_path))
    assert "accuracy: " in out and "wall time:" in out
    png = tmp_path / "decision_boundary.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = tmp_path / "sample_loss_graph.svg"
    if svg.exists():
        assert "<svg" in svg.read_text()
    else:
        assert "dot' program was not found" in out
        assert "digraph" in (tmp_path / "sample_loss_graph.dot").read_text()


def test_the_learning_rate_decays_over_the_steps_asked_for():
    # 1.0 - 0.9*k/steps: never negative, so a longer run keeps its loss down
    _, result, _ = train(steps=160, seed=1337)
    assert result.accuracies[-1] == 1.0
    assert result.losses[-1] <= 1.01 * min(result.losses[100:])


def test_the_gradrs_command_shows_progress(tmp_path):
    script = Path(sys.executable).with_name("gradrs")
    assert script.exists(), "the wheel installs a gradrs console script beside python"
    result = subprocess.run(
        [str(script), "demo", "--steps", "20", "--seed", "7", "--no-plot"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    # tqdm's bar, redrawn after carriage returns (text mode reads them as newlines); its last
    # state is the whole run with the loss
    bar = [line for line in result.stdout.splitlines() if line.startswith("training:")]
    assert bar[-1].startswith("training: 100%") and " 20/20 " in bar[-1], bar
    assert " loss " in bar[-1] and " accuracy " in bar[-1], bar
    assert re.search(r"^accuracy: \d+\.\d%$", result.stdout, re.MULTILINE)
    other_seed = subprocess.run(
        [str(script), "demo", "--steps", "20", "--seed", "8", "--no-plot"], capture_output=True, text=True
    )
    assert other_seed.stdout.splitlines()[-3] != result.stdout.splitlines()[-3]  # final loss differs


def test_the_progress_bar_is_tqdms_and_silent_without_a_stream():
    import io

    from gradrs.demo import progress_bar

    stream = io.StringIO()
    bar = progress_bar(4, stream)
    bar.update(4)
    bar.close()
    assert type(bar).__module__.startswith("tqdm") and "4/4" in stream.getvalue()
    quiet = progress_bar(4, None)
    quiet.update(4)
    quiet.close()
    _, result, _ = train(steps=3, seed=1, progress=None)
    assert len(result.losses) == 3


def test_micrograd_trains_the_same_run_to_the_same_numbers():
    pytest.importorskip("micrograd")
    from gradrs.demo import train_micrograd

    _, ours, _ = train(steps=3, seed=1337)
    reference = train_micrograd(steps=3, seed=1337)
    assert reference.accuracies == ours.accuracies
    for a, b in zip(ours.losses, reference.losses, strict=True):
        assert a == pytest.approx(b, rel=1e-9)


def test_demo_micrograd_option_prints_the_comparison():
    pytest.importorskip("micrograd")
    out = demo("--steps", "2", "--no-plot", "--micrograd")
    assert "micrograd wall time:" in out and "x faster on this run" in out


def test_no_plot_and_bad_arguments():
    ok = subprocess.run(
        [sys.executable, "-m", "gradrs", "demo", "--steps", "2", "--no-plot"], capture_output=True, text=True
    )
    assert ok.returncode == 0 and "wrote" not in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "gradrs", "demo", "--steps", "0"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "argument --steps: must be at least 1, got 0" in bad.stderr
