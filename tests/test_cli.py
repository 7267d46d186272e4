"""The command line checks its arguments before it works, and never shows a traceback for a user
mistake: each problem is one line on stderr and a non-zero exit status."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest


def gradrs(*args: str, code: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m gradrs ARGS`` in a child process, or ``main(ARGS)`` after ``code`` has run."""
    if code is None:
        command = [sys.executable, "-m", "gradrs", *args]
    else:
        program = f"{code}\nimport sys\nfrom gradrs.__main__ import main\nsys.exit(main({list(args)!r}))"
        command = [sys.executable, "-c", program]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "not-a-folder"
    path.write_text("x")
    return path


BAD_ARGUMENTS = [
    (["--steps", "0"], "argument --steps: must be at least 1, got 0"),
    (["--steps", "-5"], "argument --steps: must be at least 1, got -5"),
    (["--seed", "-1"], "argument --seed: must be between 0 and 4294967295"),
    (["--seed", str(2**32)], "argument --seed: must be between 0 and 4294967295"),
    (["--out", "/proc/gradrs-no-such/pictures"], "argument --out: cannot create the folder"),
    (["digits", "--micrograd"], "argument --micrograd: only for the moons demo"),
    (["--steps", "many"], "argument --steps: invalid int value"),
]


@pytest.mark.parametrize(("args", "problem"), BAD_ARGUMENTS, ids=lambda a: " ".join(a) if a else "")
def test_a_bad_argument_is_one_line_with_the_usage_and_exit_2(args, problem):
    # a huge --steps: if anything started training, the timeout would show it
    result = gradrs("demo", "--steps", "100000000", *args, timeout=60)
    assert result.returncode == 2, result.stderr
    [line] = error_lines(result.stderr)
    assert line.startswith("gradrs demo: error: ") and problem in line, line
    assert result.stderr.startswith("usage: gradrs demo"), result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == "", "nothing ran before the check"


def test_an_existing_file_as_out_is_refused_before_training(a_file):
    result = gradrs("demo", "digits", "--steps", "100000000", "--out", str(a_file), timeout=60)
    assert result.returncode == 2
    assert error_lines(result.stderr) == [
        f"gradrs demo: error: argument --out: {a_file} exists and is not a folder"
    ]
    assert "usage: gradrs demo" in result.stderr and result.stdout == ""


def test_no_plot_does_not_check_or_create_out(tmp_path):
    out = tmp_path / "never"
    result = gradrs("demo", "--steps", "1", "--no-plot", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert not out.exists()


def test_a_folder_that_fails_late_is_one_line(tmp_path):
    # The folder passes the check, then writing into it fails after training (as when it is
    # removed or its disk fills up meanwhile).
    fail = (
        "import errno, gradrs.demo\n"
        "def refuse(model, X, y, path):\n"
        "    raise PermissionError(errno.EACCES, 'Permission denied', str(path))\n"
        "gradrs.demo.decision_boundary = refuse\n"
    )
    result = gradrs("demo", "--steps", "2", "--out", str(tmp_path), code=fail)
    assert result.returncode == 1
    assert error_lines(result.stderr) == [
        f"gradrs: error: Permission denied: {tmp_path / 'decision_boundary.png'}"
    ]
    assert "Traceback" not in result.stderr


def test_missing_scikit_learn_is_one_line_naming_the_extra():
    result = gradrs("demo", "digits", "--no-plot", code="import sys\nsys.modules['sklearn'] = None")
    assert result.returncode == 1
    assert error_lines(result.stderr) == [
        "gradrs: error: gradrs.datasets.load_digits needs scikit-learn, which is not installed: "
        "pip install 'gradrs[data]'"
    ]
    assert "Traceback" not in result.stderr


def test_missing_matplotlib_skips_the_pictures_and_says_so(tmp_path):
    result = gradrs(
        "demo",
        "digits",
        "--steps",
        "2",
        "--out",
        str(tmp_path),
        code="import sys\nsys.modules['matplotlib'] = None",
    )
    assert result.returncode == 0, result.stderr
    assert "skipped the pictures: the Python package matplotlib is not installed" in result.stdout
    assert list(tmp_path.iterdir()) == []


# Five times: a Ctrl-C at the first step once hit rust-numpy's first look-up of NumPy's C API,
# which ran Python code and turned the KeyboardInterrupt into a Rust panic (exit status 1).
@pytest.mark.parametrize("attempt", range(5))
def test_ctrl_c_stops_training_with_one_line(attempt):
    child = subprocess.Popen(
        [sys.executable, "-m", "gradrs", "demo", "--steps", "100000000", "--no-plot"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert "training:" in child.stdout.read(len("\ntraining:"))  # the bar is up: training runs
        child.send_signal(signal.SIGINT)
        _, stderr = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 130
    assert error_lines(stderr) == ["gradrs: error: interrupted"]
    assert "Traceback" not in stderr
