"""Compiled replays within bounds: memory that does not grow with the rows, Ctrl-C answered,
arguments checked, recording linear in the graph.

Memory and signal tests run in a child process: a peak RSS is per process, and a stray signal or
an out-of-memory abort must fail one test, not the run.
"""

import gc
import itertools
import random
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import gradrs
from gradrs import Value
from gradrs.nn import MLP


def run_child(code: str, timeout: float = 300) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


# A multi-output model: 10 outputs over 8,970 parameters, so that each chunk of rows has 89,700
# partial sums to hand back.
WIDE_MODEL = """
import random, resource, sys, time
import numpy as np
import gradrs
from gradrs.nn import MLP
random.seed(0)
model = MLP(64, [64, 64, 10])
fn = gradrs.compile(lambda x: model(x))
"""


def peak_rss_of_batch(n_rows: int) -> tuple[int, int]:
    """The peak RSS (bytes) of a child that runs one wide batch over ``n_rows``, and X's size."""
    out = run_child(
        WIDE_MODEL
        + f"""
X = np.random.default_rng(0).normal(size=({n_rows}, 64))
fn.batch(X[:4])
fn.batch(X)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, X.nbytes)
"""
    )
    peak, x_bytes = map(int, out.split())
    return peak, x_bytes


def test_batch_memory_does_not_grow_with_the_rows():
    small, _ = peak_rss_of_batch(4_000)
    large, x_bytes = peak_rss_of_batch(40_000)
    print(f"\npeak RSS: {small / 2**20:.0f} MiB at 4,000 rows, {large / 2**20:.0f} MiB at 40,000 rows")
    # The rows themselves are held twice: the caller's X and the copy the replay reads.
    assert large < 1.5 * small + 2 * x_bytes


