"""``gradrs.compile``: record a function's graph once, replay it forward and backward in Rust.

Every training step of a micrograd-style model rebuilds the same graph op by op from Python.
``compile(fn)`` traces ``fn`` once into a flat program; later calls write their inputs into the
program's slots and replay it without Python per node. What comes back are Values whose
``backward()`` fills the parameters' ``.grad`` as eager mode would.

Semantics, as in ``jax.jit``:

- Arguments that are numbers, numpy arrays, Values, or lists/tuples/dicts of them become input
  slots (a dict's keys are part of its structure);
  anything else is static and part of the cache key: ``None``, booleans, strings and bytes by
  value, any other object by identity (the cache keeps it alive, so its id cannot be reused by
  another object). A call whose arguments have another structure (types, lengths, shapes) or
  other static arguments traces again; it never reuses a wrong program. Which Values a static
  object holds is fixed at trace time: update a parameter's ``.data`` in place, or compile again
  after replacing it with a new Value.
- Python control flow that depends on values (``if v.data > 0``) is baked in at trace time: the
  program replays the branch the trace took.
- Every Value ``fn`` closes over that is a leaf (a model's parameters) is read again at every
  replay, so updates to ``.data`` are seen. Interior nodes made before the call are recomputed
  from their leaves. A compiled call's result made before the call and closed over cannot be
  recomputed (its program is not in the graph): its value is read as it is, and gradients still
  flow through it to its parameters.
- Tracing always records a graph, even when the first call is made under ``gradrs.no_grad()``;
  a replay under ``no_grad()`` runs forward only and returns leaves.
- A compiled function called while another is being traced runs eagerly, so the outer trace
  records its ops (``jax.jit`` inlines nested jits the same way).
- Inside ``fn``, a numpy-array argument arrives as (nested) lists of Values of its shape.
- Keyword arguments are accepted as ``fn`` accepts them; which names were passed is part of the
  structure, and a defaulted argument that is left out keeps its default (baked in).
- Inside ``gradrs.detect_anomaly()`` a compiled function runs op by op, so that the first nan
  is reported with the op that made it.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from gradrs._core import Value
from gradrs._core import _Program as Program
from gradrs._core import sum as gradrs_sum
from gradrs.anomaly import is_anomaly_enabled
from gradrs.grad_mode import enable_grad

__all__ = ["Compiled", "compile"]

_NUMBER_TYPES = (int, float, np.integer, np.floating)
# Static arguments compared by value in the cache key; any other static object by identity.
_VALUE_KEYED = (type(None), bool, str, bytes)

# How many traces are running on this thread: a compiled function called inside one runs eagerly.
_tracing = threading.local()


def _tracing_depth() -> int:
    return getattr(_tracing, "depth", 0)


def _flatten(obj: Any, slots: list[Any], key: list[Any], statics: list[Any]) -> None:
    """Appends ``obj``'s input slots (floats or Values) to ``slots``, its structure to ``key``,
    and the static objects keyed by identity to ``statics`` (the trace keeps them alive)."""
    if isinstance(obj, Value):
        key.append("V")
        slots.append(obj)
    elif isinstance(obj, _VALUE_KEYED):
        key.append(("const", type(obj), obj))
    elif isinstance(obj, dict):
        key.append(("dict", tuple(obj)))
        for item in obj.values():
            _flatten(item, slots, key, statics)
    elif not isinstance(obj, (*_NUMBER_TYPES, np.ndarray, list, tuple)):
        key.append(("static", id(obj)))
        statics.append(obj)
    elif isinstance(obj, _NUMBER_TYPES):
        key.append("n")
        slots.append(float(obj))
    elif isinstance(obj, np.ndarray):
        key.append(("array", obj.shape))
        slots.extend(np.asarray(obj, dtype=np.float64).reshape(-1).tolist())
    else:
        key.append((type(obj).__name__, len(obj)))
        for item in obj:
            _flatten(item, slots, key, statics)


def _rebuild(obj: Any, leaves: list[Value], at: list[int]) -> Any:
    """``obj`` with each input slot replaced by the next leaf."""
    if isinstance(obj, Value) or (isinstance(obj, _NUMBER_TYPES) and not isinstance(obj, bool)):
        at[0] += 1
        return leaves[at[0] - 1]
    if isinstance(obj, np.ndarray):
        flat = leaves[at[0] : at[0] + obj.size]
        at[0] += obj.size
        if obj.ndim == 0:
            return flat[0]
        nested: list[Any] = flat
        for size in reversed(obj.shape[1:]):
            nested = [nested[i : i + size] for i in range(0, len(nested), size)]
        return nested
    if isinstance(obj, (list, tuple)):
        return type(obj)(_rebuild(item, leaves, at) for item in obj)
    if isinstance(obj, dict):
        return {name: _rebuild(item, leaves, at) for name, item in obj.items()}
    return obj


def _samples(arrays: tuple[Any, ...]) -> tuple[np.ndarray, ...]:
    """The arguments of ``map``/``batch`` as float64 arrays of as many samples each."""
    if not arrays:
        raise TypeError("map() and batch() need at least one array of samples")
    arrays = tuple(np.asarray(a, dtype=np.float64) for a in arrays)
    if any(a.ndim == 0 for a in arrays):
        raise ValueError("every argument needs a first axis of samples")
    n = arrays[0].shape[0]
    if any(a.shape[0] != n for a in arrays):
        raise ValueError("every array needs the same number of samples along its first axis")
    if n == 0:
        raise ValueError("map() and batch() need at least one sample")
    return arrays


class _Trace:
    """One recorded program, the shape of what ``fn`` returned, and the static arguments whose
    identity is part of its cache key (held so that no other object can take their ids)."""

    def __init__(self, program: Program, single: bool, out_type: type, statics: list[Any]) -> None:
        self.program, self.single, self.out_type, self.statics = program, single, out_type, statics

    def wrap(self, values: list[Value]) -> Any:
        return values[0] if self.single else self.out_type(values)


def _run_op_by_op() -> bool:
    """Whether a compiled function must run eagerly: inside another trace (whose graph must
    record its ops) or inside ``detect_anomaly()`` (whose errors must name an op)."""
    return _tracing_depth() > 0 or is_anomaly_enabled()


class Compiled:
    """A compiled function: call it like ``fn``; ``map`` and ``batch`` run it over many samples."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        try:
            self._signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):  # some builtins have none
            self._signature = None
        self._traces: dict[tuple[Any, ...], _Trace] = {}
        # map/batch: the trace for each tuple of per-sample shapes, so that a call on arrays of a
        # known shape skips flattening its first sample again.
        self._row_traces: dict[tuple[Any, ...], _Trace] = {}

    def _trace(
        self, args: tuple[Any, ...], slots: list[Any], key: tuple[Any, ...], statics: list[Any]
    ) -> _Trace:
        leaves = [Value(s.data if isinstance(s, Value) else s) for s in slots]
        _tracing.depth = _tracing_depth() + 1
        try:
            # A trace made inside no_grad() would record no graph and cache a constant program.
            with enable_grad():
                out = self._invoke(_rebuild(args, leaves, [0]))
        finally:
            _tracing.depth -= 1
        single = isinstance(out, Value)
        outputs = [out] if single else list(out) if isinstance(out, (list, tuple)) else None
        if not outputs or not all(isinstance(v, Value) for v in outputs):
            raise TypeError(
                f"a compiled function must return a Value or a list/tuple of Values, got {type(out).__name__}"
            )
        trace = _Trace(Program(outputs, leaves), single, type(out), statics)
        self._traces[key] = trace
        return trace

    def _prepare(self, args: tuple[Any, ...]) -> tuple[_Trace, list[Any]]:
        slots: list[Any] = []
        key: list[Any] = []
        statics: list[Any] = []
        _flatten(args, slots, key, statics)
        trace = self._traces.get(tuple(key))
        if trace is None:
            trace = self._trace(args, slots, tuple(key), statics)
        return trace, slots

    def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        """One call's arguments as ``(positional, ((name, value), ...))``, keyword arguments
        bound as ``fn`` binds them (a TypeError for arguments ``fn`` does not take)."""
        if kwargs and self._signature is not None:
            bound = self._signature.bind(*args, **kwargs)
            args, kwargs = bound.args, bound.kwargs
        return (tuple(args), tuple(sorted(kwargs.items())))

    def _invoke(self, call: tuple[Any, ...]) -> Any:
        args, keywords = call
        return self.fn(*args, **dict(keywords))

    def _eager(self, call: tuple[Any, ...]) -> Any:
        """``fn`` run op by op on the arguments as a replay would see them (Values passed in kept,
        so that an enclosing trace records the ops on them)."""
        slots: list[Any] = []
        _flatten(call, slots, [], [])
        leaves = [s if isinstance(s, Value) else Value(s) for s in slots]
        return self._invoke(_rebuild(call, leaves, [0]))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        call = self._call(args, kwargs)
        if _run_op_by_op():
            return self._eager(call)
        trace, slots = self._prepare(call)
        data = np.array([s.data if isinstance(s, Value) else s for s in slots], dtype=np.float64)
        attached = [s if isinstance(s, Value) else None for s in slots]
        return trace.wrap(trace.program.run(data, attached))

    def _rows(self, arrays: tuple[Any, ...]) -> tuple[_Trace, np.ndarray]:
        arrays = _samples(arrays)
        n = arrays[0].shape[0]
        shapes = tuple(a.shape[1:] for a in arrays)
        trace = self._row_traces.get(shapes)
        if trace is None:
            trace, _ = self._prepare((tuple(a[0] for a in arrays), ()))
            self._row_traces[shapes] = trace
        if len(arrays) == 1 and arrays[0].ndim == 2 and arrays[0].flags.c_contiguous:
            return trace, arrays[0]
        rows = np.ascontiguousarray(np.concatenate([a.reshape(n, -1) for a in arrays], axis=1))
        return trace, rows

    def map(self, *arrays: Any, threads: int | None = None) -> np.ndarray:
        """``fn`` of every sample (row ``i`` of each array), forward only: an (n, outputs) array,
        or an (n,) array when ``fn`` returns one Value. ``threads`` (default: every core) is for
        testing; the result does not depend on it."""
        if _run_op_by_op():
            return self._eager_map(arrays)
        trace, rows = self._rows(arrays)
        out = trace.program.map(rows, threads)
        return out[:, 0] if trace.single else out

    def _eager_rows(self, arrays: tuple[Any, ...]) -> list[Any]:
        """``fn`` run op by op on every sample (row ``i`` of each array)."""
        arrays = _samples(arrays)
        return [self._eager((tuple(a[i] for a in arrays), ())) for i in range(arrays[0].shape[0])]

    def _eager_map(self, arrays: tuple[Any, ...]) -> np.ndarray:
        """``map`` op by op."""
        outs = self._eager_rows(arrays)
        if isinstance(outs[0], Value):
            return np.array([v.data for v in outs])
        return np.array([[v.data for v in out] for out in outs])

    def batch(self, *arrays: Any, reduce: str = "mean", threads: int | None = None) -> Any:
        """``fn`` over every sample, reduced ('mean' or 'sum'), without a Python loop.

        The result (a Value, or the same kind of list as ``fn`` returns) back-propagates the
        reduced gradient into the parameters. The samples are split across the machine's cores
        with the GIL released; the result is identical to a one-thread run (``threads`` is there
        to test that). Under ``gradrs.no_grad()`` only the forward pass runs and leaves come back.
        """
        if _run_op_by_op():
            return self._eager_batch(arrays, reduce)
        trace, rows = self._rows(arrays)
        return trace.wrap(trace.program.batch(rows, reduce, threads))

    def _eager_batch(self, arrays: tuple[Any, ...], reduce: str) -> Any:
        """``batch`` op by op, for a call inside another function's trace."""
        if reduce not in ("mean", "sum"):
            raise ValueError(f"reduce must be 'mean' or 'sum', not {reduce!r}")
        outs = self._eager_rows(arrays)

        def reduced(column: Any) -> Value:
            total = gradrs_sum(column)
            return total * (1.0 / len(outs)) if reduce == "mean" else total

        if isinstance(outs[0], Value):
            return reduced(outs)
        return type(outs[0])(reduced(column) for column in zip(*outs, strict=True))


def compile(fn: Callable[..., Any]) -> Compiled:  # noqa: A001 - the public name, as torch.compile
    """Records ``fn``'s graph on its first call and replays it natively afterwards.

    See the module docstring for what is traced and when a new trace is made.
    """
    return Compiled(fn)
