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
from typing import TYPE_CHECKING, Any

from gradrs._core import Dense, ParamGroup, Value, dot

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

        np.savez(path, **{name: np.float64(p.data) for name, p in self.named_parameters()})

    def load(self, path: str | Path, strict: bool = True) -> None:
        """Reads parameters written by ``save()`` (given the same path: numpy adds ``.npz``)."""
        import numpy as np

        path = Path(path)
        if not path.exists() and path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        with np.load(path) as archive:
            self.load_state_dict({name: float(archive[name]) for name in archive.files}, strict=strict)


def _activation(nonlin: bool, activation: str | None) -> str:
    if activation is None:
        return "relu" if nonlin else "linear"
    if activation not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(_ACTIVATIONS)}")
    return activation


class _LayerCache:
    """The compiled form of a layer (a ``Dense``) and its parameter list, dropped whenever its
    parameters change. The list is only trusted while ``dense`` is set: building ``dense`` is
    what makes every neuron report its changes here."""

    __slots__ = ("dense", "params")

    def __init__(self) -> None:
        self.dense: Dense | None = None
        self.params: list[Value] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {}  # copies and pickles rebuild it from their own Values

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.dense = None
        self.params = None


class _WatchedList(list):  # type: ignore[type-arg]
    """A list (of weights, or of neurons) that drops its layer's cache when it changes."""

    _cache: _LayerCache | None = None

    def _changed(self) -> None:
        if self._cache is not None:
            self._cache.dense = None

    def __setitem__(self, *args: Any, **kwargs: Any) -> Any:
        result = super().__setitem__(*args, **kwargs)
        self._changed()
        return result

    def __delitem__(self, *args: Any, **kwargs: Any) -> Any:
        result = super().__delitem__(*args, **kwargs)
        self._changed()
        return result

    def append(self, *args: Any, **kwargs: Any) -> Any:
        result = super().append(*args, **kwargs)
        self._changed()
        return result

    def extend(self, *args: Any, **kwargs: Any) -> Any:
        result = super().extend(*args, **kwargs)
        self._changed()
        return result

    def insert(self, *args: Any, **kwargs: Any) -> Any:
        result = super().insert(*args, **kwargs)
        self._changed()
        return result

    def pop(self, *args: Any, **kwargs: Any) -> Any:
        result = super().pop(*args, **kwargs)
        self._changed()
        return result

    def remove(self, *args: Any, **kwargs: Any) -> Any:
        result = super().remove(*args, **kwargs)
        self._changed()
        return result

    def clear(self, *args: Any, **kwargs: Any) -> Any:
        result = super().clear(*args, **kwargs)
        self._changed()
        return result

    def reverse(self, *args: Any, **kwargs: Any) -> Any:
        result = super().reverse(*args, **kwargs)
        self._changed()
        return result

    def sort(self, *args: Any, **kwargs: Any) -> Any:
        result = super().sort(*args, **kwargs)
        self._changed()
        return result

    def __iadd__(self, other: Any) -> Any:
        result = super().__iadd__(other)
        self._changed()
        return result

    def __imul__(self, n: Any) -> Any:
        result = super().__imul__(n)
        self._changed()
        return result

    def __reduce_ex__(self, protocol: Any) -> Any:
        return (list, (list(self),))  # copies are plain lists; their owner watches them again

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        import copy

        return [copy.deepcopy(item, memo) for item in self]


class Neuron(Module):
    """``act(w · x + b)`` with ``nin`` weights drawn from ``random.uniform(-1, 1)`` and ``b = 0``."""

    def __init__(self, nin: int, nonlin: bool = True, activation: str | None = None) -> None:
        self._cache = _LayerCache()
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
        self._cache.dense = None

    @property
    def nonlin(self) -> bool:
        """micrograd's flag: False means linear. Setting it, as micrograd code may, takes effect."""
        return self._activation != "linear"

    @nonlin.setter
    def nonlin(self, nonlin: bool) -> None:
        if bool(nonlin) != self.nonlin:
            self.activation = "relu" if nonlin else "linear"

    @property
    def w(self) -> list[Value]:
        return self._w

    @w.setter
    def w(self, weights: list[Value]) -> None:
        self._w = _WatchedList(weights)
        self._w._cache = self._cache
        self._cache.dense = None

    @property
    def b(self) -> Value:
        return self._b

    @b.setter
    def b(self, bias: Value) -> None:
        self._b = bias
        self._cache.dense = None

    def _bind(self, cache: _LayerCache) -> None:
        """Makes changes to this neuron's parameters reset ``cache`` (its layer's)."""
        self._cache = cache
        self._w._cache = cache

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "_activation" not in state:  # pickled before activation became a property
            state = {k: v for k, v in state.items() if k not in ("activation", "nonlin", "_act")} | {
                "_activation": state.get("activation", "relu")
            }
        self.__dict__.update(state)
        self.w = list(self._w)  # watch the restored list again

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

    A call evaluates every neuron in one call into the engine (each neuron is still one node);
    replacing a neuron or one of its Values is noticed and handled.
    """

    def __init__(self, nin: int, nout: int, **kwargs: Any) -> None:
        self._cache = _LayerCache()
        self.neurons = [Neuron(nin, **kwargs) for _ in range(nout)]

    @property
    def neurons(self) -> list[Neuron]:
        return self._neurons

    @neurons.setter
    def neurons(self, neurons: list[Neuron]) -> None:
        self._neurons = _WatchedList(neurons)
        self._neurons._cache = self._cache
        self._cache.dense = None

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.neurons = list(self._neurons)

    def _dense(self) -> Dense | None:
        neurons = self._neurons
        activations = {n.activation for n in neurons}
        if len(activations) != 1 or not neurons:
            return None  # mixed activations: call the neurons one by one
        for n in neurons:
            n._bind(self._cache)
        dense = Dense([n.w for n in neurons], [n.b for n in neurons], activations.pop())
        self._cache.dense = dense
        self._cache.params = [p for n in neurons for p in n.parameters()]
        return dense

    def __call__(self, x: Sequence[Input]) -> Value | list[Value]:
        dense = self._cache.dense or self._dense()
        if dense is not None and len(x) == dense.nin:
            out = dense(x)
        else:
            out = [n(x) for n in self._neurons]
        return out[0] if len(out) == 1 else out

    def parameters(self) -> list[Value]:
        cache = self._cache
        if cache.dense is not None and cache.params is not None:
            return list(cache.params)  # a training loop asks every step; a copy, as it may be changed
        return [p for n in self.neurons for p in n.parameters()]

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
        out: Any = x
        for layer in self.layers:
            # A one-neuron hidden layer returns a bare Value; feed it on as a list (micrograd issue #13).
            out = layer([out] if isinstance(out, Value) else out)
        return out

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
