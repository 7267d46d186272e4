"""Neural-network building blocks: a drop-in for ``micrograd.nn``.

``Module``, ``Neuron``, ``Layer`` and ``MLP`` behave as micrograd's do (same constructor
arguments, same weight initialisation from Python's ``random``, same call behaviour and
``repr``), so code written for micrograd runs after changing the import. Each neuron is one
fused node (``gradrs.dot``) instead of a chain of multiplications and additions.

A Layer or an MLP keeps its parameter list, and a ``ParamGroup`` over it, between calls (its
lists note their edits, so any change is seen), so ``parameters()`` and ``zero_grad()`` do no
Python work per parameter.

Beyond micrograd: a choice of activation, ``named_parameters()``, ``state_dict()`` /
``load_state_dict()``, ``save()`` / ``load()`` to ``.npz`` files, and the parameters' data and
gradients as numpy arrays.
"""

from __future__ import annotations

import random
import weakref
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, SupportsIndex, TypeVar, cast

from gradrs._core import ParamGroup, Value, _layer, _zero_grads, dot

if TYPE_CHECKING:
    from typing import Self

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
        kept = _kept(self)
        if kept is not None and kept.group is not None:
            kept.group.zero_grad()
        else:
            _zero_grads(self.parameters())

    def param_group(self) -> ParamGroup:
        """The parameters as one group, for reading or updating them as numpy arrays."""
        kept = _kept(self)
        if kept is not None and kept.group is not None:
            return kept.group
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


_T = TypeVar("_T")

# Bumped by every edit to the structure of any Neuron, Layer or MLP (an attribute set, an item of
# their lists replaced, added or removed), so a model's kept parameters know when to look again.
_edits = 0


def _note_edit() -> None:
    global _edits
    _edits += 1


class _EditNotingList(list[_T]):
    """A list that notes every edit made through it; it reads exactly as a list does.

    ``Neuron.w``, ``Layer.neurons`` and ``MLP.layers`` are these, so that a model can keep its
    parameter list (and a ``ParamGroup`` over it) from one call to the next and know, by one
    comparison, whether anything changed since. Edits that bypass the list's own methods (calling
    ``list.append(w, v)`` unbound, writing an object's ``__dict__``) are not seen. Pickles refer to
    this class by name: keep the name.
    """

    __slots__ = ()

    def __setitem__(self, index: Any, value: Any) -> None:
        _note_edit()
        super().__setitem__(index, value)

    def __delitem__(self, index: SupportsIndex | slice) -> None:
        _note_edit()
        super().__delitem__(index)

    def __iadd__(self, values: Iterable[_T]) -> Self:  # type: ignore[override,misc]
        _note_edit()
        return super().__iadd__(values)

    def __imul__(self, times: SupportsIndex) -> Self:
        _note_edit()
        return super().__imul__(times)

    def append(self, value: _T) -> None:
        _note_edit()
        super().append(value)

    def extend(self, values: Iterable[_T]) -> None:
        _note_edit()
        super().extend(values)

    def insert(self, index: SupportsIndex, value: _T) -> None:
        _note_edit()
        super().insert(index, value)

    def pop(self, index: SupportsIndex = -1) -> _T:
        _note_edit()
        return super().pop(index)

    def remove(self, value: _T) -> None:
        _note_edit()
        super().remove(value)

    def clear(self) -> None:
        _note_edit()
        super().clear()

    def sort(self, *args: Any, **kwargs: Any) -> None:
        _note_edit()
        super().sort(*args, **kwargs)

    def reverse(self) -> None:
        _note_edit()
        super().reverse()


class _NotesEdits:
    """Setting or deleting any attribute of a Neuron, Layer or MLP notes an edit."""

    def __setattr__(self, name: str, value: Any) -> None:
        _note_edit()
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        _note_edit()
        object.__delattr__(self, name)


