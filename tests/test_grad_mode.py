"""no_grad: values without graphs, per thread."""

from __future__ import annotations

import threading

import gradrs
from gradrs import Value, no_grad


def test_no_grad_records_nothing():
    a, b = Value(2.0), Value(3.0)
    before = gradrs.live_nodes()
    with no_grad():
        c = (a * b + 1).tanh()
        d = gradrs.dot([a, b], [b, a])
        assert not gradrs.is_grad_enabled()
    assert gradrs.is_grad_enabled()
    assert c._prev == set() and c._op == "" and d._prev == set()
    assert gradrs.live_nodes() == before + 2  # just the two results
    c.backward()
    assert a.grad == 0.0 and b.grad == 0.0


def test_no_grad_restores_on_exception_and_nests():
    try:
        with no_grad():
            with gradrs.enable_grad():
                assert gradrs.is_grad_enabled()
            raise KeyError
    except KeyError:
        pass
    assert gradrs.is_grad_enabled()


def test_no_grad_as_decorator():
    @no_grad()
    def evaluate(v):
        return v * 2

    assert evaluate(Value(1.0))._prev == set()
    assert gradrs.is_grad_enabled()


def test_grad_mode_is_per_thread():
    seen = {}
    inside = threading.Event()
    done = threading.Event()

    def worker():
        with no_grad():
            inside.set()
            done.wait(5)

    t = threading.Thread(target=worker)
    t.start()
    inside.wait(5)
    seen["main"] = gradrs.is_grad_enabled()
    x = Value(1.0)
    seen["prev"] = len((x * 2)._prev)
    done.set()
    t.join()
    assert seen == {"main": True, "prev": 1}
