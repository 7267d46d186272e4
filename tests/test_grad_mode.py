"""no_grad: values without graphs, per thread."""

from __future__ import annotations

import threading

import pytest

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


def test_no_grad_on_a_generator_covers_its_body_across_yields():
    seen = []

    @no_grad()
    def doubled(values):
        """Doubles each value."""
        for v in values:
            seen.append(gradrs.is_grad_enabled())
            received = yield v * 2
            seen.append(gradrs.is_grad_enabled())
            if received is not None:
                yield received * 3
        return "done"

    assert doubled.__doc__ == "Doubles each value."
    xs = [Value(1.0), Value(2.0)]
    outs = []
    for out in doubled(xs):
        assert gradrs.is_grad_enabled()  # the caller's own code, between yields, records
        assert (out * 1.0)._prev != set()
        outs.append(out)
    assert [o.data for o in outs] == [2.0, 4.0] and all(o._prev == set() for o in outs)
    assert seen == [False] * 4

    gen = doubled(xs)
    assert next(gen).data == 2.0
    assert gen.send(Value(5.0)).data == 15.0  # send() reaches the body, still without grad
    assert next(gen).data == 4.0
    with pytest.raises(StopIteration) as stop:
        next(gen)
    assert stop.value.value == "done"
    assert gradrs.is_grad_enabled()


def test_no_grad_generator_throw_and_close_run_inside_the_mode():
    events = []

    @no_grad()
    def guarded():
        try:
            yield 1
        except KeyError:
            events.append(("caught", gradrs.is_grad_enabled()))
            yield 2
        finally:
            events.append(("finally", gradrs.is_grad_enabled()))

    gen = guarded()
    assert next(gen) == 1
    assert gen.throw(KeyError) == 2
    gen.close()
    assert events == [("caught", False), ("finally", False)]
    assert gradrs.is_grad_enabled()

    @gradrs.enable_grad()
    def recording():
        yield gradrs.is_grad_enabled()

    with no_grad():
        assert list(recording()) == [True]
        assert not gradrs.is_grad_enabled()
