"""Regenerates the PyTorch golden cases the tests compare against, both in ``tests/data``:

- ``pytorch_cases.json``: the value and leaf gradients of each short program in
  ``golden_cases.py`` (read by ``tests/test_golden.py``);
- ``pytorch_stable_cases.json``: PyTorch's float64 answers for the numerically delicate ops
  (softplus, logsumexp, the cross-entropies, division) at extreme inputs.

Run it where torch and mpmath are installed (not needed by the test suite, which only reads the
JSON), from anywhere::

    python tests/data/make_golden.py            # rewrite both files
    python tests/data/make_golden.py --check    # rewrite nothing; compare with the committed files

``--check`` recomputes every case and compares it with the committed JSON case by case: the
same names in the same order, and each value and gradient equal within 1e-15 relative, with the
same nan and inf. Another PyTorch version may round a case's last bits differently; then keep
the committed JSON (the tests' tolerance is far wider) rather than rewrite it.

``pytorch_cases.json``: each case's ``code`` is a program from ``golden_cases.py``; ``out`` is
PyTorch's value of ``out`` and ``grads`` maps each name in ``leaves`` to its gradient (0.0 for a
leaf that ``out`` does not depend on, where PyTorch leaves ``.grad`` as None).

``pytorch_stable_cases.json``: each case names a function (``fn``), its leaf inputs (``inputs``)
and any constants; the test (``tests/test_ops_stable.py``) builds the same function over gradrs
Values, eagerly and under ``gradrs.compile``. ``out`` and ``grads`` are PyTorch's value and the
gradient of each input. Where PyTorch's own formula loses precision (the cross-entropies near 0,
where it subtracts nearly equal numbers), ``exact_out`` and ``exact_grads`` hold the true values,
computed by mpmath with 60 digits and rounded once: gradrs must then equal PyTorch or be at least
as close to the true value as PyTorch is.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import mpmath
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from golden_cases import CASES  # noqa: E402  (a sibling module, not an installed package)

mpmath.mp.dps = 60
INF = math.inf
NAN = math.nan


def _leaves(values: list[float]) -> list[torch.Tensor]:
    return [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in values]


def _run(fn, leaves: list[torch.Tensor]) -> tuple[float, list[float]]:
    out = fn(leaves)
    out.backward()
    return out.item(), [(leaf.grad.item() if leaf.grad is not None else 0.0) for leaf in leaves]


def torch_div(xs):
    return xs[0] / xs[1]


def torch_scalar_div(c):
    # gradrs's `c / x` divides the constant by x, as torch.div with a constant tensor does.
    # (PyTorch's own `c / tensor` is `tensor.reciprocal() * c`, which overflows where the
    # quotient does not: 1e-300 / 1e-310 gives inf, not 1e10.)
    return lambda xs: torch.div(torch.tensor(c, dtype=torch.float64), xs[0])


def torch_softplus(xs):
    return F.softplus(xs[0])


def torch_softplus_exact(xs):
    # softplus(x) = -logsigmoid(-x), which PyTorch computes without a threshold.
    return -F.logsigmoid(-xs[0])


def torch_logsumexp(xs):
    return torch.logsumexp(torch.stack(xs), dim=0)


def torch_cross_entropy(rows: int, targets: list[int]):
    def fn(xs):
        logits = torch.stack(xs).reshape(rows, -1)
        return F.cross_entropy(logits, torch.tensor(targets))

    return fn


def torch_bce(targets: list[float]):
    def fn(xs):
        return F.binary_cross_entropy_with_logits(torch.stack(xs), torch.tensor(targets, dtype=torch.float64))

    return fn


def torch_op(kind: str, c: float | None):
    """The ops whose local derivatives were checked for needless overflow and left as they are."""

    def fn(xs):
        if kind == "pow":
            return xs[0] ** xs[1]
        if kind == "pow_scalar":
            return xs[0] ** c
        if kind == "scalar_pow":
            return torch.pow(c, xs[0])
        if kind == "mul":
            return xs[0] * xs[1]
        return getattr(xs[0], kind)()

    return fn


def _mp(x: float):
    return mpmath.mpf(x)


def _softplus_mp(z):
    return mpmath.log1p(mpmath.exp(z))


def _sigmoid_mp(z):
    return 1 / (1 + mpmath.exp(-z))


def exact_bce(logits: list[float], targets: list[float]) -> tuple[float, list[float]]:
    n = len(logits)
    total = mpmath.mpf(0)
    grads = []
    for z, y in zip(logits, targets, strict=True):
        z, y = _mp(z), _mp(y)
        total += y * _softplus_mp(-z) + (1 - y) * _softplus_mp(z)
        # sigmoid(z) - y, as y*(-sigmoid(-z)) + (1-y)*sigmoid(z) to keep its precision
        grads.append(float((-y * _sigmoid_mp(-z) + (1 - y) * _sigmoid_mp(z)) / n))
    return float(total / n), grads


def exact_cross_entropy(logits: list[float], rows: int, targets: list[int]) -> tuple[float, list[float]]:
    k = len(logits) // rows
    total = mpmath.mpf(0)
    grads = []
    for r, t in enumerate(targets):
        row = [_mp(v) for v in logits[r * k : (r + 1) * k]]
        shifted = [v - row[t] for v in row]
        m = max(shifted)
        lse = m + mpmath.log(mpmath.fsum(mpmath.exp(v - m) for v in shifted))
        total += lse
        softmax = [mpmath.exp(v - lse) for v in shifted]
        for i in range(k):
            # softmax_i - [i == t]; for the target, minus the others' share, which keeps precision
            g = -mpmath.fsum(softmax[j] for j in range(k) if j != t) if i == t else softmax[i]
            grads.append(float(g / rows))
    return float(total / rows), grads


def cases() -> list[dict]:
    out = []

    def add(name: str, fn: str, inputs: list[float], torch_fn, exact=None, **extra) -> None:
        value, grads = _run(torch_fn, _leaves(inputs))
        case = {"name": name, "fn": fn, "inputs": inputs, **extra, "out": value, "grads": grads}
        if exact is not None:
            case["exact_out"], case["exact_grads"] = exact
        out.append(case)

    for x in [
        -INF,
        -800.0,
        -40.0,
        -20.5,
        -20.0,
        -1.0,
        -1e-300,
        0.0,
        1e-300,
        0.5,
        19.9,
        20.0,
        20.5,
        30.0,
        37.0,
        800.0,
        INF,
        NAN,
    ]:
        add(f"softplus({x})", "softplus", [x], torch_softplus)
    for x in [-INF, -800.0, -40.0, -20.5, -1.0, 0.0, 0.5, 20.0, 20.5, 30.0, 37.0, 800.0, 1e308, INF, NAN]:
        add(f"softplus_exact({x})", "softplus_exact", [x], torch_softplus_exact)

    for xs in [
        [1000.0, 0.0],
        [0.0, 1000.0],
        [-1000.0, -1000.0],
        [INF, 1.0],
        [1.0, INF],
        [-INF, -INF],
        [-INF, 1.0],
        [INF, -INF],
        [INF, INF],
        [NAN, 1.0],
        [INF, NAN],
        [1.0, 2.0, 3.0],
        [0.5, -3.0, 2.0, 7.25],
        [745.0, -745.0, 0.0],
        [1e308, 1e308],
        [-1e308, 1e308],
        [5.0],
        [0.0, -40.0],
        [30.0, 0.0, -30.0, 29.5],
    ]:
        add(f"logsumexp({xs})", "logsumexp", xs, torch_logsumexp)

    for logits, rows, targets in [
        ([0.0, 0.0], 1, [0]),
        ([1000.0, 0.0], 1, [0]),
        ([1000.0, 0.0], 1, [1]),
        ([0.0, 1000.0], 1, [0]),
        ([30.0, 0.0], 1, [0]),
        ([0.0, 30.0], 1, [0]),
        ([-1000.0, 1000.0, 0.0], 1, [2]),
        ([800.0, -800.0], 1, [1]),
        ([1.0, 2.0, 3.0], 1, [2]),
        ([0.0, 1.0, 2.0, 0.0], 2, [1, 0]),
        ([1000.0, 0.0, -1000.0, 5.0, 1e-3, 700.0], 2, [0, 2]),
        ([-INF, 0.0], 1, [1]),
        ([NAN, 0.0], 1, [1]),
    ]:
        add(
            f"cross_entropy({logits}, {targets})",
            "cross_entropy",
            logits,
            torch_cross_entropy(rows, targets),
            exact_cross_entropy(logits, rows, targets) if all(map(math.isfinite, logits)) else None,
            rows=rows,
            targets=targets,
        )

    for logits, targets in [
        ([0.0, 0.0], [1.0, 0.0]),
        ([1000.0, -1000.0], [0.0, 1.0]),
        ([1000.0, -1000.0], [1.0, 0.0]),
        ([30.0, -30.0], [0.0, 0.0]),
        ([30.0, -30.0], [1.0, 1.0]),
        ([20.5, -20.5], [0.0, 1.0]),
        ([0.3, -1.2, 2.5], [1.0, 0.0, 1.0]),
        ([40.0, -40.0, 700.0, -745.0], [0.25, 0.75, 0.5, 0.1]),
        ([800.0], [0.5]),
        ([INF], [1.0]),
        ([-INF], [0.0]),
        ([NAN], [1.0]),
    ]:
        add(
            f"bce({logits}, {targets})",
            "bce",
            logits,
            torch_bce(targets),
            exact_bce(logits, targets) if all(map(math.isfinite, logits)) else None,
            targets=targets,
        )

    for x, y in [
        (1e-300, 1e-200),
        (-1e-300, 1e-200),
        (1e200, 1e200),
        (1e-200, 1e200),
        (3.0, 1e-200),
        (1e200, 1e-200),
        (1e-310, 1e-160),
        (1.0, 0.0),
        (0.0, 0.0),
        (2.0, 3.0),
    ]:
        add(f"div({x}, {y})", "div", [x, y], torch_div)
    for c, x in [(1e-300, 1e-200), (1e-300, 1e-310), (1.0, 1e-200), (1e200, 1e200), (2.0, 1e200), (2.0, 3.0)]:
        add(f"scalar_div({c}, {x})", "scalar_div", [x], torch_scalar_div(c), const=c)

    # The other ops at points where a naive derivative would overflow or underflow; gradrs
    # already matched PyTorch's formulas in derivatives.yaml there (this keeps it so).
    for kind, inputs, c in [
        ("pow", [1e-200, -1.0], None),
        ("pow", [1e200, 2.0], None),
        ("pow", [1e-160, 2.0], None),
        ("pow", [0.0, 0.0], None),
        ("pow", [0.0, -1.0], None),
        ("pow", [-2.0, 0.5], None),
        ("pow", [1e300, 1e-300], None),
        ("pow", [2.0, 1100.0], None),
        ("pow_scalar", [1e-200], -1.0),
        ("pow_scalar", [1e200], 2.0),
        ("pow_scalar", [1e-310], 0.5),
        ("pow_scalar", [0.0], 0.0),
        ("pow_scalar", [0.0], 0.5),
        ("pow_scalar", [1e-160], 3.0),
        ("scalar_pow", [1100.0], 2.0),
        ("scalar_pow", [-1100.0], 2.0),
        ("scalar_pow", [0.5], 0.0),
        ("scalar_pow", [-1.0], 0.0),
        ("log", [1e-310], None),
        ("log", [0.0], None),
        ("log", [-1.0], None),
        ("log", [1e308], None),
        ("sigmoid", [-745.0], None),
        ("sigmoid", [-700.0], None),
        ("sigmoid", [40.0], None),
        ("sigmoid", [800.0], None),
        ("tanh", [20.0], None),
        ("tanh", [1e-300], None),
        ("tanh", [-400.0], None),
        ("exp", [709.7], None),
        ("exp", [-745.0], None),
        ("exp", [710.0], None),
        ("mul", [1e200, 1e200], None),
        ("mul", [1e-200, 1e-200], None),
    ]:
        exact = None
        if kind == "sigmoid":
            # PyTorch's 1/(1+exp(-x)) is 0 at -745, where the sigmoid is 2.9e-324 (rounds to 5e-324).
            z = _sigmoid_mp(_mp(inputs[0]))
            exact = (float(z), [float(z * (1 - z))])
        add(
            f"{kind}({inputs}{'' if c is None else f', {c}'})",
            kind,
            inputs,
            torch_op(kind, c),
            exact,
            const=c,
        )
    return out


def program_case(name: str, code: str) -> dict:
    """Runs one program with float64 PyTorch tensors as its leaves."""
    scope: dict = {"V": lambda x: torch.tensor(x, dtype=torch.float64, requires_grad=True)}
    exec(code, scope)
    out, leaves = scope["out"], scope["leaves"]
    out.backward()
    grads = {k: (leaf.grad.item() if leaf.grad is not None else 0.0) for k, leaf in leaves.items()}
    return {"name": name, "code": code, "out": out.item(), "grads": grads}


def program_cases() -> dict:
    return {
        "about": (
            f"Forward values and leaf gradients computed by PyTorch {torch.__version__} in float64"
            " by tests/data/make_golden.py from the programs in tests/data/golden_cases.py. Each case's"
            " code uses V(x) to make a scalar leaf, the operators + - * / ** and unary -, and the"
            " methods relu, tanh, exp, log, sigmoid; it binds `out` and a dict `leaves`. Run the code"
            " with your own V, call out.backward(), and compare out and each leaf's grad."
        ),
        "tolerance": {"rel": 1e-9, "abs": 1e-9},
        "cases": [program_case(name, code) for name, code in CASES],
    }


def stable_cases() -> dict:
    return {
        "about": (
            f"Values and leaf gradients from PyTorch {torch.__version__} in float64, written by"
            " tests/data/make_golden.py; exact_* from mpmath at 60 digits where PyTorch loses precision."
        ),
        "tolerance": {"rel": 1e-12},
        "cases": cases(),
    }


def _numbers(value) -> list:
    """The numbers in a case's results, flattened in a fixed order."""
    if isinstance(value, dict):
        return [x for k in sorted(value) for x in _numbers(value[k])]
    if isinstance(value, list):
        return [x for v in value for x in _numbers(v)]
    return [value] if isinstance(value, float | int) and not isinstance(value, bool) else []


