"""``gradrs demo digits``: scikit-learn's handwritten digits, trained through ``gradrs.compile``."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")

from gradrs import leaves, losses  # noqa: E402
from gradrs.compiler import compile  # noqa: E402
from gradrs.datasets import load_digits  # noqa: E402
from gradrs.digits_demo import (  # noqa: E402
    confusion_matrix,
    make_model,
    one_hot,
    sample_loss,
    split_digits,
    train_digits,
)


def test_load_digits_gives_scaled_images_and_int_labels():
    X, y = load_digits()
    assert X.shape == (1797, 64) and X.dtype == np.float64
    assert y.shape == (1797,) and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0
    assert sorted(set(y.tolist())) == list(range(10))
    from sklearn.datasets import load_digits as sklearn_load_digits

    np.testing.assert_array_equal(X * 16, sklearn_load_digits().data)


def test_the_split_is_fixed_and_disjoint():
    a, b = split_digits(), split_digits()
    assert a.X_train.shape == (1437, 64) and a.X_test.shape == (360, 64)
    np.testing.assert_array_equal(a.X_test, b.X_test)
    # together they are the whole set, each image once
    X, y = load_digits()
    rows = sorted(map(bytes, np.column_stack([X, y])))
    split = np.vstack([np.column_stack([a.X_train, a.y_train]), np.column_stack([a.X_test, a.y_test])])
    assert sorted(map(bytes, split)) == rows


def test_the_compiled_loss_and_gradients_equal_eager_cross_entropy():
    data = split_digits()
    X, y = data.X_train[:7], data.y_train[:7]
    model = make_model(3)
    params = model.parameters()

    eager = losses.cross_entropy([model(x) for x in leaves(X)], [int(k) for k in y])
    model.zero_grad()
    eager.backward()
    eager_grads = model.parameters_grad()

    batch_loss = compile(sample_loss(model))
    batch_loss.batch(X[:2], one_hot(y[:2]))  # traced on other samples: the replay must not care
    compiled = batch_loss.batch(X, one_hot(y))
    model.zero_grad()
    compiled.backward()
    compiled_grads = model.parameters_grad()

    assert compiled.data == pytest.approx(eager.data, rel=1e-12, abs=0)
    assert np.abs(eager_grads).max() > 1e-3, "the gradients are not trivially zero"
    np.testing.assert_allclose(compiled_grads, eager_grads, rtol=1e-12, atol=1e-15)
    # one sample alone, per class index: the one-hot form is exactly cross_entropy's
    for x, k in zip(X, y, strict=True):
        alone = sample_loss(model)(leaves(x), leaves(one_hot(np.array([k]))[0]))
        assert alone.data == losses.cross_entropy(model(leaves(x)), int(k)).data
    assert len(params) == 64 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10


def test_a_short_training_run_learns():
    model, result, data = train_digits(steps=40, seed=0)
    assert len(result.losses) == 40
    assert result.losses[-1] < result.losses[0] / 3
    assert result.test_accuracy > 0.6  # chance is 0.1; 40 steps reach about 0.9
    assert result.confusion.sum() == 360 and np.trace(result.confusion) == round(360 * result.test_accuracy)


def test_the_default_run_reaches_95_percent():
    _, result, _ = train_digits(seed=1337)
    assert result.test_accuracy >= 0.95


def test_confusion_matrix_counts():
    matrix = confusion_matrix(np.array([0, 1, 1, 2]), np.array([0, 2, 1, 2]), classes=3)
    assert matrix.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]


def test_gradrs_demo_digits_end_to_end(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "gradrs", "demo", "digits", "--steps", "30", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"^test accuracy: \d+\.\d%$", result.stdout, re.MULTILINE), result.stdout
    assert re.search(r"^wall time: [\d.]+ s for 30 steps", result.stdout, re.MULTILINE)
    assert any(line.startswith("training: 100%") for line in result.stdout.splitlines())
    for name in ("digits_loss.png", "digits_confusion.png", "digits_predictions.png"):
        picture = tmp_path / name
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"wrote {picture}" in result.stdout


def test_load_digits_without_scikit_learn_names_the_extra():
    program = (
        "import sys\n"
        "sys.modules['sklearn'] = None  # as if scikit-learn were not installed\n"
        "from gradrs import datasets\n"
        "datasets.make_moons(10)  # the numpy-only data sets still work\n"
        "try:\n"
        "    datasets.load_digits()\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "gradrs.datasets.load_digits needs scikit-learn, which is not installed: pip install 'gradrs[data]'"
    )
