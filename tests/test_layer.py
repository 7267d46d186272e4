"""nn.Layer and the one native call it makes per layer, ``_core._dense``.

A Layer computes with the Values its neurons hold at the moment of the call. Each state case
changes a layer (copies it, shares neurons or weights, mutates lists, reassigns attributes,
round-trips it through pickle) and then checks the layer's outputs and every gradient against
the same neurons computed micrograd's way, one ``Value`` op at a time, and that
``parameters()`` returns the Values the neurons hold now. The last cases check the layer's
arity and ``_dense``'s refusals of bad arguments.
"""

from __future__ import annotations

import builtins
import copy
import pickle
import random
from pathlib import Path

import numpy as np
import pytest

import gradrs
from gradrs import Value, _core, nn

ACTIVATION = {"relu": Value.relu, "tanh": Value.tanh, "sigmoid": Value.sigmoid, "linear": lambda v: v}


def by_hand(layer: nn.Layer, x: list[Value]) -> list[Value]:
    """micrograd's Neuron.__call__ for each neuron: ``act(sum(wi*xi) + b)``."""
    return [
        ACTIVATION[n.activation](builtins.sum((wi * xi for wi, xi in zip(n.w, x, strict=True)), n.b))
        for n in layer.neurons
    ]


def distinct(values: list[Value]) -> list[Value]:
    """``values`` without repeats (Values compare by node), in order."""
    seen: dict[Value, None] = {}
    for v in values:
        seen.setdefault(v, None)
    return list(seen)


def check(layer: nn.Layer, x: list[float]) -> None:
    """The layer's outputs and gradients equal the op-by-op computation over its current Values."""
    current = [p for n in layer.neurons for p in (*n.w, n.b)]
    params = layer.parameters()
    assert len(params) == len(current) and all(p is q for p, q in zip(params, current, strict=True))
    inputs = [Value(v) for v in x]
    watched = distinct(params) + inputs
    results = []
    for compute in (lambda: layer(inputs), lambda: by_hand(layer, inputs)):
        for v in watched:
            v.grad = 0.0
        outs = compute()
        outs = outs if isinstance(outs, list) else [outs]
        loss = builtins.sum((k + 1.5) * out for k, out in enumerate(outs))  # each output weighs differently
        loss.backward()
        results.append(([out.data for out in outs], [v.grad for v in watched]))
    (data, grads), (expected_data, expected_grads) = results
    assert data == pytest.approx(expected_data, rel=1e-12, abs=1e-15)
    assert grads == pytest.approx(expected_grads, rel=1e-12, abs=1e-15)
    assert any(g != 0.0 for g in grads)  # the comparison saw gradients, not only zeros


def mixed_layer() -> nn.Layer:
    """A layer whose neurons use every activation, with biases that leave each one active."""
    random.seed(4)
    layer = nn.Layer(3, 4, activation="tanh")
    for n, name in zip(layer.neurons, ("relu", "tanh", "sigmoid", "linear"), strict=True):
        n.activation = name
        n.b.data = 0.5
    return layer


def tanh_layer() -> nn.Layer:
    """A layer of one activation (the case an earlier version computed from a cached copy)."""
    random.seed(5)
    layer = nn.Layer(3, 4, activation="tanh")
    for n in layer.neurons:
        n.b.data = 0.5
    return layer


LAYERS = pytest.mark.parametrize("make", [mixed_layer, tanh_layer], ids=["mixed", "tanh"])


X = [0.3, -0.2, 0.4]


def test_a_fresh_layer_of_each_activation():
    for name in ("relu", "tanh", "sigmoid", "linear"):
        random.seed(1)
        check(nn.Layer(3, 5, activation=name), X)
    check(mixed_layer(), X)


@LAYERS
def test_copy_then_new_neurons_leaves_the_original_alone(make):
    layer = make()
    layer(X)
    before = [v.data for v in layer(X)]
    twin = copy.copy(layer)
    twin.neurons = [nn.Neuron(3, activation="tanh") for _ in range(2)]
    check(twin, X)
    assert all(p not in layer.parameters() for p in twin.parameters())
    assert [v.data for v in layer(X)] == before
    check(layer, X)


@pytest.mark.parametrize(
    "clone", [copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))], ids=["deepcopy", "pickle"]
)
@LAYERS
def test_deep_copies_compute_with_their_own_values(clone, make):
    layer = make()
    layer(X)
    twin = clone(layer)
    twin.neurons[0].w[0].data += 1.0
    twin.neurons[3].b = Value(-2.0)
    check(twin, X)
    check(layer, X)
    assert all(p is not q for p, q in zip(layer.parameters(), twin.parameters(), strict=True))
    assert (twin.neurons[3].b.data, layer.neurons[3].b.data) == (-2.0, 0.5)


