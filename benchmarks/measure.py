"""Timing the workloads in every engine, after checking that the engines agree.

No time is reported for a wrong answer: each workload first compares every engine's loss and
gradients with the first engine's (1e-9 relative) and raises BenchmarkError on a difference.
"""

from __future__ import annotations

import gc
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import gradrs

from engines import BenchmarkError, Engine, make_model, n_params, with_gc
from workloads import eager_graph, leaf_values


@dataclass
class Timing:
    """The samples of one workload in one engine, in ``unit``."""

    workload: str
    engine: str
    unit: str
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def iqr(self) -> float:
        if len(self.samples) < 4:
            return max(self.samples) - min(self.samples)
        q = statistics.quantiles(self.samples, n=4)
        return q[2] - q[0]


def close(a: float, b: float, rel: float = 1e-9, abs_: float = 1e-12) -> bool:
    """Whether a and b agree to ``rel`` relative (or ``abs_`` absolute, near zero)."""
    return abs(a - b) <= max(abs_, rel * max(abs(a), abs(b)))


def check_agreement(workload: str, results: dict[str, tuple[float, list[float]]], rel: float = 1e-9) -> None:
    """Raises BenchmarkError unless every engine's (loss, gradients) match the first engine's."""
    names = list(results)
    ref_name = names[0]
    ref_loss, ref_grads = results[ref_name]
    for name in names[1:]:
        loss, grads = results[name]
        if not close(loss, ref_loss, rel):
            raise BenchmarkError(
                f"{workload}: {name} computed loss {loss!r}, {ref_name} computed {ref_loss!r}"
            )
        if len(grads) != len(ref_grads):
            raise BenchmarkError(
                f"{workload}: {name} has {len(grads)} gradients, {ref_name} {len(ref_grads)}"
            )
        for i, (g, r) in enumerate(zip(grads, ref_grads, strict=True)):
            if not close(g, r, rel, abs_=1e-10):
                raise BenchmarkError(f"{workload}: gradient {i} is {g!r} in {name} but {r!r} in {ref_name}")


def bench_eager(
    engines: list[Engine], n_ops: int, repeats: dict[str, int]
) -> tuple[list[Timing], dict[str, Any]]:
    """Forward and backward of the eager graph, per op and per node."""
    leaf_data = leaf_values(256, seed=0)
    results: dict[str, tuple[float, list[float]]] = {}
    ops = 0
    # identical to gradrs (or torch-scalar) here: no nn code involved
    engines = [e for e in engines if e.name not in ("gradrs-mgstyle", "gradrs-compiled", "torch-batched")]
    fwds = {e.name: Timing("eager forward", e.name, "ns/op") for e in engines}
    bwds = {e.name: Timing("eager backward", e.name, "ns/node") for e in engines}
    # Round by round, every engine once per round: what one engine leaves behind (Python's
    # allocator grown, caches filled) then helps or hinders all of them alike.
    rounds = max(repeats.get(e.name, repeats["default"]) for e in engines) if engines else 0
    for round_ in range(rounds):
        for engine in engines:
            if round_ >= repeats.get(engine.name, repeats["default"]):
                continue
            fwd, bwd = fwds[engine.name], bwds[engine.name]
            gc.collect()

            def run(engine: Engine = engine) -> tuple[float, float, Any, list[Any], int]:
                t0 = time.perf_counter()
                total, leaves, count = eager_graph(engine, n_ops, leaf_data)
                t1 = time.perf_counter()
                total.backward()
                t2 = time.perf_counter()
                return t1 - t0, t2 - t1, total, leaves, count

            forward, backward, total, leaves, ops = with_gc(engine, run)
            fwd.samples.append(forward / ops * 1e9)
            bwd.samples.append(backward / ops * 1e9)
            results[engine.name] = (engine.data(total), [engine.grad(v) for v in leaves])
            del total, leaves
    timings = [t for e in engines for t in (fwds[e.name], bwds[e.name])]
    check_agreement("eager", results)
    return timings, {"ops": ops}


