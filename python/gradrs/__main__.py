"""Command line: ``python -m gradrs demo`` (also installed as the ``gradrs`` command).

The benchmark against micrograd and PyTorch is not part of the package: it is
``python benchmarks/bench.py`` in a checkout. ``gradrs demo --micrograd`` is the comparison
that ships.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="gradrs", description="gradrs: micrograd on a Rust core")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train micrograd's moons demo and draw its pictures")
    demo.add_argument("--steps", type=int, default=100, help="training steps (default 100)")
    demo.add_argument("--seed", type=int, default=1337, help="random seed (default 1337, as the notebook)")
    demo.add_argument("--out", type=Path, default=Path("out"), help="folder for the pictures (default out/)")
    demo.add_argument("--no-plot", action="store_true", help="train and report only, write no pictures")
    demo.add_argument(
        "--compile", action="store_true", help="train through gradrs.compile and compare with eager mode"
    )
    demo.add_argument(
        "--micrograd", action="store_true", help="also train with Karpathy's micrograd and compare (slow)"
    )
    args = parser.parse_args(argv)
    if args.steps <= 0:
        parser.error("--steps must be positive")
    # gradrs does no linear algebra, and OpenBLAS's idle worker threads spin on the second core
    # that a training run could use; one BLAS thread is plenty for numpy's bookkeeping here. It
    # is set before the demo imports numpy, since OpenBLAS reads it only when it is loaded.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from gradrs.demo import run_demo

    out = None if args.no_plot else args.out
    run_demo(steps=args.steps, seed=args.seed, out=out, compiled=args.compile, micrograd=args.micrograd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
