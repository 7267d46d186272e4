"""Command line: ``python -m gradrs demo`` (also installed as the ``gradrs`` command)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# gradrs does no linear algebra, and OpenBLAS's idle worker threads spin on the second core that
# a training run could use; one BLAS thread is plenty for numpy's bookkeeping here.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def main(argv: list[str] | None = None) -> int:
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
    bench = commands.add_parser("bench", help="run the benchmark against micrograd (and PyTorch)")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="arguments for gradrs.bench")
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.steps <= 0:
            parser.error("--steps must be positive")
        from gradrs.demo import run_demo

        out = None if args.no_plot else args.out
        run_demo(steps=args.steps, seed=args.seed, out=out, compiled=args.compile, micrograd=args.micrograd)
        return 0
    from gradrs import bench as bench_module

    return int(bench_module.main(args.args) or 0)


if __name__ == "__main__":
    sys.exit(main())
