"""Random expression graphs: gradrs against micrograd, complex-step derivatives, and finite differences.

Hypothesis draws programs: a few leaves, then ops whose operands are any earlier node (so
subexpressions are shared and leaves reused), with numbers on either side of binary ops, wide
``gradrs.sum`` / ``gradrs.dot`` nodes and chains. Programs that leave the smooth domain (a log
of a non-positive number, a relu input within 1e-3 of its kink, an overflow) are rejected, since
derivatives there are conventions, tested separately against PyTorch's golden values.
"""

from __future__ import annotations

import cmath
import math
from dataclasses import dataclass

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from micrograd.engine import Value as MgValue

import gradrs
from gradrs import Value

UNARY = [
    "neg",
    "relu",
    "tanh",
    "exp",
    "log",
    "sigmoid",
    "pow_const",
    "rpow_const",
    "scale",
    "shift",
    "div_const",
    "sub_const",
]
BINARY = ["add", "sub", "mul", "div", "pow"]
NARY = ["sum", "dot"]
MICROGRAD_OPS = {
    "neg",
    "relu",
    "pow_const",
    "scale",
    "shift",
    "div_const",
    "sub_const",
    "add",
    "sub",
    "mul",
    "div",
    "sum",
    "dot",
}


@dataclass(frozen=True)
class Step:
    op: str
    args: tuple[int, ...]
    const: float
    swap: bool  # for scale/shift/div_const/sub_const: number on the left


@dataclass(frozen=True)
class Program:
    leaves: tuple[float, ...]
    steps: tuple[Step, ...]


@st.composite
def programs(draw, ops=tuple(UNARY + BINARY + NARY), max_steps=18, max_width=6, min_steps=1):
    n_leaves = draw(st.integers(1, 4))
    leaves = tuple(
        draw(st.floats(-2.0, 2.0, allow_nan=False).filter(lambda x: abs(x) > 0.05)) for _ in range(n_leaves)
    )
    steps = []
    for k in range(draw(st.integers(min_steps, max_steps))):
        available = n_leaves + k
        op = draw(st.sampled_from(ops))
        if op in NARY:
            width = draw(st.integers(1, max_width))
            arity = 2 * width if op == "dot" else width
        else:
            arity = 2 if op in BINARY else 1
        # Prefer recent nodes so that deep chains appear, but any earlier node may be reused.
        args = tuple(
            draw(st.one_of(st.just(available - 1), st.integers(0, available - 1))) for _ in range(arity)
        )
        const = draw(st.sampled_from([0.5, 2.0, -1.5, 3.0, 0.25, -2.0, 1.0]))
        steps.append(Step(op, args, const, draw(st.booleans())))
    return Program(leaves, tuple(steps))


def relu(x):
    if isinstance(x, complex):
        return x if x.real > 0 else 0 * x
    return x if x > 0 else 0.0


def apply(step: Step, vals: list, lib) -> object:
    """One step on any number-like type: floats, complex numbers, gradrs or micrograd Values."""
    a = vals[step.args[0]]
    c = step.const
    op = step.op
    if op == "neg":
        return -a
    if op == "relu":
        return lib["relu"](a)
    if op in ("tanh", "exp", "log", "sigmoid"):
        return lib[op](a)
    if op == "pow_const":
        return a**c
    if op == "rpow_const":
        return abs(c) ** a
    if op == "scale":
        return c * a if step.swap else a * c
    if op == "shift":
        return c - a if step.swap else a + c
    if op == "div_const":
        return c / a if step.swap else a / c
    if op == "sub_const":
        return c + a if step.swap else a - c
    if op in BINARY:
        b = vals[step.args[1]]
        return {
            "add": lambda: a + b,
            "sub": lambda: a - b,
            "mul": lambda: a * b,
            "div": lambda: a / b,
            "pow": lambda: a**b,
        }[op]()
    terms = [vals[i] for i in step.args]
    if op == "sum":
        return lib["sum"](terms)
    half = len(terms) // 2
    return lib["dot"](terms[:half], terms[half:])


def plain_sum(xs):
    total = 0
    for x in xs:
        total = total + x
    return total


def plain_dot(ws, xs):
    total = 0
    for w, x in zip(ws, xs, strict=True):
        total = total + w * x
    return total


FLOAT = {
    "relu": relu,
    "tanh": math.tanh,
    "exp": math.exp,
    "log": math.log,
    "sigmoid": lambda x: 1 / (1 + math.exp(-x)),
    "sum": plain_sum,
    "dot": plain_dot,
}
COMPLEX = {
    "relu": relu,
    "tanh": cmath.tanh,
    "exp": cmath.exp,
    "log": cmath.log,
    "sigmoid": lambda z: 1 / (1 + cmath.exp(-z)),
    "sum": plain_sum,
    "dot": plain_dot,
}
GRADRS = {
    "relu": Value.relu,
    "tanh": Value.tanh,
    "exp": Value.exp,
    "log": Value.log,
    "sigmoid": Value.sigmoid,
    "sum": gradrs.sum,
    "dot": gradrs.dot,
}
MICROGRAD = {"relu": lambda v: v.relu(), "sum": plain_sum, "dot": plain_dot}


