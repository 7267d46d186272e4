"""gradrs: Karpathy's micrograd API on a Rust arena.

``from gradrs import Value`` gives a drop-in for ``micrograd.engine.Value``:
the same operators, ``.data``, ``.grad`` and ``.backward()``, computed by a
Rust core that frees each graph as soon as nothing refers to it.
"""

from gradrs._core import (
    AnomalyError,
    ParamGroup,
    Value,
    __version__,
    _live_nodes,
    dot,
    is_grad_enabled,
    sum,
)
from gradrs.bulk import data_of, grad_of, leaves

__all__ = [
    "AnomalyError",
    "ParamGroup",
    "Value",
    "__version__",
    "data_of",
    "dot",
    "grad_of",
    "is_grad_enabled",
    "leaves",
    "live_nodes",
    "sum",
]


def live_nodes() -> int:
    """The number of graph nodes currently alive in the process."""
    return _live_nodes()
