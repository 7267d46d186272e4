"""gradrs.compile: record once, replay natively; equal to eager mode."""

from __future__ import annotations

import gc
import random
import time
import weakref

import numpy as np
import pytest

import gradrs
from gradrs import Value

from conftest import load_golden

GOLDEN = load_golden()


class MLP:
    """A micrograd MLP written with gradrs.dot, so these tests need nothing of gradrs.nn."""

    def __init__(self, nin: int, nouts: list[int]) -> None:
        sizes = [nin, *nouts]
        self.layers = [
            [([Value(random.uniform(-1, 1)) for _ in range(a)], Value(0.0)) for _ in range(b)]
            for a, b in zip(sizes, sizes[1:], strict=False)
        ]

    def __call__(self, x):
        for depth, layer in enumerate(self.layers):
            last = depth == len(self.layers) - 1
            x = [gradrs.dot(w, x, b) if last else gradrs.dot(w, x, b).relu() for w, b in layer]
        return x[0] if len(x) == 1 else x

    def parameters(self) -> list[Value]:
        return [p for layer in self.layers for w, b in layer for p in (*w, b)]

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = 0.0


def rel_close(a, b, tol=1e-12):
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=[c["name"] for c in GOLDEN["cases"]])
def test_replay_equals_eager_on_every_golden_case(case):
    # Learn the case's leaves (in creation order) by running it once eagerly.
    made: list[Value] = []

    def V(x):
        v = Value(x)
        made.append(v)
        return v

    scope = {"V": V}
    exec(case["code"], scope)
    eager_out = scope["out"]
    eager_out.backward()
    start_values = [v.data for v in made]

    def fn(*leaves):
        it = iter(leaves)
        local = {"V": lambda _x: next(it)}
        exec(case["code"], local)
        return local["out"]

    compiled = gradrs.compile(fn)
    args = [Value(x) for x in start_values]
    out = compiled(*args)
    out.backward()
    assert rel_close(out.data, eager_out.data), (out.data, eager_out.data)
    for a, e in zip(args, made, strict=True):
        assert rel_close(a.grad, e.grad), (a.grad, e.grad)
    again = compiled(*[Value(x) for x in start_values])  # the cached program, a second time
    assert again.data == out.data

    # The same program at other inputs, against a fresh eager run there, gradients included.
    moved = [x * 0.9 + 0.05 if x != 0 else 0.0 for x in start_values]
    eager_args = [Value(x) for x in moved]
    it = iter(eager_args)
    local = {"V": lambda _x: next(it)}
    exec(case["code"], local)
    eager_moved = local["out"]
    eager_moved.backward()
    replay_args = [Value(x) for x in moved]
    replayed = compiled(*replay_args)
    replayed.backward()
    assert len(compiled._traces) == 1
    assert same_float(replayed.data, eager_moved.data), (replayed.data, eager_moved.data)
    for a, e in zip(replay_args, eager_args, strict=True):
        assert same_float(a.grad, e.grad), (a.grad, e.grad)


def same_float(a: float, b: float) -> bool:
    """rel_close, with nan equal to nan and infinities equal to themselves."""
    if a != a or b != b:
        return a != a and b != b
    if abs(a) == float("inf") or abs(b) == float("inf"):
        return a == b
    return rel_close(a, b)


def train(compiled: bool, steps: int = 20) -> list[float]:
    random.seed(3)
    model = MLP(2, [8, 8, 1])
    X, y = gradrs.datasets.make_moons(n_samples=40, noise=0.1, random_state=0)
    y = y * 2.0 - 1
    params = model.parameters()
    group = gradrs.ParamGroup(params)
    velocity = np.zeros(len(params))

    def sample_loss(x, yi):
        return (1 + -yi * model(x)).relu()

    fast = gradrs.compile(sample_loss)
    losses = []
    for _ in range(steps):
        if compiled:
            data_loss = fast.batch(X, y)
        else:
            data_loss = gradrs.sum(sample_loss(list(x), float(yi)) for x, yi in zip(X, y, strict=True)) * (
                1.0 / len(y)
            )
        loss = data_loss + 1e-4 * gradrs.dot(params, params)
        group.zero_grad()
        loss.backward()
        group.sgd_step(0.5, 0.0, 0.0, velocity)
        losses.append(loss.data)
    return losses


