"""Toy datasets: scikit-learn's algorithms with numpy only."""

from __future__ import annotations

import numpy as np
import pytest

from gradrs import datasets


def test_make_moons_shapes_labels_and_determinism():
    X, y = datasets.make_moons(n_samples=101, noise=0.1, random_state=3)
    assert X.shape == (101, 2) and y.shape == (101,)
    assert sorted(set(y.tolist())) == [0, 1] and (y == 0).sum() == 50
    X2, y2 = datasets.make_moons(n_samples=101, noise=0.1, random_state=3)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    clean, labels = datasets.make_moons(n_samples=100, shuffle=False)
    assert np.allclose(np.hypot(clean[labels == 0, 0], clean[labels == 0, 1]), 1.0)


def test_make_moons_matches_scikit_learn_when_installed():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    ours = datasets.make_moons(n_samples=57, noise=0.2, random_state=11)
    theirs = sklearn_datasets.make_moons(n_samples=57, noise=0.2, random_state=11)
    np.testing.assert_array_equal(ours[0], theirs[0])
    np.testing.assert_array_equal(ours[1], theirs[1])


def test_global_generator_like_the_demo():
    np.random.seed(1337)
    X1, _ = datasets.make_moons(n_samples=100, noise=0.1)
    np.random.seed(1337)
    X2, _ = datasets.make_moons(n_samples=100, noise=0.1)
    np.testing.assert_array_equal(X1, X2)


def test_blobs_and_spirals():
    X, y = datasets.make_blobs(n_samples=30, centers=3, random_state=0)
    assert X.shape == (30, 2) and np.bincount(y).tolist() == [10, 10, 10]
    X, y = datasets.make_spirals(n_samples=50, n_classes=3, noise=0.1, random_state=0)
    assert X.shape == (50, 2) and np.bincount(y).tolist() == [17, 17, 16]
    assert np.abs(X).max() <= 1.0 + 1e-12
    with pytest.raises(ValueError, match="cannot be used to seed"):
        datasets.make_moons(random_state="seed")
