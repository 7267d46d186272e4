"""``nn.MLP.to_torch()`` and ``nn.MLP.from_torch()``: the way out to PyTorch and back.

PyTorch is not a test dependency (too big for CI): these tests skip without it. To run them,
``pip install torch`` into the test venv (see the README's "The way out to PyTorch").
"""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest

from gradrs import leaves, losses, nn


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def test_import_gradrs_never_imports_torch():
    program = (
        "import sys\n"
        "import gradrs, gradrs.nn, gradrs.compiler, gradrs.optim, gradrs.losses, gradrs.datasets\n"
        "model = gradrs.nn.MLP(2, [3, 1])\n"
        "model([1.0, 2.0]).backward()\n"
        "assert 'torch' not in sys.modules, 'gradrs imported torch'\n"
        "sys.modules['torch'] = None  # as if PyTorch were not installed\n"
        "try:\n"
        "    model.to_torch()\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("this needs PyTorch, which is not installed: pip install torch")


def gradrs_outputs(model: nn.MLP, X: np.ndarray) -> np.ndarray:
    rows = []
    for x in leaves(X):
        out = model(x)
        rows.append([v.data for v in ([out] if not isinstance(out, list) else out)])
    return np.array(rows)


def torch_outputs(torch, module, X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(X)).numpy()


SHAPES = [
    (3, [4, 4, 1], "relu"),
    (3, [4, 4, 1], "tanh"),
    (5, [6, 2], "sigmoid"),
    (4, [3, 3], "linear"),
    (2, [1, 3], "tanh"),  # a one-neuron hidden layer (micrograd issue #13)
    (64, [64, 64, 10], "relu"),
]


@pytest.mark.parametrize(("nin", "nouts", "activation"), SHAPES)
def test_to_torch_computes_the_same_outputs(torch, nin, nouts, activation):
    random.seed(nin * 100 + len(nouts))
    model = nn.MLP(nin, nouts, activation=activation)
    module = model.to_torch()
    assert isinstance(module, torch.nn.Sequential)
    linears = [m for m in module if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == nouts
    assert all(p.dtype == torch.float64 for p in module.parameters())
    X = np.random.default_rng(0).normal(size=(25, nin)) * 2
    ours, theirs = gradrs_outputs(model, X), torch_outputs(torch, module, X)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)


def test_every_activation_maps_to_its_torch_module(torch):
    model = nn.MLP(2, [3, 3, 3, 3, 2])
    for layer, activation in zip(model.layers, ["relu", "tanh", "sigmoid", "linear", "tanh"], strict=True):
        for neuron in layer.neurons:
            neuron.activation = activation
    kinds = [type(m).__name__ for m in model.to_torch()]
    assert kinds == ["Linear", "ReLU", "Linear", "Tanh", "Linear", "Sigmoid", "Linear", "Linear", "Tanh"]
    X = np.random.default_rng(1).normal(size=(10, 2))
    np.testing.assert_allclose(
        gradrs_outputs(model, X), torch_outputs(torch, model.to_torch(), X), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
def test_gradients_equal_torchs_after_to_torch(torch, activation):
    random.seed(5)
    model = nn.MLP(6, [8, 8, 4], activation=activation)
    module = model.to_torch()
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(12, 6)), rng.integers(0, 4, size=12)

    loss = losses.cross_entropy([model(x) for x in leaves(X)], [int(k) for k in y])
    model.zero_grad()
    loss.backward()

    reference = torch.nn.functional.cross_entropy(module(torch.from_numpy(X)), torch.from_numpy(y))
    reference.backward()
    assert loss.data == pytest.approx(reference.item(), rel=1e-12)
    linears = [m for m in module if isinstance(m, torch.nn.Linear)]
    # parameters() order: per layer, per neuron, its weights then its bias
    theirs = np.concatenate(
        [torch.cat([m.weight.grad, m.bias.grad[:, None]], dim=1).reshape(-1).numpy() for m in linears]
    )
    ours = model.parameters_grad()
    assert np.abs(ours).max() > 1e-3
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)


