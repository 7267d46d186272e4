"""gradrs.nn is a drop-in for micrograd.nn, plus what PyTorch users reach for first."""

from __future__ import annotations

import copy
import pickle
import random

import numpy as np
import pytest
from micrograd import nn as mg_nn
from micrograd.engine import Value as MgValue

import gradrs
from gradrs import Value, nn


def test_reprs_match_micrograd():
    assert repr(nn.Layer(2, 3)) == "Layer of [ReLUNeuron(2), ReLUNeuron(2), ReLUNeuron(2)]"
    assert (
        repr(nn.MLP(2, [2, 1]))
        == "MLP of [Layer of [ReLUNeuron(2), ReLUNeuron(2)], Layer of [LinearNeuron(2)]]"
    )
    assert repr(nn.Neuron(3, nonlin=False)) == "LinearNeuron(3)"
    assert repr(nn.Neuron(3, activation="tanh")) == "TanhNeuron(3)"
    assert repr(nn.MLP(2, [16, 16, 1])).endswith("Layer of [LinearNeuron(16)]]")


def test_seeded_model_and_outputs_equal_micrograds():
    random.seed(1337)
    ours = nn.MLP(2, [16, 16, 1])
    random.seed(1337)
    theirs = mg_nn.MLP(2, [16, 16, 1])
    assert len(ours.parameters()) == len(theirs.parameters()) == 337
    assert [p.data for p in ours.parameters()] == [p.data for p in theirs.parameters()]
    for x in ([0.5, -1.2], [2.0, 0.25], [-0.3, 0.9]):
        a, b = ours(x), theirs([MgValue(v) for v in x])
        assert a.data == pytest.approx(b.data, rel=1e-12, abs=1e-12)
        a.backward()
        b.backward()
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert p.grad == pytest.approx(q.grad, rel=1e-9, abs=1e-12)


def test_trace_graph_notebook_neuron():
    random.seed(1337)
    n = nn.Neuron(2)
    x = [Value(1.0), Value(-2.0)]
    y = n(x)
    y.backward()
    assert [w.data for w in n.w] == [0.23550571390294128, 0.06653114721000164]
    assert y.data == pytest.approx(0.102443419482938, rel=1e-12)
    assert [v.grad for v in x] == [w.data for w in n.w]
    assert repr(n) == "ReLUNeuron(2)"


def test_activations():
    random.seed(0)
    for name, fn in (("tanh", np.tanh), ("sigmoid", lambda z: 1 / (1 + np.exp(-z))), ("linear", lambda z: z)):
        neuron = nn.Neuron(3, activation=name)
        x = [0.3, -0.7, 1.1]
        pre = sum(w.data * xi for w, xi in zip(neuron.w, x, strict=True)) + neuron.b.data
        assert neuron(x).data == pytest.approx(fn(pre), rel=1e-12)
    model = nn.MLP(2, [4, 1], activation="tanh")
    assert repr(model.layers[0].neurons[0]) == "TanhNeuron(2)"


def test_zero_grad_and_numpy_views():
    model = nn.MLP(3, [4, 2])
    out = model([1.0, 2.0, 3.0])
    (out[0] + out[1]).backward()
    assert np.any(model.parameters_grad() != 0)
    model.zero_grad()
    assert np.all(model.parameters_grad() == 0)
    data = model.parameters_data()
    assert data.shape == (len(model.parameters()),)
    model.set_parameters_data(data * 2)
    np.testing.assert_array_equal(model.parameters_data(), data * 2)


def test_named_parameters_and_state_dict_round_trip(tmp_path):
    model = nn.MLP(2, [3, 1])
    names = [name for name, _ in model.named_parameters()]
    assert names[:3] == ["layers.0.neurons.0.w.0", "layers.0.neurons.0.w.1", "layers.0.neurons.0.b"]
    assert len(names) == len(set(names)) == len(model.parameters())
    state = model.state_dict()
    other = nn.MLP(2, [3, 1])
    other.load_state_dict(state)
    x = [0.1, -0.4]
    assert other(x).data == model(x).data  # bit-identical predictions
    path = tmp_path / "model.npz"
    model.save(path)
    third = nn.MLP(2, [3, 1])
    third.load(path)
    assert third(x).data == model(x).data
    with pytest.raises(ValueError, match="missing"):
        other.load_state_dict({k: v for k, v in state.items() if not k.endswith("b")})
    with pytest.raises(ValueError, match="unexpected"):
        other.load_state_dict({**state, "layers.9.x": 1.0})
    with pytest.raises(ValueError, match="not a number"):
        other.load_state_dict({**state, names[0]: "abc"})


