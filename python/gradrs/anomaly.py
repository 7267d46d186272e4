"""``detect_anomaly()``: stop at the first op that produces nan, and say which."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

from gradrs._core import AnomalyError, _set_detect_anomaly

__all__ = ["AnomalyError", "detect_anomaly", "is_anomaly_enabled"]

F = TypeVar("F", bound=Callable[..., Any])

_enabled = False


def is_anomaly_enabled() -> bool:
    """Whether a ``detect_anomaly()`` block is active (as ``torch.is_anomaly_enabled``)."""
    return _enabled


class detect_anomaly:
    """Inside it, the first op whose result or backward gradient is nan raises ``AnomalyError``.

    The error names the op and its inputs' values (and, in backward, the gradient flowing into
    it). Outside it, nan and inf follow IEEE arithmetic silently, as in PyTorch, and the check
    costs nothing but one flag read per op. Usable as a decorator too. Like PyTorch's, the
    setting is process-wide. An op whose inputs are already nan is not reported again: the
    error points at the op that made the first nan. Compiled functions (``gradrs.compile``) run
    op by op inside it, so that the error names the op rather than the whole program.
    """

    def __enter__(self) -> detect_anomaly:
        global _enabled
        self._previous = _set_detect_anomaly(True)
        _enabled = True
        return self

    def __exit__(self, *exc: object) -> None:
        global _enabled
        _set_detect_anomaly(self._previous)
        _enabled = self._previous

    def __call__(self, fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with detect_anomaly():
                return fn(*args, **kwargs)

        return cast(F, wrapper)
