"""numpy in bulk: leaves from arrays, and arrays from lists of Values."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from gradrs import _core
from gradrs._core import ParamGroup, Value

if TYPE_CHECKING:
    import numpy as np

__all__ = ["ParamGroup", "data_of", "grad_of", "leaves"]


def leaves(array: Any) -> Any:
    """New leaf Values for every element of ``array``, as nested lists of its shape.

    ``leaves(X)`` for an ``(n, 2)`` array gives ``n`` lists of two Values, built in one
    call into the engine. A 0-d array gives a single Value.
    """
    import numpy as np  # numpy is imported on first use, so `import gradrs` stays light

    arr = np.asarray(array, dtype=np.float64)
    # Regrouped below into nested lists, one level per axis after the first.
    flat: list[Any] = _core.leaves(np.ascontiguousarray(arr.reshape(-1)))
    if arr.ndim == 0:
        return flat[0]
    for size in reversed(arr.shape[1:]):
        flat = [flat[i : i + size] for i in range(0, len(flat), size)]
    return flat


def data_of(values: Iterable[Value]) -> np.ndarray:
    """The data of many Values as one float64 array."""
    return ParamGroup(values).data()


def grad_of(values: Iterable[Value]) -> np.ndarray:
    """The gradients of many Values as one float64 array."""
    return ParamGroup(values).grad()
