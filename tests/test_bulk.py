"""numpy in bulk: leaves from arrays, parameter groups, fused optimizer steps."""

from __future__ import annotations

import numpy as np
import pytest

import gradrs
from gradrs import ParamGroup, Value


def test_leaves_keep_the_array_shape():
    xs = gradrs.leaves(np.arange(6.0).reshape(3, 2))
    assert [[v.data for v in row] for row in xs] == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    assert gradrs.leaves(np.float64(2.5)).data == 2.5
    assert all(v._op == "" for row in xs for v in row)


def test_param_group_reads_and_writes_arrays():
    ps = [Value(float(i)) for i in range(4)]
    group = ParamGroup(ps)
    assert len(group) == 4
    np.testing.assert_array_equal(group.data(), [0, 1, 2, 3])
    group.set_data(np.array([5.0, 6.0, 7.0, 8.0]))
    assert [p.data for p in ps] == [5, 6, 7, 8]
    group.set_grad(np.ones(4))
    np.testing.assert_array_equal(gradrs.grad_of(ps), np.ones(4))
    group.zero_grad()
    assert all(p.grad == 0 for p in ps)
    with pytest.raises(ValueError, match="expected an array of 4"):
        group.set_data(np.zeros(3))
    with pytest.raises(TypeError):
        ParamGroup([ps[0], 1.0])


def test_param_group_keeps_its_values_alive():
    baseline = gradrs.live_nodes()
    group = ParamGroup([Value(1.0), Value(2.0)])
    assert gradrs.live_nodes() == baseline + 2
    assert [v.data for v in group.values()] == [1.0, 2.0]
    del group
    assert gradrs.live_nodes() == baseline


def test_sgd_step_matches_torch_formula():
    ps = [Value(1.0), Value(-2.0)]
    group = ParamGroup(ps)
    velocity = np.zeros(2)
    grads = np.array([0.5, -1.0])
    expected, buf = np.array([1.0, -2.0]), np.zeros(2)
    for _ in range(3):
        group.set_grad(grads)
        group.sgd_step(0.1, 0.9, 0.01, velocity)
        g = grads + 0.01 * expected
        buf = 0.9 * buf + g
        expected = expected - 0.1 * buf
    np.testing.assert_allclose(group.data(), expected, rtol=1e-15)


def test_adam_step_matches_torch_formula():
    ps = [Value(1.0), Value(-2.0)]
    group = ParamGroup(ps)
    m, v = np.zeros(2), np.zeros(2)
    p, em, ev = np.array([1.0, -2.0]), np.zeros(2), np.zeros(2)
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.999, 1e-8, 0.1
    for t in range(1, 4):
        g = np.array([0.3, -0.7]) * t
        group.set_grad(g)
        group.adam_step(t, lr, b1, b2, eps, wd, True, m, v)
        p = p * (1 - lr * wd)
        em = em + (1 - b1) * (g - em)
        ev = ev * b2 + (1 - b2) * g * g
        denom = np.sqrt(ev) / np.sqrt(1 - b2**t) + eps
        p = p - lr / (1 - b1**t) * (em / denom)
    np.testing.assert_allclose(group.data(), p, rtol=1e-14)
    np.testing.assert_allclose(m, em, rtol=1e-14)