def test_training_compiled_equals_eager_step_by_step():
    eager, compiled = train(False), train(True)
    for a, b in zip(eager, compiled, strict=True):
        assert rel_close(a, b), (a, b)
    assert compiled[-1] < compiled[0]


def test_batch_is_the_mean_of_single_runs_and_threads_do_not_change_it():
    random.seed(1)
    model = MLP(3, [5, 2])
    fn = gradrs.compile(lambda x: model(x))
    # 1,000 rows are 32 chunks of 32: enough for four threads to each take several.
    X = np.random.default_rng(0).normal(size=(1000, 3))
    serial = fn.batch(X, threads=1)
    parallel = fn.batch(X, threads=4)
    assert [v.data for v in serial] == [v.data for v in parallel]
    singles = [fn(row) for row in X]
    for k in range(2):
        assert rel_close(serial[k].data, float(np.mean([s[k].data for s in singles])))
    parallel[0].backward()
    grads_parallel = [p.grad for p in model.parameters()]
    model.zero_grad()
    serial[0].backward()
    assert [p.grad for p in model.parameters()] == grads_parallel
    mapped = fn.map(X)
    assert mapped.shape == (1000, 2)
    assert rel_close(mapped[7, 1], singles[7][1].data)
    assert np.array_equal(fn.map(X, threads=1), fn.map(X, threads=4))


def assert_batch_sums_its_samples(compiled, fn, X, params, threads):
    """``compiled.batch(X, reduce="sum")`` and its backward equal ``fn`` run eagerly on each row
    and summed: the value to 1e-12 relative and every parameter's gradient to 1e-12. Returns the
    batch's result."""
    for p in params:
        p.grad = 0.0
    total = compiled.batch(X, reduce="sum", threads=threads)
    total.backward()
    batch_grads = [p.grad for p in params]
    for p in params:
        p.grad = 0.0
    expected = 0.0
    for row in X:
        out = fn([Value(v) for v in row])
        out.backward()
        expected += out.data
    assert rel_close(total.data, expected), (total.data, expected)
    for got, want in zip(batch_grads, [p.grad for p in params], strict=True):
        assert abs(got - want) <= 1e-12 * max(1.0, abs(want)), (got, want)
    return total


def test_layers_run_as_matrix_products_equal_the_samples_one_by_one():
    """Layers of at least 4 neurons over at least 4 inputs run as matrix products in a batch:
    outputs and every gradient equal the per-sample calls' to rounding, and the thread count
    changes nothing. A weight shared by two neurons, and an input read twice by every neuron,
    get both shares."""
    random.seed(3)
    model = MLP(6, [8, 5, 3])
    shared = model.layers[1][0][0][2]
    model.layers[1][3][0][4] = shared  # one Value as two neurons' weights
    first = model.layers[0]

    def fn(x):
        doubled = [*x, x[0]]  # every first-layer neuron reads x[0] twice
        hidden = [gradrs.dot([*w, w[0]], doubled, b).relu() for w, b in first]
        for depth, layer in enumerate(model.layers[1:]):
            last = depth == len(model.layers) - 2
            hidden = [gradrs.dot(w, hidden, b) if last else gradrs.dot(w, hidden, b).relu() for w, b in layer]
        return gradrs.sum([h * h for h in hidden])

    compiled = gradrs.compile(fn)
    X = np.random.default_rng(5).normal(size=(141, 6))  # two whole 64-row chunks and a part
    total = assert_batch_sums_its_samples(compiled, fn, X, model.parameters(), threads=1)
    assert compiled.batch(X, reduce="sum", threads=3).data == total.data
    assert np.array_equal(compiled.map(X, threads=1), compiled.map(X, threads=2))


