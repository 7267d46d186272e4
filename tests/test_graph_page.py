"""The interactive graph page (gradrs.viz.draw_html), checked in a real browser.

The browser is Debian's chromium, headless, driven through the DevTools protocol over a websocket
(the pure-Python websocket-client package); nothing here downloads a browser or a driver.
scripts/test.sh installs chromium, and under CI (CI=true) a missing chromium fails these tests
rather than skipping them.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from gradrs import Value, nn
from gradrs.graph_page import GraphPage, _short
from gradrs.viz import draw_html, trace

from conftest import lecture_graph

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and os.environ.get("CI") != "true",
    reason="Debian's chromium is not installed (scripts/test.sh installs it: apt-get install chromium)",
)


def mlp_loss() -> Value:
    """The demo's kind of graph: one sample's hinge loss through MLP(2, [16, 16, 1])."""
    random.seed(1337)
    model = nn.MLP(2, [16, 16, 1])
    x = [Value(0.5, label="x0"), Value(-0.3, label="x1")]
    loss = (1 + -1.0 * model(x)).relu()  # type: ignore[operator]
    loss.label = "loss"
    loss.backward()
    return loss


# ---- without a browser ------------------------------------------------------------------------


def test_page_is_one_self_contained_file(tmp_path):
    page = draw_html(lecture_graph())
    assert isinstance(page, GraphPage) and page.node_count == 7
    text = page.html
    assert text.startswith("<!DOCTYPE html>") and "<script>" in text and "<style>" in text
    # Nothing that would fetch: no external scripts, styles, images, fonts or requests.
    for fetching in ("src=", "href=", "<link", "@import", "url(", "fetch(", "XMLHttpRequest", "WebSocket"):
        assert fetching not in text, fetching
    saved = page.save(tmp_path / "g.html")
    assert saved.read_text(encoding="utf-8") == text


def test_jupyter_shows_the_page_in_an_iframe():
    page = draw_html(lecture_graph())
    shown = page._repr_html_()
    match = re.fullmatch(r'<iframe srcdoc="([^"]*)" sandbox="allow-scripts" style="[^"]*"></iframe>', shown)
    assert match is not None
    assert html.unescape(match.group(1)) == page.html


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="needs a gradrs Value, not float"):
        draw_html(1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="title must be a string"):
        draw_html(Value(1.0), title=3)  # type: ignore[arg-type]


def test_the_page_needs_neither_graphviz_nor_dot(tmp_path):
    """The layout is gradrs's own: no graphviz package imported, no dot program on PATH."""
    code = (
        "import sys; sys.modules['graphviz'] = None\n"  # any import of it now fails
        "from gradrs import Value\n"
        "from gradrs.viz import draw_html\n"
        "x = Value(2.0, label='x'); y = (x * x).tanh(); y.backward()\n"
        f"print(draw_html(y).save({str(tmp_path / 'p.html')!r}).stat().st_size > 1000)\n"
    )
    env = {**os.environ, "PATH": str(tmp_path)}  # an empty PATH: no dot to find
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


def test_deep_graphs_lay_out_without_recursion():
    x = Value(0.5)
    y = x
    for _ in range(10_000):
        y = y + 1
    assert draw_html(y).node_count == 10_001


def test_numbers_keep_their_magnitude():
    assert _short(0.70710678) == "0.7071" and _short(0.0) == "0.0000" and _short(-2.0) == "-2.0000"
    assert _short(1.5e-7) == "1.500e-07" and _short(3e9) == "3.000e+09"
    assert _short(float("inf")) == "inf" and _short(float("nan")) == "nan"


# ---- in chromium --------------------------------------------------------------------------------


