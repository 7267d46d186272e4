"""The engines the benchmark compares, and how each builds the same model from the same weights.

- ``gradrs``: this package; the nn workloads use ``gradrs.nn`` (fused neurons) and one-call
  parameter updates.
- ``gradrs-compiled``: the same model through ``gradrs.compile``: a per-sample program recorded once
  and replayed over the batch in Rust (``Compiled.batch``).
- ``gradrs-mgstyle``: micrograd's own ``nn.py`` code (``sum(wi*xi ...)`` in a Python Neuron)
  running on ``gradrs.Value``: what a user gets by changing only the import.
- ``micrograd`` / ``micrograd-gc-off``: Karpathy's micrograd 0.1.0 as users run it, and with
  Python's cyclic garbage collector disabled. micrograd's graph is made of reference cycles (each
  node's ``_backward`` closure refers to the node itself), so only the cyclic collector frees it;
  with it off, the time is micrograd's interpreter cost alone while its memory grows.
- ``torch-scalar``: PyTorch with one 0-d float64 tensor per scalar, when torch is installed.
- ``torch-batched``: PyTorch as its users write a small net, one float64 weight matrix per layer and
  the whole batch in each op (nn workloads only), when torch is installed.
"""

from __future__ import annotations

import gc
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import gradrs
from gradrs import nn as gnn


class BenchmarkError(RuntimeError):
    """Raised when engines disagree: no speed is reported for a wrong answer."""


@dataclass
class Engine:
    """One engine: how it makes a scalar, reads data and gradients, and builds micrograd's nn."""

    name: str
    value: Callable[[float], Any]
    gc_off: bool = False
    mg_nn: Any = None  # the micrograd-style nn module to build models with

    def data(self, v: Any) -> float:
        return float(v.item()) if hasattr(v, "item") else float(v.data)

    def grad(self, v: Any) -> float:
        g = v.grad
        if g is None:
            return 0.0
        return float(g.item()) if hasattr(g, "item") else float(g)


def _micrograd_engine(gc_off: bool) -> Engine | None:
    try:
        from micrograd import engine as mg_engine
        from micrograd import nn as mg_nn
    except ImportError:
        return None
    value_cls = mg_engine.Value
    if not hasattr(value_cls, "tanh"):
        # micrograd has no tanh or exp; these are the lecture's (tanh through math.tanh, as
        # EurekaLabs' micrograd does, since the lecture's exp formula loses digits near 0).
        def tanh(self):
            t = math.tanh(self.data)
            out = value_cls(t, (self,), "tanh")

            def _backward():
                self.grad += (1 - t**2) * out.grad

            out._backward = _backward
            return out

        def exp(self):
            out = value_cls(math.exp(self.data), (self,), "exp")

            def _backward():
                self.grad += out.data * out.grad

            out._backward = _backward
            return out

        value_cls.tanh = tanh
        value_cls.exp = exp
    return Engine("micrograd-gc-off" if gc_off else "micrograd", value_cls, gc_off=gc_off, mg_nn=mg_nn)


def _torch_engine() -> Engine | None:
    try:
        import torch
    except ImportError:
        return None

    def value(x: float) -> Any:
        return torch.tensor(float(x), dtype=torch.float64, requires_grad=True)

    return Engine("torch-scalar", value)


class _TorchBatchedMLP:
    """micrograd's MLP as batched PyTorch: a float64 weight matrix and bias vector per layer.

    Its parameters, flattened neuron by neuron (weights, then bias), are in ``gradrs.nn.MLP``'s
    order, so the same initial weights go in and the gradients come out comparable.
    """

    def __init__(self, nin: int, nouts: list[int]) -> None:
        import torch

        sizes = [nin] + nouts
        self.layers = [
            (
                torch.zeros(sizes[i + 1], sizes[i], dtype=torch.float64, requires_grad=True),
                torch.zeros(sizes[i + 1], dtype=torch.float64, requires_grad=True),
            )
            for i in range(len(nouts))
        ]

    def __call__(self, X: Any) -> Any:
        for i, (W, b) in enumerate(self.layers):
            X = X @ W.T + b
            if i != len(self.layers) - 1:
                X = X.relu()
        return X

    def tensors(self) -> list[Any]:
        return [t for layer in self.layers for t in layer]

    def set_parameters_data(self, flat: np.ndarray) -> None:
        import torch

        start = 0
        with torch.no_grad():
            for W, b in self.layers:
                nout, nin = W.shape
                block = torch.from_numpy(flat[start : start + nout * (nin + 1)].reshape(nout, nin + 1))
                W.copy_(block[:, :nin])
                b.copy_(block[:, nin])
                start += nout * (nin + 1)

    def parameters_grad(self) -> list[float]:
        import torch

        rows = [torch.cat([W.grad, b.grad[:, None]], dim=1).reshape(-1) for W, b in self.layers]
        return torch.cat(rows).tolist()

    def parameters(self) -> list[Any]:
        # only counted by make_model(); one entry per scalar parameter
        return [None] * sum(W.numel() + b.numel() for W, b in self.layers)


