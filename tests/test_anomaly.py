"""detect_anomaly: the first nan names its op; outside it, IEEE results and no cost."""

from __future__ import annotations

import math
import time

import pytest

import gradrs
from gradrs import AnomalyError, Value, detect_anomaly


def test_nan_in_backward_names_the_op():
    x = Value(0.0)
    y = x**0.5 * 0.0  # d/dx sqrt(x) is inf at 0, times 0 -> nan
    with detect_anomaly():
        with pytest.raises(AnomalyError, match=r"backward of op '\*\*0.5' produced nan") as err:
            y.backward()
    assert "inputs were [0.0]" in str(err.value)
    y.backward()  # outside: IEEE, silently
    assert math.isnan(x.grad)


def test_nan_in_forward_names_the_op_and_inputs():
    with detect_anomaly():
        with pytest.raises(
            AnomalyError, match=r"op '\*\*0.5' produced nan in the forward pass from inputs \[-1.0\]"
        ):
            Value(-1.0) ** 0.5
        with pytest.raises(AnomalyError, match=r"op 'log' produced nan"):
            Value(-1.0).log()
        with pytest.raises(AnomalyError, match=r"op '-' produced nan"):
            Value(math.inf) - Value(math.inf)
        assert Value(0.0).log().data == -math.inf  # inf is not an anomaly, as in PyTorch
    assert math.isnan((Value(-1.0) ** 0.5).data)


def test_restores_the_previous_state_and_works_as_decorator():
    @detect_anomaly()
    def risky():
        return Value(-1.0).log()

    with pytest.raises(AnomalyError):
        risky()
    assert math.isnan(Value(-1.0).log().data)
    try:
        with detect_anomaly():
            raise KeyError
    except KeyError:
        pass
    assert math.isnan(Value(-1.0).log().data)


def test_the_checks_run_only_inside_and_stay_affordable():
    """Inside ``detect_anomaly()`` every op is checked; outside, none is, and the mode ends with
    the block. Timed inside against outside (interleaved, best of many), the checks stay within
    a small factor, so the mode remains usable for debugging. (A lower bound on the ratio would
    only measure the machine's noise; the behaviour is checked directly instead.)"""

    def work():
        x = Value(0.5)
        for _ in range(5_000):
            x = (x * 1.0001).tanh() + 0.0001
        x.backward()

    def timed():
        t0 = time.perf_counter()
        work()
        return time.perf_counter() - t0

    outside, inside = [], []
    for _ in range(31):  # the best of many stays steady even on a busy machine
        outside.append(timed())
        with detect_anomaly():
            assert gradrs.is_anomaly_enabled()
            inside.append(timed())
            with pytest.raises(AnomalyError):
                Value(-1.0).log()  # nan from a finite input: checked inside
        assert not gradrs.is_anomaly_enabled()
        assert math.isnan(Value(-1.0).log().data)  # not checked outside
    ratio = min(inside) / min(outside)
    assert ratio < 4.0, (min(outside), min(inside))
