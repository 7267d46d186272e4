"""A Layer or MLP keeps its parameter list (and a ParamGroup over it) between calls, so that
``parameters()`` and ``zero_grad()`` do no Python work per parameter. Every edit a user can make
must still be seen: each test edits a model whose list is kept, then checks that
``parameters()`` gives exactly what walking the model gives, and that ``zero_grad()`` zeroes those
Values and no others."""

from __future__ import annotations

import copy
import pickle
import random
import timeit

import pytest

import gradrs
from gradrs import Value, nn


def walked(model: nn.MLP) -> list[Value]:
    """The model's parameters, read afresh from its parts."""
    return [p for layer in model.layers for n in layer.neurons for p in (*n.w, n.b)]


def assert_follows(model: nn.MLP, replaced: list[Value] = ()) -> None:
    expected = walked(model)
    got = model.parameters()
    assert len(got) == len(expected)
    assert all(a is b for a, b in zip(got, expected, strict=True))
    for p in [*expected, *replaced]:
        p.grad = 1.0
    model.zero_grad()
    assert all(p.grad == 0.0 for p in expected)
    # A Value taken out of the model is no longer its parameter: zero_grad() leaves it alone.
    kept_ids = {id(p) for p in expected}
    assert all(p.grad == 1.0 for p in replaced if id(p) not in kept_ids)


def fresh() -> nn.MLP:
    random.seed(0)
    model = nn.MLP(3, [4, 2])
    model.parameters()  # kept from here on
    model.zero_grad()
    return model


# Each edit returns the Values it took out of the model.
EDITS = {
    "w[i] = v": lambda m: _taking(
        [m.layers[0].neurons[1].w[2]], lambda: m.layers[0].neurons[1].w.__setitem__(2, Value(5.0))
    ),
    "w[a:b] = vs": lambda m: _taking(
        m.layers[1].neurons[0].w[0:2], lambda: m.layers[1].neurons[0].w.__setitem__(slice(0, 2), [Value(1.0)])
    ),
    "del w[i]": lambda m: _taking(
        [m.layers[0].neurons[0].w[0]], lambda: m.layers[0].neurons[0].w.__delitem__(0)
    ),
    "w.append": lambda m: m.layers[0].neurons[0].w.append(Value(2.0)) or [],
    "w.extend": lambda m: m.layers[0].neurons[0].w.extend([Value(2.0), Value(3.0)]) or [],
    "w.insert": lambda m: m.layers[0].neurons[3].w.insert(0, Value(2.0)) or [],
    "w.pop": lambda m: [m.layers[1].neurons[1].w.pop()],
    "w.remove": lambda m: _taking(
        [m.layers[0].neurons[2].w[1]], lambda: m.layers[0].neurons[2].w.remove(m.layers[0].neurons[2].w[1])
    ),
    "w.clear": lambda m: _taking(list(m.layers[0].neurons[2].w), m.layers[0].neurons[2].w.clear),
    "w.sort": lambda m: m.layers[0].neurons[0].w.sort(key=lambda v: v.data) or [],
    "w.reverse": lambda m: m.layers[0].neurons[0].w.reverse() or [],
    "w += vs": lambda m: _augment(m.layers[0].neurons[0], "add"),
    "w *= 2": lambda m: _augment(m.layers[0].neurons[0], "mul"),
    "random.shuffle(w)": lambda m: random.shuffle(m.layers[0].neurons[0].w) or [],
    "n.w = a plain list": lambda m: _taking(
        list(m.layers[0].neurons[1].w), lambda: setattr(m.layers[0].neurons[1], "w", [Value(1.0)] * 3)
    ),
    "n.b = v": lambda m: _taking(
        [m.layers[1].neurons[0].b], lambda: setattr(m.layers[1].neurons[0], "b", Value(-1.0))
    ),
    "neurons[i] = n": lambda m: _taking(
        m.layers[0].neurons[0].parameters(), lambda: m.layers[0].neurons.__setitem__(0, nn.Neuron(3))
    ),
    "neurons.append": lambda m: m.layers[1].neurons.append(nn.Neuron(4)) or [],
    "neurons.pop": lambda m: m.layers[1].neurons.pop().parameters(),
    "layer.neurons = a plain list": lambda m: _taking(
        m.layers[1].parameters(), lambda: setattr(m.layers[1], "neurons", [nn.Neuron(4)])
    ),
    "layers[i] = layer": lambda m: _taking(
        m.layers[1].parameters(), lambda: m.layers.__setitem__(1, nn.Layer(4, 2))
    ),
    "layers.append": lambda m: m.layers.append(nn.Layer(2, 1)) or [],
    "model.layers = a plain list": lambda m: _taking(
        m.layers[0].parameters(), lambda: setattr(m, "layers", [nn.Layer(3, 4), m.layers[1]])
    ),
    "two neurons share one w": lambda m: setattr(m.layers[0].neurons[1], "w", m.layers[0].neurons[0].w) or [],
    "a neuron in two layers": lambda m: m.layers[1].neurons.__setitem__(0, m.layers[0].neurons[0]) or [],
    "delattr then setattr": lambda m: _taking(
        [m.layers[0].neurons[0].b],
        lambda: (delattr(m.layers[0].neurons[0], "b"), setattr(m.layers[0].neurons[0], "b", Value(0.5))),
    ),
}