def test_from_torch_gives_back_the_same_model(torch):
    random.seed(3)
    model = nn.MLP(4, [5, 5, 2], activation="tanh")
    back = nn.MLP.from_torch(model.to_torch())
    assert repr(back) == repr(model)
    assert back.state_dict() == model.state_dict()


def test_from_torch_of_a_torch_model(torch):
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Linear(3, 7),  # float32: read exactly as float64
        torch.nn.ReLU(),
        torch.nn.Identity(),
        torch.nn.Linear(7, 5, bias=False),
        torch.nn.Sigmoid(),
        torch.nn.Linear(5, 2),
    )
    state = random.getstate()
    model = nn.MLP.from_torch(module)
    assert random.getstate() == state, "from_torch leaves Python's random stream alone"
    assert (
        repr(model)
        == "MLP of [Layer of ["
        + ", ".join(["ReLUNeuron(3)"] * 7)
        + "], Layer of ["
        + ", ".join(["SigmoidNeuron(7)"] * 5)
        + "], Layer of [LinearNeuron(5), LinearNeuron(5)]]"
    )
    assert [n.b.data for n in model.layers[1].neurons] == [0.0] * 5
    X = np.random.default_rng(3).normal(size=(9, 3))
    theirs = torch_outputs(torch, module.double(), X)
    np.testing.assert_allclose(gradrs_outputs(model, X), theirs, rtol=1e-12, atol=1e-12)


def test_to_torch_refuses_what_a_sequential_cannot_hold(torch):
    mixed = nn.MLP(2, [3, 1])
    mixed.layers[0].neurons[1].activation = "tanh"
    with pytest.raises(ValueError, match=r"layer 0 mixes the activations \['relu', 'tanh'\]"):
        mixed.to_torch()

    unchained = nn.MLP(2, [3, 1])
    unchained.layers[1] = nn.Layer(4, 1)
    with pytest.raises(ValueError, match="layer 1 takes 4 inputs but layer 0 gives 3"):
        unchained.to_torch()

    class Scaled(nn.Neuron):
        def __call__(self, x):
            return 2 * super().__call__(x)

    custom = nn.MLP(2, [2])
    custom.layers[0].neurons[0] = Scaled(2)
    with pytest.raises(ValueError, match="layer 0 holds a Scaled, which has no torch equivalent"):
        custom.to_torch()

    ragged = nn.MLP(2, [2])
    ragged.layers[0].neurons[1] = nn.Neuron(3, nonlin=False)
    with pytest.raises(ValueError, match=r"layer 0 has neurons of \[2, 3\] inputs"):
        ragged.to_torch()


def test_from_torch_refuses_what_gradrs_cannot_represent(torch):
    Seq, Linear, ReLU = torch.nn.Sequential, torch.nn.Linear, torch.nn.ReLU
    cases = [
        (
            Seq(Linear(2, 3), torch.nn.Dropout(0.5), Linear(3, 1)),
            r"module \[1\] Dropout has no gradrs equivalent",
        ),
        (Seq(Linear(2, 3), torch.nn.GELU()), r"module \[1\] GELU has no gradrs equivalent"),
        (
            Seq(Linear(2, 3), ReLU(), torch.nn.Tanh()),
            r"module \[2\] Tanh comes right after another activation",
        ),
        (Seq(ReLU(), Linear(2, 3)), r"module \[0\] ReLU comes before the first Linear"),
        (
            Seq(Linear(2, 3), Linear(4, 1)),
            r"module \[1\] Linear\(in_features=4.* takes 4 inputs but the layer before gives 3",
        ),
        (Seq(), "needs at least one Linear layer"),
        (Seq(Linear(2, 3), Seq(Linear(3, 1))), r"module \[1\] Sequential has no gradrs equivalent"),
    ]
    for module, message in cases:
        with pytest.raises(ValueError, match=message):
            nn.MLP.from_torch(module)
    with pytest.raises(TypeError, match="from_torch takes a torch.nn.Sequential, got Linear"):
        nn.MLP.from_torch(Linear(2, 3))
