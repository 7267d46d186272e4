"""Graph pictures, drawn as the lecture draws them."""

from __future__ import annotations

import os
import random
import re
import shutil

import numpy as np
import pytest

from gradrs import Value, dot
from gradrs.demo import sample_graph, sample_loss, train
from gradrs.nn import MLP, Neuron
from gradrs.viz import _boxes, draw_dot, trace

from conftest import lecture_graph


def test_trace_sees_each_node_and_edge_once():
    L = lecture_graph()
    nodes, edges = trace(L)
    assert len(nodes) == 7 and len(edges) == 6
    x = Value(1.0)
    y = x * x
    assert len(trace(y)[1]) == 1


def test_dot_source_has_records_and_op_nodes():
    dot = draw_dot(lecture_graph())
    src = dot.source
    assert "rankdir=LR" in src
    assert "{ L | data -8.0000 | grad 1.0000 }" in src
    assert "{ a | data 2.0000 | grad 6.0000 }" in src
    assert src.count('label="*"') == 2 and src.count('label="+"') == 1
    with pytest.raises(ValueError, match="rankdir"):
        draw_dot(lecture_graph(), rankdir="XY")


def test_deep_graphs_do_not_recurse():
    x = Value(0.5)
    y = x
    for _ in range(10_000):
        y = y + 1
    assert len(trace(y)[0]) == 10_001
    assert draw_dot(y).source.count("->") == 20_000


# scripts/test.sh installs Graphviz, and under CI (CI=true) a missing dot fails this test rather
# than skipping it, so that CI always renders a real SVG.
needs_dot = pytest.mark.skipif(
    shutil.which("dot") is None and os.environ.get("CI") != "true",
    reason="Graphviz's dot is installed by scripts/test.sh",
)


@needs_dot
def test_renders_a_real_svg(tmp_path):
    assert shutil.which("dot") is not None, "CI must have Graphviz's dot"
    svg = draw_dot(lecture_graph()).pipe(format="svg").decode()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert "grad 1.0000" in svg and "data 2.0000" in svg


@needs_dot
def test_labels_with_record_syntax_render():
    x = Value(1.0, label="x<y> | {z}\\")
    y = x * 2
    y.label = "<out>"
    for rankdir in ("LR", "RL", "TB", "BT"):
        svg = draw_dot(y, rankdir=rankdir).pipe(format="svg").decode()
        assert "x&lt;y&gt; | {z}" in svg and "&lt;out&gt;" in svg


