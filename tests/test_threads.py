"""Values built and back-propagated from several threads at once; a bounded soak."""

from __future__ import annotations

import gc
import math
import os
import random
import threading

import gradrs
from gradrs import Value, nn


def run_threads(target, n, *args):
    errors = []

    def guarded(i):
        try:
            target(i, *args)
        except BaseException as error:  # noqa: BLE001 - reported to the main thread below
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_four_threads_build_their_own_graphs_and_check_every_gradient():
    def work(seed):
        rng = random.Random(seed)
        for _ in range(300):
            a, b, c = (Value(rng.uniform(0.5, 2.0)) for _ in range(3))
            out = (a * b + c).tanh() * a + (b / c).exp() - c.log() + (a - b).relu()
            out.backward()
            th = math.tanh(a.data * b.data + c.data)
            relu_grad = 1.0 if a.data - b.data > 0 else 0.0
            ga = (1 - th * th) * b.data * a.data + th + relu_grad
            gb = (1 - th * th) * a.data * a.data + math.exp(b.data / c.data) / c.data - relu_grad
            gc_ = (1 - th * th) * a.data - math.exp(b.data / c.data) * b.data / c.data**2 - 1 / c.data
            for got, want in ((a.grad, ga), (b.grad, gb), (c.grad, gc_)):
                assert abs(got - want) <= 1e-12 * max(1.0, abs(want)), (got, want)

    run_threads(work, 4)


def test_ten_threads_accumulate_into_a_shared_leaf_exactly():
    x = Value(1.5)

    def work(_):
        ((x + 3) * (x + 4) * 0.5).backward()

    run_threads(work, 10)
    assert x.grad == 10 * (x.data + 3.5)


def test_a_value_made_here_and_dropped_in_a_worker_is_freed():
    gc.collect()
    baseline = gradrs.live_nodes()
    box = [Value(1.0) * 2 + 1]

    def work(_):
        box.pop()

    run_threads(work, 1)
    assert gradrs.live_nodes() == baseline


def test_concurrent_drops_while_another_thread_backpropagates():
    keep = [Value(float(i)) for i in range(50)]

    def work(i):
        for _ in range(200):
            if i == 0:
                out = gradrs.sum(v * v for v in keep)
                out.backward()
            else:
                junk = [Value(1.0) * k for k in range(50)]
                del junk

    run_threads(work, 3)
    assert all(v.grad > 0 or v.data == 0 for v in keep)


def resident_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def test_soak_four_trainers_and_a_churning_main_thread():
    """4 threads train separate MLPs while the main thread creates and drops Values."""
    xs = [[2.0, 3.0, -1.0], [3.0, -1.0, 0.5], [0.5, 1.0, 1.0], [1.0, 1.0, -1.0]]
    ys = [1.0, -1.0, -1.0, 1.0]
    first_losses, last_losses = {}, {}

    def train(i):
        model = nn.MLP(3, [4, 4, 1], activation="tanh")
        opt = gradrs.optim.SGD(model.parameters(), lr=0.05)
        for step in range(150):
            loss = gradrs.losses.mse_loss([model(x) for x in xs], ys)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step == 0:
                first_losses[i] = loss.data
        last_losses[i] = loss.data

    gc.collect()
    baseline_nodes = gradrs.live_nodes()
    rss_before = resident_kib()
    trainers = [threading.Thread(target=train, args=(i,)) for i in range(4)]
    for t in trainers:
        t.start()
    churned = 0
    while churned < 20 or any(t.is_alive() for t in trainers):
        vals = [Value(float(k)) for k in range(100)]
        total = gradrs.sum(v * 2 for v in vals)
        total.backward()
        del vals, total
        churned += 1
    for t in trainers:
        t.join()
    gc.collect()
    assert len(last_losses) == 4
    assert all(last_losses[i] < first_losses[i] for i in range(4)), (first_losses, last_losses)
    assert gradrs.live_nodes() == baseline_nodes
    assert resident_kib() - rss_before < 20 * 1024
    assert churned > 0