def _taking(taken, edit):
    taken = list(taken)
    edit()
    return taken


def _augment(neuron, how):
    w = neuron.w
    if how == "add":
        w += [Value(7.0)]
    else:
        w *= 2
    assert neuron.w is w  # in place, as on a list
    return []


@pytest.mark.parametrize("name", list(EDITS))
def test_parameters_and_zero_grad_follow_every_edit(name):
    model = fresh()
    replaced = EDITS[name](model)
    assert_follows(model, replaced)
    # And again after a second edit of the same kind on the now-kept list.
    model.parameters()
    replaced = EDITS[name](model)
    assert_follows(model, replaced)


def test_a_kept_list_is_the_callers_own():
    model = fresh()
    params = model.parameters()
    params.append(Value(1.0))
    params[0] = Value(2.0)
    assert_follows(model)


def test_copies_and_pickles_follow_their_own_edits():
    model = fresh()
    twin = copy.deepcopy(model)
    twin.layers[0].neurons[0].w[0] = Value(9.0)
    assert_follows(twin)
    assert_follows(model)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        loaded = pickle.loads(pickle.dumps(model, protocol=protocol))
        assert [p.data for p in loaded.parameters()] == [p.data for p in model.parameters()]
        loaded.parameters()
        loaded.layers[1].neurons[0].w[1] = Value(3.0)
        assert_follows(loaded)


def test_a_layer_alone_keeps_and_follows_too():
    layer = nn.Layer(2, 3)
    layer.parameters()
    layer.neurons[2].w[0] = Value(4.0)
    expected = [p for n in layer.neurons for p in (*n.w, n.b)]
    assert all(a is b for a, b in zip(layer.parameters(), expected, strict=True))
    layer.neurons[2].w[0].grad = 1.0
    layer.zero_grad()
    assert layer.neurons[2].w[0].grad == 0.0


def test_subclasses_are_walked_every_time():
    class FirstTwo(nn.MLP):
        def parameters(self):
            return super().parameters()[:2]

    model = FirstTwo(2, [2])
    for p in walked(model):
        p.grad = 1.0
    model.zero_grad()
    assert [p.grad for p in walked(model)] == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]


def test_a_weight_that_is_not_a_value_is_still_reported():
    model = fresh()
    model.layers[0].neurons[0].w[0] = 1.5
    assert model.parameters()[0] == 1.5  # micrograd's parameters() returns what is there
    with pytest.raises(TypeError, match="float"):
        model.zero_grad()


def test_a_model_let_go_of_gives_its_nodes_back():
    import gc

    gc.collect()
    before = gradrs.live_nodes()
    model = nn.MLP(4, [8, 2])
    model.parameters()
    model.zero_grad()
    del model
    gc.collect()
    assert gradrs.live_nodes() == before


def test_bookkeeping_does_no_python_work_per_parameter():
    """The issue's target, as a ratio with a wide margin: on MLP(64, [64, 64, 10]), each of
    ``parameters()``, ``zero_grad()`` and an Adam step costs at most a few times copying the list
    of its 8,970 Values once (what ``parameters()`` must at least do, as it returns a new list)."""
    random.seed(1)
    model = nn.MLP(64, [64, 64, 10])
    params = model.parameters()
    optimizer = gradrs.optim.Adam(params, lr=1e-3)

    def best(call):
        return min(timeit.repeat(call, number=100, repeat=7)) / 100

    copy_list = best(lambda: list(params))
    for name, call, at_most in [
        ("model.parameters()", model.parameters, 2),
        ("model.zero_grad()", model.zero_grad, 3),
        ("Adam step", optimizer.step, 8),
    ]:
        ratio = best(call) / copy_list
        assert ratio <= at_most, f"{name} took {ratio:.1f}x a list copy of its parameters"


def test_a_list_subclass_that_iterates_its_own_way_is_read_by_iterating():
    """The engine reads a list's storage directly only when iterating it would give the same
    items: the lists nn keeps qualify, a subclass with its own ``__iter__`` does not."""

    class Backwards(list):
        def __iter__(self):
            return reversed(list(super().__iter__()))

    layer = nn.Layer(3, 2, nonlin=False)
    neuron = layer.neurons[0]
    weights = [w.data for w in neuron.w]
    neuron.w = Backwards(neuron.w)
    x = [1.0, 10.0, 100.0]
    expected = sum(w * xi for w, xi in zip(reversed(weights), x, strict=True)) + neuron.b.data
    assert layer(x)[0].data == pytest.approx(expected, rel=1e-15)
    assert neuron(x).data == pytest.approx(expected, rel=1e-15)


def test_a_list_class_whose_iteration_is_replaced_later_is_read_by_iterating():
    layer = nn.Layer(3, 2, nonlin=False)
    x = [1.0, 10.0, 100.0]
    layer(x)  # the class's lists have been read in place before
    nn._EditNotingList.__iter__ = lambda self: reversed(list(list.__iter__(self)))
    try:
        assert [v.data for v in layer(x)] == [n(x).data for n in layer.neurons]
        assert [v.data for v in layer(x)] != [v.data for v in (n(x) for n in list.__iter__(layer.neurons))]
    finally:
        del nn._EditNotingList.__iter__
