"""Shared helpers: the PyTorch golden cases, the lecture's first graph, and a guard against silent
failures."""

from __future__ import annotations

import gc
import json
import math
import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# A fixed, derandomized profile so CI is repeatable; HYPOTHESIS_PROFILE=long for a deeper search.
settings.register_profile(
    "ci",
    max_examples=300,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
settings.register_profile("long", parent=settings.get_profile("ci"), max_examples=5000, derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO = Path(__file__).resolve().parents[1]
# The project's shared references sit beside the clone; a copy ships in tests/data
# so the suite also runs from a lone checkout.
GOLDEN_PLACES = [
    REPO.parent / "shared" / "golden" / "pytorch_cases.json",
    REPO / "tests" / "data" / "pytorch_cases.json",
]


def load_golden() -> dict:
    for place in GOLDEN_PLACES:
        if place.exists():
            return json.loads(place.read_text())
    raise FileNotFoundError(f"no pytorch_cases.json in {GOLDEN_PLACES}")


def lecture_graph():
    """The lecture's first graph, L = (a*b + c) * f, labelled as the lecture labels it, after
    ``L.backward()``."""
    from gradrs import Value

    a = Value(2.0, label="a")
    b = Value(-3.0, label="b")
    c = Value(10.0, label="c")
    e = a * b
    e.label = "e"
    d = e + c
    d.label = "d"
    f = Value(-2.0, label="f")
    L = d * f
    L.label = "L"
    L.backward()
    return L


def close(actual: float, expected: float, rel: float = 1e-9, abs_: float = 1e-9) -> bool:
    if math.isnan(expected):
        return math.isnan(actual)
    if math.isinf(expected):
        return actual == expected
    return abs(actual - expected) <= max(abs_, rel * abs(expected))


@pytest.fixture(autouse=True)
def no_unraisable_exceptions():
    """A panic or error inside a destructor only reaches sys.unraisablehook; fail on it."""
    gc.collect()  # so that one test's garbage is not freed in the middle of another's node counts
    seen = []
    previous = sys.unraisablehook
    sys.unraisablehook = seen.append
    try:
        yield
    finally:
        sys.unraisablehook = previous
    assert not seen, f"unraisable exception(s) during the test: {[str(s.exc_value) for s in seen]}"


# Speedup ratios measured by test_speedup.py, printed at the end of the run so CI logs show them.
SPEEDUPS: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter):
    if SPEEDUPS:
        terminalreporter.section("speedups over micrograd measured in this run")
        for name, ratio in SPEEDUPS.items():
            shown = f"{ratio:.0f}" if ratio >= 10 else f"{ratio:.2f}"
            terminalreporter.write_line(f"{name}: {shown}x")