def smooth(program: Program) -> bool:
    """Whether every step stays finite, moderate, and away from kinks and domain edges."""
    vals = list(program.leaves)
    for step in program.steps:
        a = vals[step.args[0]]
        try:
            if step.op == "relu" and abs(a) < 1e-3:
                return False
            if step.op == "log" and a < 1e-2:
                return False
            if step.op == "pow_const" and a < 1e-2:
                return False
            if step.op == "pow" and (a < 1e-2 or abs(vals[step.args[1]]) > 4):
                return False
            if step.op == "div" and abs(vals[step.args[1]]) < 1e-2:
                return False
            if step.op in ("exp", "rpow_const") and abs(a) > 20:
                return False
            out = apply(step, vals, FLOAT)
        except (OverflowError, ZeroDivisionError, ValueError):
            return False
        if not math.isfinite(out) or abs(out) > 1e6:
            return False
        vals.append(out)
    return True


def run_gradrs(program: Program) -> tuple[float, list[float]]:
    leaves = [Value(x) for x in program.leaves]
    vals: list = list(leaves)
    for step in program.steps:
        vals.append(apply(step, vals, GRADRS))
    out = vals[-1]
    if not isinstance(out, Value):  # a step that used only numbers
        return float(out), [0.0] * len(leaves)
    out.backward()
    return out.data, [v.grad for v in leaves]


def complex_step(program: Program) -> tuple[float, list[float]]:
    h = 1e-20
    value = None
    grads = []
    for i in range(len(program.leaves)):
        vals: list = [complex(x, h if j == i else 0.0) for j, x in enumerate(program.leaves)]
        for step in program.steps:
            vals.append(apply(step, vals, COMPLEX))
        out = complex(vals[-1])
        value = out.real
        grads.append(out.imag / h)
    return value, grads


def scale_of(values) -> float:
    return max([1.0] + [abs(v) for v in values])


def assert_close(actual, expected, rel, scale):
    assert math.isclose(actual, expected, rel_tol=rel, abs_tol=rel * scale), (actual, expected)


def assert_matches_complex_step(program: Program) -> None:
    assume(smooth(program))
    value, grads = run_gradrs(program)
    ref_value, ref_grads = complex_step(program)
    assert_close(value, ref_value, 1e-9, scale_of([ref_value]))
    scale = scale_of(ref_grads)
    for g, r in zip(grads, ref_grads, strict=True):
        assert_close(g, r, 1e-8, scale)


@given(programs())
def test_values_and_gradients_match_complex_step(program):
    assert_matches_complex_step(program)


# Deep chains and wide sums, over the ops that stay bounded along a long chain (the others
# overflow or leave their domain within a few dozen steps, and such programs are rejected).
BOUNDED = ("tanh", "sigmoid", "relu", "neg", "shift", "sub_const", "add", "sub", "mul", "sum", "dot")


@settings(max_examples=100)
@given(programs(ops=BOUNDED, min_steps=30, max_steps=80, max_width=40))
def test_deep_and_wide_graphs_match_complex_step(program):
    assert_matches_complex_step(program)


@given(programs(ops=tuple(sorted(MICROGRAD_OPS))))
def test_same_values_and_gradients_as_micrograd(program):
    assume(smooth(program))
    value, grads = run_gradrs(program)
    leaves = [MgValue(x) for x in program.leaves]
    vals: list = list(leaves)
    for step in program.steps:
        vals.append(apply(step, vals, MICROGRAD))
    out = vals[-1]
    if isinstance(out, MgValue):
        out.backward()
        mg_value, mg_grads = out.data, [float(v.grad) for v in leaves]
    else:
        mg_value, mg_grads = float(out), [0.0] * len(leaves)
    assert_close(value, mg_value, 1e-9, scale_of([mg_value]))
    scale = scale_of(mg_grads)
    for g, r in zip(grads, mg_grads, strict=True):
        assert_close(g, r, 1e-9, scale)


@given(programs(max_steps=10))
def test_gradients_match_finite_differences(program):
    assume(smooth(program))
    _, grads = run_gradrs(program)
    eps = 1e-6
    for i, g in enumerate(grads):
        shifted = []
        for sign in (1, -1):
            leaves = list(program.leaves)
            leaves[i] += sign * eps
            nudged = Program(tuple(leaves), program.steps)
            assume(smooth(nudged))
            shifted.append(run_gradrs(nudged)[0])
        numeric = (shifted[0] - shifted[1]) / (2 * eps)
        assert abs(g - numeric) <= 1e-5 + 1e-4 * abs(numeric), (i, g, numeric)


@given(programs())
def test_rebuilding_a_graph_gives_bit_identical_gradients(program):
    assume(smooth(program))
    assert run_gradrs(program) == run_gradrs(program)


@given(st.lists(st.floats(-3, 3, allow_nan=False), min_size=1, max_size=40))
def test_fused_nodes_equal_their_chains(xs):
    vs = [Value(x) for x in xs]
    fused = gradrs.dot(vs, vs)
    chain = sum((v * v for v in vs), Value(0.0))
    assert fused.data == chain.data  # same order of summation
    fused.backward()
    grads = [v.grad for v in vs]
    for v in vs:
        v.grad = 0
    chain.backward()
    assert grads == [v.grad for v in vs]
