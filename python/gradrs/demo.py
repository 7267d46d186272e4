"""The main job: micrograd's demo notebook, trained on gradrs.

100 moons points (noise 0.1), ``MLP(2, [16, 16, 1])``, the SVM max-margin loss plus 1e-4 L2,
100 steps of SGD with the learning rate falling from 1.0 to 0.109, seeds 1337 as in the
notebook; then the decision boundary (PNG) and the graph of one sample's loss (SVG).
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, cast

import numpy as np

from gradrs import nn
from gradrs._core import ParamGroup, Value, dot
from gradrs.bulk import leaves
from gradrs.datasets import make_moons
from gradrs.grad_mode import no_grad

__all__ = ["DemoResult", "progress_bar", "run_demo", "train", "train_micrograd"]


@dataclass
class DemoResult:
    losses: list[float] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    files: list[Path] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.accuracies[-1]


def loss_of(
    model: nn.MLP, inputs: list[list[Value]], y: np.ndarray, alpha: float = 1e-4
) -> tuple[Value, float]:
    """The notebook's loss: mean hinge loss plus ``alpha * sum(p*p)``, and the accuracy."""
    # The demo's models end in one neuron, so each call gives a single Value.
    scores = cast("list[Value]", [model(x) for x in inputs])
    losses = [(1 + -float(yi) * score).relu() for yi, score in zip(y, scores, strict=True)]
    data_loss = sum(losses) * (1.0 / len(losses))
    params = model.parameters()
    reg_loss = alpha * dot(params, params)
    accuracy = sum((yi > 0) == (s.data > 0) for yi, s in zip(y, scores, strict=True)) / len(y)
    return data_loss + reg_loss, accuracy


def compiled_loss(model: nn.MLP, alpha: float = 1e-4) -> Any:
    """The same loss through ``gradrs.compile``: one recorded per-sample program, replayed over
    the whole batch in Rust. Returns a function of (X, y) giving (total loss, accuracy)."""
    from gradrs.compiler import compile

    sample_loss = compile(lambda x, yi: (1 + -yi * model(x)).relu())
    score = compile(lambda x: model(x))
    params = model.parameters()

    def loss(X: np.ndarray, y: np.ndarray) -> tuple[Value, float]:
        data_loss = sample_loss.batch(X, y.astype(float), reduce="mean")
        reg_loss = alpha * dot(params, params)
        scores = score.map(X)
        accuracy = float(np.mean((y > 0) == (scores > 0)))
        return data_loss + reg_loss, accuracy

    return loss


def train(
    steps: int = 100, seed: int = 1337, progress: TextIO | None = None, compiled: bool = False
) -> tuple[nn.MLP, DemoResult, Any]:
    """Trains the demo model; returns it, the per-step losses and accuracies, and the data."""
    np.random.seed(seed)
    random.seed(seed)
    X, y = make_moons(n_samples=100, noise=0.1)
    y = y * 2 - 1
    model = nn.MLP(2, [16, 16, 1])
    group = ParamGroup(model.parameters())
    velocity = np.zeros(len(group))
    result = DemoResult()
    bar = progress_bar(steps, progress)
    fast_loss = compiled_loss(model) if compiled else None
    start = time.perf_counter()
    for k in range(steps):
        if fast_loss is not None:
            total_loss, accuracy = fast_loss(X, y)
        else:
            total_loss, accuracy = loss_of(model, leaves(X), y)
        group.zero_grad()
        total_loss.backward()
        learning_rate = 1.0 - 0.9 * k / steps  # the notebook's 1.0 - 0.9*k/100 over its 100 steps
        group.sgd_step(learning_rate, 0.0, 0.0, velocity)  # p.data -= learning_rate * p.grad
        result.losses.append(total_loss.data)
        result.accuracies.append(accuracy)
        bar.set_postfix_str(f"loss {total_loss.data:.4f} accuracy {100 * accuracy:5.1f}%", refresh=False)
        bar.update(1)
    result.seconds = time.perf_counter() - start
    bar.close()
    return model, result, (X, y)


