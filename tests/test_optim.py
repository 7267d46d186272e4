"""Optimisers and ParamGroup's fused steps follow torch.optim's formulas; schedulers the demo's."""

from __future__ import annotations

import copy
import pickle
import random
import warnings

import numpy as np
import pytest

from gradrs import ParamGroup, Value, nn, optim


def run(opt_factory, grads_per_step):
    ps = [Value(1.0), Value(-2.0)]
    opt = opt_factory(ps)
    for g in grads_per_step:
        opt.zero_grad()
        for p, gi in zip(ps, g, strict=True):
            p.grad = gi
        opt.step()
    return np.array([p.data for p in ps])


GRADS = [np.array([0.5, -1.0]), np.array([0.25, 0.5]), np.array([-1.0, 2.0])]


def test_plain_sgd_is_p_minus_lr_g():
    out = run(lambda ps: optim.SGD(ps, lr=0.1), GRADS)
    np.testing.assert_allclose(out, np.array([1.0, -2.0]) - 0.1 * sum(GRADS), rtol=1e-15)


def test_sgd_momentum_nesterov_weight_decay():
    lr, mu, wd = 0.1, 0.9, 0.01
    p, b = np.array([1.0, -2.0]), np.zeros(2)
    for g in GRADS:
        g = g + wd * p
        b = mu * b + g
        p = p - lr * (g + mu * b)
    out = run(lambda ps: optim.SGD(ps, lr=lr, momentum=mu, weight_decay=wd, nesterov=True), GRADS)
    np.testing.assert_allclose(out, p, rtol=1e-14)


@pytest.mark.parametrize("cls,decoupled", [(optim.Adam, False), (optim.AdamW, True)])
def test_adam_and_adamw(cls, decoupled):
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.999, 1e-8, 0.1
    p, m, v = np.array([1.0, -2.0]), np.zeros(2), np.zeros(2)
    for t, g in enumerate(GRADS, start=1):
        if decoupled:
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
        m = m + (1 - b1) * (g - m)
        v = v * b2 + (1 - b2) * g * g
        p = p - lr / (1 - b1**t) * (m / (np.sqrt(v) / np.sqrt(1 - b2**t) + eps))
    out = run(lambda ps: cls(ps, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd), GRADS)
    np.testing.assert_allclose(out, p, rtol=1e-14)


def test_against_torch_when_installed():
    torch = pytest.importorskip("torch")
    ps = [Value(1.0), Value(-2.0)]
    tp = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    ours = optim.AdamW(ps, lr=0.01, weight_decay=0.1)
    theirs = torch.optim.AdamW([tp], lr=0.01, weight_decay=0.1)
    for g in GRADS:
        for p, gi in zip(ps, g, strict=True):
            p.grad = gi
        tp.grad = torch.tensor(g)
        ours.step()
        theirs.step()
    np.testing.assert_allclose([p.data for p in ps], tp.detach().numpy(), rtol=1e-13)


def test_linear_lr_reproduces_the_demo_schedule():
    opt = optim.SGD([Value(0.0)], lr=0.5)
    sched = optim.LinearLR(opt, 1.0, 0.1, 100)
    seen = []
    for _ in range(100):
        seen.append(opt.lr)
        sched.step()
    assert seen == pytest.approx([1.0 - 0.9 * k / 100 for k in range(100)], rel=1e-15)


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="learning rate"):
        optim.SGD([Value(1.0)], lr=-1)
    with pytest.raises(ValueError, match="betas"):
        optim.Adam([Value(1.0)], betas=(1.0, 0.9))


CHECKPOINTS = [
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
    lambda ps: optim.Adam(ps, lr=0.05),
    lambda ps: optim.AdamW(ps, lr=0.05, weight_decay=0.1),
]


def train(model, opt, steps, x):
    for _ in range(steps):
        loss = (model(x) - 1.0) ** 2
        opt.zero_grad()
        loss.backward()
        opt.step()


def state_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        if isinstance(sa[key], np.ndarray):
            np.testing.assert_array_equal(sa[key], sb[key])
        else:
            assert sa[key] == sb[key], key


@pytest.mark.parametrize(
    "clone", [copy.deepcopy, lambda o: pickle.loads(pickle.dumps(o))], ids=["deepcopy", "pickle"]
)
@pytest.mark.parametrize("make", CHECKPOINTS, ids=["SGD", "Adam", "AdamW"])
def test_a_checkpoint_of_model_and_optimiser_trains_on_as_the_original(make, clone):
    random.seed(0)
    model = nn.MLP(2, [4, 1])
    opt = make(model.parameters())
    x = [0.5, -1.0]
    train(model, opt, 3, x)
    twin_model, twin_opt = clone((model, opt))
    state_equal(opt, twin_opt)
    assert any(np.any(v != 0) for v in twin_opt.state_dict().values() if isinstance(v, np.ndarray))
    # The copy's optimiser updates the copy's model, and only it.
    assert all(p is q for p, q in zip(twin_opt.params, twin_model.parameters(), strict=True))
    train(model, opt, 4, x)
    frozen = twin_model.parameters_data()
    assert not np.array_equal(frozen, model.parameters_data())
    train(twin_model, twin_opt, 4, x)
    np.testing.assert_array_equal(twin_model.parameters_data(), model.parameters_data())
    state_equal(opt, twin_opt)


