"""Data sets: toy 2-d ones with scikit-learn's algorithms and arguments but only numpy, and
scikit-learn's handwritten digits (``load_digits``, which needs the ``gradrs[data]`` extra)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["load_digits", "make_blobs", "make_moons", "make_spirals"]


def _rng(random_state: Any) -> np.random.RandomState:
    """scikit-learn's ``check_random_state``: None means numpy's global generator."""
    if random_state is None or random_state is np.random:
        return np.random.mtrand._rand
    if isinstance(random_state, (int, np.integer)):
        return np.random.RandomState(random_state)
    if isinstance(random_state, np.random.RandomState):
        return random_state
    raise ValueError(f"{random_state!r} cannot be used to seed a numpy.random.RandomState instance")


def _shuffle(rng: np.random.RandomState, *arrays: np.ndarray) -> list[np.ndarray]:
    index = np.arange(arrays[0].shape[0])
    rng.shuffle(index)
    return [a[index] for a in arrays]


def make_moons(
    n_samples: int | tuple[int, int] = 100,
    *,
    shuffle: bool = True,
    noise: float | None = None,
    random_state: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaving half circles, as ``sklearn.datasets.make_moons`` (same points for a seed).

    Returns ``X`` of shape ``(n_samples, 2)`` and labels ``y`` in {0, 1}.
    """
    if isinstance(n_samples, (int, np.integer)):
        n_out = int(n_samples) // 2
        n_in = int(n_samples) - n_out
    else:
        n_out, n_in = n_samples
    rng = _rng(random_state)
    outer_x = np.cos(np.linspace(0, np.pi, n_out))
    outer_y = np.sin(np.linspace(0, np.pi, n_out))
    inner_x = 1 - np.cos(np.linspace(0, np.pi, n_in))
    inner_y = 1 - np.sin(np.linspace(0, np.pi, n_in)) - 0.5
    X = np.vstack([np.append(outer_x, inner_x), np.append(outer_y, inner_y)]).T
    y = np.hstack([np.zeros(n_out, dtype=np.intp), np.ones(n_in, dtype=np.intp)])
    if shuffle:
        X, y = _shuffle(rng, X, y)
    if noise is not None:
        X += rng.normal(scale=noise, size=X.shape)
    return X, y


def make_blobs(
    n_samples: int = 100,
    n_features: int = 2,
    *,
    centers: int | np.ndarray | None = None,
    cluster_std: float = 1.0,
    center_box: tuple[float, float] = (-10.0, 10.0),
    shuffle: bool = True,
    random_state: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs, as ``sklearn.datasets.make_blobs`` for an integer ``n_samples``."""
    rng = _rng(random_state)
    if centers is None:
        centers = 3
    if isinstance(centers, (int, np.integer)):
        centers = rng.uniform(center_box[0], center_box[1], size=(int(centers), n_features))
    else:
        centers = np.asarray(centers, dtype=float)
        n_features = centers.shape[1]
    n_centers = centers.shape[0]
    per_center = [n_samples // n_centers] * n_centers
    for i in range(n_samples % n_centers):
        per_center[i] += 1
    blobs = [
        rng.normal(loc=c, scale=cluster_std, size=(n, n_features))
        for c, n in zip(centers, per_center, strict=True)
    ]
    X = np.concatenate(blobs)
    y = np.concatenate([np.full(n, i, dtype=np.intp) for i, n in enumerate(per_center)])
    if shuffle:
        X, y = _shuffle(rng, X, y)
    return X, y


def make_spirals(
    n_samples: int = 100,
    *,
    n_classes: int = 2,
    noise: float = 0.0,
    turns: float = 1.0,
    shuffle: bool = True,
    random_state: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Interleaved spirals (the CS231n toy set): ``n_classes`` arms of points growing outwards."""
    rng = _rng(random_state)
    per_class = [n_samples // n_classes + (1 if i < n_samples % n_classes else 0) for i in range(n_classes)]
    xs, ys = [], []
    for k, n in enumerate(per_class):
        r = np.linspace(0.0, 1.0, n)
        t = np.linspace(k * 2 * np.pi / n_classes, k * 2 * np.pi / n_classes + turns * 2 * np.pi, n)
        t = t + rng.normal(scale=noise, size=n) if noise else t
        xs.append(np.column_stack([r * np.sin(t), r * np.cos(t)]))
        ys.append(np.full(n, k, dtype=np.intp))
    X, y = np.concatenate(xs), np.concatenate(ys)
    if shuffle:
        X, y = _shuffle(rng, X, y)
    return X, y


DATA_EXTRA = "pip install 'gradrs[data]'"


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's handwritten digits: 1,797 images of 8x8 pixels, 10 classes.

    Returns ``X``, a float64 array of shape ``(1797, 64)`` (each row one image read row by row,
    the pixel intensities 0..16 divided by 16 so that they lie in [0, 1]), and ``y``, an int64
    array of shape ``(1797,)`` with the digit shown, 0 to 9. ``X[i].reshape(8, 8)`` is the image.

    The data ships inside scikit-learn (nothing is downloaded), which is the optional extra
    ``gradrs[data]``; without it this raises ImportError saying how to install it.
    """
    try:
        from sklearn.datasets import load_digits as sklearn_load_digits
    except ImportError as error:
        raise ImportError(
            f"gradrs.datasets.load_digits needs scikit-learn, which is not installed: {DATA_EXTRA}"
        ) from error
    digits = sklearn_load_digits()
    X = np.asarray(digits.data, dtype=np.float64) / 16.0
    y = np.asarray(digits.target, dtype=np.int64)
    return X, y
