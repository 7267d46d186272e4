"""How the binding reads Values and numbers from Python, and holds the nodes it keeps.

Every call that takes Values (or Values and numbers) reads them in one place
(``rust/bindings/handles.rs``), so each says the same thing about an item of the wrong type,
and every object that keeps nodes alive (``ParamGroup``, a compiled program) gives them back
when it goes.
"""

from __future__ import annotations

import gc
import re

import numpy as np
import pytest

import gradrs
from gradrs import Value, _core, nn

OPERANDS = "must be Values or real numbers (int, float or numpy scalar); item {i} is {kind}"


def test_one_message_for_an_item_that_is_neither_value_nor_number():
    w = Value(1.0)
    cases = [
        (lambda: gradrs.sum([w, "a"]), "sum() items", 1, "str"),
        (lambda: gradrs.logsumexp([None]), "logsumexp() items", 0, "NoneType"),
        (lambda: gradrs.dot([w, w], [1.0, []]), "dot() inputs", 1, "list"),
        (lambda: gradrs.dot([w, {}], [1.0, 2.0]), "dot() weights", 1, "dict"),
        (lambda: _core._dense([[w]], [w], "relu", ["x"]), "layer input", 0, "str"),
        (lambda: nn.Layer(2, 1)([1.0, "x"]), "layer input", 1, "str"),
    ]
    for call, what, i, kind in cases:
        with pytest.raises(TypeError, match=re.escape(f"{what} " + OPERANDS.format(i=i, kind=kind))):
            call()


def test_one_message_for_a_single_argument_that_is_neither():
    w = Value(1.0)
    with pytest.raises(TypeError, match=re.escape("sum() start must be a Value or a real number")):
        gradrs.sum([w], "0")
    with pytest.raises(TypeError, match=re.escape("dot() bias must be a Value or a real number (int, float")):
        gradrs.dot([w], [1.0], [])
    assert gradrs.sum([w], 2).data == 3.0 and gradrs.dot([w], [2.0], w).data == 3.0


def test_a_number_too_large_for_a_float_is_an_overflow_error_everywhere():
    w = Value(1.0)
    for call in [
        lambda: w + 10**400,
        lambda: 10**400 * w,
        lambda: gradrs.sum([w, 10**400]),
        lambda: gradrs.dot([w], [10**400]),
        lambda: gradrs.sum([w], 10**400),
        lambda: nn.Layer(1, 1)([10**400]),
    ]:
        with pytest.raises(OverflowError):
            call()


def test_an_operator_converts_its_other_side_once():
    """A non-number's ``__float__`` runs once, and the operator hands Python NotImplemented."""

    class Refuses:
        calls = 0

        def __float__(self) -> float:
            Refuses.calls += 1
            raise TypeError("not a number")

    v = Value(2.0)
    with pytest.raises(TypeError, match="unsupported operand"):
        v * Refuses()
    assert Refuses.calls == 1
    assert (v * Value(3.0)).data == 6.0 and (v * 3).data == 6.0 and (v * np.float64(3)).data == 6.0


def test_holders_give_their_nodes_back():
    gc.collect()
    before = gradrs.live_nodes()
    params = [Value(float(i)) for i in range(5)]
    x = Value(1.0)
    group = gradrs.ParamGroup(params)
    program = _core._Program([gradrs.dot(params, [x] * 5)], [x])
    assert len(program.parameters()) == 5 and [v.data for v in group.values()] == [0.0, 1.0, 2.0, 3.0, 4.0]
    del params, x
    gc.collect()
    assert gradrs.live_nodes() > before  # the group and the program hold the parameters
    del group, program
    gc.collect()
    assert gradrs.live_nodes() == before


def test_attached_reads_at_most_one_item_past_the_inputs():
    x = Value(1.0)
    program = _core._Program([x * 2], [x])
    taken = []

    def endless():
        while True:
            taken.append(None)
            yield None

    with pytest.raises(ValueError, match="more than 1 items"):
        program.run(np.array([1.0]), endless())
    assert len(taken) == 2
