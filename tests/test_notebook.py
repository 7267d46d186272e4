"""examples/lecture.ipynb: executed in a real Jupyter kernel, its numbers and pictures checked,
and its code kept in step with examples/lecture.py."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "lecture.ipynb"
SCRIPT = ROOT / "examples" / "lecture.py"
KERNEL = "gradrs-test-python"

# scripts/test.sh installs Graphviz, and under CI (CI=true) a missing dot fails the pictures test
# rather than skipping it, as in test_viz.py.
needs_dot = pytest.mark.skipif(
    shutil.which("dot") is None and os.environ.get("CI") != "true",
    reason="Graphviz's dot is installed by scripts/test.sh",
)


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> Any:
    """The notebook, run top to bottom by nbclient in an ipykernel of this very interpreter."""
    import nbclient
    import nbformat

    home = tmp_path_factory.mktemp("jupyter")
    # A kernelspec naming this test environment's python, found through JUPYTER_PATH, so the
    # notebook runs against the gradrs under test whatever kernels the machine has installed.
    spec = home / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "gradrs tests",
                "language": "python",
            }
        )
    )
    with pytest.MonkeyPatch.context() as env:
        env.setenv("JUPYTER_PATH", str(home))
        env.setenv("JUPYTER_PLATFORM_DIRS", "1")  # jupyter_core's future default; silences its warning
        env.delenv("MPLBACKEND", raising=False)  # the kernel's own inline backend draws the plots
        notebook = nbformat.read(NOTEBOOK, as_version=4)
        work = tmp_path_factory.mktemp("notebook-cwd")
        client = nbclient.NotebookClient(
            notebook, timeout=120, kernel_name=KERNEL, resources={"metadata": {"path": str(work)}}
        )
        client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    return notebook


def code_cells(notebook: Any) -> list[Any]:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def printed(notebook: Any) -> str:
    return "".join(
        output.get("text", "")
        for cell in code_cells(notebook)
        for output in cell.outputs
        if output.output_type == "stream"
    )


def test_the_stored_notebook_has_no_outputs():
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code_cells(notebook))


def test_every_cell_runs_and_prints_the_lectures_numbers(executed):
    for cell in code_cells(executed):
        assert cell.execution_count is not None
        assert not any(output.output_type == "error" for output in cell.outputs), cell.source
        assert not any(output.get("name") == "stderr" for output in cell.outputs), cell.outputs
    out = printed(executed)
    assert "slope (f(x+h) - f(x))/h = 14.0000" in out
    assert "dd/da = -3.0000" in out and "dd/db = 2.0000" in out and "dd/dc = 1.0000" in out
    assert "automatic: {'L': 1.0, 'f': 4.0, 'd': -2.0, 'c': -2.0, 'e': -2.0, 'a': 6.0, 'b': -4.0}" in out
    assert "by _backward steps: w1.grad = 1.0000, x1.grad = -1.5000" in out
    assert "o = 0.7071\n" in out
    assert "x1.grad = -1.5000, w1.grad = 1.0000, x2.grad = 0.5000, w2.grad = 0.0000" in out
    assert "b = a + a, a.grad = 2.0" in out
    assert "f = (a*b) * (a+b): a.grad = -3.0, b.grad = -8.0" in out
    assert "o = 0.7071, w1.grad = 1.0000, x1.grad = -1.5000" in out
    assert "41 parameters" in out
    assert out.count("loss") >= 6
    final = float(out.rsplit("final loss:", 1)[1].split()[0])
    assert final < 0.01


def test_plots_and_the_interactive_page_are_shown(executed):
    shown = [output.data for cell in code_cells(executed) for output in cell.outputs if "data" in output]
    pngs = [data["image/png"] for data in shown if "image/png" in data]
    assert len(pngs) == 2  # f(x), and the training loss
    pages = [data["text/html"] for data in shown if "<iframe srcdoc=" in data.get("text/html", "")]
    assert len(pages) == 1 and "gradrs graph of L" in pages[0]


@needs_dot
def test_graph_pictures_render(executed):
    assert shutil.which("dot") is not None, "CI must have Graphviz's dot"
    svgs = [
        output.data["image/svg+xml"]
        for cell in code_cells(executed)
        if "draw_dot(" in cell.source
        for output in cell.outputs
        if "data" in output and "image/svg+xml" in output.data
    ]
    assert len(svgs) == sum("draw_dot(" in cell.source for cell in code_cells(executed)) == 6
    assert all("<svg" in svg for svg in svgs)
    # The lecture's L graph, before and after backward: gradients zero, then filled in.
    assert "grad 0.0000" in svgs[0] and "grad 6.0000" in svgs[1] and "data &#45;8.0000" in svgs[1]
    assert "grad 0.5000" in svgs[2]  # the neuron: do/dn = 1 - o**2
    assert "grad 2.0000" in svgs[3]  # b = a + a: a's gradient accumulates
    # The whole model, a box per neuron, stays a readable size.
    width, height = (
        float(v) for v in re.search(r'<svg width="([\d.]+)pt" height="([\d.]+)pt"', svgs[-1]).groups()
    )
    assert "neuron" in svgs[-1] and width <= 2500 and height <= 2500, (width, height)


def script_statements() -> list[str]:
    """examples/lecture.py's code, line by line: every statement but the docstring and the
    section headers it prints (which are the notebook's markdown headings)."""
    source = SCRIPT.read_text()
    physical = source.splitlines()
    lines: list[str] = []
    for node in ast.parse(source).body:
        call = node.value if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) else None
        if call is not None and getattr(call.func, "id", None) == "section":
            continue
        if isinstance(node, ast.FunctionDef) and node.name == "section":
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        lines += physical[node.lineno - 1 : node.end_lineno]  # whole lines: trailing comments too
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def test_the_notebook_runs_the_lecture_script_line_for_line():
    """Every line of examples/lecture.py is in the notebook, in the same order (the notebook
    adds its pictures in between): a change to one that is not made to the other fails here."""
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    notebook_lines = [
        line.strip() for cell in code_cells(notebook) for line in cell.source.splitlines() if line.strip()
    ]
    position = 0
    for line in script_statements():
        assert line in notebook_lines[position:], f"not in the notebook (in this order): {line}"
        position = notebook_lines.index(line, position) + 1


def test_the_readme_points_at_the_notebook():
    readme = (ROOT / "README.md").read_text()
    assert "examples/lecture.ipynb" in readme and "draw_html" in readme