class _GradrsStyleNN:
    """micrograd's nn.py, verbatim in spirit, running on gradrs.Value (for 'gradrs-mgstyle')."""

    value: Any = gradrs.Value

    class Module:
        def zero_grad(self) -> None:
            for p in self.parameters():
                p.grad = 0

        def parameters(self) -> list[Any]:
            return []

    class Neuron(Module):
        def __init__(self, nin: int, nonlin: bool = True) -> None:
            self.w = [gradrs.Value(random.uniform(-1, 1)) for _ in range(nin)]
            self.b = gradrs.Value(0)
            self.nonlin = nonlin

        def __call__(self, x: list[Any]) -> Any:
            act = sum((wi * xi for wi, xi in zip(self.w, x, strict=False)), self.b)
            return act.relu() if self.nonlin else act

        def parameters(self) -> list[Any]:
            return self.w + [self.b]

    class Layer(Module):
        def __init__(self, nin: int, nout: int, **kwargs: Any) -> None:
            self.neurons = [_GradrsStyleNN.Neuron(nin, **kwargs) for _ in range(nout)]

        def __call__(self, x: list[Any]) -> Any:
            out = [n(x) for n in self.neurons]
            return out[0] if len(out) == 1 else out

        def parameters(self) -> list[Any]:
            return [p for n in self.neurons for p in n.parameters()]

    class MLP(Module):
        def __init__(self, nin: int, nouts: list[int]) -> None:
            sz = [nin] + nouts
            self.layers = [
                _GradrsStyleNN.Layer(sz[i], sz[i + 1], nonlin=i != len(nouts) - 1) for i in range(len(nouts))
            ]

        def __call__(self, x: list[Any]) -> Any:
            for layer in self.layers:
                x = layer(x)
            return x

        def parameters(self) -> list[Any]:
            return [p for layer in self.layers for p in layer.parameters()]


class _TorchStyleNN(_GradrsStyleNN):
    """The same micrograd-style MLP over 0-d torch tensors."""

    class Neuron(_GradrsStyleNN.Neuron):
        def __init__(self, nin: int, nonlin: bool = True) -> None:
            engine = _torch_engine()
            assert engine is not None
            self.w = [engine.value(random.uniform(-1, 1)) for _ in range(nin)]
            self.b = engine.value(0.0)
            self.nonlin = nonlin

        def __call__(self, x: list[Any]) -> Any:
            act = sum((wi * xi for wi, xi in zip(self.w, x, strict=False)), self.b)
            return act.relu() if self.nonlin else act

    class Layer(_GradrsStyleNN.Layer):
        def __init__(self, nin: int, nout: int, **kwargs: Any) -> None:
            self.neurons = [_TorchStyleNN.Neuron(nin, **kwargs) for _ in range(nout)]

    class MLP(_GradrsStyleNN.MLP):
        def __init__(self, nin: int, nouts: list[int]) -> None:
            sz = [nin] + nouts
            self.layers = [
                _TorchStyleNN.Layer(sz[i], sz[i + 1], nonlin=i != len(nouts) - 1) for i in range(len(nouts))
            ]


def available_engines() -> list[Engine]:
    """Every engine that is importable here, gradrs's first (the reference for agreement)."""
    engines = [
        Engine("gradrs", gradrs.Value, mg_nn=gnn),
        Engine("gradrs-compiled", gradrs.Value, mg_nn=gnn),
        Engine("gradrs-mgstyle", gradrs.Value, mg_nn=_GradrsStyleNN),
    ]
    for gc_off in (False, True):
        engine = _micrograd_engine(gc_off)
        if engine is not None:
            engines.append(engine)
    torch_engine = _torch_engine()
    if torch_engine is not None:
        torch_engine.mg_nn = _TorchStyleNN
        engines.append(torch_engine)
        engines.append(Engine("torch-batched", torch_engine.value))
    return engines


def with_gc(engine: Engine, fn: Callable[[], Any]) -> Any:
    """fn(), with Python's cyclic garbage collector off for the engines that run without it."""
    if not engine.gc_off:
        return fn()
    gc.disable()
    try:
        return fn()
    finally:
        gc.enable()


def make_model(engine: Engine, nin: int, nouts: list[int], weights: np.ndarray) -> Any:
    """micrograd's MLP(nin, nouts) in the engine, its parameters set to ``weights`` in order."""
    if engine.name == "torch-batched":
        model = _TorchBatchedMLP(nin, nouts)
    elif engine.name in ("gradrs", "gradrs-compiled"):
        model = gnn.MLP(nin, nouts)
    else:
        model = engine.mg_nn.MLP(nin, nouts)
    params = model.parameters()
    if len(params) != len(weights):
        raise BenchmarkError(f"{engine.name}: model has {len(params)} parameters, expected {len(weights)}")
    if engine.name == "torch-batched":
        model.set_parameters_data(weights)
    elif engine.name.startswith("torch"):
        import torch

        with torch.no_grad():
            for p, w in zip(params, weights, strict=True):
                p.copy_(torch.tensor(float(w), dtype=torch.float64))
    elif engine.name in ("gradrs", "gradrs-compiled"):
        model.set_parameters_data(weights)
    else:
        for p, w in zip(params, weights, strict=True):
            p.data = float(w)
    return model


def n_params(nin: int, nouts: list[int]) -> int:
    """How many parameters MLP(nin, nouts) has."""
    sizes = [nin] + nouts
    return sum((sizes[i] + 1) * sizes[i + 1] for i in range(len(nouts)))