def test_deepcopy_and_pickle_give_independent_models():
    model = nn.MLP(2, [4, 1])
    twin = copy.deepcopy(model)
    clone = pickle.loads(pickle.dumps(model))
    x = [0.5, -0.5]
    assert twin(x).data == model(x).data == clone(x).data
    for _ in range(5):  # train the copy only
        twin.zero_grad()
        loss = (twin(x) - 1.0) ** 2
        loss.backward()
        for p in twin.parameters():
            p.data -= 0.1 * p.grad
    assert twin(x).data != model(x).data
    assert clone(x).data == model(x).data
    assert all(a is not b for a, b in zip(model.parameters(), twin.parameters(), strict=True))


def test_training_lowers_the_loss_and_frees_graphs():
    random.seed(1)
    model = nn.MLP(3, [4, 4, 1], activation="tanh")
    xs = [[2.0, 3.0, -1.0], [3.0, -1.0, 0.5], [0.5, 1.0, 1.0], [1.0, 1.0, -1.0]]
    ys = [1.0, -1.0, -1.0, 1.0]
    baseline = gradrs.live_nodes()
    opt = gradrs.optim.SGD(model.parameters(), lr=0.05)
    first = None
    for _ in range(50):
        loss = gradrs.losses.mse_loss([model(x) for x in xs], ys)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.data
    assert loss.data < first / 10
    del loss
    assert gradrs.live_nodes() == baseline


class Affine(nn.Module):
    """A module written micrograd's way: it defines parameters() and nothing else."""

    def __init__(self) -> None:
        self.w, self.b = Value(2.0), Value(-1.0)

    def __call__(self, x):
        return self.w * x + self.b

    def parameters(self):
        return [self.w, self.b]


def test_a_micrograd_style_module_saves_and_loads_by_position(tmp_path):
    model = Affine()
    assert model.state_dict() == {"0": 2.0, "1": -1.0}
    model.save(tmp_path / "affine")  # numpy adds .npz; load() takes the same path
    other = Affine()
    other.w.data = 0.0
    other.load(tmp_path / "affine")
    assert (other.w.data, other.b.data) == (2.0, -1.0)
    other.load(tmp_path / "affine.npz")
    with pytest.raises(ValueError, match="missing"):
        other.load_state_dict({"0": 1.0})


def test_a_bad_state_dict_entry_changes_nothing():
    model = nn.MLP(2, [2, 1])
    before = model.state_dict()
    bad = {name: 0.5 for name in before}
    bad[list(bad)[-1]] = "junk"
    with pytest.raises(ValueError, match="is not a number"):
        model.load_state_dict(bad)
    assert model.state_dict() == before


def test_setting_nonlin_after_construction_takes_effect_as_in_micrograd():
    random.seed(0)
    layer = nn.Layer(2, 1)
    neuron = layer.neurons[0]
    neuron.w[0].data, neuron.w[1].data = -1.0, -1.0
    assert layer([1.0, 1.0]).data == 0.0  # relu of -2
    neuron.nonlin = False
    assert repr(neuron) == "LinearNeuron(2)" and neuron.activation == "linear"
    assert layer([1.0, 1.0]).data == -2.0  # the layer computes with the neuron's activation now
    neuron.nonlin = True
    assert repr(neuron) == "ReLUNeuron(2)"
    neuron.activation = "tanh"
    assert neuron.nonlin and repr(neuron) == "TanhNeuron(2)"
    with pytest.raises(ValueError, match="unknown activation"):
        neuron.activation = "swish"
    clone = pickle.loads(pickle.dumps(neuron))
    assert clone.activation == "tanh" and clone([1.0, 1.0]).data == neuron([1.0, 1.0]).data