def _neurons(nin, nout, rng):
    return [
        ([Value(rng.uniform(-1, 1)) for _ in range(nin)], Value(rng.uniform(-0.5, 0.5))) for _ in range(nout)
    ]


# How a batch finds a layer's matrices depends on where its inputs, weights and biases lie in
# the program: evenly spaced, they are read in place; any other way, one instruction at a time.
LAYOUTS = [
    "plain",
    "inputs_reversed",
    "every_other_input",
    "tied_rows",
    "bias_is_a_weight",
    "two_heads",
    "no_bias",
]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layer_layout_batches_as_its_samples_one_by_one(layout):
    rng = random.Random(11)
    n_x = 12 if layout == "every_other_input" else 6
    first, second, other = _neurons(6, 7, rng), _neurons(7, 5, rng), _neurons(7, 4, rng)
    if layout == "tied_rows":
        second = [(second[0][0], b) for _, b in second]
    if layout == "bias_is_a_weight":
        second = [(w, second[(j + 1) % len(second)][0][0]) for j, (w, _) in enumerate(second)]
    params = list({id(v): v for w, b in first + second + other for v in [*w, b]}.values())

    def fn(x):
        inputs = {"inputs_reversed": x[::-1], "every_other_input": x[::2]}.get(layout, x)
        hidden = [gradrs.dot(w, inputs, b).relu() for w, b in first]
        outs = [gradrs.dot(w, hidden) if layout == "no_bias" else gradrs.dot(w, hidden, b) for w, b in second]
        if layout == "two_heads":
            outs += [gradrs.dot(w, hidden, b).tanh() for w, b in other]
        return gradrs.sum([o * o for o in outs])

    compiled = gradrs.compile(fn)
    X = np.random.default_rng(7).normal(size=(141, n_x))  # two whole 64-row chunks and a part
    assert_batch_sums_its_samples(compiled, fn, X, params, threads=2)


def test_batch_sums_when_asked():
    w = Value(2.0)
    fn = gradrs.compile(lambda x: w * x)
    X = np.arange(4.0)
    total = fn.batch(X, reduce="sum")
    assert total.data == 12.0
    total.backward()
    assert w.grad == 6.0
    assert fn.batch(X, reduce="mean").data == 3.0
    with pytest.raises(ValueError, match="reduce must be 'mean' or 'sum'"):
        fn.batch(X, reduce="max")


