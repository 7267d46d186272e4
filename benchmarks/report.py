"""The report: the table of medians and ratios, and the issue's targets with PASS or FAIL."""

from __future__ import annotations

import sys
from typing import Any

from measure import Timing


def _ratio(timings: list[Timing], workload: str, slow: str, fast: str = "gradrs") -> float | None:
    by_engine = {t.engine: t.median for t in timings if t.workload == workload}
    if slow not in by_engine or fast not in by_engine or by_engine[fast] == 0:
        return None
    return by_engine[slow] / by_engine[fast]


def _times(r: float) -> str:
    return f"{r:,.0f}x" if r >= 10 else f"{r:.2f}x"


def targets(timings: list[Timing], memory: dict[str, float]) -> list[tuple[str, bool | None, str]]:
    """The issue's targets: (description, passed or None when not measurable, measured)."""
    rows: list[tuple[str, bool | None, str]] = []

    def ratio_row(text: str, workload: str, slow: str, fast: str, at_least: float) -> None:
        r = _ratio(timings, workload, slow, fast)
        rows.append((text, None if r is None else r >= at_least, "n/a" if r is None else _times(r)))

    ratio_row("eager forward >= 50x micrograd per op", "eager forward", "micrograd", "gradrs", 50)
    ratio_row("eager backward >= 50x micrograd per node", "eager backward", "micrograd", "gradrs", 50)
    # The C floor (benchmarks/floor/floor.c): the least a C extension does per op, measured in
    # the same run. Compared best sample to best sample: at tens of nanoseconds per op, whatever
    # the engine timed before it leaves running (PyTorch's spinning worker threads) moves a median.
    best = {t.engine: min(t.samples) for t in timings if t.workload == "eager forward" and t.samples}
    over_floor = best["gradrs"] / best["c-floor"] if {"gradrs", "c-floor"} <= best.keys() else None
    rows.append(
        (
            "eager forward within 1.5x of the C floor per op (best samples)",
            None if over_floor is None else over_floor <= 1.5,
            "n/a" if over_floor is None else f"{over_floor:.2f}x",
        )
    )
    ratio_row("demo step via gradrs.nn >= 300x micrograd", "demo step", "micrograd", "gradrs", 300)
    ratio_row(
        "demo step micrograd-style code >= 80x micrograd", "demo step", "micrograd", "gradrs-mgstyle", 80
    )
    chain = [t.median for t in timings if t.workload == "1M-step chain"]
    if chain:
        rows.append(("1M-step chain build+backward+drop < 1.5 s", chain[0] < 1.5, f"{chain[0]:.2f} s"))
    ratio_row("MLP(64,[64,64,10]) batch 16 >= 300x micrograd", "mlp64 batch16", "micrograd", "gradrs", 300)
    ratio_row("compiled demo step >= 1000x micrograd", "demo step", "micrograd", "gradrs-compiled", 1000)
    ratio_row("compiled demo step >= 10x eager gradrs", "demo step", "gradrs", "gradrs-compiled", 10)
    ratio_row(
        "compiled MLP(64,[64,64,10]) batch 16 >= 1000x micrograd",
        "mlp64 batch16",
        "micrograd",
        "gradrs-compiled",
        1000,
    )
    ratio_row(
        "compiled demo step no slower than batched PyTorch",
        "demo step",
        "torch-batched",
        "gradrs-compiled",
        1.0,
    )
    ratio_row(
        "compiled MLP(64,[64,64,10]) batch 16 within 3x of batched PyTorch",
        "mlp64 batch16",
        "torch-batched",
        "gradrs-compiled",
        1 / 3,
    )
    if "gradrs" in memory and "micrograd" in memory:
        ok = memory["gradrs"] <= memory["micrograd"] / 2
        rows.append(
            (
                "demo peak memory <= half of micrograd's",
                ok,
                f"{memory['gradrs']:.0f} vs {memory['micrograd']:.0f} KiB",
            )
        )
    return rows


def report(timings: list[Timing], memory: dict[str, float], out: Any = sys.stdout) -> None:
    """Prints every timing with its ratios, the memory growth, and the targets."""
    print(f"{'workload':<16} {'engine':<17} {'median':>12} {'IQR':>10}  ratios", file=out)
    for t in timings:
        ratios = []
        for slow in ("micrograd", "micrograd-gc-off", "torch-scalar", "torch-batched", "gradrs"):
            r = _ratio(timings, t.workload, slow, t.engine)
            if slow == "gradrs" and t.engine != "gradrs-compiled":
                continue
            if r is not None and slow != t.engine and t.engine.startswith("gradrs"):
                ratios.append(f"{slow} {_times(r)}")
        print(
            f"{t.workload:<16} {t.engine:<17} {t.median:>9.3f} {t.unit:<6}{t.iqr:>7.3f}  {', '.join(ratios)}",
            file=out,
        )
    if memory:
        print("\npeak resident memory growth over 10 demo training steps (VmHWM, KiB):", file=out)
        for name, kib in memory.items():
            print(f"  {name:<17} {kib:>10.0f}", file=out)
    print("\ntargets:", file=out)
    for text, ok, measured in targets(timings, memory):
        verdict = "n/a " if ok is None else ("PASS" if ok else "FAIL")
        print(f"  [{verdict}] {text}: {measured}", file=out)
