"""Optimisers with ``torch.optim``'s update rules, run over the whole parameter group in Rust.

Each keeps its state (momentum buffers, moment estimates) as numpy arrays and updates every
parameter in one call into the engine.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np

from gradrs._core import ParamGroup, Value

__all__ = ["SGD", "Adam", "AdamW", "LinearLR", "Optimizer"]


class Optimizer:
    """Base class: holds the parameters and a learning rate ``lr``."""

    def __init__(self, params: Iterable[Value], lr: float) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        if not lr >= 0.0:
            raise ValueError(f"invalid learning rate: {lr}")
        self.lr = float(lr)
        self.group = ParamGroup(self.params)
        if len(set(self.params)) != len(self.params):  # Values compare by node
            warnings.warn(
                "optimizer contains a parameter group with duplicate parameters; each is updated once",
                UserWarning,
                stacklevel=3,
            )

    def __getstate__(self) -> dict[str, Any]:
        # The ParamGroup is rebuilt from the parameters, so a copy or an unpickled checkpoint
        # updates the Values it was copied or unpickled with.
        return {k: v for k, v in vars(self).items() if k != "group"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        vars(self).update(state)
        self.group = ParamGroup(self.params)

    def zero_grad(self) -> None:
        """Sets every parameter's gradient to 0."""
        self.group.zero_grad()

    def step(self) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The optimiser's settings and state, as numpy arrays and numbers."""
        return {
            k: (v.copy() if isinstance(v, np.ndarray) else v)
            for k, v in vars(self).items()
            if k not in ("params", "group")
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value.copy() if isinstance(value, np.ndarray) else value)


class SGD(Optimizer):
    """Stochastic gradient descent as ``torch.optim.SGD`` (no dampening).

    ``weight_decay`` adds ``weight_decay * p`` to each gradient; with ``momentum`` the step
    follows ``b = momentum * b + g`` (``b = g`` on the first step), and ``nesterov`` uses
    ``g + momentum * b``.
    """

    def __init__(
        self,
        params: Iterable[Value],
        lr: float = 1e-3,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        super().__init__(params, lr)
        if momentum < 0.0 or weight_decay < 0.0:
            raise ValueError(f"invalid momentum {momentum} or weight_decay {weight_decay}")
        if nesterov and momentum <= 0.0:
            raise ValueError("nesterov momentum requires a positive momentum")
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.nesterov = nesterov
        self.velocity = np.zeros(len(self.params))

    def step(self) -> None:
        """Updates every parameter from its current gradient."""
        self.group.sgd_step(self.lr, self.momentum, self.weight_decay, self.velocity, self.nesterov)


class Adam(Optimizer):
    """Adam as ``torch.optim.Adam``: bias-corrected moments; ``weight_decay`` is L2 on the gradient."""

    decoupled = False

    def __init__(
        self,
        params: Iterable[Value],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, lr)
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas: {betas}")
        if eps < 0.0 or weight_decay < 0.0:
            raise ValueError(f"invalid eps {eps} or weight_decay {weight_decay}")
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.step_count = 0
        self.m = np.zeros(len(self.params))
        self.v = np.zeros(len(self.params))

    def step(self) -> None:
        """Updates every parameter from its current gradient."""
        self.step_count += 1
        beta1, beta2 = self.betas
        self.group.adam_step(
            self.step_count,
            self.lr,
            beta1,
            beta2,
            self.eps,
            self.weight_decay,
            self.decoupled,
            self.m,
            self.v,
        )


class AdamW(Adam):
    """AdamW as ``torch.optim.AdamW``: weights shrink by ``lr * weight_decay`` each step."""

    decoupled = True

    def __init__(
        self,
        params: Iterable[Value],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay)


class LinearLR:
    """Moves the optimiser's learning rate linearly from ``start`` to ``end`` over ``total_steps``.

    micrograd's demo uses ``lr = 1.0 - 0.9 * k / 100``: ``LinearLR(opt, 1.0, 0.1, 100)``. The rate
    for step ``k`` (0-based) is ``start + (end - start) * k / total_steps``; call ``step()`` after
    each optimiser step.
    """

    def __init__(self, optimizer: Optimizer, start: float, end: float, total_steps: int) -> None:
        if total_steps <= 0:
            raise ValueError("total_steps must be positive")
        self.optimizer = optimizer
        self.start, self.end, self.total_steps = float(start), float(end), int(total_steps)
        self.k = 0
        optimizer.lr = self.lr_at(0)

    def lr_at(self, k: int) -> float:
        return self.start + (self.end - self.start) * min(k, self.total_steps) / self.total_steps

    def step(self) -> None:
        self.k += 1
        self.optimizer.lr = self.lr_at(self.k)