def train_micrograd(steps: int = 100, seed: int = 1337, progress: TextIO | None = None) -> DemoResult:
    """The same training run in Karpathy's micrograd (``pip install micrograd``), written as its
    demo notebook writes it, for comparison. ImportError when micrograd is not installed."""
    from micrograd.engine import Value as MgValue
    from micrograd.nn import MLP as MgMLP

    np.random.seed(seed)
    random.seed(seed)
    X, y = make_moons(n_samples=100, noise=0.1)
    y = y * 2 - 1
    model = MgMLP(2, [16, 16, 1])
    result = DemoResult()
    bar = progress_bar(steps, progress)
    start = time.perf_counter()
    for k in range(steps):
        inputs = [list(map(MgValue, xrow)) for xrow in X]
        scores = list(map(model, inputs))
        losses = [(1 + -yi * scorei).relu() for yi, scorei in zip(y, scores, strict=True)]
        data_loss = sum(losses) * (1.0 / len(losses))
        total_loss = data_loss + 1e-4 * sum(p * p for p in model.parameters())
        accuracy = sum((yi > 0) == (s.data > 0) for yi, s in zip(y, scores, strict=True)) / len(y)
        model.zero_grad()
        total_loss.backward()
        learning_rate = 1.0 - 0.9 * k / steps
        for p in model.parameters():
            p.data -= learning_rate * p.grad
        result.losses.append(float(total_loss.data))
        result.accuracies.append(float(accuracy))
        bar.set_postfix_str(f"loss {total_loss.data:.4f} accuracy {100 * accuracy:5.1f}%", refresh=False)
        bar.update(1)
    result.seconds = time.perf_counter() - start
    bar.close()
    return result


