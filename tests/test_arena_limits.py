"""The arena at its limits: memory handed back after a big graph, running out of memory or past
GRADRS_MAX_NODES as a MemoryError, and Ctrl-C during a long backward. Each test runs in a child
process, so an abort or a runaway allocation fails one test and not the run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

PRELUDE = textwrap.dedent(
    """
    import gc, os, resource, signal, subprocess, sys, time
    import gradrs
    from gradrs import Value

    def resident_mib():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def mapped_bytes():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    """
)


def run_child(
    code: str, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    print(result.stdout, result.stderr)
    return result


def test_dropping_a_big_graph_made_after_a_model_returns_the_memory():
    result = run_child(
        """
        model = [Value(0.001 * (i % 17 - 8)) for i in range(337)]
        gc.collect()
        baseline = resident_mib()
        y = model[0]
        for i in range(1_500_000):  # 3M nodes over the model
            y = y * model[i % 337] + 0.5
        peak = resident_mib()
        del y
        gc.collect()
        after = resident_mib()
        print(f"resident MiB: baseline {baseline:.0f}, with the graph {peak:.0f}, dropped {after:.0f}")
        assert peak - baseline > 100, "the graph should have taken memory"
        assert after - baseline < (peak - baseline) / 4, "the graph's memory was not handed back"
        assert gradrs.live_nodes() == 337
        out = (model[1] * model[2]).tanh()
        out.backward()
        assert model[1].grad == model[2].data * (1 - out.data**2)
        print("OK")
        """
    )
    assert result.returncode == 0 and "OK" in result.stdout


def test_running_out_of_memory_is_a_memory_error_and_the_engine_goes_on():
    # The address space is capped a fixed amount above what the interpreter maps already, so the
    # runaway graph meets the cap within a few seconds; numpy and the rest are imported before.
    result = run_child(
        """
        import numpy
        cap = mapped_bytes() + 700 * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        before = gradrs.live_nodes()
        y = Value(1.0)
        try:
            while True:
                y = y * 1.0000001 + 0.5
        except MemoryError as error:
            print("MemoryError:", error)
        made = gradrs.live_nodes() - before
        print(f"live nodes when memory ran out: {made}")
        assert made > 1_000_000
        del y
        gc.collect()
        assert gradrs.live_nodes() == before
        z = Value(2.0) * 3
        assert z.data == 6.0
        z.backward()
        assert z.grad == 1.0
        assert gradrs.live_nodes() == before + 2
        print("OK")
        """,
        timeout=120,
    )
    assert result.returncode == 0, f"the child died (return code {result.returncode})"
    assert "MemoryError:" in result.stdout and "OK" in result.stdout
    assert "memory allocation" not in result.stderr


def test_gradrs_max_nodes_caps_live_nodes_with_a_memory_error():
    result = run_child(
        """
        import numpy
        assert gradrs.live_nodes() == 0
        values = [Value(float(i)) for i in range(1000)]
        for attempt in (lambda: Value(1.0), lambda: values[0] * values[1], lambda: values[0].tanh()):
            try:
                attempt()
            except MemoryError as error:
                assert "GRADRS_MAX_NODES=1000" in str(error), error
            else:
                raise AssertionError("the 1001st node was made")
        assert gradrs.live_nodes() == 1000
        del values[-10:]
        try:
            gradrs.leaves(numpy.zeros(20))
        except MemoryError as error:
            assert "GRADRS_MAX_NODES=1000" in str(error), error
        else:
            raise AssertionError("1010 nodes were made")
        assert gradrs.live_nodes() == 990, "the leaves made before the cap was met were kept"
        y = (values[3] * values[4]).tanh()
        y.backward()
        assert values[3].grad == values[4].data * (1 - y.data**2)
        assert gradrs.live_nodes() == 992
        print("OK")
        """,
        env={"GRADRS_MAX_NODES": "1000"},
    )
    assert result.returncode == 0 and "OK" in result.stdout


@pytest.mark.parametrize("value", ["lots", "-5", "0", "1e3"])
def test_an_unreadable_gradrs_max_nodes_fails_at_import(value):
    result = subprocess.run(
        [sys.executable, "-c", "import gradrs"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "GRADRS_MAX_NODES": value},
    )
    assert result.returncode != 0
    assert "GRADRS_MAX_NODES must be a positive whole number" in result.stderr, result.stderr


def test_ctrl_c_stops_a_long_backward_quickly_and_leaves_the_engine_usable():
    # The SIGINT comes from another process, as Ctrl-C does: backward holds the GIL, so a
    # threading.Timer in this process could not run until it returned.
    result = run_child(
        """
        from gradrs._core import _dense
        nin, nout = 500, 500
        weights = [[Value(0.01 * ((i * 7 + j) % 13 - 6)) for i in range(nin)] for j in range(nout)]
        biases = [Value(0.0) for _ in range(nout)]
        def layer(xs):
            return _dense(weights, biases, "tanh", xs)
        xs = [Value(0.1) for _ in range(nin)]
        # Grow the graph until one backward pass takes over 1.5 s.
        outs = [gradrs.sum(layer(xs)) for _ in range(10)]
        while True:
            root = gradrs.sum(outs)
            xs[0].grad = 0.0
            start = time.perf_counter()
            root.backward()
            full = time.perf_counter() - start
            whole = xs[0].grad
            print(f"backward over {len(outs) * nout * (2 * nin + 1) / 1e6:.0f}M edges takes {full:.2f} s")
            if full > 1.5:
                break
            grow = int(len(outs) * min(4.0, 1.8 / full)) - len(outs) + 1
            outs += [gradrs.sum(layer(xs)) for _ in range(grow)]
        def send_later(signum):
            return subprocess.Popen(
                [sys.executable, "-c",
                 "import os, sys, time; time.sleep(0.5); print(time.time(), flush=True);"
                 f"os.kill({os.getpid()}, {int(signum)})"],
                stdout=subprocess.PIPE, text=True,
            )

        killer = send_later(signal.SIGINT)
        start = time.perf_counter()
        try:
            root.backward()
        except KeyboardInterrupt:
            caught = time.time()
        else:
            raise AssertionError("backward finished before the signal came")
        took = time.perf_counter() - start
        sent = float(killer.communicate()[0])
        latency = caught - sent
        print(f"KeyboardInterrupt {latency * 1000:.0f} ms after the signal, backward stopped at {took:.2f} s")
        assert latency < 1.0 and took < full
        a, b = Value(3.0), Value(-2.0)
        out = (a * b).tanh()
        out.backward()
        assert a.grad == b.data * (1 - out.data**2) and b.grad == a.data * (1 - out.data**2)
        xs[0].grad = 0.0
        root.backward()  # the big graph back-propagates again, whole
        assert abs(xs[0].grad - whole) <= 1e-9 * abs(whole), (xs[0].grad, whole)

        # A signal handler that runs another backward pass between two chunks: the interrupted
        # pass cannot resume, and says so instead of finishing with wrong gradients.
        def other_pass(signum, frame):
            small = Value(1.5) * 2
            small.backward()

        signal.signal(signal.SIGUSR1, other_pass)
        killer = send_later(signal.SIGUSR1)
        try:
            root.backward()
        except RuntimeError as error:
            print("RuntimeError:", error)
            assert "incomplete" in str(error)
        else:
            raise AssertionError("backward finished before the signal came, or ignored the other pass")
        killer.communicate()
        xs[0].grad = 0.0
        root.backward()
        assert abs(xs[0].grad - whole) <= 1e-9 * abs(whole), (xs[0].grad, whole)
        print("OK")
        """,
        timeout=300,
    )
    assert result.returncode == 0 and "OK" in result.stdout
