"""``no_grad()`` and ``enable_grad()``: whether operations record a graph, per thread."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from gradrs._core import _set_grad_enabled, is_grad_enabled

__all__ = ["enable_grad", "is_grad_enabled", "no_grad"]

F = TypeVar("F", bound=Callable[..., Any])


class _GradMode:
    enabled: bool

    def __enter__(self) -> None:
        self._previous = _set_grad_enabled(self.enabled)

    def __exit__(self, *exc: object) -> None:
        _set_grad_enabled(self._previous)

    def __call__(self, fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with type(self)():
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]


class no_grad(_GradMode):
    """Inside it, operations compute values without recording nodes (for evaluation).

    Results are plain leaves: nothing they were computed from is kept alive, and
    ``backward()`` through them reaches nothing. Like PyTorch's, it applies to the
    current thread only and can be used as a decorator.
    """

    enabled = False


class enable_grad(_GradMode):
    """Turns recording back on inside a ``no_grad()`` block."""

    enabled = True