class _Kept:
    """A Layer's or MLP's parameters as they were after edit number ``edits``: ``params`` is
    None when some part is not one whose edits are noted (then nothing can be kept), and
    ``group`` is None when the parameters do not make a ``ParamGroup`` (an item is not a Value)."""

    __slots__ = ("edits", "group", "params")

    def __init__(self, edits: int, params: list[Value] | None, group: ParamGroup | None) -> None:
        self.edits = edits
        self.params = params
        self.group = group


_KEPT: weakref.WeakKeyDictionary[Module, _Kept] = weakref.WeakKeyDictionary()


def _kept(module: Module) -> _Kept | None:
    """The kept parameters of an exact ``Layer`` or ``MLP``, brought up to date; None for any
    other module, whose ``parameters()`` may be anything."""
    if type(module) is not Layer and type(module) is not MLP:
        return None
    kept = _KEPT.get(module)
    if kept is None or kept.edits != _edits:
        kept = _keep(module)
        _KEPT[module] = kept
    return kept


def _keep(module: Layer | MLP) -> _Kept:
    edits = _edits
    if isinstance(module, MLP):
        layers, noted = module.layers, type(module.layers) is _EditNotingList
    else:
        layers, noted = [module], True
    for layer in layers:
        noted = noted and type(layer) is Layer and type(layer.neurons) is _EditNotingList
        noted = noted and all(type(n) is Neuron and type(n.w) is _EditNotingList for n in layer.neurons)
    if not noted:
        return _Kept(edits, None, None)
    params: list[Value] = []
    for layer in layers:
        _add_parameters(params, layer.neurons)
    try:
        group = ParamGroup(params)
    except (TypeError, ValueError):  # an item is not a Value: zero_grad() reports it when called
        group = None
    return _Kept(edits, params, group)


class Neuron(_NotesEdits, Module):
    """``act(w · x + b)`` with ``nin`` weights drawn from ``random.uniform(-1, 1)`` and ``b = 0``."""

    def __init__(self, nin: int, nonlin: bool = True, activation: str | None = None) -> None:
        self.w: list[Value] = _EditNotingList(Value(random.uniform(-1, 1)) for _ in range(nin))
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


def _add_parameters(params: list[Value], neurons: Sequence[Any]) -> None:
    """Appends the neurons' parameters to ``params``, in ``parameters()`` order. A training loop
    asks for them every step: a plain ``Neuron``'s are read in place, not by a method call."""
    for n in neurons:
        if type(n) is Neuron:
            params += n.w
            params.append(n.b)
        else:
            params += n.parameters()


class Layer(_NotesEdits, Module):
    """``nout`` neurons over the same ``nin`` inputs; keyword arguments go to each ``Neuron``.

    A call evaluates every neuron in one call into the engine (each neuron is still one node),
    reading the Values the neurons hold at that moment. ``parameters()`` and ``zero_grad()``
    keep the parameter list from one call to the next, and look again after any edit (the lists
    of ``nn`` modules note their edits). So replacing a neuron, a weight or an activation, or
    sharing them between layers, needs no care.
    """

    def __init__(self, nin: int, nout: int, **kwargs: Any) -> None:
        self.neurons: list[Neuron] = _EditNotingList(Neuron(nin, **kwargs) for _ in range(nout))

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(_upgrade(state))

    def __call__(self, x: Sequence[Input]) -> Value | list[Value]:
        out = _layer(self.neurons, x)
        return out[0] if len(out) == 1 else out

    def parameters(self) -> list[Value]:
        kept = _kept(self)
        if kept is not None and kept.params is not None:
            return kept.params[:]
        params: list[Value] = []
        _add_parameters(params, self.neurons)
        return params

    def named_parameters(self) -> list[tuple[str, Value]]:
        return [
            (f"neurons.{i}.{name}", p) for i, n in enumerate(self.neurons) for name, p in n.named_parameters()
        ]

    def __repr__(self) -> str:
        return f"Layer of [{', '.join(str(n) for n in self.neurons)}]"


