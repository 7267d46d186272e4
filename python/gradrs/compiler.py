"""``gradrs.compile``: record a function's graph once, replay it forward and backward in Rust.

Every training step of a micrograd-style model rebuilds the same graph op by op from Python.
``compile(fn)`` traces ``fn`` once into a flat program; later calls write their inputs into the
program's slots and replay it without Python per node. What comes back are Values whose
``backward()`` fills the parameters' ``.grad`` as eager mode would.

Semantics, as in ``jax.jit``:

- Floats, numpy floating scalars, numpy arrays and Values, and lists/tuples/dicts of them, are
  *traced*: they become input slots, and later calls with other numbers replay the same program.
  A dict's keys are part of its structure.
- Everything else is *static*: part of the cache key, passed to ``fn`` as it is. Python ints and
  bools (counts, sizes, indices and flags), numpy integers, ``None``, strings, bytes and other
  numbers (``Fraction``, ``Decimal``, ``complex``) are keyed by value; any other object by
  identity (the cache keeps it alive, so its id cannot be reused by another object). Arguments
  named in ``static_argnums``/``static_argnames`` are static and keyed by value whatever their
  type (they must be hashable). A call whose arguments have another structure (types, lengths,
  shapes), other static values, or another pattern of repeated Values traces again; it never
  reuses a wrong program.
- While tracing, the Values ``fn`` sees stand for numbers that change from call to call, so any
  read of a concrete number is refused with ``gradrs.TraceError`` (a ``TypeError``) naming the
  fix: ``.data``, ``.grad``, ``float()``, ``bool()``, comparisons other than identity,
  ``backward()``, copying or pickling a Value, and ``gradrs.no_grad()``. Branch on static
  arguments instead, or compute with Values (``relu``, ``gradrs.logsumexp`` and friends are
  branch-free), or call ``fn`` uncompiled.
- Every Value ``fn`` closes over that is a leaf (a model's parameters) is read again at every
  replay, so updates to ``.data`` are seen. Interior nodes made before the call are recomputed
  from their leaves. A compiled call's result made before the call and closed over cannot be
  recomputed (its program is not in the graph): its value is read as it is, and gradients still
  flow through it to its parameters. Which Values a static object holds is fixed at trace time:
  update a parameter's ``.data`` in place, or compile again after replacing it.
- Tracing always records a graph, even when the first call is made under ``gradrs.no_grad()``;
  a replay under ``no_grad()`` runs forward only and returns leaves.
- A compiled function called while another is being traced runs eagerly, so the outer trace
  records its ops (``jax.jit`` inlines nested jits the same way).
- Inside ``fn``, a numpy-array argument arrives as (nested) lists of Values of its shape.
- Keyword arguments are accepted as ``fn`` accepts them; which names were passed is part of the
  structure, and a defaulted argument that is left out keeps its default (baked in).
- Inside ``gradrs.detect_anomaly()`` a compiled function runs op by op, so that the first nan
  is reported with the op that made it.
- Each compiled function keeps its ``cache_size`` most recently used traces (default 64) and
  warns once when it has traced ``retrace_warning`` times (default 8), as ``torch.compile`` does
  at its recompile limit: an argument that changes on every call (a fresh object, a new int)
  makes a new trace each time; pass it as a float, or make it part of ``fn``.
"""

from __future__ import annotations

import functools
import inspect
import numbers
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, overload

import numpy as np

from gradrs._core import TraceError, Value, _set_tracing
from gradrs._core import _Program as Program
from gradrs._core import sum as gradrs_sum
from gradrs.anomaly import is_anomaly_enabled
from gradrs.grad_mode import enable_grad

__all__ = ["Compiled", "TraceError", "compile"]

# Traced: they become input slots.
_TRACED_NUMBERS = (float, np.floating)
# Static and keyed by value: immutable things Python code decides on (sizes, flags, names).
_VALUE_KEYED = (type(None), bool, int, str, bytes, np.integer, np.bool_, numbers.Number)

# How many traces are running on this thread: a compiled function called inside one runs eagerly.
_tracing = threading.local()


def _tracing_depth() -> int:
    return getattr(_tracing, "depth", 0)


class _Static:
    """An argument marked static by ``static_argnums``/``static_argnames``: keyed by value."""

    __slots__ = ("name", "value")

    def __init__(self, name: str, value: Any) -> None:
        self.name, self.value = name, value


