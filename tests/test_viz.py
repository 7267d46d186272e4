"""Graph pictures, drawn as the lecture draws them."""

from __future__ import annotations

import os
import shutil

import pytest

from gradrs import Value
from gradrs.viz import draw_dot, trace


def lecture_graph():
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