def _same(a: float, b: float, rel: float = 1e-15) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= rel * max(abs(a), abs(b))


def _definition(case: dict) -> str:
    # As JSON text, so that a nan input equals itself.
    results = ("out", "grads", "exact_out", "exact_grads")
    return json.dumps({k: v for k, v in case.items() if k not in results}, sort_keys=True)


def differences(new: dict, old: dict) -> list[str]:
    """Where two golden files disagree: names, order, or any number beyond 1e-15 relative."""
    new_names = [c["name"] for c in new["cases"]]
    old_names = [c["name"] for c in old["cases"]]
    if new_names != old_names:
        return [f"case names or order differ: {len(new_names)} new, {len(old_names)} committed"]
    found = []
    for n, o in zip(new["cases"], old["cases"], strict=True):
        if _definition(n) != _definition(o):
            found.append(f"{n['name']}: its definition differs")
            continue
        results = [n.get(k) for k in ("out", "grads", "exact_out", "exact_grads")]
        committed = [o.get(k) for k in ("out", "grads", "exact_out", "exact_grads")]
        a, b = _numbers(results), _numbers(committed)
        if len(a) != len(b) or not all(_same(float(x), float(y)) for x, y in zip(a, b, strict=True)):
            found.append(f"{n['name']}: {results} vs committed {committed}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="compare with the committed files, write nothing"
    )
    args = parser.parse_args()
    torch.set_default_dtype(torch.float64)
    failed = False
    for filename, make in [
        ("pytorch_cases.json", program_cases),
        ("pytorch_stable_cases.json", stable_cases),
    ]:
        data = make()
        target = Path(__file__).with_name(filename)
        if args.check:
            found = differences(data, json.loads(target.read_text()))
            failed |= bool(found)
            print(f"{filename}: {len(data['cases'])} cases, {len(found)} differ")
            for line in found:
                print("  " + line)
        else:
            target.write_text(json.dumps(data, indent=1) + "\n")
            print(f"wrote {len(data['cases'])} cases to {target}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