@LAYERS
def test_one_neuron_in_two_layers(make):
    first, second = make(), make()
    shared = first.neurons[1]
    second.neurons[2] = shared  # weight tying
    first(X), second(X)
    shared.w[0] = Value(100.0)
    for layer in (first, second):
        check(layer, X)
        assert layer.neurons[1 if layer is first else 2].w[0].data == 100.0
    assert second(X)[2].data == first(X)[1].data
    shared.activation = "linear"
    check(first, X)
    check(second, X)


@LAYERS
def test_one_weight_in_two_neurons_gets_both_gradients(make):
    layer = make()
    tied = layer.neurons[0].w[1]
    layer.neurons[3].w[1] = tied
    layer.neurons[3].b = layer.neurons[0].b
    check(layer, X)
    assert len(distinct(layer.parameters())) == len(layer.parameters()) - 2


@pytest.mark.parametrize(
    "change",
    [
        lambda layer: layer.neurons[0].w.__setitem__(0, Value(-3.0)),
        lambda layer: layer.neurons[1].w.__setitem__(slice(0, 2), [Value(0.25), Value(-0.5)]),
        lambda layer: layer.neurons[2].w.reverse(),
        lambda layer: layer.neurons.pop(),
        lambda layer: layer.neurons.pop(0),
        lambda layer: layer.neurons.append(nn.Neuron(3, activation="sigmoid")),
        lambda layer: layer.neurons.insert(1, layer.neurons[3]),
        lambda layer: layer.neurons.__delitem__(slice(1, 3)),
        lambda layer: setattr(layer.neurons[1], "w", [Value(1.0), Value(2.0), Value(-1.0)]),
        lambda layer: setattr(layer.neurons[1], "b", Value(-0.125)),
        lambda layer: setattr(layer, "neurons", [nn.Neuron(3) for _ in range(3)]),
        lambda layer: setattr(layer.neurons[0], "activation", "tanh"),
        lambda layer: setattr(layer.neurons[1], "nonlin", False),
        lambda layer: setattr(layer.neurons[3], "nonlin", True),
    ],
    ids=[
        "w[0]=",
        "w[0:2]=",
        "w.reverse",
        "neurons.pop",
        "neurons.pop(0)",
        "neurons.append",
        "neurons.insert",
        "del neurons[1:3]",
        "neuron.w=",
        "neuron.b=",
        "layer.neurons=",
        "activation=",
        "nonlin=False",
        "nonlin=True",
    ],
)
@LAYERS
def test_every_change_is_seen_by_the_next_call(change, make):
    layer = make()
    layer(X)  # a call before the change, so that anything kept from it would be stale
    change(layer)
    check(layer, X)


@LAYERS
def test_appended_weights_change_the_layers_size(make):
    layer = make()
    layer(X)
    layer.neurons[2].w.append(Value(0.5))
    with pytest.raises(ValueError, match="neuron 2 of the layer expects 4 inputs, got 3"):
        layer(X)
    for n in layer.neurons:
        if len(n.w) == 3:
            n.w += [Value(-0.75)]
    check(layer, [*X, 2.0])


@LAYERS
def test_an_empty_layer_and_a_one_neuron_layer(make):
    layer = make()
    layer.neurons.clear()
    assert layer(X) == [] and layer.parameters() == []
    layer.neurons.append(nn.Neuron(3, activation="tanh"))
    assert isinstance(layer(X), Value)
    check(layer, X)


def test_mlp_parameters_are_the_current_values():
    model = nn.MLP(3, [4, 2])
    model(X)
    model.layers[0].neurons[1].w[2] = Value(9.0)
    model.layers[1].neurons = model.layers[1].neurons[:1]
    expected = [p for layer in model.layers for n in layer.neurons for p in (*n.w, n.b)]
    assert all(p is q for p, q in zip(model.parameters(), expected, strict=True))
    assert [name for name, _ in model.named_parameters()][-1] == "layers.1.neurons.0.b"
    for layer in model.layers:
        check(layer, X if layer is model.layers[0] else [0.1, 0.2, 0.3, 0.4])


def test_a_neuron_subclass_with_its_own_parameters_is_asked_for_them():
    class Scaled(nn.Neuron):
        def __init__(self, nin):
            super().__init__(nin)
            self.scale = Value(2.0)

        def parameters(self):
            return super().parameters() + [self.scale]

    layer = nn.Layer(2, 1)
    layer.neurons.append(Scaled(2))
    assert layer.parameters()[-1] is layer.neurons[1].scale


DATA = Path(__file__).parent / "data"


