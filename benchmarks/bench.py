"""The benchmark: gradrs against micrograd (and PyTorch) in one run.

``python benchmarks/bench.py`` (from a checkout, with gradrs installed) runs each workload on
identical data and initial weights in every engine that is importable, checks that all of them
compute the same loss and gradients (1e-9 relative) before it reports any time, and prints medians
with interquartile ranges, the ratios, and the issue's targets with PASS or FAIL. ``--quick`` runs
small sizes (for tests), ``--json`` writes every number.

The harness sits beside this file and is not installed with gradrs: ``engines.py`` (the engines
compared, and the lecture's tanh and exp added to micrograd), ``workloads.py`` (what one run
computes), ``measure.py`` (timing, after the agreement check) and ``report.py`` (the table and the
targets).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from typing import Any

WORKLOADS = ["eager", "demo", "chain", "mlp", "memory", "digits", "sweep"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line's options."""
    parser = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats (for tests and CI)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed repeats for gradrs (default 7, quick 3)"
    )
    parser.add_argument("--json", dest="json_path", default=None, help="write every number to this JSON file")
    parser.add_argument("--only", choices=WORKLOADS, action="append", help="run only these")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out even when installed")
    return parser.parse_args(argv)


def c_floor() -> list[Any]:
    """The C floor as an engine for the eager workload (``floor.py``), or nothing when it cannot
    be built here (said on the way)."""
    from floor import build

    from engines import Engine

    try:
        module = build()
    except RuntimeError as error:
        print(f"eager: the C floor is left out: {error}")
        return []
    return [Engine("c-floor", module.Value)]


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark: the command line's entry point."""
    args = parse_args(argv)
    # OpenBLAS reads this once, when numpy loads it, so it is set before the harness imports
    # numpy (run() imports it): OpenBLAS's worker threads spin after numpy's first BLAS call and
    # steal the second core from whatever is being timed, and nothing here needs more than one
    # BLAS thread. The memory runs' child processes inherit it.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 100_000))
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Times the chosen workloads in every engine, prints the report, writes the JSON."""
    import numpy as np

    from engines import available_engines
    from measure import Timing, bench_chain, bench_eager, bench_memory, bench_training
    from report import report, targets
    from workloads import demo_step, mlp_step, moons

    quick = args.quick
    fast_repeats = args.repeats or (3 if quick else 7)
    # micrograd is ~1000x slower: fewer repeats for it (stated in the output).
    # micrograd's steps slow down as its garbage accumulates, so it runs several in a row as the
    # notebook does; the median of 5 consecutive steps is what a user sees early in training.
    repeats = {"default": fast_repeats, "micrograd": 1 if quick else 5, "micrograd-gc-off": 1 if quick else 5}
    repeats["torch-scalar"] = repeats["micrograd"]
    # batched PyTorch takes about a millisecond a step: as many repeats as gradrs
    repeats["torch-batched"] = fast_repeats
    engines = [e for e in available_engines() if not (args.no_torch and e.name.startswith("torch"))]
    only = set(args.only or WORKLOADS)
    print("engines:", ", ".join(e.name for e in engines))
    print(
        f"repeats: gradrs {fast_repeats}, micrograd and torch {repeats['micrograd']} "
        "(they take seconds per run); medians and interquartile ranges"
    )
    timings: list[Timing] = []
    meta: dict[str, Any] = {"quick": quick}
    if "eager" in only:
        eager_engines = engines + c_floor()
        eager, info = bench_eager(eager_engines, 20_000 if quick else 100_000, repeats)
        timings += eager
        meta["eager_ops"] = info["ops"]
    if "demo" in only:
        X, y = moons(20 if quick else 100)
        timings += bench_training("demo step", engines, 2, [16, 16, 1], X, y, demo_step, repeats)
    if "chain" in only:
        timings.append(bench_chain(100_000 if quick else 1_000_000))
        if quick:
            timings[-1].workload = "100k-step chain"
    if "mlp" in only:
        rng = np.random.default_rng(7)
        nin, nouts, batch = (16, [16, 16, 10], 4) if quick else (64, [64, 64, 10], 16)
        X = rng.uniform(-1, 1, size=(batch, nin))
        targets_onehot = np.eye(10)[rng.integers(0, 10, size=batch)]
        name = "mlp16 batch4" if quick else "mlp64 batch16"
        timings += bench_training(name, engines, nin, nouts, X, targets_onehot, mlp_step, repeats)
    memory: dict[str, float] = {}
    if "memory" in only and not quick:
        memory = bench_memory([e for e in engines if e.name in ("gradrs", "micrograd")], steps=10)
    report(timings, memory)
    if "digits" in only:
        from digits import bench_digits

        meta["digits"] = bench_digits(50 if quick else 1000, use_torch=not args.no_torch)
    if "sweep" in only:
        from sweep import bookkeeping, print_targets, sweep
        from sweep import report as sweep_report
        from sweep import targets as sweep_targets

        rows = sweep([16, 64] if quick else [16, 256, 1797], 2 if quick else 5, with_torch=not args.no_torch)
        book = bookkeeping(2 if quick else 7)
        print("\nfull training steps by batch size (ratio above 1: gradrs faster)")
        print(sweep_report(rows))
        print("targets:")
        print_targets(rows, book)
        meta["sweep"] = rows
        meta["bookkeeping_us"] = book
        meta["sweep_targets"] = [
            {"target": text, "passed": ok, "measured": m} for text, ok, m in sweep_targets(rows, book)
        ]
    if args.json_path:
        payload = {
            "meta": meta,
            "timings": [asdict(t) | {"median": t.median, "iqr": t.iqr} for t in timings],
            "memory_kib": memory,
            "targets": [
                {"target": text, "passed": ok, "measured": m} for text, ok, m in targets(timings, memory)
            ],
        }
        with open(args.json_path, "w") as f:
            json.dump(payload, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