class Tab:
    """One browser tab over the DevTools protocol: commands, and the events seen so far."""

    def __init__(self, ws_url: str) -> None:
        import websocket

        # suppress_origin: chromium refuses websocket clients that send a foreign Origin header.
        self.ws = websocket.create_connection(ws_url, timeout=20, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Runs one command, in the tab or (with ``session``) in a frame attached to it."""
        self.next_id += 1
        command = {"id": self.next_id, "method": method, "params": params}
        if session is not None:
            command["sessionId"] = session
        self.ws.send(json.dumps(command))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                assert "error" not in message, (method, message["error"])
                return message.get("result", {})
            self.events.append(message)

    def js(self, expression: str, session: str | None = None) -> Any:
        result = self.send(
            "Runtime.evaluate", session, expression=expression, returnByValue=True, awaitPromise=True
        )
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def open(self, path: Path) -> None:
        self.events.clear()
        self.send("Page.navigate", url=path.as_uri())
        deadline = time.monotonic() + 20
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            assert time.monotonic() < deadline, "the page did not load in 20 s"
            self.events.append(json.loads(self.ws.recv()))

    def mouse(self, kind: str, x: float, y: float, **extra: Any) -> None:
        self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, **extra)

    def click(self, x: float, y: float) -> None:
        self.mouse("mouseMoved", x, y)
        self.mouse("mousePressed", x, y, button="left", clickCount=1)
        self.mouse("mouseReleased", x, y, button="left", clickCount=1)

    def centre_of(self, selector: str) -> tuple[float, float]:
        x, y = self.js(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        return x, y

    def problems(self) -> list[dict[str, Any]]:
        """Console errors, uncaught exceptions and browser log errors since the page opened."""
        bad = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                bad.append(event)
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                bad.append(event)
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                bad.append(event)
        return bad

    def requested_urls(self) -> list[str]:
        requests = [e for e in self.events if e.get("method") == "Network.requestWillBeSent"]
        return [e["params"]["request"]["url"] for e in requests]


@pytest.fixture(scope="module")
def tab(tmp_path_factory):
    assert CHROMIUM is not None, "CI must have chromium (scripts/test.sh installs it)"
    profile = tmp_path_factory.mktemp("chromium-profile")
    args = [
        CHROMIUM,
        "--headless",
        "--remote-debugging-port=0",  # any free port; chromium writes it to DevToolsActivePort
        f"--user-data-dir={profile}",
        "--window-size=1200,800",
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "about:blank",
    ]
    if os.geteuid() == 0:
        args.insert(1, "--no-sandbox")  # chromium will not start as root with its sandbox
    log = open(profile.parent / "chromium.log", "wb")  # noqa: SIM115 - closed in the teardown below
    browser = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            assert browser.poll() is None, f"chromium exited: {(profile.parent / 'chromium.log').read_text()}"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port in 30 s"
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            targets = json.load(response)
        page = next(t for t in targets if t["type"] == "page")
        tab = Tab(page["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Log", "Network"):
            tab.send(f"{domain}.enable")
        # The window's size minus the browser's own bars varies by version: fix the page's size.
        tab.send(
            "Emulation.setDeviceMetricsOverride", width=1200, height=800, deviceScaleFactor=1, mobile=False
        )
        yield tab
        tab.ws.close()
    finally:
        # The browser and its helper processes share the session started for it.
        os.killpg(browser.pid, signal.SIGTERM)
        try:
            browser.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(browser.pid, signal.SIGKILL)
            browser.wait()
        log.close()


def shown_grads(tab: Tab) -> list[str]:
    return tab.js("[...document.querySelectorAll('.node')].map(g => g.querySelector('.grad').textContent)")


def open_page(tab: Tab, root: Value, path: Path) -> GraphPage:
    page = draw_html(root)
    tab.open(page.save(path))
    assert tab.problems() == []
    return page


@needs_chromium
def test_page_loads_cleanly_and_draws_every_node(tab, tmp_path):
    root = lecture_graph()
    page = open_page(tab, root, tmp_path / "lecture.html")
    nodes, edges = trace(root)
    assert tab.js("document.querySelectorAll('.node').length") == len(nodes) == page.node_count
    assert tab.js("document.querySelectorAll('.edge').length") == len(edges)
    labels = tab.js("[...document.querySelectorAll('.node .label')].map(t => t.textContent)")
    assert labels == [v.label for v in nodes]
    datas = tab.js("[...document.querySelectorAll('.node .data')].map(t => t.textContent)")
    assert datas == [f"data {v.data:.4f}" for v in nodes]
    # Gradients start blank, as before the lecture's first hand step.
    assert shown_grads(tab) == ["grad \u00b7\u00b7\u00b7\u00b7"] * len(nodes)
    assert tab.js("document.title") == "gradrs graph of L"


@needs_chromium
def test_the_saved_file_makes_no_network_request(tab, tmp_path):
    path = tmp_path / "quiet.html"
    open_page(tab, lecture_graph(), path)
    tab.js("document.getElementById('all').click()")
    assert tab.requested_urls() == [path.as_uri()]


@needs_chromium
def test_clicking_a_node_shows_its_op_data_and_grad(tab, tmp_path):
    root = lecture_graph()
    open_page(tab, root, tmp_path / "click.html")
    nodes, _ = trace(root)
    for i, v in enumerate(nodes):
        tab.click(*tab.centre_of(f'.node[data-id="{i}"] rect'))
        assert tab.js("document.querySelector('#info h2').textContent") == v.label
        assert tab.js("document.getElementById('info-data').textContent") == repr(v.data)
        expected_op = v._op_detail if v._op else "leaf (no op)"
        assert tab.js("document.getElementById('info-op').textContent") == expected_op
        assert tab.js("document.getElementById('info-grad').textContent").startswith("blank until step")
    tab.js("document.getElementById('all').click()")
    assert tab.js("document.getElementById('info-grad').textContent") == repr(nodes[-1].grad)
    assert tab.problems() == []


@needs_chromium
def test_stepping_reveals_gradients_in_reverse_topological_order(tab, tmp_path):
    root = lecture_graph()
    open_page(tab, root, tmp_path / "steps.html")
    nodes, edges = trace(root)
    index = {v: i for i, v in enumerate(nodes)}
    users = {i: {index[p] for c, p in edges if c is v} for i, v in enumerate(nodes)}
    blank = "grad \u00b7\u00b7\u00b7\u00b7"
    revealed: list[int] = []
    for step in range(1, len(nodes) + 1):
        tab.click(*tab.centre_of("#step"))
        grads = shown_grads(tab)
        now = [i for i, g in enumerate(grads) if g != blank]
        (new,) = set(now) - set(revealed)
        # A gradient is shown only after every node that uses its Value, as backward() computes it.
        assert users[new] <= set(revealed), (nodes[new].label, step)
        assert grads[new] == f"grad {_short(nodes[new].grad)}"
        revealed.append(new)
        assert tab.js("document.getElementById('status').textContent").startswith(f"step {step} of 7")
    assert nodes[revealed[0]] is root
    # After the last step every box shows the engine's gradient.
    assert shown_grads(tab) == [f"grad {_short(v.grad)}" for v in nodes]
    assert tab.js("document.getElementById('step').disabled") is True
    tab.click(*tab.centre_of("#back"))
    assert shown_grads(tab).count(blank) == 1
    tab.click(*tab.centre_of("#reset"))
    assert shown_grads(tab) == [blank] * len(nodes)
    tab.js("document.getElementById('play').click()")
    tab.js("new Promise(done => setTimeout(done, 1400))")
    partway = len(nodes) - shown_grads(tab).count(blank)
    assert 1 <= partway < len(nodes)
    tab.js("document.getElementById('play').click()")  # pause
    assert tab.problems() == []


@needs_chromium
def test_hover_lights_inputs_and_outputs(tab, tmp_path):
    root = lecture_graph()
    open_page(tab, root, tmp_path / "hover.html")
    nodes, _ = trace(root)
    d = next(i for i, v in enumerate(nodes) if v.label == "d")
    tab.mouse("mouseMoved", *tab.centre_of(f'.node[data-id="{d}"] rect'))
    lit_in = tab.js("[...document.querySelectorAll('.node.input .label')].map(t => t.textContent).sort()")
    lit_out = tab.js("[...document.querySelectorAll('.node.output .label')].map(t => t.textContent)")
    assert lit_in == ["c", "e"] and lit_out == ["L"]
    assert tab.js("document.querySelectorAll('.edge.input').length") == 2
    tab.mouse("mouseMoved", 5, 790)
    assert tab.js("document.querySelectorAll('.node.input, .node.output').length") == 0


@needs_chromium
def test_wheel_zooms_and_drag_pans(tab, tmp_path):
    open_page(tab, lecture_graph(), tmp_path / "view.html")
    read = "document.getElementById('viewport').getAttribute('transform')"
    before = tab.js(read)
    tab.mouse("mouseWheel", 600, 400, deltaX=0, deltaY=-300)
    zoomed = tab.js(read)
    scale = lambda t: float(re.search(r"scale\(([^)]+)\)", t).group(1))  # noqa: E731
    assert scale(zoomed) > 1.3 * scale(before)
    tab.mouse("mousePressed", 600, 700, button="left", clickCount=1)
    tab.mouse("mouseMoved", 700, 650, button="left", buttons=1)
    tab.mouse("mouseReleased", 700, 650, button="left", clickCount=1)
    panned = tab.js(read)
    assert panned != zoomed and scale(panned) == scale(zoomed)
    assert tab.problems() == []


@needs_chromium
def test_the_jupyter_iframe_runs_the_page(tab, tmp_path):
    """What a notebook shows: the page inside a sandboxed srcdoc iframe, scripts running."""
    root = lecture_graph()
    shown = tmp_path / "cell_output.html"
    shown.write_text(f"<!DOCTYPE html><html><body>{draw_html(root)._repr_html_()}</body></html>")
    tab.open(shown)
    assert tab.problems() == []
    # A sandboxed iframe runs in a process of its own: attach to it as a target of its own.
    frames = [t for t in tab.send("Target.getTargets")["targetInfos"] if t["type"] == "iframe"]
    assert [t["url"] for t in frames] == ["about:srcdoc"]
    in_iframe = tab.send("Target.attachToTarget", targetId=frames[0]["targetId"], flatten=True)["sessionId"]
    tab.send("Runtime.enable", in_iframe)
    deadline = time.monotonic() + 10
    while tab.js("document.readyState", in_iframe) != "complete":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert tab.js("document.querySelectorAll('.node').length", in_iframe) == 7
    tab.js("document.getElementById('all').click()", in_iframe)
    assert tab.js("document.querySelectorAll('.grad.blank').length", in_iframe) == 0
    assert tab.problems() == []


@needs_chromium
def test_labels_stay_text(tab, tmp_path):
    x = Value(1.0, label="</script><script>window.hacked = 1</script> & <b>")
    y = x * 2
    y.label = "<!-- y"
    y.backward()
    open_page(tab, y, tmp_path / "labels.html")
    assert tab.js("window.hacked === undefined") is True
    tab.click(*tab.centre_of('.node[data-id="1"] rect'))
    assert tab.js("document.querySelector('#info h2').textContent") == x.label


@needs_chromium
def test_a_whole_model_graph_and_a_screenshot(tab, tmp_path):
    root = mlp_loss()
    page = open_page(tab, root, tmp_path / "mlp.html")
    nodes, _ = trace(root)
    assert tab.js("document.querySelectorAll('.node').length") == len(nodes) == page.node_count
    tab.js("document.getElementById('all').click()")
    assert shown_grads(tab) == [f"grad {_short(v.grad)}" for v in nodes]
    tab.js("document.getElementById('reset').click()")
    for _ in range(3):
        tab.js("document.getElementById('step').click()")
    assert tab.problems() == []
    shot = base64.b64decode(tab.send("Page.captureScreenshot", format="png")["data"])
    path = tmp_path / "graph_page.png"
    path.write_bytes(shot)
    if os.environ.get("GRADRS_SCREENSHOTS"):  # to look at it yourself
        shutil.copy(path, Path(os.environ["GRADRS_SCREENSHOTS"]) / "graph_page_mlp.png")
    import matplotlib.image

    pixels = matplotlib.image.imread(io.BytesIO(shot), format="png")[:, :, :3]
    assert pixels.shape[:2] == (800, 1200)
    graph_area = pixels[40:, :900]
    # Text and box outlines drawn in the graph's area, and the current step's green box among them.
    assert (graph_area.min(axis=2) < 0.8).sum() > 5000
    green = (graph_area[:, :, 1] > 0.5) & (graph_area[:, :, 0] < 0.25) & (graph_area[:, :, 2] < 0.45)
    assert green.sum() > 100


@needs_chromium
def test_the_demo_writes_the_page_beside_the_svg(tab, tmp_path):
    from gradrs.demo import run_demo

    result = run_demo(steps=2, out=tmp_path, stream=io.StringIO())
    page = tmp_path / "sample_loss_graph.html"
    assert page in result.files
    tab.open(page)
    assert tab.problems() == []
    assert tab.js("document.title") == "gradrs demo: the hardest sample's hinge loss"
    drawn = tab.js("document.querySelectorAll('.node').length")
    assert drawn > 300  # every Value of MLP(2, [16, 16, 1]) on one sample, weights included
    tab.js("document.getElementById('all').click()")
    assert tab.js("document.querySelectorAll('.grad.blank').length") == 0
    assert tab.problems() == []


@needs_chromium
def test_a_single_value_is_a_page_too(tab, tmp_path):
    x = Value(3.0, label="x")
    x.backward()
    open_page(tab, x, tmp_path / "one.html")
    assert tab.js("document.querySelectorAll('.node').length") == 1
    tab.click(*tab.centre_of("#step"))
    assert shown_grads(tab) == ["grad 1.0000"]
    assert tab.js("document.getElementById('status').textContent").startswith("step 1 of 1: x.grad = 1.0000")
    assert tab.problems() == []
