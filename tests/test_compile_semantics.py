"""gradrs.compile never returns a number eager mode would not: it replays, or it refuses.

The class under test: any Python decision a traced function takes on a number. Each test runs
the compiled function and the plain function on the same arguments and requires the same
result, or a ``gradrs.TraceError`` that names the fix.
"""

from __future__ import annotations

import copy
import gc
import pickle
import threading
import warnings
from fractions import Fraction

import numpy as np
import pytest

import gradrs
from gradrs import TraceError, Value


def eager_number(fn, *args, **kwargs) -> float:
    out = fn(*args, **kwargs)
    return out.data if isinstance(out, Value) else float(out)


def assert_equal_or_refused(fn, calls, **options) -> int:
    """Compiles ``fn`` and checks each call against ``fn`` itself; returns how many were refused."""
    compiled = gradrs.compile(fn, **options)
    refused = 0
    for args in calls:
        try:
            got = compiled(*args).data
        except TraceError:
            refused += 1
            continue
        assert got == eager_number(fn, *args), (args, got)
    return refused


# Functions that decide on a number in Python; the calls give both branches.
BRANCHING = [
    (lambda x, k: x * 2 if k == 1 else x * 3, [(Value(1.0), 1), (Value(1.0), 2), (Value(2.0), 1)]),
    (lambda x, k: x * k if k > 0 else -x, [(Value(1.0), 3), (Value(1.0), -3), (Value(1.0), 0)]),
    (lambda x, flag: x.relu() if flag else x.tanh(), [(Value(-1.0), True), (Value(-1.0), False)]),
    (lambda x, n: gradrs.sum([x] * n), [(Value(2.0), 1), (Value(2.0), 3), (Value(2.0), np.int64(5))]),
    (lambda x, t: x * 2 if t == 0.5 else x * 3, [(Value(1.0), 0.5), (Value(1.0), 0.25)]),
    (lambda x, t: x * 2 if t else x * 3, [(Value(1.0), 0.0), (Value(1.0), 1.0)]),
    (lambda x: x * 2 if x.data > 0 else x * -3, [(1.0,), (-1.0,)]),
    (lambda x, y: x * 2 if x == y else x * 3, [(1.0, 1.0), (1.0, 2.0)]),
    (lambda x: x if x < 0 else -x, [(1.0,), (-1.0,)]),
    (lambda x: x * float(x), [(2.0,), (3.0,)]),
    (lambda x, q: x * float(q), [(2.0, Fraction(1, 3)), (2.0, Fraction(2, 3))]),
    (
        lambda x, s: x.relu() if s == "relu" else x.tanh(),
        [(Value(-1.0), "relu"), (Value(-1.0), "".join(["ta", "nh"]))],
    ),
]


@pytest.mark.parametrize("fn,calls", BRANCHING, ids=[f"branch{i}" for i in range(len(BRANCHING))])
def test_python_decisions_replay_equal_to_eager_or_are_refused(fn, calls):
    assert_equal_or_refused(fn, calls)


def test_the_issue_example_takes_the_branch_eager_takes():
    f = gradrs.compile(lambda x, k: x * 2 if k == 1 else x * 3)
    assert f(Value(1.0), 1).data == 2.0
    assert f(Value(1.0), 2).data == 3.0
    assert f(Value(1.0), 1).data == 2.0  # the cached trace for k == 1


def test_ints_and_bools_are_static_and_floats_are_traced():
    f = gradrs.compile(lambda x, k: x * k)
    assert f(2.0, 3).data == 6.0 and f(2.0, 4).data == 8.0
    assert len(f._traces) == 2  # one trace per int value
    assert f(2.0, 3.0).data == 6.0 and f(2.0, 5.0).data == 10.0
    assert len(f._traces) == 3  # floats are inputs: one trace for every float k


REFUSED_READS = {
    "data": lambda x: x * x.data,
    "set data": lambda x: setattr(x, "data", 1.0) or x,
    "grad": lambda x: x * x.grad,
    "set grad": lambda x: setattr(x, "grad", 1.0) or x,
    "float": lambda x: x * float(x),
    "bool": lambda x: x if x else -x,
    "equals a number": lambda x: x if x == 1.0 else -x,
    "not equal": lambda x: x if x != 1.0 else -x,
    "equals another Value": lambda x: x if x == x * 1 else -x,
    "less than": lambda x: x if x < 1.0 else -x,
    "greater or equal": lambda x: x if x >= x * 2 else -x,
    "backward": lambda x: (x * x).backward() or x,
    "_backward": lambda x: (x * x)._backward() or x,
    "copy": lambda x: copy.copy(x),
    "deepcopy": lambda x: copy.deepcopy(x),
    "pickle": lambda x: pickle.loads(pickle.dumps(x)),
    "data of a parameter": lambda x: x * PARAM.data,
    "bulk read": lambda x: x * gradrs.data_of([x])[0],
}
PARAM = Value(3.0)


@pytest.mark.parametrize("name", list(REFUSED_READS))
def test_concrete_reads_while_tracing_raise_trace_error(name):
    compiled = gradrs.compile(REFUSED_READS[name])
    with pytest.raises(TraceError, match="traced by gradrs.compile") as info:
        compiled(2.0)
    assert isinstance(info.value, TypeError)  # code that catches TypeError still does
    # the refusal ends with the trace: this thread reads numbers again, nothing was cached
    assert Value(2.0).data == 2.0 and PARAM.data == 3.0
    assert len(compiled._traces) == 0


