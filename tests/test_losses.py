"""Losses against numpy and finite differences; the stable forms stay finite."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradrs import Value, losses


def numeric_grads(f, xs, h=1e-6):
    grads = []
    for i in range(len(xs)):
        up = list(xs)
        down = list(xs)
        up[i] += h
        down[i] -= h
        grads.append((f(up) - f(down)) / (2 * h))
    return grads


def check(loss_fn, xs, reference, rel=1e-6):
    values = [Value(x) for x in xs]
    loss = loss_fn(values)
    loss.backward()
    assert loss.data == pytest.approx(reference(np.array(xs)), rel=1e-12, abs=1e-12)
    expected = numeric_grads(lambda v: reference(np.array(v)), xs)
    assert [v.grad for v in values] == pytest.approx(expected, rel=rel, abs=1e-7)


def test_mse():
    ys = [1.0, -1.0, 0.5]
    check(lambda v: losses.mse_loss(v, ys), [0.3, -0.2, 2.0], lambda p: np.mean((p - ys) ** 2))


def test_hinge_is_micrograds_demo_loss():
    ys = [1.0, -1.0, 1.0, -1.0]
    check(
        lambda v: losses.hinge_loss(v, ys),
        [0.3, 0.4, 2.0, -3.0],
        lambda p: np.mean(np.maximum(0, 1 - np.array(ys) * p)),
    )


def test_binary_cross_entropy_matches_the_formula_and_stays_finite():
    ts = [1.0, 0.0, 1.0]

    def reference(z):
        p = 1 / (1 + np.exp(-z))
        return np.mean(-(np.array(ts) * np.log(p) + (1 - np.array(ts)) * np.log(1 - p)))

    check(lambda v: losses.binary_cross_entropy_with_logits(v, ts), [0.3, -1.2, 2.5], reference)
    big = [Value(1000.0), Value(-1000.0)]
    loss = losses.binary_cross_entropy_with_logits(big, [0.0, 1.0])
    loss.backward()
    assert loss.data == pytest.approx(1000.0)
    assert [v.grad for v in big] == pytest.approx([0.5, -0.5])


def test_softmax_cross_entropy_matches_eurekalabs_numbers_and_is_stable():
    logits = [Value(1.0), Value(2.0), Value(3.0)]
    loss = losses.cross_entropy(logits, 2)
    loss.backward()
    assert loss.data == pytest.approx(0.40760596444438013, rel=1e-12)
    assert [v.grad for v in logits] == pytest.approx(
        [0.09003057317038045, 0.24472847105479764, -0.33475904422517805], rel=1e-9
    )
    huge = [Value(1000.0), Value(0.0)]
    loss = losses.cross_entropy(huge, 1)
    loss.backward()
    assert loss.data == pytest.approx(1000.0) and math.isfinite(huge[0].grad)
    batch = losses.cross_entropy([[Value(0.0), Value(1.0)], [Value(2.0), Value(0.0)]], [1, 0])
    assert batch.data == pytest.approx(np.mean([np.log(1 + np.exp(-1)), np.log(1 + np.exp(-2))]))
    with pytest.raises(ValueError, match="out of range"):
        losses.cross_entropy([Value(0.0)], 3)
    probs = losses.softmax([Value(0.0), Value(math.log(3))])
    assert [p.data for p in probs] == pytest.approx([0.25, 0.75])


def test_l2_regularization_is_one_node():
    ps = [Value(1.0), Value(-2.0), Value(3.0)]
    reg = losses.l2_regularization(ps, 1e-4)
    reg.backward()
    assert reg.data == pytest.approx(1e-4 * 14)
    assert [p.grad for p in ps] == pytest.approx([2e-4, -4e-4, 6e-4])


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="2 predictions but 1 targets"):
        losses.mse_loss([Value(1.0), Value(2.0)], [1.0])
