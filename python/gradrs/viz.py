"""Pictures of expression graphs, drawn as the micrograd lecture draws them."""

from __future__ import annotations

from typing import Any

from gradrs._core import Value
from gradrs.graph_page import draw_html

__all__ = ["draw_dot", "draw_html", "trace"]


def trace(root: Value) -> tuple[list[Value], list[tuple[Value, Value]]]:
    """Every node under ``root`` and every (child, parent) edge, each once.

    Walks with an explicit stack, so graphs of any depth work.
    """
    nodes: list[Value] = []
    edges: list[tuple[Value, Value]] = []
    seen_edges: set[tuple[Value, Value]] = set()
    seen: set[Value] = {root}
    stack = [root]
    while stack:
        v = stack.pop()
        nodes.append(v)
        for child in v._children:
            edge = (child, v)
            if edge not in seen_edges:
                seen_edges.add(edge)
                edges.append(edge)
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return nodes, edges


def draw_dot(root: Value, format: str = "svg", rankdir: str = "LR") -> Any:
    """The graph under ``root`` as a ``graphviz.Digraph``.

    One record per Value (label | data | grad) and one small node per operation, as in the
    lecture. ``.source`` gives the DOT text; ``.render()`` / ``.pipe()`` need Graphviz's ``dot``
    program, and say so plainly when it is missing.
    """
    if rankdir not in ("LR", "RL", "TB", "BT"):
        raise ValueError(f"rankdir must be 'LR', 'RL', 'TB' or 'BT', not {rankdir!r}")
    try:
        import graphviz
    except ImportError as error:  # pragma: no cover - exercised only without the extra
        raise ImportError("draw_dot needs the graphviz package: pip install 'gradrs[viz]'") from error

    nodes, edges = trace(root)
    dot = _Digraph(graphviz, format=format, graph_attr={"rankdir": rankdir})
    ids = {v: f"n{i}" for i, v in enumerate(nodes)}
    for v in nodes:
        name = ids[v]
        label = _record_text(v.label)
        dot.node(name=name, label=f"{{ {label} | data {v.data:.4f} | grad {v.grad:.4f} }}", shape="record")
        if v._op:
            dot.node(name=name + "op", label=v._op_detail)
            dot.edge(name + "op", name)
    for child, parent in edges:
        dot.edge(ids[child], ids[parent] + "op")
    return dot


def _record_text(text: str) -> str:
    """``text`` escaped for a field of a record label, where ``| { } < >`` have meanings of
    their own (field separators, nesting, port names)."""
    for special in "\\|{}<>":
        text = text.replace(special, "\\" + special)
    return text


def _Digraph(graphviz: Any, **kwargs: Any) -> Any:
    """A ``graphviz.Digraph`` whose rendering explains a missing ``dot`` program."""

    # ignore[misc]: graphviz ships no types, so the class subclassed here is Any to mypy.
    class Digraph(graphviz.Digraph):  # type: ignore[misc]
        def pipe(self, *args: Any, **kw: Any) -> Any:
            return _explain(super().pipe, *args, **kw)

        def render(self, *args: Any, **kw: Any) -> Any:
            return _explain(super().render, *args, **kw)

    return Digraph(**kwargs)


def _explain(call: Any, *args: Any, **kwargs: Any) -> Any:
    import graphviz

    try:
        return call(*args, **kwargs)
    except graphviz.ExecutableNotFound as error:
        raise RuntimeError(
            "Graphviz's 'dot' program was not found, so the graph cannot be rendered; install it "
            "(e.g. 'apt-get install graphviz' or 'brew install graphviz'). The DOT text is still "
            "available as .source."
        ) from error
