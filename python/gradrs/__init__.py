"""gradrs: Karpathy's micrograd API on a Rust arena.

``from gradrs import Value`` gives a drop-in for ``micrograd.engine.Value``:
the same operators, ``.data``, ``.grad`` and ``.backward()``, computed by a
Rust core that frees each graph as soon as nothing refers to it.
"""

from gradrs import losses, nn
from gradrs._core import (
    AnomalyError,
    ParamGroup,
    TraceError,
    Value,
    __version__,
    _live_nodes,
    dot,
    is_grad_enabled,
    logsumexp,
    sum,  # noqa: F401  (gradrs.sum, kept out of __all__)
)
from gradrs.anomaly import detect_anomaly, is_anomaly_enabled
from gradrs.bulk import data_of, grad_of, leaves
from gradrs.grad_mode import enable_grad, no_grad
from gradrs.gradcheck import GradcheckError, gradcheck

__all__ = [
    "AnomalyError",
    "Compiled",
    "GradcheckError",
    "ParamGroup",
    "TraceError",
    "Value",
    "__version__",
    "data_of",
    "datasets",
    "detect_anomaly",
    "dot",
    "enable_grad",
    "grad_of",
    "gradcheck",
    "is_anomaly_enabled",
    "is_grad_enabled",
    "leaves",
    "live_nodes",
    "logsumexp",
    "losses",
    "nn",
    "no_grad",
    "optim",
]
# `sum` and `compile` stay out of __all__: `from gradrs import *` must not replace the builtins.


def __getattr__(name: str) -> object:
    # These need numpy; import them on first use so `import gradrs` stays light.
    if name in ("optim", "datasets"):
        import importlib

        return importlib.import_module(f"gradrs.{name}")
    if name in ("compile", "Compiled"):
        from gradrs import compiler

        return getattr(compiler, name)
    raise AttributeError(f"module 'gradrs' has no attribute {name!r}")


def live_nodes() -> int:
    """The number of graph nodes currently alive in the process."""
    return _live_nodes()
