"""Karpathy's "building micrograd" lecture, walked through with gradrs.

Run it with `python examples/lecture.py`; every number it prints is the lecture's.
"""

import math
import random

from gradrs import Value, nn


def section(title):
    print(f"\n== {title}")


section("1. the derivative of a function, by nudging its input by h")


def f(x):
    return 3 * x**2 - 4 * x + 5


h = 0.000001
x = 3.0
print(f"f(3) = {f(x)}, slope (f(x+h) - f(x))/h = {(f(x + h) - f(x)) / h:.4f}  (exactly 6*3 - 4 = 14)")

section("2. d = a*b + c, and the slope of d with respect to a, b and c")
a, b, c = 2.0, -3.0, 10.0
d1 = a * b + c
for name in ("a", "b", "c"):
    nudged = {"a": a, "b": b, "c": c}
    nudged[name] += h
    d2 = nudged["a"] * nudged["b"] + nudged["c"]
    print(f"dd/d{name} = {(d2 - d1) / h:.4f}")

section("3. the same graph as Values: L = (a*b + c) * f")
a = Value(2.0, label="a")
b = Value(-3.0, label="b")
c = Value(10.0, label="c")
e = a * b
e.label = "e"
d = e + c
d.label = "d"
f_ = Value(-2.0, label="f")
L = d * f_
L.label = "L"
print(L, "computed from", sorted(v.label for v in d._prev), "with op", repr(d._op))

section("4. backward by hand (the chain rule), step by step with _backward, then automatic")
# The lecture fills in each grad by hand, from L down: dL/dL = 1, dL/dd = f, dL/df = d, and
# through the + node the same gradient flows on to c and e; through * it is scaled by the other input.
L.grad = 1.0
f_.grad = d.data * L.grad
d.grad = f_.data * L.grad
c.grad = 1.0 * d.grad
e.grad = 1.0 * d.grad
a.grad = b.data * e.grad
b.grad = a.data * e.grad
by_hand = {v.label: v.grad for v in (L, f_, d, c, e, a, b)}
# The same with each node's own chain-rule step, as the lecture's o._backward() calls do.
for v in (L, f_, d, c, e, a, b):
    v.grad = 0.0
L.grad = 1.0
for v in (L, d, e):  # each node after every node that uses it
    v._backward()
stepwise = {v.label: v.grad for v in (L, f_, d, c, e, a, b)}
for v in (f_, c, a, b):  # leaves accumulate across backward calls: start them from zero
    v.grad = 0.0
L.backward()
automatic = {v.label: v.grad for v in (L, f_, d, c, e, a, b)}
print("by hand  :", by_hand)
print("_backward:", stepwise)
print("automatic:", automatic)
assert (
    by_hand
    == stepwise
    == automatic
    == {"L": 1.0, "f": 4.0, "d": -2.0, "c": -2.0, "e": -2.0, "a": 6.0, "b": -4.0}
)

section("5. a neuron: o = tanh(x1*w1 + x2*w2 + b)")
x1 = Value(2.0, label="x1")
x2 = Value(0.0, label="x2")
w1 = Value(-3.0, label="w1")
w2 = Value(1.0, label="w2")
b = Value(6.8813735870195432, label="b")
x1w1 = x1 * w1
x2w2 = x2 * w2
x1w1x2w2 = x1w1 + x2w2
n = x1w1x2w2 + b
o = n.tanh()
o.grad = 1.0
o._backward()  # the lecture's calls, one node at a time
n._backward()
b._backward()
x1w1x2w2._backward()
x2w2._backward()
x1w1._backward()
print(f"by _backward steps: w1.grad = {w1.grad:.4f}, x1.grad = {x1.grad:.4f}")
for v in (x1, x2, w1, w2, b):
    v.grad = 0.0
o.backward()
print(f"o = {o.data:.4f}")
print(f"x1.grad = {x1.grad:.4f}, w1.grad = {w1.grad:.4f}, x2.grad = {x2.grad:.4f}, w2.grad = {w2.grad:.4f}")
# by hand: do/dn = 1 - o**2 = 0.5, then each input's local derivative
print(f"by hand: do/dn = 1 - o**2 = {1 - o.data**2:.4f}, so w1.grad = x1 * 0.5 = {x1.data * 0.5:.4f}")

section("6. the accumulation bug: a value used twice gets both contributions")
a = Value(3.0, label="a")
b = a + a
b.backward()
print(f"b = a + a, a.grad = {a.grad} (the lecture's first version gave 1; += makes it 2)")
a = Value(-2.0)
b = Value(3.0)
d = a * b
e = a + b
f2 = d * e
f2.backward()
print(f"f = (a*b) * (a+b): a.grad = {a.grad}, b.grad = {b.grad}")

section("7. tanh rebuilt from exp gives the same numbers")
x1, x2 = Value(2.0), Value(0.0)
w1, w2 = Value(-3.0), Value(1.0)
b = Value(6.8813735870195432)
n = x1 * w1 + x2 * w2 + b
e = (2 * n).exp()
o = (e - 1) / (e + 1)
o.backward()
print(f"o = {o.data:.4f}, w1.grad = {w1.grad:.4f}, x1.grad = {x1.grad:.4f}")

section("8. a small MLP trained on four examples")
random.seed(1337)
model = nn.MLP(3, [4, 4, 1], activation="tanh")
xs = [[2.0, 3.0, -1.0], [3.0, -1.0, 0.5], [0.5, 1.0, 1.0], [1.0, 1.0, -1.0]]
ys = [1.0, -1.0, -1.0, 1.0]
print(f"{len(model.parameters())} parameters: {model}")
for k in range(200):
    ypred = [model(x) for x in xs]
    loss = sum((yout - ygt) ** 2 for ygt, yout in zip(ys, ypred, strict=True))
    model.zero_grad()
    loss.backward()
    for p in model.parameters():
        p.data += -0.05 * p.grad
    if k % 40 == 0 or k == 199:
        print(f"step {k:3d} loss {loss.data:.6f}")
print("predictions:", [round(y.data, 3) for y in ypred], "targets:", ys)
print(f"final loss: {loss.data:.6f}")
assert loss.data < 0.01 and all(math.copysign(1, y.data) == t for y, t in zip(ypred, ys, strict=True))
