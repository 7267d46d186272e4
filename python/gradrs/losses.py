"""Loss functions over Values, and L2 regularisation.

All reduce to one scalar Value. The cross-entropies are written to stay finite for logits
of any size: log-sum-exp is shifted by the largest logit, and the binary form uses
``max(z, 0) - z*y + log(1 + exp(-|z|))``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

from gradrs._core import Value, dot
from gradrs._core import sum as vsum

__all__ = [
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "hinge_loss",
    "l2_regularization",
    "mse_loss",
    "softmax",
]

Number = Value | float


def _mean(terms: list[Value]) -> Value:
    return vsum(terms) * (1.0 / len(terms))


def _check(predictions: Sequence[object], targets: Sequence[object]) -> None:
    if len(predictions) != len(targets):
        raise ValueError(f"got {len(predictions)} predictions but {len(targets)} targets")
    if len(predictions) == 0:
        raise ValueError("cannot average a loss over no samples")


def mse_loss(predictions: Sequence[Number], targets: Sequence[Number]) -> Value:
    """Mean of ``(prediction - target)**2``."""
    _check(predictions, targets)
    return _mean([(p - t) ** 2 for p, t in zip(predictions, targets, strict=True)])  # type: ignore[operator]


def hinge_loss(scores: Sequence[Value], labels: Sequence[float]) -> Value:
    """The SVM max-margin loss of micrograd's demo: mean of ``relu(1 - y*score)``, labels ±1."""
    _check(scores, labels)
    return _mean([(1 + -y * s).relu() for s, y in zip(scores, labels, strict=True)])


def _softplus(z: Value) -> Value:
    """log(1 + exp(z)) without overflow: max(z, 0) + log(1 + exp(-|z|))."""
    if z.data >= 0:
        return z + ((-z).exp() + 1).log()
    return (z.exp() + 1).log()


def binary_cross_entropy_with_logits(logits: Sequence[Value], targets: Sequence[float]) -> Value:
    """Mean binary cross-entropy of ``sigmoid(logit)`` against targets in [0, 1], computed stably."""
    _check(logits, targets)
    return _mean([_softplus(z) - z * float(y) for z, y in zip(logits, targets, strict=True)])


def softmax(logits: Sequence[Value]) -> list[Value]:
    """Probabilities from logits, shifted by the largest logit so no ``exp`` overflows."""
    shift = max(v.data for v in logits)
    exps = [(v - shift).exp() for v in logits]
    total = vsum(exps)
    return [e / total for e in exps]


def _log_softmax(logits: Sequence[Value], target: int) -> Value:
    shift = max(v.data for v in logits)
    log_total = vsum([(v - shift).exp() for v in logits]).log()
    return logits[target] - shift - log_total


def cross_entropy(logits: Sequence[Value] | Sequence[Sequence[Value]], targets: int | Sequence[int]) -> Value:
    """Softmax cross-entropy: one sample (a list of logits and a class index) or a batch (mean)."""
    if isinstance(targets, numbers.Integral):
        batch: list[Sequence[Value]] = [logits]  # type: ignore[list-item]
        classes = [targets]
    else:
        batch = list(logits)  # type: ignore[arg-type]
        classes = list(targets)
        _check(batch, classes)
    terms = []
    for row, target in zip(batch, classes, strict=True):
        if not 0 <= target < len(row):
            raise ValueError(f"class index {target} is out of range for {len(row)} logits")
        terms.append(-_log_softmax(row, target))
    return terms[0] if len(terms) == 1 else _mean(terms)


def l2_regularization(parameters: Sequence[Value], alpha: float) -> Value:
    """``alpha * sum(p*p)`` as one fused node."""
    return alpha * dot(parameters, parameters)
