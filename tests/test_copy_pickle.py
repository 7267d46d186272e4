"""copy, deepcopy and pickle of Values: a copy is a new, independent leaf."""

from __future__ import annotations

import copy
import pickle

import pytest

import gradrs
from gradrs import Value


@pytest.mark.parametrize("clone", [copy.copy, copy.deepcopy, lambda v: pickle.loads(pickle.dumps(v))])
def test_a_copy_is_an_independent_leaf_with_data_grad_and_label(clone):
    a = Value(2.0, label="a")
    b = a * 3
    b.backward()
    for original, data, grad in ((a, 2.0, 3.0), (b, 6.0, 1.0)):
        twin = clone(original)
        assert twin is not original and twin != original
        assert (twin.data, twin.grad) == (data, grad)
        assert twin._op == "" and twin._prev == set()
        twin.data += 1
        twin.grad = 0
        assert (original.data, original.grad) == (data, grad)
    assert clone(a).label == "a"


def test_deepcopy_keeps_sharing_within_one_copy():
    a = Value(1.0)
    pair = copy.deepcopy([a, a])
    assert pair[0] is pair[1] and pair[0] is not a


def test_pickling_many_values_keeps_memory_accounted():
    before = gradrs.live_nodes()
    blob = pickle.dumps([Value(float(i)) for i in range(100)])
    restored = pickle.loads(blob)
    assert [v.data for v in restored] == [float(i) for i in range(100)]
    assert gradrs.live_nodes() == before + 100
    del restored
    assert gradrs.live_nodes() == before