def _import_torch() -> Any:
    """PyTorch, or ImportError saying how to install it."""
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            "this needs PyTorch, which is not installed: pip install torch "
            "(its CPU-only build, described on PyTorch's install page, is much smaller)"
        ) from error
    return torch


# gradrs activation name -> the torch.nn module class computing it.
_TORCH_ACTIVATIONS = {"relu": "ReLU", "tanh": "Tanh", "sigmoid": "Sigmoid"}


def _layer_arrays(layer: Layer, index: int) -> tuple[np.ndarray, np.ndarray, str]:
    """A layer's weights (one row per neuron), biases and shared activation, or ValueError."""
    import numpy as np

    if type(layer) is not Layer:
        raise ValueError(f"layer {index} is a {type(layer).__name__}, not a gradrs.nn.Layer")
    neurons = layer.neurons
    if not neurons:
        raise ValueError(f"layer {index} has no neurons")
    if any(type(n) is not Neuron for n in neurons):
        odd = next(n for n in neurons if type(n) is not Neuron)
        raise ValueError(f"layer {index} holds a {type(odd).__name__}, which has no torch equivalent")
    activations = sorted({n.activation for n in neurons})
    if len(activations) > 1:
        raise ValueError(
            f"layer {index} mixes the activations {activations}; a torch Linear layer is followed by one"
        )
    sizes = sorted({len(n.w) for n in neurons})
    if len(sizes) > 1:
        raise ValueError(f"layer {index} has neurons of {sizes} inputs; a torch Linear layer has one size")
    weights = np.array([[w.data for w in n.w] for n in neurons], dtype=np.float64).reshape(
        len(neurons), sizes[0]
    )
    biases = np.array([n.b.data for n in neurons], dtype=np.float64)
    return weights, biases, activations[0]


