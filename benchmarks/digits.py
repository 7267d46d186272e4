"""The digits training run of ``gradrs demo digits`` in gradrs and in PyTorch, side by side.

Both train ``MLP(64, [64, 64, 10])`` from the same initial weights (the gradrs model's, handed to
PyTorch with ``to_torch()``), on the same fixed split and the same minibatches, with Adam (lr 3e-3)
on the softmax cross-entropy, in float64 with the same thread count. gradrs replays its compiled
per-sample loss over each minibatch (``Compiled.batch``); PyTorch runs batched ``Linear`` layers.
Before any time is taken, one step from the shared weights must give the same loss and gradients
(1e-9 relative). Then each trains for ``--steps`` steps: the time per step, the wall time and the
final test accuracy are printed (PyTorch also with one thread, which is often faster on a busy
machine at these sizes; the ratio is to PyTorch's faster setting).

``python benchmarks/digits.py`` (``--steps N``, ``--no-torch``); ``bench.py --only digits`` runs it
too. Without PyTorch installed, gradrs runs alone.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import numpy as np

from gradrs.digits_demo import (
    BATCH_SIZE,
    LEARNING_RATE,
    DigitsSplit,
    make_model,
    minibatches,
    split_digits,
    train_digits,
)

AGREEMENT = 1e-9


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        return None
    return torch


def torch_run(torch: Any, data: DigitsSplit, steps: int, seed: int) -> dict[str, float]:
    """PyTorch's run: the gradrs initial weights, the gradrs minibatches, ``torch.optim.Adam``."""
    net = make_model(seed).to_torch()
    optimizer = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    X, y = torch.from_numpy(data.X_train), torch.from_numpy(data.y_train)
    batches = minibatches(len(data.X_train), BATCH_SIZE, np.random.RandomState(seed))
    loss = None
    start = time.perf_counter()
    for _ in range(steps):
        index = torch.from_numpy(next(batches))
        loss = torch.nn.functional.cross_entropy(net(X[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        predictions = net(torch.from_numpy(data.X_test)).argmax(dim=1).numpy()
    return {
        "seconds": seconds,
        "final_loss": float(loss.item()) if loss is not None else float("nan"),
        "test_accuracy": float(np.mean(predictions == data.y_test)),
    }


def gradrs_run(data: DigitsSplit, steps: int, seed: int) -> dict[str, float]:
    """gradrs's run: exactly ``gradrs demo digits``'s training."""
    _, result, _ = train_digits(steps, seed, data=data)
    return {"seconds": result.seconds, "final_loss": result.losses[-1], "test_accuracy": result.test_accuracy}


def check_first_step(torch: Any, data: DigitsSplit, seed: int) -> float:
    """The largest relative difference between gradrs's and PyTorch's first-step loss and
    gradients from the shared weights; raises when it exceeds ``AGREEMENT``."""
    from gradrs.compiler import compile
    from gradrs.digits_demo import one_hot, sample_loss

    index = next(minibatches(len(data.X_train), BATCH_SIZE, np.random.RandomState(seed)))
    model = make_model(seed)
    net = model.to_torch()
    loss = compile(sample_loss(model)).batch(data.X_train[index], one_hot(data.y_train[index]))
    model.zero_grad()
    loss.backward()
    reference = torch.nn.functional.cross_entropy(
        net(torch.from_numpy(data.X_train[index])), torch.from_numpy(data.y_train[index])
    )
    reference.backward()
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    theirs = np.concatenate(
        [torch.cat([m.weight.grad, m.bias.grad[:, None]], dim=1).reshape(-1).numpy() for m in linears]
    )
    ours = model.parameters_grad()
    scale = max(1.0, float(np.abs(theirs).max()))
    worst = max(
        abs(loss.data - reference.item()) / max(1.0, abs(reference.item())),
        float(np.abs(ours - theirs).max()) / scale,
    )
    if worst > AGREEMENT:
        raise RuntimeError(f"gradrs and PyTorch disagree on the first step by {worst:.1e}: no time reported")
    return worst


def bench_digits(steps: int = 1000, seed: int = 1337, use_torch: bool = True) -> dict[str, Any]:
    """Runs both trainings and prints their comparison; returns the numbers."""
    data = split_digits()
    torch = _torch() if use_torch else None
    threads = os.cpu_count() or 1
    print(f"\ndigits: MLP(64, [64, 64, 10]), Adam lr {LEARNING_RATE}, batches of {BATCH_SIZE}, {steps} steps")
    runs: dict[str, Any] = {}
    if torch is None:
        print("PyTorch is not installed (or --no-torch): gradrs only")
    else:
        torch.set_num_threads(threads)
        worst = check_first_step(torch, data, seed)
        print(
            f"first step from the same weights: loss and gradients agree to {worst:.1e} ({threads} threads)"
        )
    runs["gradrs-compiled"] = gradrs_run(data, steps, seed)
    if torch is not None:
        runs["torch-batched"] = torch_run(torch, data, steps, seed)
        if threads > 1:
            # On a shared machine PyTorch's OpenMP threads can wait for each other far longer
            # than they compute at these sizes: its one-thread time is shown too.
            torch.set_num_threads(1)
            runs["torch-1-thread"] = torch_run(torch, data, steps, seed)
            torch.set_num_threads(threads)
    print(f"{'engine':<17} {'ms/step':>8} {'wall s':>7} {'final loss':>11} {'test accuracy':>14}")
    for name, run in runs.items():
        print(
            f"{name:<17} {1000 * run['seconds'] / steps:8.3f} {run['seconds']:7.2f} "
            f"{run['final_loss']:11.2e} {100 * run['test_accuracy']:13.1f}%"
        )
    if torch is not None:
        fastest = min(run["seconds"] for name, run in runs.items() if name.startswith("torch"))
        ratio = fastest / runs["gradrs-compiled"]["seconds"]
        print(f"gradrs runs at {ratio:.2f}x the speed of PyTorch's faster setting here (above 1: faster)")
    return runs


def main(argv: list[str] | None = None) -> int:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python benchmarks/digits.py", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="training steps (default 1000)")
    parser.add_argument("--seed", type=int, default=1337, help="the initial weights' seed (default 1337)")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out even when installed")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"argument --steps: must be at least 1, got {args.steps}")
    bench_digits(args.steps, args.seed, use_torch=not args.no_torch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
