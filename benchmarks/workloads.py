"""The workloads: what one timed run computes in each engine, on identical data and weights.

- *eager*: chains of mul, tanh, relu, add, scale, exp and pow 2 over 256 leaves, then backward.
- *demo step*: one training step of micrograd's demo notebook (hinge loss + 1e-4 L2, zero_grad,
  backward, SGD update).
- *mlp step*: forward, MSE against one-hot targets, backward.

Each step returns (loss, gradients) so that the engines' answers can be compared before any time is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

import gradrs
from gradrs.datasets import make_moons

from engines import Engine


def leaf_values(n: int, seed: int) -> list[float]:
    """The eager graph's leaf data: n uniform draws in [-1, 1]."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, size=n).tolist()


def eager_graph(engine: Engine, n_ops: int, leaf_data: list[float]) -> tuple[Any, list[Any], int]:
    """Chains of mul, tanh, relu, add, scale, exp, pow 2 over 256 leaves, summed; returns the op count."""
    leaves = [engine.value(x) for x in leaf_data]
    steps_per_chain = 10
    per_chain = steps_per_chain * 7 + 1
    n_chains = max(1, n_ops // per_chain)
    total = None
    for c in range(n_chains):
        acc = leaves[c % len(leaves)]
        for s in range(steps_per_chain):
            a = leaves[(7 * c + 3 * s) % len(leaves)]
            acc = (acc * a).tanh()
            acc = acc.relu() + a
            acc = (acc * 0.5).exp()
            acc = acc**2
        total = acc if total is None else total + acc
    return total, leaves, n_chains * per_chain - 1


def moons(n_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """micrograd's demo data: two noisy moons with labels -1 and +1."""
    X, y = make_moons(n_samples=n_samples, noise=0.1, random_state=1337)
    return X, (y * 2 - 1).astype(float)


def _compiled(model: Any, name: str, fn: Callable[[], Any]) -> Any:
    """The model's compiled per-sample function `name`, made once."""
    cache = model.__dict__.setdefault("_bench_compiled", {})
    if name not in cache:
        from gradrs.compiler import compile

        cache[name] = compile(fn())
    return cache[name]


def demo_step(engine: Engine, model: Any, X: np.ndarray, y: np.ndarray, group: Any, lr: float = 0.5) -> Any:
    """One training step of micrograd's demo: hinge loss + 1e-4 L2, zero_grad, backward, SGD."""
    if engine.name == "torch-batched":
        import torch

        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        scores = model(Xt)[:, 0]
        data_loss = (1 + -yt * scores).relu().sum() * (1.0 / len(y))
        tensors = model.tensors()
        total = data_loss + 1e-4 * sum((t * t).sum() for t in tensors)
        for t in tensors:
            t.grad = None
        total.backward()
        grads = model.parameters_grad()
        with torch.no_grad():
            for t in tensors:
                t -= lr * t.grad
        return total, grads
    if engine.name == "gradrs-compiled":
        sample_loss = _compiled(model, "demo", lambda: lambda x, yi: (1 + -yi * model(x)).relu())
        params = model.parameters()
        total = sample_loss.batch(X, y, reduce="mean") + 1e-4 * gradrs.dot(params, params)
        group.zero_grad()
        total.backward()
        grads = group.grad()
        group.sgd_step(lr, 0.0, 0.0, np.zeros(len(params)))
        return total, grads
    if engine.name == "gradrs":
        inputs = gradrs.leaves(X)
        scores = [model(x) for x in inputs]
        data_loss = gradrs.sum([(1 + -yi * s).relu() for yi, s in zip(y.tolist(), scores, strict=True)])
        data_loss = data_loss * (1.0 / len(scores))
        params = model.parameters()
        total = data_loss + 1e-4 * gradrs.dot(params, params)
        group.zero_grad()
        total.backward()
        grads = group.grad()
        group.sgd_step(lr, 0.0, 0.0, np.zeros(len(params)))
        return total, grads
    # exactly the notebook's lines: numpy rows mapped to Values, numpy labels
    if engine.name.startswith("torch"):  # numpy scalars times tensors would build numpy objects
        X, y = X.tolist(), y.tolist()
    inputs = [list(map(engine.value, xrow)) for xrow in X]
    scores = list(map(model, inputs))
    losses = [(1 + -yi * s).relu() for yi, s in zip(y, scores, strict=True)]
    data_loss = sum(losses) * (1.0 / len(losses))
    total = data_loss + 1e-4 * sum(p * p for p in model.parameters())
    _zero_grad(engine, model)
    total.backward()
    params = model.parameters()
    grads = [engine.grad(p) for p in params]
    if engine.name.startswith("torch"):
        import torch

        with torch.no_grad():
            for p in params:
                p -= lr * p.grad
    else:
        for p in params:
            p.data -= lr * p.grad
    return total, grads


def _zero_grad(engine: Engine, model: Any) -> None:
    if engine.name.startswith("torch"):
        for p in model.parameters():
            p.grad = None
    else:
        model.zero_grad()


def mlp_step(engine: Engine, model: Any, X: np.ndarray, targets: np.ndarray, group: Any) -> Any:
    """Forward, MSE against one-hot targets, backward (no update)."""
    if engine.name == "torch-batched":
        import torch

        outs = model(torch.from_numpy(X))
        loss = ((outs - torch.from_numpy(targets)) ** 2).sum() * (1.0 / targets.size)
        for t in model.tensors():
            t.grad = None
        loss.backward()
        return loss, model.parameters_grad()
    if engine.name == "gradrs-compiled":
        sample = _compiled(
            model,
            "mlp",
            lambda: lambda x, t: gradrs.sum([(o - ti) ** 2 for o, ti in zip(model(x), t, strict=True)]),
        )
        loss = sample.batch(X, targets, reduce="mean") * (1.0 / targets.shape[1])
        group.zero_grad()
        loss.backward()
        return loss, group.grad()
    if engine.name == "gradrs":
        outs = [model(x) for x in gradrs.leaves(X)]
        terms = [
            (o - t) ** 2
            for out, row in zip(outs, targets.tolist(), strict=True)
            for o, t in zip(out, row, strict=True)
        ]
        loss = gradrs.sum(terms) * (1.0 / len(terms))
        group.zero_grad()
        loss.backward()
        return loss, group.grad()
    inputs = [[engine.value(v) for v in row] for row in X.tolist()]
    outs = [model(x) for x in inputs]
    terms = [
        (o - t) ** 2
        for out, row in zip(outs, targets.tolist(), strict=True)
        for o, t in zip(out, row, strict=True)
    ]
    loss = sum(terms) * (1.0 / len(terms))
    _zero_grad(engine, model)
    loss.backward()
    return loss, [engine.grad(p) for p in model.parameters()]