def test_a_model_pickled_by_gradrs_0_1_loads():
    """The file was written by the previous version, whose layers pickled ``_neurons``, and whose
    neurons ``_w``, ``_b`` and a ``_cache`` object."""
    saved = pickle.loads((DATA / "nn_pickled_by_0_1.pkl").read_bytes())
    model, neuron = saved["model"], saved["neuron"]
    assert [p.data for p in model.parameters()] == saved["params"]
    assert model(saved["x"]).data == saved["out"]
    assert [n.activation for n in model.layers[0].neurons] == ["tanh", "sigmoid", "tanh"]
    assert set(vars(model.layers[0])) == {"neurons"}
    assert set(vars(model.layers[0].neurons[0])) == {"w", "b", "_activation"}
    assert repr(neuron) == "LinearNeuron(2)"
    model.layers[0].neurons[0].w[1] = Value(3.0)
    model.layers[0].neurons[2].nonlin = False
    check(model.layers[0], saved["x"])
    check(model.layers[1], [0.5, -1.0, 0.25])


class _Pickled:
    """Pickles as an object of ``cls`` with the instance dict ``state``, as older versions wrote them."""

    def __init__(self, cls: type, state: dict) -> None:
        self.cls, self.state = cls, state

    def __reduce__(self):
        return (object.__new__, (self.cls,), self.state)


def test_a_neuron_pickled_before_activation_became_a_property_loads():
    w, b = [Value(0.5), Value(-1.5)], Value(0.25)
    old = {"w": w, "b": b, "activation": "tanh", "nonlin": True, "_act": Value.tanh}
    neuron = pickle.loads(pickle.dumps(_Pickled(nn.Neuron, old)))
    assert neuron.activation == "tanh" and neuron.nonlin and set(vars(neuron)) == {"w", "b", "_activation"}
    layer = nn.Layer(2, 0)
    layer.neurons = [neuron]
    check(layer, [1.0, 0.5])
    linear = pickle.loads(pickle.dumps(_Pickled(nn.Neuron, {"w": w, "b": b, "activation": "linear"})))
    assert repr(linear) == "LinearNeuron(2)"


@LAYERS
def test_layer_calls_free_their_graphs(make):
    layer = make()
    baseline = gradrs.live_nodes()
    for _ in range(3):
        out = layer(X)
        builtins.sum(out).backward()
    del out
    assert gradrs.live_nodes() == baseline


