"""``gradcheck``: analytic gradients against central finite differences.

The lecture checks a derivative by nudging an input by ``h`` and watching the output move;
this is that check as a tool, with ``torch.autograd.gradcheck``'s defaults and verdict.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from gradrs._core import Value, _set_grad_enabled

__all__ = ["GradcheckError", "gradcheck"]


class GradcheckError(RuntimeError):
    """The analytic and numerical gradients of some input disagree."""


def _as_floats(inputs: Sequence[Any]) -> list[float]:
    floats = []
    for i, x in enumerate(inputs):
        if isinstance(x, Value):
            floats.append(x.data)
        else:
            try:
                floats.append(float(x))
            except (TypeError, ValueError) as error:
                raise TypeError(
                    f"gradcheck input {i} must be a Value or a real number, not {type(x).__name__}"
                ) from error
    return floats


def _evaluate(fn: Callable[..., Any], point: list[float]) -> float:
    previous = _set_grad_enabled(False)  # the nudged evaluations need no graph
    try:
        out = fn(*[Value(x) for x in point])
    finally:
        _set_grad_enabled(previous)
    if not isinstance(out, Value):
        raise TypeError(f"gradcheck needs fn to return a Value, got {type(out).__name__}")
    return out.data


def _analytic(fn: Callable[..., Any], point: list[float]) -> list[float]:
    leaves = [Value(x) for x in point]
    out = fn(*leaves)
    if not isinstance(out, Value):
        raise TypeError(f"gradcheck needs fn to return a Value, got {type(out).__name__}")
    out.backward()
    return [leaf.grad for leaf in leaves]


def gradcheck(
    fn: Callable[..., Value],
    inputs: Sequence[Value | float],
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    raise_exception: bool = True,
) -> bool:
    """Whether ``fn``'s gradients at ``inputs`` agree with central finite differences.

    ``fn`` takes one Value per input and returns a scalar Value. It is evaluated on fresh leaves
    holding the inputs' data, so the caller's Values (and their ``.grad``) are left alone. For
    each input ``i`` the analytic ``d fn/d x_i`` must satisfy
    ``|analytic - numerical| <= atol + rtol * |numerical|`` with the numerical derivative
    ``(fn(x + eps) - fn(x - eps)) / (2 eps)``. Backward must also be reentrant: a second graph
    built from the same inputs gives bit-identical gradients.

    Returns True; on a disagreement raises ``GradcheckError`` naming the input and both numbers,
    or returns False when ``raise_exception`` is False.
    """
    point = _as_floats(inputs)
    analytic = _analytic(fn, point)
    for i, (x, a) in enumerate(zip(point, analytic, strict=True)):
        up, down = list(point), list(point)
        up[i] = x + eps
        down[i] = x - eps
        numerical = (_evaluate(fn, up) - _evaluate(fn, down)) / (2 * eps)
        if not abs(a - numerical) <= atol + rtol * abs(numerical):
            given = inputs[i]
            name = given.label if isinstance(given, Value) and given.label else f"input {i}"
            message = (
                f"gradcheck failed for {name} (value {x!r}): analytic gradient {a!r}, "
                f"numerical gradient {numerical!r} (atol={atol}, rtol={rtol}, eps={eps})"
            )
            if raise_exception:
                raise GradcheckError(message)
            return False
    again = _analytic(fn, point)
    if again != analytic:
        message = (
            "backward is not reentrant: two graphs built from the same inputs gave different gradients "
            f"{analytic!r} and {again!r}"
        )
        if raise_exception:
            raise GradcheckError(message)
        return False
    return True