class _Flat:
    """One call's arguments taken apart: the input slots (floats, or Values each listed once),
    the structure and static values that key the cache, and the static objects keyed by
    identity (a trace keeps them alive so that no other object can take their ids)."""

    def __init__(self) -> None:
        self.slots: list[Any] = []
        self.key: list[Any] = []
        self.statics: list[Any] = []
        # Each Value's slot, so that one Value passed twice is one input of the program (and is
        # the same Value inside the trace, as it is in eager mode).
        self.value_slot: dict[int, int] = {}

    def add(self, obj: Any) -> None:
        if isinstance(obj, Value):
            slot = self.value_slot.get(id(obj))
            if slot is None:
                self.value_slot[id(obj)] = len(self.slots)
                self.slots.append(obj)
                self.key.append("V")
            else:
                self.key.append(("same V", slot))
        elif isinstance(obj, _Static):
            try:
                hash(obj.value)
            except TypeError:
                raise TypeError(
                    f"static argument {obj.name!r} must be hashable (it is part of gradrs.compile's "
                    f"cache key), got {type(obj.value).__name__}"
                ) from None
            self.key.append(("static", type(obj.value), obj.value))
        elif isinstance(obj, _TRACED_NUMBERS):
            self.key.append("n")
            self.slots.append(float(obj))
        elif isinstance(obj, _VALUE_KEYED):
            self.key.append(("const", type(obj), obj))
        elif isinstance(obj, np.ndarray):
            self.key.append(("array", obj.shape))
            self.slots.extend(np.asarray(obj, dtype=np.float64).reshape(-1).tolist())
        elif isinstance(obj, dict):
            self.key.append(("dict", tuple(obj)))
            for item in obj.values():
                self.add(item)
        elif isinstance(obj, (list, tuple)):
            self.key.append((type(obj).__name__, len(obj)))
            for item in obj:
                self.add(item)
        else:
            self.key.append(("object", id(obj)))
            self.statics.append(obj)


def _flatten(obj: Any) -> _Flat:
    flat = _Flat()
    flat.add(obj)
    return flat


def _rebuild(obj: Any, leaves: list[Value], flat: _Flat, at: list[int]) -> Any:
    """``obj`` with each input slot replaced by its leaf (``_Flat.add``'s walk, in its order)."""
    if isinstance(obj, Value):
        slot = flat.value_slot[id(obj)]
        if slot == at[0]:
            at[0] += 1
        return leaves[slot]
    if isinstance(obj, _Static):
        return obj.value
    if isinstance(obj, _TRACED_NUMBERS):
        at[0] += 1
        return leaves[at[0] - 1]
    if isinstance(obj, _VALUE_KEYED):
        return obj
    if isinstance(obj, np.ndarray):
        flat_leaves = leaves[at[0] : at[0] + obj.size]
        at[0] += obj.size
        if obj.ndim == 0:
            return flat_leaves[0]
        nested: list[Any] = flat_leaves
        for size in reversed(obj.shape[1:]):
            nested = [nested[i : i + size] for i in range(0, len(nested), size)]
        return nested
    if isinstance(obj, (list, tuple)):
        return type(obj)(_rebuild(item, leaves, flat, at) for item in obj)
    if isinstance(obj, dict):
        return {name: _rebuild(item, leaves, flat, at) for name, item in obj.items()}
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