def test_missing_dot_program_is_explained(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    dot = draw_dot(lecture_graph())
    with pytest.raises(RuntimeError, match="Graphviz's 'dot' program was not found"):
        dot.pipe(format="svg")
    assert "digraph" in dot.source


# --- a fused neuron drawn as the lecture draws it -------------------------------------------------


def picture(dot):
    """A picture's DOT source as a sorted list of (record, op, sorted input records): the same
    for two pictures exactly when they show the same boxes wired the same way."""
    records, ops, into = {}, {}, {}
    for name, label in re.findall(r'^\t(\w+) \[label="?(.*?)"? (?:fillcolor|shape)', dot.source, re.M):
        records[name] = label
    for name, label in re.findall(r"^\t(\w+op) \[label=(.*)\]$", dot.source, re.M):
        ops[name] = label.strip('"')
    for source, target in re.findall(r"^\t(\w+) -> (\w+)$", dot.source, re.M):
        into.setdefault(target, []).append(source)
    return sorted(
        (
            label,
            ops.get(name + "op", ""),
            sorted(records[s] for s in into.get(name + "op", into.get(name, []))),
        )
        for name, label in records.items()
    )


def leaves_like(values, prefix):
    return [Value(v, label=f"{prefix}{i}") for i, v in enumerate(values)]


def by_hand(ws, xs, b, activation):
    """The neuron op by op from plain Values, as micrograd's ``sum((wi*xi ...), b)`` builds it."""
    total = b
    for w, x in zip(ws, xs, strict=True):
        product = w * x
        product.label = f"{w.label}*{x.label}"
        total = product if total is None else total + product
    total.label = "n"
    out = getattr(total, activation)() if activation else total
    out.label = "o"
    return out


@pytest.mark.parametrize(
    ("n", "bias", "activation"),
    [
        (2, True, "tanh"),
        (3, True, "relu"),
        (4, False, "sigmoid"),
        (2, False, None),
        (1, False, "tanh"),
        (1, True, None),
    ],
)
def test_fused_neuron_is_drawn_as_the_op_by_op_graph(n, bias, activation):
    rng = random.Random(n * 10 + bias)
    ws, xs = [rng.uniform(-2, 2) for _ in range(n)], [rng.uniform(-2, 2) for _ in range(n)]
    b = rng.uniform(-1, 1) if bias else None

    def fused():
        d = dot(leaves_like(ws, "w"), leaves_like(xs, "x"), Value(b, label="b") if bias else None)
        d.label = "n"
        out = getattr(d, activation)() if activation else d
        out.label = "o"
        return out

    def plain():
        return by_hand(
            leaves_like(ws, "w"), leaves_like(xs, "x"), Value(b, label="b") if bias else None, activation
        )

    drawn, expected = fused(), plain()
    drawn.backward()
    expected.backward()
    assert picture(draw_dot(drawn)) == picture(draw_dot(expected))
    # The same to the last bit, not only to the four decimals the picture prints.
    nodes = {v.label: v for v in trace(expected)[0]}
    for box in _boxes(drawn, fused=False, by_neuron=False):
        if box.label:
            assert (box.data, box.grad) == (nodes[box.label].data, nodes[box.label].grad), box
        else:  # an unlabelled partial sum of the + chain
            assert box.op == "+" and box.grad == nodes["n"].grad


def test_lecture_neuron_numbers():
    n = Neuron(2, activation="tanh")
    for p, (data, name) in zip(
        n.parameters(), [(-3.0, "w1"), (1.0, "w2"), (6.8813735870195432, "b")], strict=True
    ):
        p.data, p.label = data, name
    o = n([Value(2.0, label="x1"), Value(0.0, label="x2")])
    o.label = "o"
    o.backward()
    src = draw_dot(o).source
    assert "{ w1*x1 | data -6.0000 | grad 0.5000 }" in src and "{ w2*x2 | data 0.0000 | grad 0.5000 }" in src
    assert src.count('label="*"') == 2 and src.count('label="+"') == 2 and "label=tanh" in src
    assert "{ o | data 0.7071 | grad 1.0000 }" in src and "{ w1 | data -3.0000 | grad 1.0000 }" in src
    assert "dot" not in src
    fused = draw_dot(o, fused=True).source
    assert fused.count("label=dot") == 1 and fused.count('label="*"') == 0
    assert len(re.findall(r"-> n1op$", fused, re.M)) == 5  # w1, w2, x1, x2 and b into the one dot


def test_shared_weight_and_input_draw_one_edge():
    p = [Value(1.5, label="p0"), Value(-2.0, label="p1")]
    r = dot(p, p)
    r.backward()
    src = draw_dot(r).source
    assert src.count("-> n0p0op") == 1 and "{ p0*p0 | data 2.2500 | grad 1.0000 }" in src


def test_layers_and_mlps_are_drawn_per_weight_too():
    random.seed(3)
    model = MLP(2, [3, 1])
    out = model([Value(0.5, label="x0"), Value(-1.0, label="x1")])
    out.backward()
    src = draw_dot(out).source
    assert src.count('label="*"') == 3 * 2 + 3 and "label=dot" not in src
    assert draw_dot(out, fused=True).source.count("label=dot") == 4


# --- whole models: one box per neuron ----------------------------------------------------------------


def test_group_neuron_draws_one_box_per_neuron():
    random.seed(4)
    model = MLP(2, [3, 1])
    x = [Value(0.5, label="x0"), Value(-1.0, label="x1")]
    out = model(x)
    out.label = "out"
    out.backward()
    src = draw_dot(out, group="neuron").source
    assert src.count("ReLU neuron, 2 inputs") == 3 and src.count("out: linear neuron, 3 inputs") == 1
    assert len(re.findall(r"^\t\w+ \[label=", src, re.M)) == 2 + 4  # the inputs and the four neurons
    assert len(re.findall(r" -> ", src)) == 3 * 2 + 3
    assert f"data {out.data:.4f} | grad 1.0000" in src
    hidden = model.layers[0].neurons[0]
    assert "label=dot" not in src and f"grad {hidden.w[0].grad:.4f}" not in src.split("x0", 1)[0]


def test_group_neuron_keeps_weights_used_elsewhere():
    random.seed(5)
    n = Neuron(2)
    x = [Value(1.0, label="x0"), Value(2.0, label="x1")]
    n.w[0].label = "w0"
    loss = n(x) + n.w[0] * n.w[0]
    src = draw_dot(loss, group="neuron").source
    assert "ReLU neuron, 2 inputs" in src and "{ w0 |" in src and "{ x1 |" in src
    # loss, the product, w0, x0 and x1 as the lecture's records; the neuron as its own box
    assert src.count('label="{ ') == 5 and src.count('label="ReLU neuron') == 1
    with pytest.raises(ValueError, match="group must be None or 'neuron'"):
        draw_dot(loss, group="layer")


@needs_dot
def test_group_neuron_renders_in_every_direction():
    random.seed(6)
    out = MLP(2, [2, 1])([Value(1.0), Value(2.0)])
    for rankdir in ("LR", "TB"):
        svg = draw_dot(out, rankdir=rankdir, group="neuron").pipe(format="svg").decode()
        assert svg.count("ReLU neuron, 2 inputs") == 2 and "linear neuron, 2 inputs" in svg


# --- the demo's picture ------------------------------------------------------------------------------


@needs_dot
def test_demo_picture_is_readable_and_from_one_clean_backward(tmp_path):
    model, _, (X, y) = train(steps=3, progress=None)
    for p in model.parameters():
        p.grad = 123.0  # what a backward without zeroing would add to
    written = sample_graph(sample_loss(model, X, y), tmp_path / "graph.svg")
    svg = written.read_text()
    width, height = (
        float(v) for v in re.search(r'<svg width="([\d.]+)pt" height="([\d.]+)pt"', svg).groups()
    )
    assert width <= 2500 and height <= 2500, (width, height)
    assert svg.count("ReLU neuron, 2 inputs") == 16 and svg.count("ReLU neuron, 16 inputs") == 16
    drawn = model.parameters_grad()
    assert np.abs(drawn).max() < 100
    # One backward of the drawn sample's loss alone gives the same gradients.
    scores = np.array([model(list(row)).data for row in X])
    hardest = int(np.argmin(y * scores))
    model.zero_grad()
    (1 + -float(y[hardest]) * model(list(X[hardest]))).relu().backward()
    assert np.array_equal(model.parameters_grad(), drawn) and np.abs(drawn).max() > 0


def test_the_readme_counts_for_the_demo_model():
    random.seed(7)
    out = MLP(2, [16, 16, 1])([Value(1.0), Value(2.0)])
    records = [
        draw_dot(out, **kw).source.count("shape=record") for kw in ({}, {"fused": True}, {"group": "neuron"})
    ]
    assert records == [979, 404, 35]