def test_keyword_arguments_bind_as_the_function_binds_them():
    w = Value(2.0)

    def f(x, y=3.0, *, scale=1.0):
        return (w * x + y) * scale

    fn = gradrs.compile(f)
    assert (fn(1.0).data, fn(1.0, y=4.0).data, fn(1.0, scale=2.0).data) == (5.0, 6.0, 10.0)
    assert fn(x=5.0, y=1.0).data == 11.0  # bound as fn(5.0, 1.0): the program of fn(1.0, y=4.0)
    assert len(fn._traces) == 3
    out = fn(1.0, y=4.0, scale=3.0)
    out.backward()
    assert (out.data, w.grad) == (18.0, 3.0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'z'"):
        fn(1.0, z=2.0)


def test_inside_detect_anomaly_a_compiled_function_names_the_op():
    w = Value(-1.0)
    fn = gradrs.compile(lambda x: (w * x).log())
    assert fn(1.0).data != fn(1.0).data  # nan, silently, outside detect_anomaly
    with gradrs.detect_anomaly():
        assert gradrs.is_anomaly_enabled()
        for call in (lambda: fn(1.0), lambda: fn.batch(np.array([1.0])), lambda: fn.map(np.array([1.0]))):
            with pytest.raises(gradrs.AnomalyError, match=r"op 'log' produced nan .* \[-1.0\]"):
                call()
    assert not gradrs.is_anomaly_enabled()


def test_a_new_structure_traces_again():
    calls = []

    def fn(xs):
        calls.append(len(xs))
        return gradrs.sum(xs)

    compiled = gradrs.compile(fn)
    assert compiled([1.0, 2.0]).data == 3.0
    assert compiled([5.0, 6.0]).data == 11.0
    assert compiled([1.0, 2.0, 3.0]).data == 6.0
    assert calls == [2, 3]  # traced once per structure


def test_parameters_are_reread_and_kept_alive():
    gc.collect()
    baseline = gradrs.live_nodes()
    w = Value(2.0)
    compiled = gradrs.compile(lambda x: w * x)
    assert compiled(3.0).data == 6.0
    w.data = 5.0
    out = compiled(3.0)
    assert out.data == 15.0
    out.backward()
    assert w.grad == 3.0
    (program,) = [trace.program for trace in compiled._traces.values()]
    assert [p.data for p in program.parameters()] == [5.0]
    del compiled, program, out
    gc.collect()
    assert gradrs.live_nodes() == baseline + 1  # just w, which this test still holds


def test_no_grad_replay_records_nothing():
    gc.collect()
    w = Value(2.0)
    compiled = gradrs.compile(lambda x: (w * x).tanh())
    compiled(0.5)  # trace outside no_grad
    baseline = gradrs.live_nodes()
    with gradrs.no_grad():
        out = compiled(0.5)
        mean = compiled.batch(np.array([0.5, -1.0, 2.0]))
    assert out._prev == set() and out._op == ""
    assert mean._prev == set() and mean._op == ""
    assert mean.data == compiled.batch(np.array([0.5, -1.0, 2.0])).data  # same sums, bit for bit
    assert gradrs.live_nodes() == baseline + 2  # the two results, nothing under them


def test_a_first_call_under_no_grad_still_traces_a_graph():
    w = Value(2.0)
    compiled = gradrs.compile(lambda x: w * x)
    with gradrs.no_grad():
        assert compiled(1.0).data == 2.0
    out = compiled(3.0)  # the same cached program, now with gradients
    assert out.data == 6.0
    out.backward()
    assert w.grad == 3.0


def test_a_compiled_call_inside_a_trace_is_inlined():
    w = Value(2.0)
    inner = gradrs.compile(lambda x: w * x)
    outer = gradrs.compile(lambda x: inner(x) + x)
    assert outer(1.0).data == 3.0
    out = outer(3.0)  # a replay: the inner call was recorded op by op, not as a stale value
    assert out.data == 9.0
    out.backward()
    assert w.grad == 3.0
    # batch inside a trace too: the outer program reads w at each replay
    loss = gradrs.compile(lambda c: inner.batch(np.array([1.0, 2.0, 3.0])) * c)
    assert loss(1.0).data == 4.0
    w.data = 3.0
    w.grad = 0.0
    out = loss(2.0)
    assert out.data == 12.0
    out.backward()
    assert rel_close(w.grad, 4.0)  # d/dw of c * mean(w * x) = c * mean(x)


def test_a_compiled_result_made_outside_is_read_as_it_is():
    w = Value(2.0)
    made_before = gradrs.compile(lambda x: w * x)(5.0)  # a compiled call's result, over w
    compiled = gradrs.compile(lambda x: made_before * x)
    assert compiled(1.0).data == 10.0
    out = compiled(3.0)
    assert out.data == 30.0
    out.backward()
    assert w.grad == 15.0  # through made_before's stored partial, d(w*5)/dw = 5


def test_direct_program_refuses_a_compiled_call_on_its_inputs():
    w = Value(2.0)
    inner = gradrs.compile(lambda x: w * x)
    x = Value(1.0)
    with pytest.raises(ValueError, match="compiled call on the recorded inputs"):
        gradrs._core._Program([inner(x) + 1], [x])


def test_static_arguments_are_kept_alive_so_their_ids_are_never_reused():
    class Model:
        __slots__ = ("w", "__weakref__")

    compiled = gradrs.compile(lambda x, m: m.w * x)
    first = Model()
    first.w = Value(1.0)
    assert compiled(2.0, first).data == 2.0
    alive = weakref.ref(first)
    del first
    gc.collect()
    # The cache is keyed by the object's id, so it must hold the object: were it freed, CPython
    # could give its address to a new Model, and that call would replay the old model's program.
    assert alive() is not None
    second = Model()
    second.w = Value(10.0)
    assert compiled(2.0, second).data == 20.0
    # strings and None are keyed by value: an equal string does not trace again
    calls = []

    def act(x, kind):
        calls.append(kind)
        return x.relu() if kind == "relu" else x.tanh()

    f = gradrs.compile(act)
    assert f(-1.0, "relu").data == 0.0
    assert f(-1.0, "".join(["re", "lu"])).data == 0.0
    assert f(-1.0, "tanh").data == pytest.approx(np.tanh(-1.0))
    assert calls == ["relu", "tanh"]


def test_dicts_are_structure_not_static_objects():
    w = Value(3.0)
    fn = gradrs.compile(lambda batch: w * batch["x"] + batch["y"])
    for k in range(50):  # fresh dicts of the same keys: one program, not fifty
        assert fn({"x": float(k), "y": 1.0}).data == 3.0 * k + 1.0
    assert len(fn._traces) == 1
    out = fn({"y": 2.0, "x": 1.0})  # other key order: another structure, traced again
    assert out.data == 5.0 and len(fn._traces) == 2
    out.backward()
    assert w.grad == 1.0


def test_values_passed_in_receive_gradients_and_bad_returns_are_refused():
    compiled = gradrs.compile(lambda a, b: a * b + a)
    a, b = Value(3.0), Value(4.0)
    out = compiled(a, b)
    out.backward()
    assert (a.grad, b.grad) == (5.0, 3.0)
    with pytest.raises(TypeError, match="must return a Value"):
        gradrs.compile(lambda x: 1.0)(2.0)
    with pytest.raises(ValueError, match="same number of samples"):
        compiled.batch(np.zeros((3, 1)), np.zeros((4, 1)))


def test_compiled_batch_is_faster_than_eager():
    random.seed(0)
    model = MLP(2, [16, 16, 1])
    X = np.random.default_rng(1).normal(size=(100, 2))
    y = np.sign(np.random.default_rng(2).normal(size=100))

    def sample_loss(x, yi):
        return (1 + -yi * model(x)).relu()

    fast = gradrs.compile(sample_loss)
    fast.batch(X, y)

    def best(fn, n=7):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    eager = best(
        lambda: gradrs.sum(sample_loss(x, yi) for x, yi in zip(gradrs.leaves(X), y, strict=True)).backward()
    )
    compiled = best(lambda: fast.batch(X, y).backward())
    print(f"\ncompiled batch step {eager / compiled:.1f}x faster than eager")
    assert eager / compiled >= 5  # typically 15-19x on two cores


def test_batches_let_other_python_threads_run():
    import threading

    random.seed(2)
    model = MLP(3, [8, 8, 1])
    fn = gradrs.compile(lambda x: model(x))
    X = np.random.default_rng(0).normal(size=(400_000, 3))
    fn.batch(X[:10])  # trace first
    window = {}

    def replay():
        window["start"] = time.perf_counter()
        fn.batch(X, threads=1)
        window["end"] = time.perf_counter()

    worker = threading.Thread(target=replay)
    ticks = []
    worker.start()
    while worker.is_alive():
        ticks.append(time.perf_counter())
    worker.join()
    start, end = window["start"], window["end"]
    assert end - start > 0.02, "the batch should take long enough to tell"
    # Had the batch held the GIL, this thread would have stalled for most of its duration: one
    # long gap between ticks. Released, this thread keeps ticking throughout.
    around = [start] + [t for t in ticks if start < t < end] + [end]
    longest_gap = max(b - a for a, b in zip(around, around[1:], strict=False))
    assert longest_gap < 0.5 * (end - start), (longest_gap, end - start)
