"""gradcheck: the lecture's nudge-by-h check as a tool."""

from __future__ import annotations

import pytest

import gradrs
from gradrs import GradcheckError, Value, gradcheck


def test_passes_on_correct_gradients_of_every_op():
    def f(a, b, c):
        return ((a * b + c).tanh() + (a / c).exp() - b.sigmoid() * (c**2).log() + (a - b).relu()) ** 2 + 2**a

    assert gradcheck(f, [0.3, -0.8, 1.7])
    assert gradcheck(lambda a, b: a**b, [1.3, 0.7])
    assert gradcheck(lambda *xs: gradrs.dot(xs[:3], xs[3:6], xs[6]), [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])


def test_leaves_the_callers_values_alone():
    a = Value(2.0, label="a")
    a.grad = 5.0
    assert gradcheck(lambda x: x * x, [a])
    assert a.grad == 5.0 and a.data == 2.0


class WrongGradient:
    """An op whose hand-written derivative is wrong: y = x**3 with dy/dx claimed as 2x."""

    @staticmethod
    def __call__(x):
        # x**3 in value, but built so that backward sees d/dx = 2x: x*x*x.data is a constant factor
        return x * x * x.data


def test_reports_the_input_and_both_numbers():
    with pytest.raises(
        GradcheckError, match=r"gradcheck failed for x \(value 1\.5\): analytic gradient 4\.5"
    ) as err:
        gradcheck(WrongGradient(), [Value(1.5, label="x")])
    assert "numerical gradient 6.7499999" in str(err.value)
    assert gradcheck(WrongGradient(), [1.5], raise_exception=False) is False


def test_bad_arguments():
    with pytest.raises(TypeError, match="must be a Value or a real number, not str"):
        gradcheck(lambda x: x, ["a"])
    with pytest.raises(TypeError, match="return a Value"):
        gradcheck(lambda x: 1.0, [1.0])
