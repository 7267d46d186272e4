"""Pictures of expression graphs, drawn as the micrograd lecture draws them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from gradrs._core import Value
from gradrs.graph_page import draw_html

__all__ = ["draw_dot", "draw_html", "trace"]

# What ``draw_dot(group=...)`` may fold into one box.
_GROUPS = (None, "neuron")

# The ops ``gradrs.nn`` puts on top of a neuron's fused ``dot`` node (their ``_op_detail``).
_ACTIVATIONS = ("ReLU", "tanh", "sigmoid")


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


def draw_dot(
    root: Value,
    format: str = "svg",
    rankdir: str = "LR",
    *,
    fused: bool = False,
    group: str | None = None,
) -> Any:
    """The graph under ``root`` as a ``graphviz.Digraph``.

    One record per Value (label | data | grad) and one small node per operation, as in the
    lecture. A fused neuron (``gradrs.dot``, one engine node for ``b + w0*x0 + w1*x1 + ...``) is
    drawn as the lecture draws a neuron: a ``*`` node per weight, then the chain of ``+`` nodes
    from the bias on, each with its data and gradient (products ``w.data * x.data``, partial sums
    in the engine's order, and every one of their gradients the fused node's, since ``+`` passes
    its gradient on unchanged). Those nodes exist only in the picture; ``fused=True`` draws the
    engine's real nodes instead, the fused node as one ``dot`` with all its children.

    ``group="neuron"`` keeps pictures of whole models readable: each neuron (a fused node and the
    activation over it) becomes one box giving its activation, its output's data and gradient,
    and the number of inputs; its weights and bias are drawn only where something else uses
    them, and its inputs point into the box.

    ``.source`` gives the DOT text; ``.render()`` / ``.pipe()`` need Graphviz's ``dot`` program,
    and say so plainly when it is missing.
    """
    if rankdir not in ("LR", "RL", "TB", "BT"):
        raise ValueError(f"rankdir must be 'LR', 'RL', 'TB' or 'BT', not {rankdir!r}")
    if group not in _GROUPS:
        raise ValueError(f"group must be None or 'neuron', not {group!r}")
    try:
        import graphviz
    except ImportError as error:  # pragma: no cover - exercised only without the extra
        raise ImportError("draw_dot needs the graphviz package: pip install 'gradrs[viz]'") from error

    dot = _Digraph(graphviz, format=format, graph_attr={"rankdir": rankdir})
    for box in _boxes(root, fused=fused, by_neuron=group == "neuron"):
        _draw_box(dot, box, sideways=rankdir in ("LR", "RL"))
    return dot


@dataclass
class _Box:
    """One Value as the picture shows it: a record, and the op node that made it (if any)
    with the boxes feeding that op."""

    name: str
    label: str
    data: float
    grad: float
    op: str = ""
    inputs: list[str] = field(default_factory=list)
    # For a neuron drawn as one box: what it computes; its inputs then point at the record.
    title: str = ""


def _draw_box(dot: Any, box: _Box, sideways: bool) -> None:
    """``box`` as a record (and its op node), with the edges into it. Records lay their fields
    out across the rank direction, so ``sideways`` (rankdir LR or RL) nests them to keep the
    lecture's one row; a neuron's box puts its title above its data and gradient, to stay narrow."""
    numbers = f"data {box.data:.4f} | grad {box.grad:.4f}"
    if box.title:
        title = _record_text(f"{box.label}: {box.title}" if box.label else box.title)
        fields = f"{title} | {{ {numbers} }}"
        label = fields if sideways else f"{{ {fields} }}"
        dot.node(name=box.name, label=label, shape="record", style="filled", fillcolor="lightyellow")
    else:
        dot.node(name=box.name, label=f"{{ {_record_text(box.label)} | {numbers} }}", shape="record")
    target = box.name
    if box.op:
        target = box.name + "op"
        dot.node(name=target, label=box.op)
        dot.edge(target, box.name)
    for name in box.inputs:
        dot.edge(name, target)


def _boxes(root: Value, fused: bool, by_neuron: bool) -> list[_Box]:
    """The picture of the graph under ``root``, box by box."""
    nodes, edges = trace(root)
    ids = {v: f"n{i}" for i, v in enumerate(nodes)}
    neurons = {n.output: n for n in _neurons(nodes, edges)} if by_neuron else {}
    hidden = {part for n in neurons.values() for part in n.folded}
    boxes: list[_Box] = []
    for v in nodes:
        if v in neurons:
            boxes.append(_neuron_box(neurons[v], ids))
        elif v in hidden:
            continue
        elif not fused and _is_dot(v) and len(v._children) >= 2:
            boxes += _lecture_neuron(v, ids)
        else:
            op = v._op_detail if v._op else ""  # a leaf has no op node
            boxes.append(_Box(ids[v], v.label, v.data, v.grad, op, _names(v._children, ids)))
    return boxes


def _names(values: Iterable[Value], ids: dict[Value, str]) -> list[str]:
    """The picture names of ``values``, each once (the lecture draws ``a * a`` with one edge)."""
    return list(dict.fromkeys(ids[v] for v in values))


def _is_dot(v: Value) -> bool:
    return v._op_detail == "dot"


def _dot_parts(v: Value) -> tuple[list[Value], list[Value], Value | None]:
    """A fused node's weights, inputs and bias: its children are ``[w0.., x0.., bias?]``."""
    children = list(v._children)
    n = len(children) // 2
    bias = children[2 * n] if len(children) % 2 else None
    return children[:n], children[n : 2 * n], bias