def test_identity_and_containers_still_work_while_tracing():
    def fn(x, y):
        seen = {x: 1}
        assert x == x and x is not y and x in [x] and seen[x] == 1
        return x * y

    compiled = gradrs.compile(fn)
    assert compiled(2.0, 3.0).data == 6.0
    assert compiled(4.0, 3.0).data == 12.0


def test_printing_while_tracing_shows_a_placeholder_not_a_stale_number(capsys):
    compiled = gradrs.compile(lambda x: print(x) or x * 2)
    compiled(2.0)
    assert capsys.readouterr().out.strip() == "Value(<traced>)"
    assert repr(Value(2.0)) == "Value(data=2.0, grad=0.0)"


def test_no_grad_inside_a_traced_function_is_refused():
    def fn(x):
        with gradrs.no_grad():
            frozen = x * 2
        return x + frozen

    with pytest.raises(TraceError, match="no_grad"):
        gradrs.compile(fn)(1.0)
    assert gradrs.is_grad_enabled()
    assert fn(Value(1.0)).data == 3.0  # eager mode is unchanged
    # the whole compiled call under no_grad is fine
    g = gradrs.compile(lambda x: x * 2)
    with gradrs.no_grad():
        assert g(1.0).data == 2.0


def test_other_threads_read_numbers_while_one_traces():
    value = Value(5.0)
    seen = []

    def fn(x):
        reader = threading.Thread(target=lambda: seen.append(value.data))
        reader.start()
        reader.join()
        return x * 2

    assert gradrs.compile(fn)(1.0).data == 2.0
    assert seen == [5.0]


def test_static_argnames_and_argnums_are_keyed_by_value():
    calls = []

    def fn(x, scale, mode="relu"):
        calls.append((scale, mode))
        y = x * scale
        return y.relu() if mode == "relu" else y.tanh()

    f = gradrs.compile(fn, static_argnums=1, static_argnames=["mode"])
    assert f(-1.0, 2.0).data == 0.0
    assert f(-1.0, 2.0, mode="".join(["re", "lu"])).data == 0.0  # equal string: same trace
    assert f(-1.0, 2.0, mode="tanh").data == pytest.approx(np.tanh(-2.0))
    assert f(-1.0, 3.0, mode="tanh").data == pytest.approx(np.tanh(-3.0))  # new static value
    assert f(-2.0, 3.0, mode="tanh").data == pytest.approx(np.tanh(-6.0))  # replay
    assert len(calls) == 4

    @gradrs.compile(static_argnames="table")
    def lookup(x, table):
        return x * dict(table)["w"]

    assert lookup(2.0, (("w", 3.0),)).data == 6.0
    with pytest.raises(TypeError, match="static argument 'table' must be hashable"):
        lookup(2.0, [("w", 3.0)])
    with pytest.raises(ValueError, match="static_argnums 5 is out of range"):
        gradrs.compile(fn, static_argnums=5)
    with pytest.raises(ValueError, match="not parameters"):
        gradrs.compile(fn, static_argnames="nope")


def test_one_value_passed_twice_is_one_input_as_in_eager_mode():
    f = gradrs.compile(lambda x, y: x * 2 if x is y else x * y)
    v, w = Value(3.0), Value(4.0)
    assert f(v, v).data == 6.0
    assert f(v, w).data == 12.0
    out = f(w, w)  # the aliased trace, replayed
    assert out.data == 8.0
    out.backward()
    assert w.grad == 2.0
    out = f(v, w) * 1
    out.backward()
    assert (v.grad, w.grad) == (4.0, 2.0 + 3.0)


def test_the_cache_is_bounded_and_keyed_by_value_for_numbers():
    f = gradrs.compile(lambda x, q: x * float(q), cache_size=3, retrace_warning=100)
    for _ in range(5):
        f(2.0, Fraction(1, 3))  # fresh Fractions of one value share a trace
    assert len(f._traces) == 1 and f.trace_count == 1
    for k in range(10):
        assert f(2.0, k).data == 2.0 * k
    assert len(f._traces) == 3  # only the most recently used
    assert f(2.0, 0).data == 0.0  # traced again after eviction, still right


def test_fresh_objects_do_not_grow_the_cache_without_bound():
    class Config:
        scale = 2.0

    f = gradrs.compile(lambda x, cfg: x * cfg.scale, cache_size=4, retrace_warning=10**9)
    gc.collect()
    before = gradrs.live_nodes()
    for _ in range(200):
        assert f(3.0, Config()).data == 6.0
    assert len(f._traces) <= 4
    gc.collect()
    assert gradrs.live_nodes() - before < 50  # only the kept traces' constants


def test_a_function_that_keeps_retracing_warns_once():
    f = gradrs.compile(lambda x, k: x * k, retrace_warning=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for k in range(10):
            f(1.0, k)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "has been traced 4 times" in messages[0]
    with pytest.raises(ValueError, match="cache_size"):
        gradrs.compile(lambda x: x, cache_size=0)
