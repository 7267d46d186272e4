"""Full training steps at several batch sizes: compiled gradrs against batched PyTorch.

Each step is what a training loop does: ``zero_grad``, forward, backward, and an Adam update, for
``MLP(64, [64, 64, 10])`` with the loss the mean over the batch of the sum of squared outputs, on
the first rows of the handwritten digits (scaled to [0, 1]), in float64. gradrs replays its
compiled per-sample loss over the batch (``Compiled.batch``) and steps ``gradrs.optim.Adam``;
PyTorch runs the same network as ``to_torch()`` gives it (batched ``Linear`` layers) and steps
``torch.optim.Adam`` with the same learning rate, with the same number of threads. Before any time
is taken, the first step from the shared weights must give the same loss and gradients in both
(1e-9 relative). The forward and backward alone are timed too.

``python benchmarks/sweep.py`` (``--batches 16 256 1797``, ``--repeats N``); ``bench.py --only
sweep`` runs it too. PyTorch is needed for the comparison; without it gradrs runs alone.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import gradrs
from gradrs import nn
from gradrs.datasets import load_digits
from gradrs.optim import Adam

AGREEMENT = 1e-9
SIZES = [64, 64, 64, 10]
LEARNING_RATE = 1e-3


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        return None
    return torch


def _best(step: Callable[[Any], object], X: Any, repeats: int, per_repeat: int) -> float:
    """The fastest of `repeats` timings of `per_repeat` calls of `step(X)`, per call, in milliseconds."""
    step(X)  # warm up: the compiled program's first trace, PyTorch's first allocations
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(per_repeat):
            step(X)
        times.append((time.perf_counter() - t0) / per_repeat)
    return 1000 * min(times)


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.all(np.abs(a - b) <= AGREEMENT * np.maximum(1.0, np.abs(b))))


class GradrsRun:
    """Compiled gradrs: the per-sample loss replayed over the batch, Adam in one native call."""

    def __init__(self, model: nn.MLP) -> None:
        self.model = model
        self.params = model.parameters()
        self.optimizer = Adam(self.params, lr=LEARNING_RATE)
        self.loss = gradrs.compile(lambda x: gradrs.sum([o * o for o in model(x)]))

    def forward_backward(self, X: np.ndarray) -> gradrs.Value:
        self.optimizer.zero_grad()
        loss = self.loss.batch(X, reduce="mean")
        loss.backward()
        return loss

    def step(self, X: np.ndarray) -> None:
        self.forward_backward(X)
        self.optimizer.step()

    def gradients(self) -> np.ndarray:
        return self.model.parameters_grad()


class TorchRun:
    """Batched PyTorch: the same network from ``to_torch()``, ``torch.optim.Adam``."""

    def __init__(self, torch: Any, model: nn.MLP) -> None:
        self.torch = torch
        self.net = model.to_torch()
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=LEARNING_RATE)

    def forward_backward(self, X: Any) -> Any:
        self.optimizer.zero_grad()
        loss = (self.net(X) ** 2).sum(dim=1).mean()
        loss.backward()
        return loss

    def step(self, X: Any) -> None:
        self.forward_backward(X)
        self.optimizer.step()

    def gradients(self) -> np.ndarray:
        # In gradrs.nn's order: neuron by neuron, its weights and then its bias.
        rows = []
        linears = [m for m in self.net if isinstance(m, self.torch.nn.Linear)]
        for layer in linears:
            rows.append(self.torch.cat([layer.weight.grad, layer.bias.grad[:, None]], dim=1).reshape(-1))
        return self.torch.cat(rows).numpy()


def sweep(batches: list[int], repeats: int, with_torch: bool = True) -> list[dict[str, float]]:
    """One row per batch size: ms per full step and per forward+backward, in gradrs and PyTorch."""
    torch = _torch() if with_torch else None
    X_all, _ = load_digits()
    threads = os.cpu_count() or 1
    if torch is not None:
        torch.set_num_threads(threads)
    rows = []
    for batch in batches:
        if not 1 <= batch <= len(X_all):
            raise ValueError(f"batch sizes run from 1 to {len(X_all)}, got {batch}")
        X = np.ascontiguousarray(X_all[:batch])
        model = nn.MLP(SIZES[0], SIZES[1:])
        ours = GradrsRun(model)
        theirs = TorchRun(torch, model) if torch is not None else None
        row: dict[str, float] = {"batch": batch}
        if theirs is not None:
            Xt = torch.from_numpy(X)
            a, b = ours.forward_backward(X).data, theirs.forward_backward(Xt).detach().item()
            if not (_close(np.array([a]), np.array([b])) and _close(ours.gradients(), theirs.gradients())):
                raise RuntimeError(f"batch {batch}: gradrs and PyTorch disagree (loss {a} against {b})")
        per_repeat = max(1, 2000 // batch)
        row["gradrs step"] = _best(ours.step, X, repeats, per_repeat)
        row["gradrs fwd+bwd"] = _best(ours.forward_backward, X, repeats, per_repeat)
        if theirs is not None:
            row["torch step"] = _best(theirs.step, Xt, repeats, per_repeat)
            row["torch fwd+bwd"] = _best(theirs.forward_backward, Xt, repeats, per_repeat)
        rows.append(row)
    return rows


def report(rows: list[dict[str, float]]) -> str:
    """The sweep as a table; a ratio above 1 means gradrs is faster."""
    lines = [
        f"MLP(64,[64,64,10]), digits rows, float64, {os.cpu_count()} threads; best of the repeats, ms",
        f"{'batch':>6} {'gradrs step':>12} {'torch step':>11} {'ratio':>6}"
        f" {'gradrs f+b':>11} {'torch f+b':>10} {'ratio':>6}",
    ]
    for row in rows:
        line = f"{row['batch']:6d} {row['gradrs step']:12.3f}"
        if "torch step" in row:
            line += (
                f" {row['torch step']:11.3f} {row['torch step'] / row['gradrs step']:5.2f}x"
                f" {row['gradrs fwd+bwd']:11.3f} {row['torch fwd+bwd']:10.3f}"
                f" {row['torch fwd+bwd'] / row['gradrs fwd+bwd']:5.2f}x"
            )
        else:
            line += f" {'-':>11} {'-':>6} {row['gradrs fwd+bwd']:11.3f}"
        lines.append(line)
    return "\n".join(lines)


def bookkeeping(repeats: int) -> dict[str, float]:
    """Microseconds per call of the bookkeeping a training loop does each step on
    ``MLP(64, [64, 64, 10])`` (8,970 parameters): best of ``repeats`` timings of 200 calls."""
    import timeit

    model = nn.MLP(SIZES[0], SIZES[1:])
    optimizer = Adam(model.parameters(), lr=LEARNING_RATE)
    calls = {
        "model.zero_grad()": model.zero_grad,
        "model.parameters()": model.parameters,
        "Adam step": optimizer.step,
    }
    return {
        name: 1e6 * min(timeit.repeat(call, number=200, repeat=repeats)) / 200 for name, call in calls.items()
    }


def targets(rows: list[dict[str, float]], book: dict[str, float]) -> list[tuple[str, bool | None, str]]:
    """The issue's targets for training steps and bookkeeping: (description, passed or None when
    not measured, measured)."""
    out: list[tuple[str, bool | None, str]] = []
    for row in rows:
        batch = int(row["batch"])
        ratio = row["torch step"] / row["gradrs step"] if "torch step" in row else None
        for at_least in (1.0, 2.0) if batch == 16 else (1.0,):
            text = f"full training step at batch {batch} >= {at_least:.0f}x batched PyTorch"
            measured = "n/a" if ratio is None else f"{ratio:.2f}x"
            out.append((text, None if ratio is None else ratio >= at_least, measured))
    for name, micros in book.items():
        out.append((f"{name} under 20 us for MLP(64,[64,64,10])", micros < 20.0, f"{micros:.1f} us"))
    return out


def print_targets(rows: list[dict[str, float]], book: dict[str, float]) -> None:
    """The targets as ``bench.py`` prints its own."""
    for text, ok, measured in targets(rows, book):
        verdict = "n/a " if ok is None else ("PASS" if ok else "FAIL")
        print(f"  [{verdict}] {text}: {measured}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/sweep.py", description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 256, 1797])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-torch", action="store_true", help="run gradrs alone")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    try:
        rows = sweep(args.batches, args.repeats, with_torch=not args.no_torch)
    except ValueError as error:
        parser.error(str(error))
    print(report(rows))
    print("targets:")
    print_targets(rows, bookkeeping(args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