class MLP(_NotesEdits, Module):
    """A multi-layer perceptron: ``nin`` inputs, then a layer per entry of ``nouts``.

    Hidden layers use ``activation`` (ReLU by default, as in micrograd); the last is linear.
    """

    def __init__(self, nin: int, nouts: list[int], activation: str = "relu") -> None:
        _activation(True, activation)  # refuse an unknown name even when every layer is the output
        sz = [nin] + list(nouts)
        self.layers: list[Layer] = _EditNotingList(
            Layer(sz[i], sz[i + 1], activation=activation if i != len(nouts) - 1 else "linear")
            for i in range(len(nouts))
        )

    def __call__(self, x: Sequence[Input]) -> Value | list[Value]:
        out: Sequence[Input] | Value = x
        for layer in self.layers:
            # A one-neuron hidden layer returns a bare Value; feed it on as a list (micrograd issue #13).
            out = layer([out] if isinstance(out, Value) else out)
        # The last layer's output; only MLP(nin, []), which has no layers, hands x back as it came.
        return cast("Value | list[Value]", out)

    def parameters(self) -> list[Value]:
        kept = _kept(self)
        if kept is not None and kept.params is not None:
            return kept.params[:]
        params: list[Value] = []
        for layer in self.layers:
            if type(layer) is Layer:  # into one list: no list per layer to build and copy
                _add_parameters(params, layer.neurons)
            else:
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

    def to_torch(self) -> Any:
        """The same network as a ``torch.nn.Sequential`` of float64 ``Linear`` layers, each followed
        by its activation (``ReLU``, ``Tanh``, ``Sigmoid``; nothing for a linear layer), holding
        copies of this model's weights: its outputs equal this model's to rounding.

        ValueError for what a ``Sequential`` of ``Linear`` layers cannot hold: a layer whose
        neurons have different activations or input sizes, a layer whose input size is not the
        previous layer's output size, or a neuron that is not a ``gradrs.nn.Neuron``. Needs PyTorch
        (``pip install torch``); ``import gradrs`` never imports it.
        """
        import numpy as np

        torch = _import_torch()

        modules: list[Any] = []
        width: int | None = None
        for index, layer in enumerate(self.layers):
            weights, biases, activation = _layer_arrays(layer, index)
            if width is not None and weights.shape[1] != width:
                raise ValueError(
                    f"layer {index} takes {weights.shape[1]} inputs but layer {index - 1} gives {width}; "
                    "a torch.nn.Sequential needs each layer to feed the next"
                )
            width = weights.shape[0]
            linear = torch.nn.Linear(weights.shape[1], weights.shape[0], dtype=torch.float64)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(weights)))
                linear.bias.copy_(torch.from_numpy(biases))
            modules.append(linear)
            if activation != "linear":
                modules.append(getattr(torch.nn, _TORCH_ACTIVATIONS[activation])())
        return torch.nn.Sequential(*modules)

    @classmethod
    def from_torch(cls, module: Any) -> MLP:
        """A gradrs model computing what ``module`` computes: a ``torch.nn.Sequential`` of
        ``Linear`` layers, each followed by at most one ``ReLU``, ``Tanh`` or ``Sigmoid``
        (``Identity`` is skipped). The weights are copied as float64 numbers; a ``Linear`` without
        bias gets a bias of 0 (trainable here, as every gradrs neuron's is).

        ValueError naming the module for anything else (other layers, two activations in a row, an
        activation before the first ``Linear``, sizes that do not chain, an empty ``Sequential``);
        TypeError when ``module`` is not a ``torch.nn.Sequential``.
        """
        import numpy as np

        torch = _import_torch()

        if not isinstance(module, torch.nn.Sequential):
            raise TypeError(f"from_torch takes a torch.nn.Sequential, got {type(module).__name__}")
        by_class = {getattr(torch.nn, torch_name): name for name, torch_name in _TORCH_ACTIVATIONS.items()}
        layers: list[tuple[np.ndarray, np.ndarray, str]] = []
        for position, child in enumerate(module):
            kind = type(child)
            if kind is torch.nn.Identity:
                continue
            if kind is torch.nn.Linear:
                weights = child.weight.detach().to("cpu", torch.float64).numpy()
                if layers and weights.shape[1] != layers[-1][0].shape[0]:
                    raise ValueError(
                        f"module [{position}] {child!r} takes {weights.shape[1]} inputs but the layer "
                        f"before gives {layers[-1][0].shape[0]}"
                    )
                bias = child.bias
                biases = (
                    np.zeros(weights.shape[0])
                    if bias is None
                    else bias.detach().to("cpu", torch.float64).numpy()
                )
                layers.append((weights, biases, "linear"))
            elif kind in by_class:
                if not layers or layers[-1][2] != "linear":
                    where = "before the first Linear" if not layers else "right after another activation"
                    raise ValueError(
                        f"module [{position}] {kind.__name__} comes {where}; gradrs applies one per layer"
                    )
                weights, biases, _ = layers[-1]
                layers[-1] = (weights, biases, by_class[kind])
            else:
                raise ValueError(
                    f"module [{position}] {kind.__name__} has no gradrs equivalent; from_torch reads Linear "
                    f"layers each followed by at most one of {sorted(_TORCH_ACTIVATIONS.values())}"
                )
        if not layers:
            raise ValueError("from_torch needs at least one Linear layer (it gives the input size)")
        # The weights drawn at construction are all replaced: leave the user's random stream as it was.
        state = random.getstate()
        try:
            model = cls(int(layers[0][0].shape[1]), [int(w.shape[0]) for w, _, _ in layers])
        finally:
            random.setstate(state)
        for layer, (_, _, activation) in zip(model.layers, layers, strict=True):
            for neuron in layer.neurons:
                neuron.activation = activation
        # parameters() order: layer by layer, neuron by neuron, its weights then its bias
        model.set_parameters_data(np.concatenate([np.column_stack([w, b]).ravel() for w, b, _ in layers]))
        return model

    def __repr__(self) -> str:
        return f"MLP of [{', '.join(str(layer) for layer in self.layers)}]"