def test_wide_batch_equals_one_thread_and_eager():
    random.seed(0)
    model = MLP(64, [64, 64, 10])
    fn = gradrs.compile(lambda x: model(x))
    X = np.random.default_rng(3).normal(size=(1_000, 64))

    def batch_and_grads(**kwargs):
        model.zero_grad()
        outs = fn.batch(X, **kwargs)
        gradrs.sum(outs).backward()
        return [v.data for v in outs], [p.grad for p in model.parameters()]

    one = batch_and_grads(threads=1)
    assert batch_and_grads() == one
    assert batch_and_grads(threads=3) == one

    few = X[:40]
    model.zero_grad()
    outs = fn.batch(few)
    gradrs.sum(outs).backward()
    values, grads = [v.data for v in outs], [p.grad for p in model.parameters()]
    model.zero_grad()
    outs = [model(list(row)) for row in few]
    means = [gradrs.sum(column) * (1 / len(few)) for column in zip(*outs, strict=True)]
    gradrs.sum(means).backward()
    assert np.allclose(values, [m.data for m in means], rtol=1e-9, atol=1e-12)
    assert np.allclose(grads, [p.grad for p in model.parameters()], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method, threads", [("batch", None), ("batch", 1), ("map", None)])
def test_ctrl_c_stops_a_long_replay_and_leaves_the_process_usable(method, threads):
    # Layers of 512, so that seconds of replay need tens of megabytes of rows, not gigabytes: on a
    # fast machine the copy of gigabytes of rows (made with the GIL held, before the replay) kept
    # the timer thread from sending the signal until the replay was nearly over.
    out = run_child(
        WIDE_MODEL.replace("MLP(64, [64, 64, 10])", "MLP(64, [512, 512, 10])")
        + f"""
import os, signal, threading
small = np.random.default_rng(0).normal(size=(512, 64))
before = [v.data for v in fn.batch(small)]
# The fastest of a few timed runs: one slowed by the machine would size X too small to be
# running still when the signal comes.
calibration = np.resize(small, (2048, 64))
per_row = float("inf")
for _ in range(3):
    t0 = time.perf_counter()
    fn.{method}(calibration, threads={threads})
    per_row = min(per_row, (time.perf_counter() - t0) / len(calibration))
expected = 4.0  # seconds, uninterrupted
# At most 512 MiB of rows: still seconds of work, and the replay must end in KeyboardInterrupt
# either way.
X = np.resize(small, (min(int(expected / per_row), 1_000_000), 64))
sent = []
threading.Timer(0.5, lambda: (sent.append(time.perf_counter()), os.kill(os.getpid(), signal.SIGINT))).start()
start = time.perf_counter()
try:
    fn.{method}(X, threads={threads})
except KeyboardInterrupt:
    caught = time.perf_counter()
else:
    sys.exit("the replay finished without being interrupted")
assert [v.data for v in fn.batch(small)] == before
print(caught - sent[0], caught - start)
"""
    )
    latency, ran = map(float, out.split())
    print(f"\nKeyboardInterrupt {latency * 1000:.0f} ms after SIGINT ({method}, threads={threads})")
    assert latency < 1.0
    assert ran < 2.0  # stopped, not run to the end (about 4 s)


def test_a_batch_reads_its_own_copy_of_the_rows():
    # The replay runs without the GIL: writing to (or resizing) the caller's array meanwhile
    # must change nothing, since the rows were copied first.
    out = run_child(
        WIDE_MODEL
        + """
import threading
small = np.random.default_rng(0).normal(size=(512, 64))
per_row = float("inf")
for _ in range(3):  # the fastest run: a slowed one would size X too small to outlast the sleep
    t0 = time.perf_counter()
    fn.batch(small, threads=1)
    per_row = min(per_row, (time.perf_counter() - t0) / len(small))
X = np.resize(small, (int(1.0 / per_row), 64)).copy()  # about 1 s on one thread; owns its data
want = [v.data for v in fn.batch(X.copy())]
got = []
worker = threading.Thread(target=lambda: got.extend(v.data for v in fn.batch(X, threads=1)))
start = time.perf_counter()
worker.start()
time.sleep(0.2)
X[:] = np.nan
X.resize((1, 64), refcheck=False)
worker.join()
assert got == want, (got, want)
print(time.perf_counter() - start)
"""
    )
    assert float(out) > 0.2  # the batch was still running when its rows were overwritten


def test_run_checks_attached():
    w = Value(2.0)
    x, y = Value(1.0), Value(3.0)
    program = gradrs._core._Program([w * x + y], [x, y])
    inputs = np.array([1.0, 3.0])
    with pytest.raises(ValueError, match="more than 2 items"):
        program.run(inputs, [x, y, x])
    with pytest.raises(ValueError, match="has 1 items, but the program has 2 inputs"):
        program.run(inputs, [x])
    with pytest.raises(ValueError, match="more than 2 items"):
        program.run(inputs, itertools.repeat(None))  # endless: refused, not followed
    with pytest.raises(TypeError, match="attached must be Values or None; item 1 is float"):
        program.run(inputs, [x, 3.0])
    with pytest.raises(TypeError):
        program.run(inputs, 5)
    # Values made by the iteration itself stay alive for the whole call.
    (out,) = program.run(inputs, (Value(float(i)) for i in range(2)))
    out.backward()
    w.grad = 0.0
    (out,) = program.run(inputs, [None, y])
    out.backward()
    assert (out.data, w.grad, y.grad) == (5.0, 1.0, 1.0)


def test_run_checks_inputs():
    x = Value(1.0)
    program = gradrs._core._Program([x * 2], [x])
    with pytest.raises(ValueError, match="takes 1 inputs, got 2"):
        program.run(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="takes 1 inputs, got 0"):
        program.run(np.array([]))
    with pytest.raises(TypeError):
        program.run(np.array([1.0], dtype=np.float32))
    with pytest.raises(TypeError):
        program.run(np.array([[1.0]]))
    assert program.run(np.array([1.0, 5.0])[1:])[0].data == 10.0  # any layout, copied


def test_recording_checks_its_arguments():
    x = Value(1.0)
    with pytest.raises(TypeError, match="outputs must be Values; item 1 is float"):
        gradrs._core._Program([x, 1.0], [x])
    with pytest.raises(TypeError, match="inputs must be Values; item 0 is str"):
        gradrs._core._Program([x], ["x"])
    assert not hasattr(gradrs._core, "Program")  # private: gradrs.compile is the door


def test_batch_and_map_check_rows_and_threads():
    x, w = Value(1.0), Value(3.0)
    program = gradrs._core._Program([w * x], [x])
    with pytest.raises(ValueError, match="each row needs 1 numbers"):
        program.batch(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="at least one row"):
        program.batch(np.zeros((0, 1)))
    assert program.map(np.zeros((0, 1))).shape == (0, 1)
    with pytest.raises(ValueError, match="threads must be at least 1"):
        program.batch(np.zeros((3, 1)), threads=0)
    with pytest.raises(ValueError, match="threads must be at least 1"):
        program.map(np.zeros((3, 1)), threads=0)
    with pytest.raises(OverflowError):
        program.map(np.zeros((3, 1)), threads=-1)
    with pytest.raises(ValueError, match="reduce must be 'mean' or 'sum'"):
        program.batch(np.zeros((3, 1)), reduce="max")
    with pytest.raises(TypeError):
        program.batch(np.zeros((3, 1), dtype=np.int64))
    rows = np.asfortranarray(np.arange(12.0).reshape(6, 2))[:, :1]  # strided: copied as rows
    assert program.map(rows).tolist() == [[0.0], [6.0], [12.0], [18.0], [24.0], [30.0]]
    assert program.batch(rows, reduce="sum", threads=64)[0].data == 90.0


def test_a_program_without_inputs_replays_in_every_row():
    w = Value(3.0)
    program = gradrs._core._Program([w * w], [])
    (total,) = program.batch(np.zeros((5, 0)), reduce="sum")
    total.backward()
    assert (total.data, w.grad) == (45.0, 30.0)
    assert program.map(np.zeros((2, 0))).tolist() == [[9.0], [9.0]]
    with pytest.raises(ValueError, match="each row needs 0 numbers"):
        program.batch(np.zeros((5, 1)))
    fn = gradrs.compile(lambda xs: w * 2)
    w.grad = 0.0
    out = fn.batch(np.zeros((4, 0)))
    out.backward()
    assert (out.data, w.grad) == (6.0, 2.0)


def test_buffers_too_large_to_hold_raise_memory_error():
    out = run_child(
        """
import numpy as np
import gradrs
from gradrs import Value
# 200,000 outputs over 200,000 parameters: 320 GB of partial derivatives per chunk or call.
n = 200_000
x = Value(1.0)
params = gradrs.leaves(np.ones(n))
program = gradrs._core._Program([p * x for p in params], [x])
for call in (
    lambda: program.batch(np.ones((3, 1))),
    lambda: program.run(np.ones(1), [x]),
    lambda: gradrs._core._Program([params[0] * 2], []).map(np.zeros((10**13, 0))),
):
    try:
        call()
    except MemoryError as err:
        print("MemoryError:", err)
    else:
        raise SystemExit("no MemoryError")
with gradrs.no_grad():
    assert program.batch(np.ones((3, 1)))[0].data == 1.0  # values alone fit
"""
    )
    assert out.count("MemoryError: not enough memory for") == 3, out


def trace_times(n_states: int) -> tuple[float, float]:
    """Seconds to record a graph over a chain of ``n_states`` compiled cell results: through
    ``gradrs.compile`` (a loss over every state), and directly (the same loss plus an input
    slot, so that every state is checked for whether it was computed from that input)."""
    cell = gradrs.compile(lambda h, x: (h * 0.5 + x).tanh())
    h = Value(0.0)
    states = []
    for i in range(n_states):
        h = cell(h, float(i % 7) / 7)
        states.append(h)
    traced = recorded = float("inf")
    gc.collect()
    gc.disable()  # a collection landing in one timing but not the other is noise
    try:
        for _ in range(5):
            loss = gradrs.compile(lambda hs: gradrs.sum([s * s for s in hs]))
            x = Value(1.0)
            direct = gradrs.sum([s * s for s in states]) + x
            t0 = time.perf_counter()
            out = loss(states)
            t1 = time.perf_counter()
            program = gradrs._core._Program([direct], [x])
            t2 = time.perf_counter()
            traced, recorded = min(traced, t1 - t0), min(recorded, t2 - t1)
            del out, program  # freed outside the timings
    finally:
        gc.enable()
    return traced, recorded


def test_tracing_over_a_chain_of_compiled_results_is_linear():
    small, large = trace_times(500), trace_times(16_000)
    for what, fast, slow in zip(("traced", "recorded directly"), small, large, strict=True):
        print(f"\n{what}: 500 states {fast * 1000:.2f} ms, 16,000 states {slow * 1000:.2f} ms")
        # 32x the states: linear is 32x (less, with fixed costs), quadratic 1,024x. The margin
        # is wide both ways, as a loaded machine has stretched one timing 1.5x against the other.
        assert slow < 256 * fast