def bench_training(
    name: str,
    engines: list[Engine],
    nin: int,
    nouts: list[int],
    X: np.ndarray,
    y: np.ndarray,
    step: Callable[..., Any],
    repeats: dict[str, int],
) -> list[Timing]:
    """One training ``step`` of MLP(nin, nouts) on (X, y), in ms per step."""
    weights = np.random.default_rng(42).uniform(-1.0, 1.0, size=n_params(nin, nouts))
    results: dict[str, tuple[float, list[float]]] = {}
    timings = []
    for engine in engines:
        model = make_model(engine, nin, nouts, weights)
        group = (
            gradrs.ParamGroup(model.parameters()) if engine.name in ("gradrs", "gradrs-compiled") else None
        )
        # correctness first: one step from the shared initial weights
        loss, grads = with_gc(
            engine, lambda model=model, group=group, engine=engine: step(engine, model, X, y, group)
        )
        results[engine.name] = (engine.data(loss), [float(g) for g in grads])
        del loss
        timing = Timing(name, engine.name, "ms/step")
        # No gc.collect() between steps: training loops never call it, and for micrograd a full
        # collection between steps would hide the cost its cyclic garbage puts on every step.
        for _ in range(repeats.get(engine.name, repeats["default"])):

            def run(model: Any = model, group: Any = group, engine: Engine = engine) -> float:
                t0 = time.perf_counter()
                out = step(engine, model, X, y, group)
                t1 = time.perf_counter()
                del out
                return t1 - t0

            timing.samples.append(with_gc(engine, run) * 1e3)
        timings.append(timing)
    check_agreement(name, results)
    return timings


def bench_chain(n: int) -> Timing:
    """Build, backward and drop of an n-step chain y = y * 1.0001 + 0.0001 (gradrs only)."""
    timing = Timing("1M-step chain", "gradrs", "s")
    for _ in range(3):
        gc.collect()
        t0 = time.perf_counter()
        x = gradrs.Value(1.0)
        y = x
        for _ in range(n):
            y = y * 1.0001 + 0.0001
        y.backward()
        del y
        timing.samples.append(time.perf_counter() - t0)
        if not math.isfinite(x.grad) or x.grad <= 1.0:
            raise BenchmarkError(f"chain: unexpected gradient {x.grad}")
    return timing


_MEMORY_CHILD = """
import gc, sys, json
sys.setrecursionlimit(100000)
sys.path.insert(0, sys.argv[3])  # the benchmarks folder: not installed with gradrs
import numpy as np
import gradrs
from engines import available_engines, make_model, n_params, with_gc
from workloads import demo_step, moons


def peak_kib():
    # VmHWM is this process's own high-water mark; getrusage's ru_maxrss would start at the
    # parent's size, which the child inherits through fork.
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM")).split()[1])


engine = [e for e in available_engines() if e.name == sys.argv[1]][0]
X, y = moons(100)
weights = np.random.default_rng(42).uniform(-1, 1, size=n_params(2, [16, 16, 1]))
model = make_model(engine, 2, [16, 16, 1], weights)
group = gradrs.ParamGroup(model.parameters()) if engine.name.startswith("gradrs") else None
before = peak_kib()
for _ in range(int(sys.argv[2])):
    out = with_gc(engine, lambda: demo_step(engine, model, X, y, group))
    del out
print(json.dumps({"peak_kib": peak_kib() - before}))
"""


def bench_memory(engines: list[Engine], steps: int) -> dict[str, float]:
    """Peak resident memory growth of a demo training run, each engine in a fresh process."""
    peaks = {}
    for engine in engines:
        result = subprocess.run(
            [sys.executable, "-c", _MEMORY_CHILD, engine.name, str(steps), str(Path(__file__).parent)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if result.returncode != 0:
            raise BenchmarkError(f"memory run of {engine.name} failed: {result.stderr[-500:]}")
        peaks[engine.name] = json.loads(result.stdout.strip().splitlines()[-1])["peak_kib"]
    return peaks