class _Cache:
    """The most recently used ``size`` entries of a dict."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: OrderedDict[Any, _Trace] = OrderedDict()

    def get(self, key: Any) -> _Trace | None:
        trace = self.entries.get(key)
        if trace is not None:
            try:
                self.entries.move_to_end(key)
            except KeyError:  # evicted by another thread in between: still a valid trace
                pass
        return trace

    def put(self, key: Any, trace: _Trace) -> None:
        self.entries[key] = trace
        self.entries.move_to_end(key)
        while len(self.entries) > self.size:
            try:
                self.entries.popitem(last=False)
            except KeyError:  # emptied by another thread
                break

    def values(self) -> Iterable[_Trace]:
        return self.entries.values()

    def __len__(self) -> int:
        return len(self.entries)


class Compiled:
    """A compiled function: call it like ``fn``; ``map`` and ``batch`` run it over many samples."""

    def __init__(
        self,
        fn: Callable[..., Any],
        static_argnums: int | Iterable[int] = (),
        static_argnames: str | Iterable[str] = (),
        cache_size: int = 64,
        retrace_warning: int = 8,
    ) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        try:
            self._signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):  # some builtins have none
            self._signature = None
        if cache_size < 1:
            raise ValueError(f"cache_size must be at least 1, got {cache_size}")
        self._static_names = self._static_parameters(static_argnums, static_argnames)
        self._traces = _Cache(cache_size)
        # map/batch: the trace for each tuple of per-sample shapes, so that a call on arrays of a
        # known shape skips flattening its first sample again.
        self._row_traces = _Cache(cache_size)
        self.trace_count = 0
        self._retrace_warning = retrace_warning

    def _static_parameters(
        self, static_argnums: int | Iterable[int], static_argnames: str | Iterable[str]
    ) -> frozenset[str]:
        """The names of the parameters marked static (argnums turned into names, as jax does)."""
        nums = [static_argnums] if isinstance(static_argnums, int) else list(static_argnums)
        names = [static_argnames] if isinstance(static_argnames, str) else list(static_argnames)
        if not nums and not names:
            return frozenset()
        if self._signature is None:
            raise TypeError("static_argnums/static_argnames need a function whose signature can be read")
        params = list(self._signature.parameters.values())
        positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        for n in nums:
            if not -len(positional) <= n < len(positional):
                raise ValueError(
                    f"static_argnums {n} is out of range for {getattr(self.fn, '__name__', 'fn')}, "
                    f"which takes {len(positional)} positional arguments"
                )
            names.append(positional[n])
        known = {p.name for p in params}
        accepts_any = any(p.kind == p.VAR_KEYWORD for p in params)
        unknown = [n for n in names if n not in known and not accepts_any]
        if unknown:
            raise ValueError(f"static_argnames {unknown} are not parameters of {self.fn!r}")
        return frozenset(names)

    def _trace(self, args: tuple[Any, ...], flat: _Flat, key: tuple[Any, ...]) -> _Trace:
        leaves = [Value(s.data if isinstance(s, Value) else s) for s in flat.slots]
        _tracing.depth = _tracing_depth() + 1
        was_tracing = _set_tracing(True)
        try:
            # A trace made inside no_grad() would record no graph and cache a constant program.
            with enable_grad():
                out = self._invoke(_rebuild(args, leaves, flat, [0]))
        finally:
            _set_tracing(was_tracing)
            _tracing.depth -= 1
        single = isinstance(out, Value)
        outputs = [out] if single else list(out) if isinstance(out, (list, tuple)) else None
        if not outputs or not all(isinstance(v, Value) for v in outputs):
            raise TypeError(
                f"a compiled function must return a Value or a list/tuple of Values, got {type(out).__name__}"
            )
        trace = _Trace(Program(outputs, leaves), single, type(out), flat.statics)
        self._traces.put(key, trace)
        self.trace_count += 1
        if self.trace_count == self._retrace_warning:
            warnings.warn(
                f"gradrs.compile: {getattr(self.fn, '__qualname__', self.fn)!r} has been traced "
                f"{self.trace_count} times; each new structure or static argument (a new int, a fresh "
                f"object) traces again. Pass changing numbers as floats, or mark hashable arguments "
                f"with static_argnames so equal values share a trace",
                stacklevel=4,
            )
        return trace

    def _prepare(self, args: tuple[Any, ...]) -> tuple[_Trace, list[Any]]:
        flat = _flatten(args)
        key = tuple(flat.key)
        trace = self._traces.get(key)
        if trace is None:
            trace = self._trace(args, flat, key)
        return trace, flat.slots

    def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        """One call's arguments as ``(positional, ((name, value), ...))``, keyword arguments
        bound as ``fn`` binds them (a TypeError for arguments ``fn`` does not take), and static
        arguments wrapped so that they are keyed by value."""
        if (kwargs or self._static_names) and self._signature is not None:
            bound = self._signature.bind(*args, **kwargs)
            args, kwargs = bound.args, dict(bound.kwargs)
            if self._static_names:
                names = list(self._signature.parameters)
                args = tuple(
                    _Static(names[i], a) if i < len(names) and names[i] in self._static_names else a
                    for i, a in enumerate(args)
                )
                kwargs = {k: _Static(k, v) if k in self._static_names else v for k, v in kwargs.items()}
        return (tuple(args), tuple(sorted(kwargs.items())))

    def _invoke(self, call: tuple[Any, ...]) -> Any:
        args, keywords = call
        return self.fn(*args, **dict(keywords))

    def _eager(self, call: tuple[Any, ...]) -> Any:
        """``fn`` run op by op on the arguments as a replay would see them (Values passed in kept,
        so that an enclosing trace records the ops on them)."""
        flat = _flatten(call)
        leaves = [s if isinstance(s, Value) else Value(s) for s in flat.slots]
        return self._invoke(_rebuild(call, leaves, flat, [0]))

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
            self._row_traces.put(shapes, trace)
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
        to test that). Layers of neurons run as matrix products over blocks of rows, so the
        result equals a loop over the samples to rounding, not bit for bit. Under
        ``gradrs.no_grad()`` only the forward pass runs and leaves come back.
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


@overload
def compile(
    fn: Callable[..., Any],
    *,
    static_argnums: int | Iterable[int] = ...,
    static_argnames: str | Iterable[str] = ...,
    cache_size: int = ...,
    retrace_warning: int = ...,
) -> Compiled: ...
@overload
def compile(
    fn: None = None,
    *,
    static_argnums: int | Iterable[int] = ...,
    static_argnames: str | Iterable[str] = ...,
    cache_size: int = ...,
    retrace_warning: int = ...,
) -> Callable[[Callable[..., Any]], Compiled]: ...
def compile(  # noqa: A001 - the public name, as torch.compile
    fn: Callable[..., Any] | None = None,
    *,
    static_argnums: int | Iterable[int] = (),
    static_argnames: str | Iterable[str] = (),
    cache_size: int = 64,
    retrace_warning: int = 8,
) -> Compiled | Callable[[Callable[..., Any]], Compiled]:
    """Records ``fn``'s graph on its first call and replays it natively afterwards.

    ``static_argnums``/``static_argnames`` mark arguments that are keyed by value and passed to
    ``fn`` as they are, as in ``jax.jit``; ``cache_size`` bounds the traces kept (least recently
    used dropped first) and ``retrace_warning`` is the trace count that warns once. Without
    ``fn``, returns a decorator. See the module docstring for what is traced and when a new trace
    is made.
    """

    def make(f: Callable[..., Any]) -> Compiled:
        return Compiled(f, static_argnums, static_argnames, cache_size, retrace_warning)

    return make if fn is None else make(fn)
