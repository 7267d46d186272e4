"""Python code run while gradrs reads its arguments cannot free the Values being read.

Reading an item can call back into Python (``__float__``, ``__index__``, a generator's next
step), and that code may drop every other reference to the Values read so far and make new
ones, which could take over the freed nodes. Each case here gives the number eager Python
code gives, or a clear error, and never a gradient to an unrelated Value. A failed call keeps
no node alive.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest

import gradrs
from gradrs import Value, _core, nn


class Dropper:
    """A number whose conversion empties ``box`` (dropping the only references to the Values in
    it) and then makes new Values, kept in ``made``, where the freed nodes were."""

    def __init__(self, box: list, number: float = 1.0) -> None:
        self.box, self.number, self.made = box, number, []

    def drop(self) -> None:
        self.box.clear()
        gc.collect()
        self.made += [Value(42.0) for _ in range(64)]


class ByFloat(Dropper):
    def __float__(self) -> float:
        self.drop()
        return self.number


class ByIndex(Dropper):
    def __index__(self) -> int:
        self.drop()
        return int(self.number)


DROPPERS = pytest.mark.parametrize("kind", [ByFloat, ByIndex], ids=["__float__", "__index__"])


def untouched(dropper: Dropper) -> bool:
    return all(v.grad == 0.0 and v.data == 42.0 for v in dropper.made) and len(dropper.made) == 64


@DROPPERS
def test_sum(kind):
    box: list = [Value(2.0), Value(3.0)]
    evil = kind(box)
    box.append(evil)
    total = gradrs.sum(box)
    assert box == [] and total.data == 6.0  # 2 + 3 + 1, as Python's sum gives
    total.backward()
    assert sorted((c.data, c.grad) for c in total._prev) == [(1.0, 1.0), (2.0, 1.0), (3.0, 1.0)]
    assert untouched(evil)


@DROPPERS
def test_sum_start(kind):
    box: list = [Value(5.0)]
    evil = kind(box)
    total = gradrs.sum(box + [evil], start=box[0])
    assert total.data == 11.0
    total.backward()
    assert untouched(evil)


@DROPPERS
def test_dot(kind):
    weights: list = [Value(2.0), Value(-3.0)]
    inputs: list = [Value(5.0)]
    evil = kind(weights)
    inputs.append(evil)
    out = gradrs.dot(weights, inputs, Value(0.5))
    assert weights == [] and out.data == 2.0 * 5.0 - 3.0 + 0.5
    out.backward()
    grads = sorted((c.data, c.grad) for c in out._prev)
    assert grads == [(-3.0, 1.0), (0.5, 1.0), (1.0, -3.0), (2.0, 5.0), (5.0, 2.0)]
    assert untouched(evil)


@DROPPERS
def test_dense_reads_weights_after_the_inputs_ran_python_code(kind):
    row = [Value(2.0), Value(-3.0)]
    evil = kind(row)  # empties the weight row while the inputs are converted
    with pytest.raises(ValueError, match="neuron 0 of the layer expects 0 inputs, got 2"):
        _core._dense([row], [Value(0.5)], "linear", [Value(5.0), evil])

    class Replacer(kind):
        def drop(self) -> None:
            row[:] = [Value(10.0), Value(20.0)]  # the old weights' last references go
            super().drop()

    row = [Value(2.0), Value(-3.0)]
    evil = Replacer([])
    (out,) = _core._dense([row], [Value(0.5)], "linear", [5.0, evil])
    assert out.data == 10.0 * 5.0 + 20.0 * 1.0 + 0.5  # the Values the row holds when the nodes are made
    out.backward()
    assert [w.grad for w in row] == [5.0, 1.0]
    assert untouched(evil)


@DROPPERS
def test_layer_inputs_that_replace_the_neurons(kind):
    layer = nn.Layer(2, 3, nonlin=False)
    weights = [[w.data for w in n.w] for n in layer.neurons]
    biases = [n.b.data for n in layer.neurons]

    class Replacer(kind):
        def drop(self) -> None:
            for n in layer.neurons:
                n.w = [Value(100.0), Value(100.0)]  # the old weights' last references go
            super().drop()

    evil = Replacer([])
    out = layer([Value(2.0), evil])
    # The layer read its neurons when it was called: the weights they held then.
    expected = [b + w[0] * 2.0 + w[1] * 1.0 for w, b in zip(weights, biases, strict=True)]
    assert [o.data for o in out] == pytest.approx(expected, rel=1e-12)
    gradrs.sum(out).backward()
    assert all(w.grad == 0.0 for n in layer.neurons for w in n.w)
    assert untouched(evil)


def test_a_generator_that_drops_what_it_yielded():
    made = []

    def values():
        v = Value(2.0)
        yield v
        del v  # only gradrs holds it now
        gc.collect()
        made.extend(Value(42.0) for _ in range(64))
        yield Value(3.0)
        yield 4.0

    total = gradrs.sum(values())
    assert total.data == 9.0
    total.backward()
    assert sorted((c.data, c.grad) for c in total._prev) == [(2.0, 1.0), (3.0, 1.0), (4.0, 1.0)]
    assert all(v.grad == 0.0 for v in made)
    out = gradrs.dot(values(), [1.0, 2.0, 3.0])
    assert out.data == 2.0 + 6.0 + 12.0
    group = gradrs.ParamGroup(v for v in values() if isinstance(v, Value))
    np.testing.assert_array_equal(group.data(), [2.0, 3.0])
    assert [v.data for v in group.values()] == [2.0, 3.0]


def test_an_iterator_that_empties_its_list():
    box = [Value(float(i)) for i in range(5)]

    class Draining:
        def __iter__(self):
            return self

        def __next__(self):
            if not box:
                raise StopIteration
            item = box.pop(0)
            gc.collect()
            return item

    group = gradrs.ParamGroup(Draining())
    assert box == [] and [v.data for v in group.values()] == [0.0, 1.0, 2.0, 3.0, 4.0]


@DROPPERS
def test_param_group_never_converts_and_keeps_nothing_on_error(kind):
    box: list = [Value(1.0), Value(2.0)]
    evil = kind(box)
    before = gradrs.live_nodes()
    with pytest.raises(TypeError, match=f"ParamGroup items must be Values; item 2 is {kind.__name__}"):
        gradrs.ParamGroup([*box, evil])
    assert box != [] and evil.made == []  # it is not a number here: no conversion ran
    assert gradrs.live_nodes() == before


@DROPPERS
def test_leaves(kind):
    box: list = [Value(1.0)]
    evil = kind(box, number=7.0)
    xs = gradrs.leaves([0.5, evil])
    assert [x.data for x in xs] == [0.5, 7.0]


def test_one_message_for_a_non_value_everywhere():
    w = Value(1.0)
    cases = [
        (lambda: gradrs.ParamGroup([w, "x"]), "ParamGroup items must be Values; item 1 is str"),
        (lambda: gradrs.data_of([w, None]), "ParamGroup items must be Values; item 1 is NoneType"),
        (
            lambda: _core._dense([[w, 2.0]], [w], "relu", [1.0, 1.0]),
            "layer weights must be Values; item 1 is float",
        ),
        (lambda: _core._dense([[w]], [0.0], "relu", [1.0]), "layer biases must be Values; item 0 is float"),
        (lambda: _core._dense([[w]], [w], [None], [1.0]), "activations must be str; item 0 is NoneType"),
        (lambda: _core._Program([w, 1.0], [w]), "outputs must be Values; item 1 is float"),
        (lambda: _core._Program([w], (w, "x")), "inputs must be Values; item 1 is str"),
        (
            lambda: _core._Program([w * 2], [w]).run(np.array([1.0]), [2.0]),
            "attached must be Values or None; item 0 is float",
        ),
    ]
    for call, message in cases:
        with pytest.raises(TypeError, match=message):
            call()
