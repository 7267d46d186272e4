"""An interactive page for an expression graph: pan, zoom, hover, click, and backward one step at a time.

``draw_html(root)`` (re-exported as ``gradrs.viz.draw_html``) returns a :class:`GraphPage`, one
self-contained HTML file: the graph's numbers, the script and the styles are all inline, so the page
opens from disk, in a notebook or in a mail attachment without a network. The layout is computed here
in Python (left-to-right layers by depth), so the page needs neither the graphviz package nor
Graphviz's ``dot`` program: it works wherever gradrs itself does.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from pathlib import Path

from gradrs._core import Value

__all__ = ["GraphPage", "draw_html"]

# Geometry of one node, in SVG pixels; the script reads the same numbers from the embedded data.
BOX_WIDTH = 250
BOX_HEIGHT = 30
OP_GAP = 40  # from the op circle's centre to the value box's left edge
LAYER_WIDTH = BOX_WIDTH + OP_GAP + 90
ROW_HEIGHT = 46
BARYCENTER_SWEEPS = 4


@dataclass(frozen=True)
class GraphPage:
    """A graph as one self-contained HTML page.

    ``.html`` is the page's text, ``.save(path)`` writes it, and in Jupyter the page shows itself
    (inside an iframe, so it runs even where notebook output is sandboxed). ``node_count`` is the
    number of Values drawn: node ``i`` of the page is ``gradrs.viz.trace(root)[0][i]``.
    """

    html: str
    node_count: int

    def save(self, path: str | Path) -> Path:
        """Writes the page to ``path`` (UTF-8) and returns the path."""
        path = Path(path)
        path.write_text(self.html, encoding="utf-8")
        return path

    def _repr_html_(self) -> str:
        # srcdoc keeps the page's script in its own document, which Jupyter's output sanitizing
        # and the notebook's own styles leave alone.
        return (
            f'<iframe srcdoc="{html.escape(self.html, quote=True)}" sandbox="allow-scripts" '
            'style="width: 100%; height: 560px; border: 1px solid #ccc; border-radius: 4px"></iframe>'
        )


def draw_html(root: Value, title: str | None = None) -> GraphPage:
    """The graph under ``root`` as an interactive HTML page.

    Each Value is a box (label | data | grad) with its operation in a circle, as in ``draw_dot``; the
    page pans (drag) and zooms (wheel), lights a node's inputs and outputs on hover, shows a node's
    op, data and gradient on click, and steps backward through the graph in reverse topological
    order, revealing each node's gradient (as ``root.backward()`` left it) as the lecture fills them
    in by hand. Call ``root.backward()`` first for gradients worth stepping through.
    """
    if not isinstance(root, Value):
        raise TypeError(f"draw_html needs a gradrs Value, not {type(root).__name__}")
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a string, not {type(title).__name__}")
    from gradrs.viz import trace  # here, not at the top: gradrs.viz re-exports this module

    nodes, edges = trace(root)
    index = {v: i for i, v in enumerate(nodes)}
    inputs: list[list[int]] = [[] for _ in nodes]
    outputs: list[list[int]] = [[] for _ in nodes]
    for child, parent in edges:
        inputs[index[parent]].append(index[child])
        outputs[index[child]].append(index[parent])
    layers = _layers(inputs, outputs)
    rows = _rows(layers, inputs, outputs)
    # Sorting by layer, deepest first, is a reverse topological order: every node's layer is
    # above each of its inputs', so a gradient is revealed only after all the nodes it flows from.
    steps = sorted(range(len(nodes)), key=lambda i: (-layers[i], rows[i]))
    title = title if title is not None else _default_title(root)
    graph = {
        "title": title,
        "box": {"width": BOX_WIDTH, "height": BOX_HEIGHT, "opGap": OP_GAP},
        "nodes": [
            {
                "label": v.label,
                "op": v._op,
                "opText": v._op_detail if v._op else "",
                "data": _short(v.data),
                "dataFull": repr(v.data),
                "grad": _short(v.grad),
                "gradFull": repr(v.grad),
                "x": layers[i] * LAYER_WIDTH,
                "y": rows[i],
                "inputs": inputs[i],
                "outputs": outputs[i],
            }
            for i, v in enumerate(nodes)
        ],
        "steps": steps,
    }
    # The data first: it cannot hold the title's marker, as its "<" are escaped.
    page = _TEMPLATE.replace("/*GRAPH*/", _script_json(graph)).replace("<!--TITLE-->", html.escape(title))
    return GraphPage(html=page, node_count=len(nodes))


def _default_title(root: Value) -> str:
    name = root.label or "root"
    return f"gradrs graph of {name}"


def _short(x: float) -> str:
    """A number as the boxes show it: four decimals as in the lecture, exponent form when those
    would lose it (very large or very small magnitudes)."""
    if x == 0 or not math.isfinite(x) or 1e-4 <= abs(x) < 1e6:
        return f"{x:.4f}"
    return f"{x:.3e}"


def _layers(inputs: list[list[int]], outputs: list[list[int]]) -> list[int]:
    """Each node's column: leaves one left of their first use, every other node one right of its
    deepest input. Computed in topological order, without recursion, so any depth works."""
    order = _topological(inputs, outputs)
    layer = [0] * len(inputs)
    for i in order:
        if inputs[i]:
            layer[i] = 1 + max(layer[c] for c in inputs[i])
    for i in order:
        if not inputs[i] and outputs[i]:
            # Pulled right next to the first node that uses it, so weights sit beside their neurons
            # instead of in one tall column at the far left.
            layer[i] = min(layer[p] for p in outputs[i]) - 1
    return layer


def _topological(inputs: list[list[int]], outputs: list[list[int]]) -> list[int]:
    """Every node after all of its inputs (Kahn's algorithm)."""
    waiting = [len(ins) for ins in inputs]
    ready = [i for i, count in enumerate(waiting) if count == 0]
    order: list[int] = []
    while ready:
        i = ready.pop()
        order.append(i)
        for p in outputs[i]:
            waiting[p] -= 1
            if waiting[p] == 0:
                ready.append(p)
    return order


def _rows(layers: list[int], inputs: list[list[int]], outputs: list[list[int]]) -> list[float]:
    """Each node's vertical position: nodes of one layer stacked and centred, ordered so that
    edges cross little (a few sweeps of the barycenter heuristic: sort each layer by the mean
    position of its neighbours in the layer just placed)."""
    columns: dict[int, list[int]] = {}
    for i, layer in enumerate(layers):
        columns.setdefault(layer, []).append(i)
    y = [0.0] * len(layers)

    def place(column: list[int]) -> None:
        middle = (len(column) - 1) / 2
        for k, i in enumerate(column):
            y[i] = (k - middle) * ROW_HEIGHT

    for column in columns.values():
        place(column)
    ordered = sorted(columns)
    for sweep in range(BARYCENTER_SWEEPS):
        # Right to left by the nodes each one feeds, then left to right by the nodes it reads.
        towards_leaves = sweep % 2 == 0
        neighbours = outputs if towards_leaves else inputs
        for layer in reversed(ordered) if towards_leaves else ordered:
            column = columns[layer]
            column.sort(key=lambda i: _mean([y[n] for n in neighbours[i]], default=y[i]))
            place(column)
    return y


def _mean(values: list[float], default: float) -> float:
    return sum(values) / len(values) if values else default


def _script_json(data: object) -> str:
    """``data`` as a JavaScript literal that is safe inside a <script> element: no ``</script>``,
    ``<!--`` or ``&`` can appear, whatever the labels hold. NaN and infinities stay JavaScript's."""
    text = json.dumps(data, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title><!--TITLE--></title>
<style>
  :root {
    --ink: #222; --muted: #777; --line: #b8b8b8; --paper: #fff; --panel: #f6f6f4;
    --input: #1f6fd1; --output: #d1561f; --current: #1a9a4a;
  }
  * { box-sizing: border-box; }
  html, body { margin: 0; height: 100%; font: 13px/1.4 system-ui, sans-serif; color: var(--ink); }
  body { display: grid; grid-template-rows: auto 1fr; grid-template-columns: 1fr 260px; height: 100vh; }
  header { grid-column: 1 / 3; display: flex; gap: 6px; align-items: center;
           padding: 6px 10px; border-bottom: 1px solid #ddd; background: var(--panel); }
  header h1 { font-size: 14px; margin: 0 12px 0 0; font-weight: 600; white-space: nowrap; }
  header button { font: inherit; padding: 2px 10px; border: 1px solid #bbb; border-radius: 4px;
                  background: var(--paper); cursor: pointer; }
  header button:disabled { color: #aaa; cursor: default; }
  /* One line, cut short rather than wrapped, so stepping never shifts the graph below it. */
  #status { margin-left: 8px; font-family: ui-monospace, monospace; flex: 1 1 200px; min-width: 0;
            white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
  #canvas { width: 100%; height: 100%; cursor: grab; background: var(--paper); touch-action: none; }
  #canvas.panning { cursor: grabbing; }
  aside { border-left: 1px solid #ddd; background: var(--panel); padding: 10px 12px; overflow: auto; }
  aside h2 { font-size: 14px; margin: 0 0 8px; word-break: break-all; }
  aside dl { margin: 0; display: grid; grid-template-columns: auto 1fr; gap: 4px 10px; }
  aside dt { color: var(--muted); }
  aside dd { margin: 0; font-family: ui-monospace, monospace; word-break: break-all; }
  aside p { color: var(--muted); }

  /* One Value: its op circle, the wire into its box, and the box's three cells. */
  .node { cursor: pointer; }
  .node rect { fill: var(--paper); stroke: #555; stroke-width: 1; }
  .node line.cell { stroke: #999; }
  .node text { font: 12px ui-monospace, monospace; dominant-baseline: central; fill: var(--ink); }
  .node .op circle { fill: #eef; stroke: #557; }
  .node .op text { text-anchor: middle; font-size: 11px; }
  .node .grad.blank { fill: #bbb; }
  .node .grad.revealed { fill: var(--current); font-weight: 600; }
  .edge { fill: none; stroke: var(--line); stroke-width: 1.2; }

  /* Hover lights a node's inputs (blue) and outputs (orange) and fades the rest. */
  svg.hovering .node, svg.hovering .edge { opacity: 0.25; }
  svg.hovering .lit { opacity: 1; }
  .node.input rect { stroke: var(--input); stroke-width: 2.5; }
  .node.output rect { stroke: var(--output); stroke-width: 2.5; }
  .edge.input { stroke: var(--input); stroke-width: 2.5; }
  .edge.output { stroke: var(--output); stroke-width: 2.5; }
  .node.hover rect, .node.selected rect { stroke: var(--ink); stroke-width: 2.5; }
  .node.current rect { fill: #e8f7ee; stroke: var(--current); stroke-width: 2.5; }
  .edge.flow { stroke: var(--current); stroke-width: 2.5; }
</style>
</head>
<body>
<header>
  <h1 id="title"></h1>
  <button id="reset" title="Blank every gradient again (Home)">reset</button>
  <button id="back" title="Undo one step (left arrow)">&#x25C0; back</button>
  <button id="step" title="Reveal the next gradient (right arrow)">step &#x25B6;</button>
  <button id="play" title="Step through all gradients">play</button>
  <button id="all" title="Reveal every gradient (End)">all</button>
  <button id="fit" title="Zoom to show the whole graph">fit</button>
  <span id="status"></span>
</header>
<svg id="canvas" xmlns="http://www.w3.org/2000/svg"><g id="viewport"></g></svg>
<aside id="info"><p>Click a node to see its op, data and gradient. Drag to pan, scroll to zoom,
  hover to light a node's inputs (blue) and outputs (orange). Step to run backward by hand.</p></aside>
<script>
"use strict";
const GRAPH = /*GRAPH*/;
const SVG_NS = "http://www.w3.org/2000/svg";
const BOX = GRAPH.box;
const nodes = GRAPH.nodes;
const steps = GRAPH.steps;          // node ids in reverse topological order: root first
const viewport = document.getElementById("viewport");
const canvas = document.getElementById("canvas");
const info = document.getElementById("info");
const status = document.getElementById("status");
document.getElementById("title").textContent = GRAPH.title;

// ---- drawing ---------------------------------------------------------------------------------
// Cell widths inside a box: label | data | grad.
const LABEL_W = 54, DATA_W = (BOX.width - LABEL_W) / 2;

function el(name, attrs, parent) {
  const e = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

function text(content, attrs, parent) {
  const t = el("text", attrs, parent);
  t.textContent = content;
  return t;
}

function shorten(label, room) {
  return label.length <= room ? label : label.slice(0, room - 1) + "\u2026";
}

// Where an edge leaves a node (its box's right edge) and enters one (its op circle's left).
const outPort = n => [n.x + BOX.width, n.y];
const inPort = n => n.op ? [n.x - BOX.opGap - 14, n.y] : [n.x, n.y];

const edgeLayer = el("g", {}, viewport);
const nodeLayer = el("g", {}, viewport);
const edgesIn = nodes.map(() => []);   // per node: the edge paths into it
const edgesOut = nodes.map(() => []);  // and out of it
nodes.forEach((n, id) => {
  for (const c of n.inputs) {
    const [x1, y1] = outPort(nodes[c]), [x2, y2] = inPort(n);
    const bend = Math.max(40, (x2 - x1) / 2);
    const path = el("path", {
      class: "edge", d: `M${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}`,
    }, edgeLayer);
    edgesIn[id].push(path);
    edgesOut[c].push(path);
  }
});

const gradCells = [];
const groups = nodes.map((n, id) => {
  const g = el("g", { class: "node", "data-id": id, transform: `translate(${n.x},${n.y})` }, nodeLayer);
  if (n.op) {
    const op = el("g", { class: "op" }, g);
    el("line", { x1: -BOX.opGap + 14, y1: 0, x2: 0, y2: 0, stroke: "#555" }, op);
    el("circle", { cx: -BOX.opGap, cy: 0, r: 14 }, op);
    text(shorten(n.opText, 5), { x: -BOX.opGap, y: 0 }, op);
  }
  const top = -BOX.height / 2;
  el("rect", { x: 0, y: top, width: BOX.width, height: BOX.height, rx: 3 }, g);
  el("line", { class: "cell", x1: LABEL_W, y1: top, x2: LABEL_W, y2: -top }, g);
  el("line", { class: "cell", x1: LABEL_W + DATA_W, y1: top, x2: LABEL_W + DATA_W, y2: -top }, g);
  text(shorten(n.label, 6), { x: 6, y: 0, class: "label" }, g);
  text("data " + n.data, { x: LABEL_W + 5, y: 0, class: "data" }, g);
  gradCells.push(text("", { x: LABEL_W + DATA_W + 5, y: 0, class: "grad" }, g));
  g.addEventListener("mouseenter", () => light(id, true));
  g.addEventListener("mouseleave", () => light(id, false));
  g.addEventListener("click", () => { if (!dragged) select(id); });
  return g;
});

// ---- hover: a node's inputs and outputs --------------------------------------------------------
function light(id, on) {
  canvas.classList.toggle("hovering", on);
  groups[id].classList.toggle("hover", on);
  groups[id].classList.toggle("lit", on);
  const mark = (list, cls) => list.forEach(e => {
    e.classList.toggle(cls, on);
    e.classList.toggle("lit", on);
  });
  mark(edgesIn[id], "input");
  mark(edgesOut[id], "output");
  mark(nodes[id].inputs.map(c => groups[c]), "input");
  mark(nodes[id].outputs.map(p => groups[p]), "output");
}

// ---- backward, one node at a time ----------------------------------------------------------------
// done = how many of `steps` have had their gradient revealed; every gradient starts blank.
let done = 0;
let selected = null;
let timer = null;
const stepOf = new Map(steps.map((id, k) => [id, k]));

// Unnamed Values are called by their position in the page and their op.
const name = id => nodes[id].label || `node ${id}` + (nodes[id].op ? ` (${nodes[id].opText})` : "");

function render() {
  nodes.forEach((n, id) => {
    const shown = stepOf.get(id) < done;
    gradCells[id].textContent = "grad " + (shown ? n.grad : "\u00b7\u00b7\u00b7\u00b7");
    gradCells[id].classList.toggle("blank", !shown);
    gradCells[id].classList.toggle("revealed", shown && stepOf.get(id) === done - 1);
    groups[id].classList.remove("current");
  });
  document.querySelectorAll(".edge.flow").forEach(e => e.classList.remove("flow"));
  if (done === 0) {
    status.textContent = `step 0 of ${steps.length}: every gradient blank`;
  } else {
    const id = steps[done - 1];
    groups[id].classList.add("current");
    edgesOut[id].forEach(e => e.classList.add("flow"));
    const outs = nodes[id].outputs;
    const why = outs.length === 0 ? "the root: d(root)/d(root)"
      : "gathered from " + outs.map(name).join(", ");
    status.textContent = `step ${done} of ${steps.length}: ${name(id)}.grad = ${nodes[id].grad} (${why})`;
    follow(id);
  }
  status.title = status.textContent;  // the whole line, when it is cut short
  document.getElementById("reset").disabled = done === 0;
  document.getElementById("back").disabled = done === 0;
  document.getElementById("step").disabled = done === steps.length;
  document.getElementById("all").disabled = done === steps.length;
  if (selected !== null) showInfo(selected);
}

function goTo(k) {
  done = Math.max(0, Math.min(steps.length, k));
  render();
}

function stop() {
  clearInterval(timer);
  timer = null;
  document.getElementById("play").textContent = "play";
}

function play() {
  if (timer !== null) return stop();
  if (done === steps.length) goTo(0);
  document.getElementById("play").textContent = "pause";
  timer = setInterval(() => { goTo(done + 1); if (done === steps.length) stop(); }, 600);
}

document.getElementById("reset").onclick = () => { stop(); goTo(0); };
document.getElementById("back").onclick = () => { stop(); goTo(done - 1); };
document.getElementById("step").onclick = () => { stop(); goTo(done + 1); };
document.getElementById("all").onclick = () => { stop(); goTo(steps.length); };
document.getElementById("play").onclick = play;
document.getElementById("fit").onclick = () => fit();
document.addEventListener("keydown", e => {
  const keys = { ArrowRight: done + 1, ArrowLeft: done - 1, Home: 0, End: steps.length };
  if (e.key in keys) { stop(); goTo(keys[e.key]); e.preventDefault(); }
});

// ---- click: one node's details ------------------------------------------------------------------
function showInfo(id) {
  const n = nodes[id];
  const reached = stepOf.get(id) < done;
  const list = ids => ids.length ? ids.map(name).join(", ") : "none";
  info.replaceChildren();
  const h = document.createElement("h2");
  h.textContent = n.label || `(unnamed) node ${id}`;
  const dl = document.createElement("dl");
  const rows = [
    ["op", n.op ? n.opText : "leaf (no op)", "info-op"],
    ["data", n.dataFull, "info-data"],
    ["grad", reached ? n.gradFull : `blank until step ${stepOf.get(id) + 1} of ${steps.length}`, "info-grad"],
    ["inputs", list(n.inputs), "info-inputs"],
    ["outputs", list(n.outputs), "info-outputs"],
  ];
  for (const [key, value, idName] of rows) {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = key;
    dd.textContent = value;
    dd.id = idName;
    dl.append(dt, dd);
  }
  info.append(h, dl);
}

function select(id) {
  if (selected !== null) groups[selected].classList.remove("selected");
  selected = id;
  groups[id].classList.add("selected");
  showInfo(id);
}

// ---- pan and zoom -------------------------------------------------------------------------------
let view = { x: 0, y: 0, k: 1 };
let dragged = false;

function applyView() {
  viewport.setAttribute("transform", `translate(${view.x},${view.y}) scale(${view.k})`);
}

function bounds() {
  const xs = nodes.map(n => n.x), ys = nodes.map(n => n.y);
  return {
    left: Math.min(...xs) - BOX.opGap - 20, right: Math.max(...xs) + BOX.width + 20,
    top: Math.min(...ys) - BOX.height, bottom: Math.max(...ys) + BOX.height,
  };
}

// The whole graph in view, but never magnified, and never so small that its text is a smear: a
// graph too large for that opens on its root (right edge, vertically centred), to be panned from.
const MIN_FIT = 0.6;
function fit() {
  const b = bounds(), w = canvas.clientWidth, h = canvas.clientHeight, root = nodes[steps[0]];
  view.k = Math.max(MIN_FIT, Math.min(1, w / (b.right - b.left), h / (b.bottom - b.top)));
  view.x = (w - (b.right + b.left) * view.k) / 2;
  view.y = (h - (b.bottom + b.top) * view.k) / 2;
  if ((b.right - b.left) * view.k > w) view.x = w - 20 - b.right * view.k;
  if ((b.bottom - b.top) * view.k > h) view.y = h / 2 - root.y * view.k;
  applyView();
}

// Bring a node into view when stepping reaches it off screen.
function follow(id) {
  const n = nodes[id], w = canvas.clientWidth, h = canvas.clientHeight;
  const sx = n.x * view.k + view.x, sy = n.y * view.k + view.y;
  if (sx < BOX.opGap * view.k || sx + BOX.width * view.k > w || sy < 20 || sy > h - 20) {
    view.x = w / 2 - (n.x + BOX.width / 2) * view.k;
    view.y = h / 2 - n.y * view.k;
    applyView();
  }
}

canvas.addEventListener("wheel", e => {
  e.preventDefault();
  const r = canvas.getBoundingClientRect(), px = e.clientX - r.left, py = e.clientY - r.top;
  const k = Math.max(0.05, Math.min(4, view.k * Math.exp(-e.deltaY * 0.0015)));
  // Zoom about the pointer: the graph point under it stays under it.
  view.x = px - (px - view.x) * (k / view.k);
  view.y = py - (py - view.y) * (k / view.k);
  view.k = k;
  applyView();
}, { passive: false });

let press = null;
canvas.addEventListener("pointerdown", e => {
  press = { x: e.clientX, y: e.clientY, vx: view.x, vy: view.y };
  dragged = false;
});
window.addEventListener("pointermove", e => {
  if (press === null) return;
  const dx = e.clientX - press.x, dy = e.clientY - press.y;
  // A few pixels of wobble is still a click, not a pan.
  if (!dragged && Math.hypot(dx, dy) < 4) return;
  dragged = true;
  canvas.classList.add("panning");
  view.x = press.vx + dx;
  view.y = press.vy + dy;
  applyView();
});
window.addEventListener("pointerup", () => { press = null; canvas.classList.remove("panning"); });

fit();
render();
</script>
</body>
</html>
"""