def decision_boundary(model: nn.MLP, X: np.ndarray, y: np.ndarray, path: Path, h: float = 0.25) -> None:
    """The notebook's last cell: the model's sign over a mesh, with the data on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_min, x_max = X[:, 0].min() - 1, X[:, 0].max() + 1
    y_min, y_max = X[:, 1].min() - 1, X[:, 1].max() + 1
    xx, yy = np.meshgrid(np.arange(x_min, x_max, h), np.arange(y_min, y_max, h))
    mesh = np.c_[xx.ravel(), yy.ravel()]
    with no_grad():
        scores = cast("list[Value]", [model(row) for row in leaves(mesh)])
    Z = np.array([s.data > 0 for s in scores]).reshape(xx.shape)
    fig = plt.figure(figsize=(6, 5))
    plt.contourf(xx, yy, Z, cmap=plt.cm.Spectral, alpha=0.8)
    plt.scatter(X[:, 0], X[:, 1], c=y, s=40, cmap=plt.cm.Spectral)
    plt.xlim(xx.min(), xx.max())
    plt.ylim(yy.min(), yy.max())
    plt.title("gradrs: MLP(2, [16, 16, 1]) decision boundary")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def sample_loss(model: nn.MLP, X: np.ndarray, y: np.ndarray) -> Value:
    """The hinge loss of the sample with the smallest margin ``y * score`` (the largest loss, whose
    gradients are the last to vanish), after zeroing the model's gradients and one backward of it:
    the gradients a picture shows are those of this one loss."""
    with no_grad():
        scores = [cast(Value, model(row)).data for row in leaves(X)]
    hardest = int(np.argmin(y * np.array(scores)))
    x = leaves(X[hardest])
    for value, name in zip(x, ("x0", "x1"), strict=True):
        value.label = name
    loss = (1 + -float(y[hardest]) * cast(Value, model(x))).relu()
    loss.label = "loss"
    model.zero_grad()
    loss.backward()
    return loss


def sample_graph(loss: Value, path: Path) -> Path:
    """The expression graph of ``loss`` (from ``sample_loss``), as SVG at ``path``; when Graphviz's
    ``dot`` program is missing, its DOT source next to it instead. Returns the file.

    Each neuron is one box (``draw_dot(group="neuron")``), so the picture stays a readable size.
    """
    from gradrs.viz import draw_dot

    graph = draw_dot(loss, group="neuron")
    try:
        path.write_bytes(graph.pipe(format="svg"))
        return path
    except RuntimeError:  # Graphviz's dot program is missing: keep the source
        source = path.with_suffix(".dot")
        source.write_text(graph.source)
        return source


def sample_page(loss: Value, path: Path) -> Path:
    """The graph of ``loss`` (from ``sample_loss``) as an interactive page at ``path``
    (``gradrs.viz.draw_html``): pan, zoom, click a node, step backward through it. Needs no
    Graphviz. Returns the file."""
    from gradrs.graph_page import draw_html

    return draw_html(loss, title="gradrs demo: the hardest sample's hinge loss").save(path)


def run_demo(
    steps: int = 100,
    seed: int = 1337,
    out: Path | None = Path("out"),
    stream: TextIO = sys.stdout,
    compiled: bool = False,
    micrograd: bool = False,
) -> DemoResult:
    """Trains, prints the summary, and writes the pictures into ``out`` (none when ``out`` is None).

    With ``compiled``, trains through ``gradrs.compile`` and also times the eager run, printing both.
    With ``micrograd``, also runs the same training in Karpathy's micrograd and prints its time.
    """
    model, result, (X, y) = train(steps, seed, progress=stream, compiled=compiled)
    print(f"final loss: {result.losses[-1]:.6f}", file=stream)
    print(f"accuracy: {100 * result.accuracy:.1f}%", file=stream)
    per_step = 1000 * result.seconds / max(steps, 1)
    label = "compiled " if compiled else ""
    print(f"{label}wall time: {result.seconds:.3f} s for {steps} steps ({per_step:.2f} ms/step)", file=stream)
    if compiled:
        _, eager, _ = train(steps, seed, progress=None)
        eager_step = 1000 * eager.seconds / max(steps, 1)
        print(
            f"eager wall time: {eager.seconds:.3f} s for {steps} steps ({eager_step:.2f} ms/step)",
            file=stream,
        )
        agree = all(
            abs(a - b) <= 1e-12 * max(1.0, abs(a)) for a, b in zip(result.losses, eager.losses, strict=True)
        )
        print(f"compiled and eager losses agree step by step (1e-12): {agree}", file=stream)
    if micrograd:
        _compare_with_micrograd(result, steps, seed, stream)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        try:
            png = out / "decision_boundary.png"
            decision_boundary(model, X, y, png)
            result.files.append(png)
        except ImportError:
            print(_MISSING.format(what="the decision-boundary picture", package="matplotlib"), file=stream)
        loss = sample_loss(model, X, y)
        try:
            written = sample_graph(loss, out / "sample_loss_graph.svg")
            result.files.append(written)
            if written.suffix == ".dot":
                print(
                    "Graphviz's 'dot' program was not found, so the graph is written as DOT source "
                    "(install Graphviz, e.g. apt-get install graphviz, to get the SVG)",
                    file=stream,
                )
        except ImportError:
            print(_MISSING.format(what="the graph picture", package="graphviz"), file=stream)
        result.files.append(sample_page(loss, out / "sample_loss_graph.html"))
        for path in result.files:
            print(f"wrote {path}", file=stream)
    return result


def _compare_with_micrograd(result: DemoResult, steps: int, seed: int, stream: TextIO) -> None:
    print("the same run in micrograd (this takes a while):", file=stream)
    try:
        reference = train_micrograd(steps, seed, progress=stream)
    except ImportError:
        print("skipped: micrograd is not installed (pip install micrograd)", file=stream)
        return
    per_step = 1000 * reference.seconds / max(steps, 1)
    print(
        f"micrograd wall time: {reference.seconds:.3f} s for {steps} steps ({per_step:.2f} ms/step), "
        f"accuracy {100 * reference.accuracy:.1f}%",
        file=stream,
    )
    print(f"gradrs is {reference.seconds / result.seconds:,.0f}x faster on this run", file=stream)
    worst = max(abs(a - b) / max(1.0, abs(b)) for a, b in zip(result.losses, reference.losses, strict=True))
    print(f"largest relative difference between the two runs' losses: {worst:.1e}", file=stream)


_MISSING = (
    "skipped {what}: the Python package {package} is not installed "
    "(pip install 'gradrs[viz]', or pass --no-plot)"
)


def progress_bar(total: int, stream: TextIO | None) -> Any:
    """A ``tqdm`` bar over ``total`` training steps, written to ``stream`` (none when it is None).

    ``tqdm.auto`` shows a widget in a notebook and a bar redrawn in place on a terminal; written
    to a file or a pipe it is redrawn once a second at most, so a log stays short.
    """
    from tqdm.auto import tqdm

    interactive = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
    return tqdm(
        total=total,
        desc="training",
        unit="step",
        file=stream,
        disable=stream is None,
        mininterval=0.1 if interactive else 1.0,
        dynamic_ncols=interactive,
        ascii=None if interactive else True,
    )
