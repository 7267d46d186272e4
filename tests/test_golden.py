"""Every case PyTorch computed in float64: value and each leaf's gradient to 1e-9."""

from __future__ import annotations

import pytest

from gradrs import Value

from conftest import close, load_golden

GOLDEN = load_golden()
TOL = GOLDEN["tolerance"]


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=[c["name"] for c in GOLDEN["cases"]])
def test_matches_pytorch(case):
    scope: dict = {"V": Value}
    exec(case["code"], scope)
    out, leaves = scope["out"], scope["leaves"]
    out.backward()
    assert close(out.data, case["out"], TOL["rel"], TOL["abs"]), (out.data, case["out"])
    for name, expected in case["grads"].items():
        actual = leaves[name].grad
        assert close(actual, expected, TOL["rel"], TOL["abs"]), (name, actual, expected)