def _lecture_neuron(v: Value, ids: dict[Value, str]) -> list[_Box]:
    """A fused node as the lecture's ``*`` per weight and chain of ``+``, summed in the engine's
    order (``bias + w0*x0``, then ``+ w1*x1``, ...), the last ``+`` being the real node."""
    weights, inputs, bias = _dot_parts(v)
    name = ids[v]
    products = [
        _Box(f"{name}p{k}", _product_label(w, x), w.data * x.data, v.grad, "*", _names((w, x), ids))
        for k, (w, x) in enumerate(zip(weights, inputs, strict=True))
    ]
    if bias is None and len(products) == 1:  # dot([w], [x]): the product is the node itself
        return [replace(products[0], name=name, label=v.label, data=v.data)]
    boxes = list(products)
    previous = ids[bias] if bias is not None else None
    total = bias.data if bias is not None else 0.0  # the engine's sum starts from 0 without a bias
    for k, product in enumerate(products):
        total += product.data
        if previous is None:  # no bias: the first product starts the chain
            previous = product.name
            continue
        if k == len(products) - 1:
            partial = _Box(name, v.label, v.data, v.grad, "+", [previous, product.name])
        else:
            partial = _Box(f"{name}s{k}", "", total, v.grad, "+", [previous, product.name])
        boxes.append(partial)
        previous = partial.name
    return boxes


def _product_label(w: Value, x: Value) -> str:
    """``w1*x1`` when both factors are labelled, as the lecture labels its products."""
    return f"{w.label}*{x.label}" if w.label and x.label else ""


@dataclass
class _Neuron:
    """A fused node, the activation over it if any (``output``), and the nodes its box folds in:
    those two and the weights and bias that nothing else in the graph uses."""

    output: Value
    dot: Value
    folded: set[Value]


def _neurons(nodes: list[Value], edges: list[tuple[Value, Value]]) -> list[_Neuron]:
    """Every neuron in the graph: each fused node with two or more children."""
    parents: dict[Value, list[Value]] = {v: [] for v in nodes}
    for child, parent in edges:
        parents[child].append(parent)
    neurons = []
    for v in nodes:
        if not _is_dot(v) or len(v._children) < 2:
            continue
        above = parents[v]
        output = above[0] if len(above) == 1 and above[0]._op_detail in _ACTIVATIONS else v
        weights, inputs, bias = _dot_parts(v)
        own = [p for p in [*weights, bias] if p is not None and not p._children and parents[p] == [v]]
        neurons.append(_Neuron(output, v, {output, v, *(p for p in own if p not in inputs)}))
    return neurons


def _neuron_box(neuron: _Neuron, ids: dict[Value, str]) -> _Box:
    """One box for a whole neuron, fed by its inputs (and any weight drawn on its own)."""
    output, dot = neuron.output, neuron.dot
    activation = output._op_detail if output is not dot else "linear"
    count = len(dot._children) // 2
    title = f"{activation} neuron, {count} input{'s' if count != 1 else ''}"
    shown = [child for child in dot._children if child not in neuron.folded]
    return _Box(ids[output], output.label, output.data, output.grad, "", _names(shown, ids), title)


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
