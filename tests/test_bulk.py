"""numpy in bulk: leaves from arrays and parameter groups (their optimiser steps are in test_optim.py)."""

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


def test_zero_grads_reads_lists_in_place_and_any_iterable():
    """``Module.zero_grad()``'s one native call: every Value's gradient becomes 0."""
    from gradrs import _core

    values = [gradrs.Value(float(i)) for i in range(5)]
    for v in values:
        v.grad = 3.0
    _core._zero_grads(values)
    assert [v.grad for v in values] == [0.0] * 5
    for v in values:
        v.grad = 3.0
    _core._zero_grads(v for v in values[:2])  # a generator: copied, then read
    assert [v.grad for v in values] == [0.0, 0.0, 3.0, 3.0, 3.0]
    _core._zero_grads([])
    with pytest.raises(TypeError, match="item 1 is float"):
        _core._zero_grads([values[0], 1.0])
    assert values[2].grad == 3.0  # nothing zeroed by a refused call


def test_module_zero_grad_zeroes_the_current_parameters():
    model = gradrs.nn.MLP(3, [4, 2])
    model([1.0, 2.0, 3.0])[0].backward()
    model.layers[0].neurons[1].w[2] = gradrs.Value(5.0)  # a replaced weight is a parameter too
    for p in model.parameters():
        p.grad = 1.5
    model.zero_grad()
    assert all(p.grad == 0.0 for p in model.parameters())
