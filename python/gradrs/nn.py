"""Neural-network building blocks: a drop-in for ``micrograd.nn``.

``Module``, ``Neuron``, ``Layer`` and ``MLP`` behave as micrograd's do (same constructor
arguments, same weight initialisation from Python's ``random``, same call behaviour and
``repr``), so code written for micrograd runs after changing the import. Each neuron is one
fused node (``gradrs.dot``) instead of a chain of multiplications and additions.

Beyond micrograd: a choice of activation, ``named_parameters()``, ``state_dict()`` /
``load_state_dict()``, ``save()`` / ``load()`` to ``.npz`` files, and the parameters' data and
gradients as numpy arrays.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from gradrs._core import ParamGroup, Value, _layer, dot

if TYPE_CHECKING:
    import numpy as np

__all__ = ["MLP", "Layer", "Module", "Neuron"]

Input = Value | float

_ACTIVATIONS = {
    "relu": ("ReLU", Value.relu),
    "tanh": ("Tanh", Value.tanh),
    "sigmoid": ("Sigmoid", Value.sigmoid),
    "linear": ("Linear", None),
}


class Module:
    """Base class: anything that owns parameters."""

    def parameters(self) -> list[Value]:
        """Every trainable Value, in a fixed order."""
        return []

    def named_parameters(self) -> list[tuple[str, Value]]:
        """``(name, Value)`` pairs such as ``('layers.0.neurons.3.w.1', v)``, in ``parameters()`` order.

        A subclass that defines only ``parameters()`` (micrograd's way) gets its parameters
        named by position, ``'0'``, ``'1'``, ..., so ``state_dict()`` and ``save()`` work for it.
        """
        return [(str(i), p) for i, p in enumerate(self.parameters())]

    def zero_grad(self) -> None:
        """Sets every parameter's gradient to 0 (call before each ``backward()``)."""
        params = self.parameters()
        if params:
            ParamGroup(params).zero_grad()

    def param_group(self) -> ParamGroup:
        """The parameters as one group, for reading or updating them as numpy arrays."""
        return ParamGroup(self.parameters())

    def parameters_data(self) -> np.ndarray:
        """All parameters' data as one float64 array, in ``parameters()`` order."""
        return self.param_group().data()

    def parameters_grad(self) -> np.ndarray:
        """All parameters' gradients as one float64 array, in ``parameters()`` order."""
        return self.param_group().grad()

    def set_parameters_data(self, values: Any) -> None:
        """Sets all parameters' data from one array of ``len(parameters())`` numbers."""
        import numpy as np

        self.param_group().set_data(np.ascontiguousarray(values, dtype=np.float64).reshape(-1))

    def state_dict(self) -> dict[str, float]:
        """Every parameter's data by name (plain floats, so it pickles and prints)."""
        return {name: p.data for name, p in self.named_parameters()}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Restores parameters from ``state_dict()`` output.

        With ``strict`` (the default), missing or unexpected names raise ValueError, as in PyTorch.
        """
        named = dict(self.named_parameters())
        missing = [name for name in named if name not in state]
        unexpected = [name for name in state if name not in named]
        if strict and (missing or unexpected):
            raise ValueError(
                f"state_dict does not match the model: missing {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                f"{'...' if len(unexpected) > 5 else ''}"
            )
        values = {}
        for name, value in state.items():
            if name in named:
                try:
                    values[name] = float(value)
                except (TypeError, ValueError) as error:
                    raise ValueError(f"state_dict entry {name!r} is not a number: {value!r}") from error
        # Only once every entry converted: a bad entry leaves the model as it was.
        for name, number in values.items():
            named[name].data = number

    def save(self, path: str | Path) -> None:
        """Writes the parameters to a ``.npz`` file (one array entry per parameter name)."""
        import numpy as np

        # ignore: numpy's stub lets the ** mapping fill its keyword allow_pickle: bool too; the names
        # gradrs gives (paths like "layers.0.neurons.1.w.0", or positions) are never that keyword.
        np.savez(path, **{name: np.float64(p.data) for name, p in self.named_parameters()})  # type: ignore[arg-type]

    def load(self, path: str | Path, strict: bool = True) -> None:
        """Reads parameters written by ``save()`` (given the same path: numpy adds ``.npz``).

        The file may be untrusted: every entry's name, dtype and shape are checked from its
        header before any data is read, and anything but one float per parameter name is a
        ValueError naming the entry (unexpected names only with ``strict``; without it they
        are skipped).
        """
        path = Path(path)
        if not path.exists() and path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        named = {name for name, _ in self.named_parameters()}
        self.load_state_dict(_read_npz(path, named, strict), strict=strict)


def _read_npz(path: Path, names: set[str], strict: bool) -> dict[str, float]:
    """The scalar float entries of the ``.npz`` file at ``path`` named in ``names``."""
    import io
    import zipfile
    import zlib

    import numpy as np

    if path.is_dir():
        raise ValueError(f"{path} is a directory; load() reads the .npz file that save() writes")
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        with open(path, "rb") as file:
            npy = file.read(6) == b"\x93NUMPY"
        kind = "a .npy file (one array)" if npy else "not a .npz file"
        raise ValueError(f"{path} is {kind}; load() reads the .npz file that save() writes") from None
    heads = {}
    with archive:
        for info in archive.infolist():
            name = info.filename.removesuffix(".npy")
            if name not in names or not info.filename.endswith(".npy"):
                if strict:
                    raise ValueError(
                        f"unexpected entry {info.filename!r} in {path}: the model has no such parameter"
                    )
                continue
            try:
                with archive.open(info) as member:
                    # The header and one number fit in this; a crafted header cannot make it read more.
                    raw = member.read(_NPY_PREFIX)
            except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError) as error:
                raise ValueError(f"entry {name!r} of {path} cannot be read: {error}") from None
            head = io.BytesIO(raw)
            try:
                version = np.lib.format.read_magic(head)
                read_header = {
                    (1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0,
                }.get(version)
                if read_header is None:
                    raise ValueError(f"unsupported .npy format version {version}")
                shape, _, dtype = read_header(head)
            except ValueError as error:
                raise ValueError(f"entry {name!r} of {path} is not a readable array: {error}") from None
            if dtype.kind != "f":
                raise ValueError(f"entry {name!r} of {path} has dtype {dtype}; a parameter is a float")
            if shape != ():
                raise ValueError(f"entry {name!r} of {path} has shape {shape}; a parameter is a scalar")
            heads[name] = raw
    values = {}
    for name, raw in heads.items():
        try:
            values[name] = float(np.lib.format.read_array(io.BytesIO(raw), allow_pickle=False))
        except ValueError as error:
            raise ValueError(f"entry {name!r} of {path} is not a readable array: {error}") from None
    return values


# Enough for any .npy header numpy writes for a scalar (a few hundred bytes) and its data.
_NPY_PREFIX = 1 << 16


def _activation(nonlin: bool, activation: str | None) -> str:
    if activation is None:
        return "relu" if nonlin else "linear"
    if activation not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(_ACTIVATIONS)}")
    return activation


class _LayerCache:
    """Unused: a name that pickles made by earlier builds refer to (layers then kept a cache of
    their fused form). ``Neuron.__setstate__`` and ``Layer.__setstate__`` drop it."""

    def __setstate__(self, state: Any) -> None:
        pass


# Attributes of Neurons and Layers pickled by earlier versions, and what became of them.
_RENAMED = {"_w": "w", "_b": "b", "_neurons": "neurons"}
_DROPPED = ("_cache", "_act", "nonlin", "activation")


def _upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """The state of a Neuron or Layer pickled by any version, as this one keeps it."""
    upgraded = {_RENAMED.get(k, k): v for k, v in state.items() if k not in _DROPPED}
    if "activation" in state and "_activation" not in state:  # pickled before it was checked on setting
        upgraded["_activation"] = state["activation"]
    return upgraded


class Neuron(Module):
    """``act(w · x + b)`` with ``nin`` weights drawn from ``random.uniform(-1, 1)`` and ``b = 0``."""

    def __init__(self, nin: int, nonlin: bool = True, activation: str | None = None) -> None:
        self.w = [Value(random.uniform(-1, 1)) for _ in range(nin)]
        self.b = Value(0)
        self.activation = _activation(nonlin, activation)

    @property
    def activation(self) -> str:
        """``'relu'``, ``'tanh'``, ``'sigmoid'`` or ``'linear'``; may be changed after construction."""
        return self._activation

    @activation.setter
    def activation(self, name: str) -> None:
        self._activation = _activation(True, name)

    @property
    def nonlin(self) -> bool:
        """micrograd's flag: False means linear. Setting it, as micrograd code may, takes effect."""
        return self._activation != "linear"

    @nonlin.setter
    def nonlin(self, nonlin: bool) -> None:
        if bool(nonlin) != self.nonlin:
            self.activation = "relu" if nonlin else "linear"

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = _upgrade(state)
        state.setdefault("_activation", "relu")
        self.__dict__.update(state)

    def __call__(self, x: Sequence[Input]) -> Value:
        # micrograd's zip() silently drops extra inputs; a wrong size here is almost always a bug.
        if len(x) != len(self.w):
            raise ValueError(f"{self!r} expects {len(self.w)} inputs, got {len(x)}")
        act = dot(self.w, x, self.b)
        nonlinearity = _ACTIVATIONS[self._activation][1]
        return nonlinearity(act) if nonlinearity is not None else act

    def parameters(self) -> list[Value]:
        return self.w + [self.b]

    def named_parameters(self) -> list[tuple[str, Value]]:
        return [(f"w.{i}", w) for i, w in enumerate(self.w)] + [("b", self.b)]

    def __repr__(self) -> str:
        return f"{_ACTIVATIONS[self.activation][0]}Neuron({len(self.w)})"


class Layer(Module):
    """``nout`` neurons over the same ``nin`` inputs; keyword arguments go to each ``Neuron``.

    A call evaluates every neuron in one call into the engine (each neuron is still one node),
    reading the Values the neurons hold at that moment: nothing is cached, so replacing a
    neuron, a weight or an activation, or sharing them between layers, needs no care.
    """

    def __init__(self, nin: int, nout: int, **kwargs: Any) -> None:
        self.neurons = [Neuron(nin, **kwargs) for _ in range(nout)]

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(_upgrade(state))

    def __call__(self, x: Sequence[Input]) -> Value | list[Value]:
        out = _layer(self.neurons, x)
        return out[0] if len(out) == 1 else out

    def parameters(self) -> list[Value]:
        params: list[Value] = []
        for n in self.neurons:
            if type(n) is Neuron:  # a training loop asks every step: no method call per neuron
                params += n.w
                params.append(n.b)
            else:
                params += n.parameters()
        return params

    def named_parameters(self) -> list[tuple[str, Value]]:
        return [
            (f"neurons.{i}.{name}", p) for i, n in enumerate(self.neurons) for name, p in n.named_parameters()
        ]

    def __repr__(self) -> str:
        return f"Layer of [{', '.join(str(n) for n in self.neurons)}]"


class MLP(Module):
    """A multi-layer perceptron: ``nin`` inputs, then a layer per entry of ``nouts``.

    Hidden layers use ``activation`` (ReLU by default, as in micrograd); the last is linear.
    """

    def __init__(self, nin: int, nouts: list[int], activation: str = "relu") -> None:
        _activation(True, activation)  # refuse an unknown name even when every layer is the output
        sz = [nin] + list(nouts)
        self.layers = [
            Layer(sz[i], sz[i + 1], activation=activation if i != len(nouts) - 1 else "linear")
            for i in range(len(nouts))
        ]

    def __call__(self, x: Sequence[Input]) -> Value | list[Value]:
        out: Sequence[Input] | Value = x
        for layer in self.layers:
            # A one-neuron hidden layer returns a bare Value; feed it on as a list (micrograd issue #13).
            out = layer([out] if isinstance(out, Value) else out)
        # The last layer's output; only MLP(nin, []), which has no layers, hands x back as it came.
        return cast("Value | list[Value]", out)

    def parameters(self) -> list[Value]:
        params: list[Value] = []
        for layer in self.layers:
            params += layer.parameters()
        return params

    def named_parameters(self) -> list[tuple[str, Value]]:
        return [
            (f"layers.{i}.{name}", p)
            for i, layer in enumerate(self.layers)
            for name, p in layer.named_parameters()
        ]

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __repr__(self) -> str:
        return f"MLP of [{', '.join(str(layer) for layer in self.layers)}]"
