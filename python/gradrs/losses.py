"""Loss functions over Values, and L2 regularisation.

All reduce to one scalar Value. The cross-entropies stay finite for logits of any size and
never read a Value's number (``.data``), so a ``gradrs.compile`` trace taken at one point
replays correctly at any other: the shifting by the largest logit happens inside the
``logsumexp`` and ``softplus`` ops, which recompute it at every replay.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence
from typing import cast

from gradrs._core import Value, dot, logsumexp
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


def _mean(terms: Sequence[Number]) -> Value:
    return vsum(terms) * (1.0 / len(terms))


def _check(predictions: Sequence[object], targets: Sequence[object]) -> None:
    if len(predictions) != len(targets):
        raise ValueError(f"got {len(predictions)} predictions but {len(targets)} targets")
    if len(predictions) == 0:
        raise ValueError("cannot average a loss over no samples")


def mse_loss(predictions: Sequence[Number], targets: Sequence[Number]) -> Value:
    """Mean of ``(prediction - target)**2``."""
    _check(predictions, targets)
    return _mean([(p - t) ** 2 for p, t in zip(predictions, targets, strict=True)])


def hinge_loss(scores: Sequence[Value], labels: Sequence[float]) -> Value:
    """The SVM max-margin loss of micrograd's demo: mean of ``relu(1 - y*score)``, labels ±1."""
    _check(scores, labels)
    return _mean([(1 + -y * s).relu() for s, y in zip(scores, labels, strict=True)])


def _binary_cross_entropy(z: Value, y: Number) -> Value:
    """``-(y*log(sigmoid(z)) + (1-y)*log(1-sigmoid(z)))`` as ``y*softplus(-z) + (1-y)*softplus(z)``.

    Both terms are non-negative, so nothing cancels, and softplus without PyTorch's threshold
    of 20 is exact for any z: the value and the gradient ``sigmoid(z) - y`` keep full relative
    precision even where they are tiny (PyTorch's ``(1-y)*z - logsigmoid(z)`` loses it for
    y = 0 and z << 0, and its gradient for y = 1 and z >> 0).
    """
    return y * (-z).softplus(threshold=math.inf) + (1 - y) * z.softplus(threshold=math.inf)


def binary_cross_entropy_with_logits(logits: Sequence[Value], targets: Sequence[Number]) -> Value:
    """Mean binary cross-entropy of ``sigmoid(logit)`` against targets in [0, 1], computed stably."""
    _check(logits, targets)
    return _mean([_binary_cross_entropy(z, y) for z, y in zip(logits, targets, strict=True)])


def softmax(logits: Sequence[Value]) -> list[Value]:
    """Probabilities from logits: ``exp(v - logsumexp(logits))``, so no ``exp`` overflows."""
    log_total = logsumexp(logits)
    return [(v - log_total).exp() for v in logits]


def _negative_log_softmax(logits: Sequence[Value], target: int) -> Value:
    """``logsumexp(logits) - logits[target]``, computed as ``logsumexp(v - logits[target])``.

    Shifting by the target's logit first makes the result the sum of two non-negative parts
    (the largest shifted logit and the log of a sum of at least 1), as in PyTorch's
    ``log_softmax``, so a loss near 0 keeps its precision instead of cancelling.
    """
    chosen = logits[target]
    return logsumexp([v - chosen for v in logits])


def _class_index(target: object, n_classes: int) -> int:
    try:
        # ignore[arg-type]: any object may come here; operator.index is the check that refuses it.
        index = operator.index(target)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"a class index must be an int, not {type(target).__name__}"
            " (under gradrs.compile, close over the targets instead of passing them)"
        ) from None
    if not 0 <= index < n_classes:
        raise ValueError(f"class index {index} is out of range for {n_classes} logits")
    return index


def cross_entropy(logits: Sequence[Value] | Sequence[Sequence[Value]], targets: int | Sequence[int]) -> Value:
    """Softmax cross-entropy: one sample (a list of logits and a class index) or a batch (mean)."""
    # int is named beside Integral for type checkers only: typeshed does not register it as one.
    if isinstance(targets, (int, numbers.Integral)):
        # One class index means one sample: the logits are a single list.
        batch = [cast("Sequence[Value]", logits)]
        classes: list[object] = [targets]
    else:
        batch = list(cast("Sequence[Sequence[Value]]", logits))
        classes = list(targets)
        _check(batch, classes)
    terms = [
        _negative_log_softmax(row, _class_index(target, len(row)))
        for row, target in zip(batch, classes, strict=True)
    ]
    return terms[0] if len(terms) == 1 else _mean(terms)


def l2_regularization(parameters: Sequence[Value], alpha: float) -> Value:
    """``alpha * sum(p*p)`` as one fused node."""
    return alpha * dot(parameters, parameters)
