"""Command line: ``python -m gradrs demo [moons|digits]`` (also installed as the ``gradrs`` command).

Every argument is checked before any work starts; a bad one is one line on stderr with the
subcommand's usage, and exit status 2. A problem found later (a folder that became unwritable,
a missing optional package, Ctrl-C) is one line on stderr too, never a traceback.

The benchmark against micrograd and PyTorch is not part of the package: it is
``python benchmarks/bench.py`` in a checkout. ``gradrs demo --micrograd`` is the comparison
that ships.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

# numpy's seeds are 32-bit unsigned integers.
SEED_RANGE = (0, 2**32 - 1)
DEFAULT_STEPS = {"moons": 100, "digits": 1000}


def _parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The command's parser and its ``demo`` subparser (whose ``error`` shows the demo's usage)."""
    parser = argparse.ArgumentParser(prog="gradrs", description="gradrs: micrograd on a Rust core")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="train a demo and draw its pictures",
        description="moons: micrograd's demo notebook (the default). digits: scikit-learn's handwritten "
        "digits through gradrs.compile (needs pip install 'gradrs[data]').",
    )
    demo.add_argument(
        "dataset",
        nargs="?",
        choices=sorted(DEFAULT_STEPS),
        default="moons",
        help="which demo (default moons)",
    )
    demo.add_argument("--steps", type=int, help="training steps (default 100 for moons, 1000 for digits)")
    demo.add_argument("--seed", type=int, default=1337, help="random seed (default 1337, as the notebook)")
    demo.add_argument("--out", type=Path, default=Path("out"), help="folder for the pictures (default out/)")
    demo.add_argument("--no-plot", action="store_true", help="train and report only, write no pictures")
    demo.add_argument(
        "--compile",
        action="store_true",
        help="moons: train through gradrs.compile, compare with eager",
    )
    demo.add_argument(
        "--micrograd",
        action="store_true",
        help="moons: also train in Karpathy's micrograd (slow)",
    )
    return parser, demo


def _out_problem(out: Path) -> str | None:
    """Why the pictures cannot be written into ``out`` (creating it if needed), or None."""
    if out.exists() and not out.is_dir():
        return f"argument --out: {out} exists and is not a folder"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return f"argument --out: cannot create the folder {out}: {error.strerror or error}"
    try:
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        return f"argument --out: cannot write into {out}: {error.strerror or error}"
    return None


def _validate(demo: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exits through ``demo.error`` (usage, one line, status 2) on the first bad argument."""
    if args.steps is None:
        args.steps = DEFAULT_STEPS[args.dataset]
    if args.steps < 1:
        demo.error(f"argument --steps: must be at least 1, got {args.steps}")
    low, high = SEED_RANGE
    if not low <= args.seed <= high:
        demo.error(f"argument --seed: must be between {low} and {high} (2**32 - 1), got {args.seed}")
    if args.dataset != "moons" and (args.compile or args.micrograd):
        option = "--compile" if args.compile else "--micrograd"
        demo.error(
            f"argument {option}: only for the moons demo (digits always trains through gradrs.compile)"
        )
    if not args.no_plot:
        problem = _out_problem(args.out)
        if problem is not None:
            demo.error(problem)


def _run(args: argparse.Namespace) -> None:
    out = None if args.no_plot else args.out
    if args.dataset == "digits":
        from gradrs.digits_demo import run_digits_demo

        run_digits_demo(steps=args.steps, seed=args.seed, out=out)
    else:
        from gradrs.demo import run_demo

        run_demo(steps=args.steps, seed=args.seed, out=out, compiled=args.compile, micrograd=args.micrograd)


def _fail(message: str) -> None:
    print(f"gradrs: error: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    parser, demo = _parsers()
    args = parser.parse_args(argv)
    _validate(demo, args)
    # gradrs does no linear algebra, and OpenBLAS's idle worker threads spin on the second core
    # that a training run could use; one BLAS thread is plenty for numpy's bookkeeping here. It
    # is set before the demo imports numpy, since OpenBLAS reads it only when it is loaded.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        _run(args)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        _fail("interrupted")
        return 130
    except ImportError as error:  # an optional extra that is not installed; the message says which
        _fail(str(error))
        return 1
    except BrokenPipeError:  # the reader went away (gradrs demo | head): nothing left to say
        # As Python's documentation advises: the interpreter's final flush then goes nowhere quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as error:  # e.g. the output folder removed or made unwritable during training
        _fail(f"{error.strerror or error}: {error.filename}" if error.filename else str(error))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