def test_an_optimiser_copied_alone_updates_copies_of_the_parameters():
    ps = [Value(1.0), Value(2.0)]
    opt = optim.SGD(ps, lr=0.5)
    twin = copy.deepcopy(opt)
    for p in twin.params:
        p.grad = 1.0
    twin.step()
    assert [p.data for p in twin.params] == [0.5, 1.5] and [p.data for p in ps] == [1.0, 2.0]


def test_a_parameter_given_twice_warns_as_torch_does():
    w = Value(1.0)
    with pytest.warns(UserWarning, match="optimizer contains a parameter group with duplicate parameters"):
        optim.SGD([w, Value(2.0), w])
    same_node = ParamGroup([w]).values()[0]  # another handle to w's node
    with pytest.warns(UserWarning, match="duplicate parameters"):
        optim.Adam([w, same_node])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optim.AdamW([w, Value(1.0)])  # equal data, different parameters: no warning


def test_sgd_step_matches_torch_formula():
    ps = [Value(1.0), Value(-2.0)]
    group = ParamGroup(ps)
    velocity = np.zeros(2)
    grads = np.array([0.5, -1.0])
    expected, buf = np.array([1.0, -2.0]), np.zeros(2)
    for _ in range(3):
        group.set_grad(grads)
        group.sgd_step(0.1, 0.9, 0.01, velocity)
        g = grads + 0.01 * expected
        buf = 0.9 * buf + g
        expected = expected - 0.1 * buf
    np.testing.assert_allclose(group.data(), expected, rtol=1e-15)


def test_adam_step_matches_torch_formula():
    ps = [Value(1.0), Value(-2.0)]
    group = ParamGroup(ps)
    m, v = np.zeros(2), np.zeros(2)
    p, em, ev = np.array([1.0, -2.0]), np.zeros(2), np.zeros(2)
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.999, 1e-8, 0.1
    for t in range(1, 4):
        g = np.array([0.3, -0.7]) * t
        group.set_grad(g)
        group.adam_step(t, lr, b1, b2, eps, wd, True, m, v)
        p = p * (1 - lr * wd)
        em = em + (1 - b1) * (g - em)
        ev = ev * b2 + (1 - b2) * g * g
        denom = np.sqrt(ev) / np.sqrt(1 - b2**t) + eps
        p = p - lr / (1 - b1**t) * (em / denom)
    np.testing.assert_allclose(group.data(), p, rtol=1e-14)
    np.testing.assert_allclose(m, em, rtol=1e-14)


def test_steps_over_thousands_of_parameters_match_the_formula_for_each():
    # Several of the engine's blocks, with a last one partly filled: every parameter must get its
    # own gradient and its own moments.
    n = 2_000
    rng = np.random.default_rng(5)
    start, grads = rng.normal(size=n), [rng.normal(size=n) for _ in range(3)]
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.999, 1e-8, 0.01
    ps = [Value(x) for x in start]
    adam = optim.Adam(ps, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    qs = [Value(x) for x in start]
    sgd = optim.SGD(qs, lr=lr, momentum=0.9)
    p, m, v, q, buf = start.copy(), np.zeros(n), np.zeros(n), start.copy(), np.zeros(n)
    for t, g in enumerate(grads, start=1):
        ParamGroup(ps).set_grad(g)
        ParamGroup(qs).set_grad(g)
        adam.step()
        sgd.step()
        gw = g + wd * p
        m = m + (1 - b1) * (gw - m)
        v = v * b2 + (1 - b2) * gw * gw
        p = p - lr / (1 - b1**t) * (m / (np.sqrt(v) / np.sqrt(1 - b2**t) + eps))
        buf = g if t == 1 else 0.9 * buf + g
        q = q - lr * buf
    np.testing.assert_allclose([x.data for x in ps], p, rtol=1e-14)
    np.testing.assert_allclose([x.data for x in qs], q, rtol=1e-14)


def test_a_parameter_given_twice_is_stepped_once():
    w = Value(1.0)
    with pytest.warns(UserWarning, match="duplicate parameters"):
        sgd = optim.SGD([w, *[Value(0.0) for _ in range(1_000)], w], lr=0.5)
    w.grad = 1.0
    sgd.step()
    assert w.data == 0.5
