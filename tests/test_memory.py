"""Graphs are reclaimed as soon as nothing refers to them, and depth is no limit."""

from __future__ import annotations

import gc
import random
import subprocess
import sys
import textwrap
import time

import gradrs
from gradrs import Value


def resident_kib() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def train_step(params: list[Value], xs: list[list[float]], ys: list[float]) -> float:
    loss = Value(0.0)
    for x, y in zip(xs, ys, strict=True):
        h = [(params[2 * j] * x[0] + params[2 * j + 1] * x[1]).tanh() for j in range(4)]
        out = gradrs.sum(h[j] * params[8 + j] for j in range(4))
        loss = loss + (out - y) ** 2
    for p in params:
        p.grad = 0
    loss.backward()
    for p in params:
        p.data -= 0.01 * p.grad
    return loss.data


def test_ten_thousand_training_steps_keep_memory_flat():
    random.seed(0)
    params = [Value(random.uniform(-1, 1)) for _ in range(12)]
    xs = [[random.uniform(-1, 1), random.uniform(-1, 1)] for _ in range(4)]
    ys = [1.0, -1.0, 1.0, -1.0]
    gc.collect()
    baseline_nodes = gradrs.live_nodes()
    for _ in range(100):
        train_step(params, xs, ys)
    gc.collect()
    rss_before = resident_kib()
    first = train_step(params, xs, ys)
    for _ in range(10_000):
        last = train_step(params, xs, ys)
    gc.collect()
    rss_after = resident_kib()
    print(f"\nresident memory before {rss_before} KiB, after 10,000 steps {rss_after} KiB")
    assert gradrs.live_nodes() == baseline_nodes
    assert rss_after - rss_before < 2048, (rss_before, rss_after)
    assert last < first


def test_dropping_in_either_order_frees_everything():
    baseline = gradrs.live_nodes()
    a, b = Value(1.0), Value(2.0)
    c = a * b
    d = c + a
    del c, a  # children before parents
    assert gradrs.live_nodes() == baseline + 4
    del d  # the parent last: frees c and a through it
    assert gradrs.live_nodes() == baseline + 1
    del b
    a, b = Value(1.0), Value(2.0)
    d = (a * b) + a
    del d  # parents first
    assert gradrs.live_nodes() == baseline + 2
    del a, b
    assert gradrs.live_nodes() == baseline


def test_children_outlive_their_handles():
    x = Value(3.0)
    y = (x * 2).tanh()
    del x
    gc.collect()
    y.backward()
    (child,) = y._prev
    (leaf,) = child._prev
    assert leaf.data == 3.0 and leaf.grad != 0


def test_million_node_chain_backward_and_drop():
    baseline = gradrs.live_nodes()
    x = Value(1.0)
    y = x
    start = time.perf_counter()
    for _ in range(1_000_000):
        y = y * 1.0001 + 0.0001
    built = time.perf_counter()
    y.backward()
    backward = time.perf_counter()
    assert x.grad > 1.0
    assert gradrs.live_nodes() == baseline + 2_000_001
    del y
    dropped = time.perf_counter()
    assert gradrs.live_nodes() == baseline + 1
    print(
        f"\n1,000,000-step chain (2,000,000 nodes): build {built - start:.2f} s, "
        f"backward {backward - built:.3f} s, drop {dropped - backward:.3f} s"
    )


def test_deep_chain_in_a_subprocess_exits_cleanly():
    """A stack overflow would abort the process; run it apart so pytest survives to say so."""
    code = textwrap.dedent(
        """
        from gradrs import Value
        import gradrs
        x = Value(2.0)
        y = x
        for _ in range(1_000_000):
            y = y + 1
        y.backward()
        assert x.grad == 1.0, x.grad
        del y, x
        assert gradrs.live_nodes() == 0, gradrs.live_nodes()
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_second_backward_adds_the_same_amount_again():
    a, b = Value(2.0), Value(3.0)
    c = a * b
    d = c * c
    d.backward()
    first = a.grad
    d.backward()
    assert a.grad == 2 * first == 72.0  # PyTorch with retain_graph; micrograd would give 108
    assert c.grad == 2 * c.data  # interior grads are recomputed, not accumulated