def test_layer_arity_and_float_inputs():
    assert isinstance(nn.Layer(2, 1)([1.0, 2.0]), Value)
    out = nn.Layer(2, 2)([1.0, 2.0])
    assert isinstance(out, list) and len(out) == 2
    model = nn.MLP(2, [16, 1, 1])  # a one-neuron hidden layer (micrograd issue #13)
    assert isinstance(model([0.5, 0.5]), Value)
    with pytest.raises(ValueError, match="expects 2 inputs, got 3"):
        nn.Neuron(2)([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="unknown activation"):
        nn.Neuron(2, activation="gelu")


def test_layer_notices_replaced_parameters_and_neurons():
    layer = nn.Layer(2, 2, nonlin=False)
    x = [1.0, 2.0]
    before = [v.data for v in layer(x)]
    layer.neurons[0].w[1] = Value(10.0)  # replace a weight Value in place
    layer.neurons[1].b = Value(-5.0)
    after = [v.data for v in layer(x)]
    # approx: the dot product's sum rounds in its own order, which may differ in the last bit
    assert after[0] == pytest.approx(layer.neurons[0].w[0].data * 1.0 + 10.0 * 2.0, rel=1e-15, abs=1e-15)
    assert after[1] == pytest.approx(before[1] - 5.0, rel=1e-15, abs=1e-15)
    layer.neurons[1] = nn.Neuron(2, nonlin=False)
    layer.neurons[1].w = [Value(1.0), Value(1.0)]
    assert layer(x)[1].data == 3.0
    # the fused layer and one-by-one neurons agree, gradients included
    out = layer(x)
    (out[0] * out[1]).backward()
    fused = [p.grad for p in layer.parameters()]
    layer.zero_grad()
    one_by_one = [n(x) for n in layer.neurons]
    (one_by_one[0] * one_by_one[1]).backward()
    assert [p.grad for p in layer.parameters()] == fused


def test_copied_layers_compute_with_their_own_values():
    random.seed(3)
    layer = nn.Layer(2, 3, nonlin=False)
    x = [0.5, -0.25]
    before = [v.data for v in layer(x)]
    twin = copy.deepcopy(layer)
    twin.neurons[0].w[0].data += 1.0
    assert twin(x)[0].data == pytest.approx(before[0] + 0.5, rel=1e-12)
    assert [v.data for v in layer(x)] == before
    assert [v.data for v in pickle.loads(pickle.dumps(layer))(x)] == before


def test_parameters_follow_every_change_to_a_layer():
    layer = nn.Layer(2, 2)
    layer([1.0, 2.0])

    def expected():
        return [p for n in layer.neurons for p in (*n.w, n.b)]

    assert layer.parameters() == expected()
    layer.parameters().append(Value(0.0))  # a caller's list is its own
    assert len(layer.parameters()) == 6
    changes = [
        lambda: layer.neurons[0].w.__setitem__(1, Value(10.0)),
        lambda: setattr(layer.neurons[1], "b", Value(-5.0)),
        lambda: setattr(layer.neurons[1], "w", [Value(1.0), Value(1.0)]),
        lambda: layer.neurons.__setitem__(0, nn.Neuron(2)),
        lambda: layer.neurons.append(nn.Neuron(2)),
    ]
    for change in changes:
        layer([1.0, 2.0])
        change()
        assert layer.parameters() == expected()
    model = nn.MLP(2, [3, 1])
    model([1.0, 2.0])
    assert model.parameters() == [p for layer in model.layers for n in layer.neurons for p in (*n.w, n.b)]


def test_failed_dense_calls_keep_no_nodes():
    """Every check runs before any node is made or held."""
    w = [Value(0.5), Value(-0.5)]
    b = Value(0.0)
    before = gradrs.live_nodes()
    failing = [
        (lambda: _core._dense([w], [b], "bogus", [1.0, 2.0]), ValueError, "unknown activation 'bogus'"),
        (lambda: _core._dense([w, w], [b], "relu", [1.0, 2.0]), ValueError, "2 weight rows but 1 biases"),
        (
            lambda: _core._dense([w], [b], ["relu", "tanh"], [1.0, 2.0]),
            ValueError,
            "2 activations for 1 neurons",
        ),
        (lambda: _core._dense([w], [b], [None], [1.0, 2.0]), TypeError, "activations must be str"),
        (lambda: _core._dense([w], [b], "relu", [1.0]), ValueError, "expects 2 inputs, got 1"),
        (
            lambda: _core._dense([w], [b], "relu", [1.0, "a"]),
            TypeError,
            "layer input must be Values or real numbers",
        ),
        (lambda: _core._dense(w, [b], "relu", [1.0, 2.0]), TypeError, "not iterable"),
        (lambda: gradrs.ParamGroup([*w, b, 1.0]), TypeError, "item 3 is float"),
        (lambda: nn.Layer(2, 2)([1.0, 2.0, 3.0]), ValueError, "expects 2 inputs, got 3"),
    ]
    for call, error, message in failing:
        with pytest.raises(error, match=message):
            call()
        assert gradrs.live_nodes() == before, message
    assert [v.data for v in _core._dense([w], [b], ["tanh"], [1.0, 2.0])] == pytest.approx([np.tanh(-0.5)])


def test_failed_layer_calls_keep_no_nodes():
    """``_core._layer``, what ``Layer`` calls, checks every neuron before making any node."""

    class Bare:
        pass

    def neuron(w: object, b: object, activation: object = "relu") -> object:
        made = Bare()
        made.w, made.b, made._activation = w, b, activation  # type: ignore[attr-defined]
        return made

    w = [Value(0.5), Value(-0.5)]
    b = Value(0.0)
    before = gradrs.live_nodes()
    failing = [
        (lambda: _core._layer([Bare()], [1.0, 2.0]), AttributeError, "has no attribute 'w'"),
        (lambda: _core._layer([neuron(w, b, "bogus")], [1.0, 2.0]), ValueError, "unknown activation"),
        (lambda: _core._layer([neuron(w, b, None)], [1.0, 2.0]), TypeError, "activations must be str"),
        (lambda: _core._layer([neuron(w, 0.0)], [1.0, 2.0]), TypeError, "layer biases must be Values"),
        (lambda: _core._layer([neuron([*w, 1.0], b)], [1.0, 2.0]), ValueError, "expects 3 inputs, got 2"),
        (
            lambda: _core._layer([neuron(w, b), neuron((w[0], 2.0), b)], [1.0, 2.0]),
            TypeError,
            "item 1 is float",
        ),
        (lambda: _core._layer(neuron(w, b), [1.0, 2.0]), TypeError, "not iterable"),
        (lambda: _core._layer([neuron(w, b)], [1.0, "a"]), TypeError, "layer input must be Values"),
    ]
    for call, error, message in failing:
        with pytest.raises(error, match=message):
            call()
        assert gradrs.live_nodes() == before, message
    # Weights in a tuple, neurons in a generator: any iterables, as the lists' slower path.
    (out,) = _core._layer((n for n in [neuron(tuple(w), b, "tanh")]), [1.0, 2.0])
    assert out.data == pytest.approx(np.tanh(-0.5))
    out.backward()
    assert [v.grad for v in w] == pytest.approx([1 - np.tanh(-0.5) ** 2, 2 * (1 - np.tanh(-0.5) ** 2)])
