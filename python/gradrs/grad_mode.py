"""``no_grad()`` and ``enable_grad()``: whether operations record a graph, per thread."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, cast

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
        if inspect.isgeneratorfunction(fn):
            return self._wrap_generator(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with type(self)():
                return fn(*args, **kwargs)

        return cast(F, wrapper)

    def _wrap_generator(self, fn: F) -> F:
        """The mode holds while the generator's body runs, from each resumption to its next
        yield, and not in the caller between them (as in PyTorch)."""
        mode = type(self)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with mode():
                gen = fn(*args, **kwargs)
            resume: Callable[[], Any] = functools.partial(gen.send, None)
            while True:
                try:
                    with mode():
                        item = resume()
                except StopIteration as stop:
                    return stop.value
                try:
                    sent = yield item
                except GeneratorExit:
                    with mode():
                        gen.close()
                    raise
                except BaseException as error:  # thrown in by the caller: on into the body
                    resume = functools.partial(gen.throw, error)
                else:
                    resume = functools.partial(gen.send, sent)

        return cast(F, wrapper)


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
