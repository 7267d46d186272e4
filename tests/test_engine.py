"""The micrograd-compatible surface of Value."""

from __future__ import annotations

import math

import pytest

import gradrs
from gradrs import Value


def test_micrograd_readme_numbers():
    a = Value(-4.0)
    b = Value(2.0)
    c = a + b
    d = a * b + b**3
    c += c + 1
    c += 1 + c + (-a)
    d += d * 2 + (b + a).relu()
    d += 3 * d + (b - a).relu()
    e = c - d
    f = e**2
    g = f / 2.0
    g += 10.0 / f
    g.backward()
    assert f"{g.data:.4f}" == "24.7041"
    assert f"{a.grad:.4f}" == "138.8338"
    assert f"{b.grad:.4f}" == "645.5773"


def test_tanh_neuron_from_the_lecture():
    x1, x2 = Value(2.0, label="x1"), Value(0.0, label="x2")
    w1, w2 = Value(-3.0, label="w1"), Value(1.0, label="w2")
    b = Value(6.8813735870195432, label="b")
    o = (x1 * w1 + x2 * w2 + b).tanh()
    o.backward()
    assert f"{o.data:.4f}" == "0.7071"
    assert w1.grad == pytest.approx(1.0)
    assert x1.grad == pytest.approx(-1.5)
    assert w2.grad == 0.0
    assert x1.label == "x1"


def test_import_paths():
    from gradrs.engine import Value as EngineValue

    assert EngineValue is Value


def test_ops_and_reflected_forms():
    x = Value(3.0)
    assert (x + 2).data == 5 and (2 + x).data == 5
    assert (x - 1).data == 2 and (1 - x).data == -2
    assert (x * 2).data == 6 and (2 * x).data == 6
    assert (x / 2).data == 1.5 and (6 / x).data == 2
    assert (x**2).data == 9 and (2**x).data == 8
    assert (-x).data == -3
    assert x.exp().data == pytest.approx(math.exp(3))
    assert x.log().data == pytest.approx(math.log(3))
    assert x.sigmoid().data == pytest.approx(1 / (1 + math.exp(-3)))
    assert Value(-1.0).relu().data == 0.0


def test_op_strings_are_microgrades():
    v = Value(1.0)
    assert v._op == ""
    assert (v + 2)._op == "+"
    assert (v * v)._op == "*"
    assert (v**2)._op == "**2"
    assert (v**-1)._op == "**-1"
    assert v.relu()._op == "ReLU"
    assert (-v)._op == "*"
    assert (v / 2)._op == "*"
    assert v.tanh()._op == "tanh"


def test_in_place_operators_make_new_nodes():
    a = Value(1.0)
    b = a
    a += 1
    assert a is not b and b.data == 1.0 and a.data == 2.0


def test_repr():
    assert repr(Value(2)) == "Value(data=2.0, grad=0.0)"
    assert repr(Value(1e20)) == "Value(data=1e+20, grad=0.0)"


def test_data_and_grad_are_writable():
    p = Value(1.0)
    p.data -= 0.5
    p.grad = 3
    assert p.data == 0.5 and p.grad == 3.0
    assert isinstance(p.data, float) and isinstance(p.grad, float)


def test_prev_yields_children_that_hash_by_node():
    a, b = Value(1.0), Value(2.0)
    c = a * b
    assert c._prev == {a, b}
    assert len((a * a)._prev) == 1
    # the same Python object for a node while one is alive
    first = next(iter((a + c)._prev - {a}))
    assert first == c and any(child is first for child in (c + 1)._prev)


def test_lecture_draw_dot_trace_sees_each_node_once():
    a = Value(2.0)
    b = a * 3
    c = a + b
    d = c * b  # a diamond: b reached twice
    nodes, edges = set(), set()

    def build(v):
        if v not in nodes:
            nodes.add(v)
            for child in v._prev:
                edges.add((child, v))
                build(child)

    build(d)
    assert len(nodes) == 4
    assert len(edges) == 5
    ids = {id(n) for n in nodes}
    assert all(id(child) in ids for child, _ in edges)


def test_fused_sum_and_dot():
    ws = [Value(0.5), Value(-1.0)]
    xs = [Value(2.0), 3.0]
    b = Value(0.25)
    out = gradrs.dot(ws, xs, b)
    assert out.data == 0.25 + 0.5 * 2.0 + -1.0 * 3.0
    out.backward()
    assert ws[0].grad == 2.0 and ws[1].grad == 3.0 and xs[0].grad == 0.5 and b.grad == 1.0
    s = gradrs.sum([ws[0], ws[1], 4.0])
    assert s.data == 3.5
    with pytest.raises(ValueError, match="as many inputs as weights"):
        gradrs.dot(ws, [1.0])


def test_fused_ops_keep_generator_temporaries_alive():
    ps = [Value(float(i)) for i in range(5)]
    s = gradrs.sum(p * 2 for p in ps)
    d = gradrs.dot((p * 1 for p in ps), (p + 0 for p in ps))
    assert s.data == 20.0 and d.data == sum(i * i for i in range(5))
    group = gradrs.ParamGroup(p * 1 for p in ps)
    assert list(group.data()) == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_numpy_scalars_and_arrays_interoperate():
    import numpy as np

    v = Value(3.0)
    assert isinstance(np.float64(2.0) * v, Value) and (np.float64(2.0) * v).data == 6.0
    assert (np.int64(-1) * v).data == -3.0
    assert Value(np.int64(3)).data == 3.0 and Value(np.float32(0.5)).data == 0.5
    assert (v + np.float64(1.0)).data == 4.0


def test_value_exponent_and_reflected_pow_have_gradients():
    a, b = Value(3.0), Value(4.0)
    c = a**b
    c.backward()
    assert c.data == 81.0 and a.grad == 108.0
    assert b.grad == pytest.approx(88.9875953821169, rel=1e-12)
    x = Value(3.0)
    y = 2**x
    y.backward()
    assert y.data == 8.0 and x.grad == pytest.approx(8.0 * math.log(2.0), rel=1e-12)


def test_star_import_keeps_the_builtins_sum_and_compile():
    import builtins

    namespace: dict = {}
    exec("from gradrs import *", namespace)
    assert eval("sum([1, 2, 3])", namespace) == 6
    assert eval("compile", namespace) is builtins.compile
    assert "Value" in namespace and "nn" in namespace
    assert all(hasattr(gradrs, name) for name in gradrs.__all__)
    assert gradrs.sum([Value(1.0), 2.0]).data == 3.0 and callable(gradrs.compile)
