//! `gradrs.Value`: a Python handle to one node of the shared arena. This file says what each
//! of its methods does; `value_type.rs` is how CPython calls them.
//!
//! Every method converts its arguments, takes the arena for pure-Rust work only, and builds
//! Python objects after giving it back: a Python allocation can run the garbage collector, and
//! so any Python code, which must never run while the arena is in use (the GIL, its lock,
//! could pass to another thread).

use std::cell::Cell;
use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use gradrs_engine::{Arena, EngineError, NodeId, Op, Recording};
use pyo3::exceptions::{PyMemoryError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyFloat, PySet, PyTuple};

pub(crate) use gradrs_engine::op::SOFTPLUS_THRESHOLD;

use crate::handles::{not_an_operand, operand, real_number, Operand};
use crate::shared_arena::ARENA;
use crate::value_type::node;
pub(crate) use crate::value_type::wrap;

pyo3::create_exception!(
    gradrs,
    AnomalyError,
    PyRuntimeError,
    "Raised inside `gradrs.detect_anomaly()` by the first op whose result or gradient is nan."
);

pyo3::create_exception!(
    gradrs,
    TraceError,
    PyTypeError,
    "Raised while `gradrs.compile` traces a function that reads a concrete number from a Value \
     (`.data`, `float()`, `bool()`, a comparison), uses `no_grad()`, or calls `backward()`: \
     the program would replay that number, or skip that step, for every later input."
);

thread_local! {
    /// Whether ops record nodes on this thread (`no_grad` turns it off), as
    /// PyTorch keeps grad mode per thread.
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// How many threads have recording turned off. While it is zero (almost always),
/// ops skip the thread-local lookup, which costs a call in a shared library.
static THREADS_WITHOUT_GRAD: AtomicUsize = AtomicUsize::new(0);

/// How much a backward pass does between two checks for signals, in nodes plus the children
/// of n-ary nodes: about ten milliseconds' work, so Ctrl-C is honoured quickly and an
/// ordinary graph is one chunk.
const BACKWARD_CHUNK: usize = 1 << 20;

/// Whether `detect_anomaly()` is active; one relaxed load per op when it is not.
static DETECT_ANOMALY: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Whether `gradrs.compile` is tracing a function on this thread.
    static TRACING: Cell<bool> = const { Cell::new(false) };
}

/// How many threads are tracing; while it is zero, reading a number skips the thread-local lookup.
static THREADS_TRACING: AtomicUsize = AtomicUsize::new(0);

fn tracing() -> bool {
    THREADS_TRACING.load(Ordering::Relaxed) != 0 && this_thread_is_tracing()
}

// The thread-local reads are out of line: inlined, the compiler computed the thread-local's
// address (a call into the dynamic loader) before the check that almost always skips it.
#[inline(never)]
fn this_thread_is_tracing() -> bool {
    TRACING.with(Cell::get)
}

/// Refuses `what` on a thread that is tracing a function for `gradrs.compile`.
///
/// A trace runs the function once, on stand-in Values, and records only the ops. Any number read
/// out of a Value there (and any Python decision taken on it) would be frozen into the program
/// and silently replayed for other inputs, so it is refused as `jax.jit` refuses concrete reads.
pub(crate) fn refuse_while_tracing(what: &str) -> PyResult<()> {
    if tracing() {
        return Err(traced_read(what));
    }
    Ok(())
}

#[cold]
fn traced_read(what: &str) -> PyErr {
    TraceError::new_err(format!(
        "{what} inside a function being traced by gradrs.compile: the trace records ops, not \
         numbers, so the result would be fixed at trace time and replayed for every later call. \
         Compute with Values instead (their ops are recorded), pass the number as a static argument \
         (gradrs.compile(fn, static_argnames=[...]) or an int, which is static), or call the \
         function uncompiled"
    ))
}

#[cold]
pub(crate) fn engine_error(err: EngineError) -> PyErr {
    match err {
        EngineError::StaleHandle(_) | EngineError::BackwardInterrupted => {
            PyRuntimeError::new_err(err.to_string())
        }
        EngineError::TooManyNodes | EngineError::OutOfMemory { .. } | EngineError::NodeLimit { .. } => {
            PyMemoryError::new_err(err.to_string())
        }
        EngineError::NanGradient { .. } | EngineError::NanForward { .. } => {
            AnomalyError::new_err(err.to_string())
        }
        EngineError::WrongArity { .. }
        | EngineError::LengthMismatch { .. }
        | EngineError::CompiledCallOnInputs => PyValueError::new_err(err.to_string()),
    }
}

/// How this thread's context asks new nodes to be made: `no_grad` and `detect_anomaly`.
/// `no_grad` inside a function being traced is refused: its results would be numbers fixed
/// at trace time.
pub(crate) fn recording() -> PyResult<Recording> {
    let how = Recording {
        grads: grad_enabled(),
        check_nan: DETECT_ANOMALY.load(Ordering::Relaxed),
    };
    if !how.grads && tracing() {
        return Err(TraceError::new_err(
            "gradrs.no_grad() inside a function being traced by gradrs.compile: its results \
             would be recorded as numbers fixed at trace time. Move the no_grad block out of \
             the compiled function, or call the whole compiled function under no_grad()",
        ));
    }
    Ok(how)
}

pub(crate) fn grad_enabled() -> bool {
    THREADS_WITHOUT_GRAD.load(Ordering::Relaxed) == 0 || this_thread_records()
}

#[inline(never)]
fn this_thread_records() -> bool {
    GRAD_ENABLED.with(Cell::get)
}

/// Applies `op` to `children` as a new node (or, under `no_grad`, makes just its value a new
/// leaf) and returns the handle. Every op goes through `apply_locked`: here, or in the fast
/// path of Value's own slots (`value_type.rs`).
pub(crate) fn apply(py: Python<'_>, op: Op, children: &[NodeId]) -> PyResult<Py<PyAny>> {
    let id = apply_locked(&mut ARENA.lock(), op, children)?;
    wrap(py, id)
}

/// [`apply`] for a caller that already holds the arena's lock.
pub(crate) fn apply_locked(arena: &mut Arena, op: Op, children: &[NodeId]) -> PyResult<NodeId> {
    let how = recording()?;
    arena.apply_as(how, op, children).map_err(engine_error)
}

/// A new leaf holding `data`: `Value(data)`.
pub(crate) fn new_leaf(py: Python<'_>, data: f64) -> PyResult<NodeId> {
    ARENA.lock_attached(py).leaf(data).map_err(engine_error)
}

/// The Python handles micrograd-style graph walkers see for children: one
/// object per node while any of them is alive, so `id()`-keyed drawing code
/// (the lecture's `draw_dot`) links edges to the same boxes it drew.
static CANONICAL_HANDLES: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn canonical_handle(py: Python<'_>, id: NodeId) -> PyResult<Py<PyAny>> {
    let cache = CANONICAL_HANDLES
        .get_or_try_init(py, || -> PyResult<Py<PyAny>> {
            Ok(py
                .import("weakref")?
                .getattr("WeakValueDictionary")?
                .call0()?
                .unbind())
        })?
        .bind(py);
    let key = hash(id);
    let found = cache.call_method1("get", (key,))?;
    if !found.is_none() {
        return Ok(found.unbind());
    }
    ARENA.lock().retain(id).map_err(engine_error)?;
    let handle = wrap(py, id)?;
    cache.set_item(key, handle.bind(py))?;
    Ok(handle)
}

/// An arithmetic operator: its op on two Values, and its one-child op for a number on the
/// right (`v - 2`) or on the left (`2 - v`).
#[derive(Clone, Copy)]
pub(crate) struct Arithmetic {
    pub both: Op,
    pub number_right: fn(f64) -> Op,
    pub number_left: fn(f64) -> Op,
}

fn subtract_number(c: f64) -> Op {
    Op::AddScalar(-c)
}

pub(crate) const ADD: Arithmetic = Arithmetic {
    both: Op::Add,
    number_right: Op::AddScalar,
    number_left: Op::AddScalar,
};
pub(crate) const SUBTRACT: Arithmetic = Arithmetic {
    both: Op::Sub,
    number_right: subtract_number,
    number_left: Op::ScalarSub,
};
pub(crate) const MULTIPLY: Arithmetic = Arithmetic {
    both: Op::Mul,
    number_right: Op::MulScalar,
    number_left: Op::MulScalar,
};
pub(crate) const DIVIDE: Arithmetic = Arithmetic {
    both: Op::Div,
    number_right: Op::DivScalar,
    number_left: Op::ScalarDiv,
};
pub(crate) const POWER: Arithmetic = Arithmetic {
    both: Op::Pow,
    number_right: Op::PowScalar,
    number_left: Op::ScalarPow,
};

/// `x ⊕ y` where one of them is a Value, for operands of any type: a Value, a real number
/// (int, float, numpy scalar, anything with `__float__` or `__index__`), or anything else, for
/// which Python is told `NotImplemented` (and raises its usual TypeError).
pub(crate) fn arithmetic(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    y: &Bound<'_, PyAny>,
    how: Arithmetic,
) -> PyResult<Py<PyAny>> {
    if let Some(a) = node(x) {
        return match operand(y) {
            Ok(Operand::Node(b)) => apply(py, how.both, &[a, b]),
            Ok(Operand::Number(c)) => apply(py, (how.number_right)(c), &[a]),
            Err(err) => not_an_operand(y, err),
        };
    }
    // Python calls the slot of the right operand only when the left one is not a Value.
    let Some(b) = node(y) else {
        return Ok(py.NotImplemented());
    };
    match operand(x) {
        Ok(Operand::Number(c)) => apply(py, (how.number_left)(c), &[b]),
        Ok(Operand::Node(_)) => Ok(py.NotImplemented()),
        Err(err) => not_an_operand(x, err),
    }
}

#[cold]
pub(crate) fn modulo_refused() -> PyErr {
    PyTypeError::new_err("pow() with a modulus is not supported for Value")
}

/// The TypeError for argument `name` of `Value.method()`, which must be a real number.
#[cold]
pub(crate) fn argument_error(method: &str, name: &str, given: &Bound<'_, PyAny>) -> PyErr {
    PyTypeError::new_err(format!(
        "Value.{method}() argument '{name}' must be a real number, not {}",
        crate::handles::type_name(given)
    ))
}

/// `Value(data, label=None)`: a new leaf.
pub(crate) fn new(args: &Bound<'_, PyTuple>, kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<NodeId> {
    const NAMES: [&str; 2] = ["data", "label"];
    if args.len() > NAMES.len() {
        return Err(PyTypeError::new_err(format!(
            "Value() takes at most 2 arguments ({} given)",
            args.len()
        )));
    }
    let positional = |i: usize| (i < args.len()).then(|| args.get_item(i)).transpose();
    let mut given: [Option<Bound<'_, PyAny>>; 2] = [positional(0)?, positional(1)?];
    for (key, item) in kwargs.into_iter().flatten() {
        let key = key.extract::<String>()?;
        let Some(i) = NAMES.iter().position(|name| *name == key) else {
            return Err(PyTypeError::new_err(format!(
                "Value() got an unexpected keyword argument '{key}'"
            )));
        };
        if given[i].replace(item).is_some() {
            return Err(PyTypeError::new_err(format!(
                "Value() got multiple values for argument '{key}'"
            )));
        }
    }
    let [data, label] = given;
    let data = data.ok_or_else(|| PyTypeError::new_err("Value() missing required argument 'data'"))?;
    let data = real_number(&data, "Value data")?;
    let label: Option<String> = match label {
        Some(label) => label.extract()?,
        None => None,
    };
    let id = new_leaf(args.py(), data)?;
    if label.is_some() {
        let labelled = ARENA.lock().set_label(id, label);
        if let Err(err) = labelled {
            ARENA.release_soon(id);
            return Err(engine_error(err));
        }
    }
    Ok(id)
}

// The number attributes are read and written once per parameter per step by micrograd-style
// training loops (`p.data += -lr * p.grad`), always from Value's own getters and setters, which
// CPython calls attached: so the arena is taken without the GIL check.

/// `v.data`.
pub(crate) fn data(py: Python<'_>, id: NodeId) -> PyResult<f64> {
    refuse_while_tracing("reading .data")?;
    ARENA.lock_attached(py).data(id).map_err(engine_error)
}

/// `v.data = value`, for a number already read (`value_type` reads it, refusing anything but a
/// real number, after refusing a trace as this does).
pub(crate) fn set_data(py: Python<'_>, id: NodeId, value: f64) -> PyResult<()> {
    refuse_while_tracing(SETTING_DATA)?;
    ARENA.lock_attached(py).set_data(id, value).map_err(engine_error)
}

pub(crate) const SETTING_DATA: &str = "setting .data";

/// `v.grad`.
pub(crate) fn grad(py: Python<'_>, id: NodeId) -> PyResult<f64> {
    refuse_while_tracing("reading .grad")?;
    ARENA.lock_attached(py).grad(id).map_err(engine_error)
}

/// `v.grad = value`, for a number already read (as for `set_data`).
pub(crate) fn set_grad(py: Python<'_>, id: NodeId, value: f64) -> PyResult<()> {
    refuse_while_tracing(SETTING_GRAD)?;
    ARENA.lock_attached(py).set_grad(id, value).map_err(engine_error)
}

pub(crate) const SETTING_GRAD: &str = "setting .grad";

/// `v.label` ('' when it has none).
pub(crate) fn label(id: NodeId) -> PyResult<String> {
    let arena = ARENA.lock();
    Ok(arena.label(id).map_err(engine_error)?.unwrap_or("").to_owned())
}

/// `v.label = label`.
pub(crate) fn set_label(id: NodeId, label: Option<String>) -> PyResult<()> {
    ARENA.lock().set_label(id, label).map_err(engine_error)
}

/// `v._op`: the op that made the Value, as micrograd spells it.
pub(crate) fn op_symbol(id: NodeId) -> PyResult<String> {
    Ok(ARENA.lock().kind(id).map_err(engine_error)?.symbol())
}

/// `v._op_detail`: the op with any constant it holds.
pub(crate) fn op_detail(id: NodeId) -> PyResult<String> {
    Ok(ARENA.lock().kind(id).map_err(engine_error)?.describe())
}

/// `v._prev`: the children as a set of their canonical handles.
pub(crate) fn prev(py: Python<'_>, id: NodeId) -> PyResult<Bound<'_, PySet>> {
    let children = ARENA.lock().children(id).map_err(engine_error)?;
    let set = PySet::empty(py)?;
    for child in children {
        set.add(canonical_handle(py, child)?)?;
    }
    Ok(set)
}

/// `v._children`: the children in order, with repeats.
pub(crate) fn children(py: Python<'_>, id: NodeId) -> PyResult<Bound<'_, PyTuple>> {
    let children = ARENA.lock().children(id).map_err(engine_error)?;
    let handles = children
        .into_iter()
        .map(|child| canonical_handle(py, child))
        .collect::<PyResult<Vec<_>>>()?;
    PyTuple::new(py, handles)
}

/// `v._backward()`: one step of the chain rule.
pub(crate) fn backward_one_step(id: NodeId) -> PyResult<()> {
    refuse_while_tracing("calling _backward()")?;
    ARENA.lock().propagate(id).map_err(engine_error)
}

/// `v.backward()`, in chunks with Ctrl-C honoured between them.
pub(crate) fn backward(py: Python<'_>, id: NodeId) -> PyResult<()> {
    refuse_while_tracing("calling backward()")?;
    let check = DETECT_ANOMALY.load(Ordering::Relaxed);
    let mut pass = {
        let mut arena = ARENA.lock();
        let mut pass = arena.begin_backward(id, check).map_err(engine_error)?;
        if arena
            .backward_step(&mut pass, BACKWARD_CHUNK)
            .map_err(engine_error)?
        {
            return Ok(());
        }
        pass
    };
    loop {
        // Outside the lock: a signal handler is Python code and may use Values itself.
        py.check_signals()?;
        let mut arena = ARENA.lock();
        if arena
            .backward_step(&mut pass, BACKWARD_CHUNK)
            .map_err(engine_error)?
        {
            return Ok(());
        }
    }
}

/// `repr(v)`.
pub(crate) fn repr(py: Python<'_>, id: NodeId) -> PyResult<String> {
    if tracing() {
        // Printing inside a traced function is common; the numbers there are only stand-ins.
        return Ok("Value(<traced>)".to_owned());
    }
    let (data, grad) = {
        let arena = ARENA.lock();
        (arena.data(id), arena.grad(id))
    };
    let data = PyFloat::new(py, data.map_err(engine_error)?).repr()?;
    let grad = PyFloat::new(py, grad.map_err(engine_error)?).repr()?;
    Ok(format!("Value(data={data}, grad={grad})"))
}

/// `copy.copy(v)` and `copy.deepcopy(v)`: a new leaf with the same data, grad and label.
pub(crate) fn copy(py: Python<'_>, id: NodeId) -> PyResult<Py<PyAny>> {
    refuse_while_tracing("copying a Value (a copy is a new leaf holding the current number)")?;
    let copy = {
        let mut arena = ARENA.lock();
        let (data, grad) = (arena.data(id), arena.grad(id));
        let label = arena.label(id).map_err(engine_error)?.map(str::to_owned);
        let copy = arena.leaf(data.map_err(engine_error)?).map_err(engine_error)?;
        let written = grad
            .and_then(|grad| arena.set_grad(copy, grad))
            .and_then(|()| arena.set_label(copy, label));
        if let Err(err) = written {
            arena.release(copy);
            return Err(engine_error(err));
        }
        copy
    };
    wrap(py, copy)
}

/// `v.__reduce__()`: pickled as a leaf (data, grad and label; the graph is not saved).
pub(crate) fn reduce(py: Python<'_>, id: NodeId) -> PyResult<Bound<'_, PyTuple>> {
    refuse_while_tracing("pickling a Value")?;
    let (data, grad, label) = {
        let arena = ARENA.lock();
        (
            arena.data(id).map_err(engine_error)?,
            arena.grad(id).map_err(engine_error)?,
            arena.label(id).map_err(engine_error)?.unwrap_or("").to_owned(),
        )
    };
    let rebuild = py.import("gradrs._core")?.getattr("_restore_value")?;
    PyTuple::new(py, [rebuild, (data, grad, label).into_pyobject(py)?.into_any()])
}

/// `hash(v)`: the node's identity (two handles to one node hash alike).
pub(crate) fn hash(id: NodeId) -> u64 {
    (u64::from(id.gen) << 32) | u64::from(id.slot)
}

/// `v == other` and the other comparisons (`op` is CPython's `Py_EQ`...).
///
/// Values compare by identity, as micrograd's do (two handles to one node are equal); they have
/// no order. While a trace runs, a Value may stand in for a number the caller passed, and a
/// number compares by value: any comparison but identity is refused there.
///
/// `other` is the other operand's node when it is a Value; `None` in the result is
/// `NotImplemented`.
pub(crate) fn compare(id: NodeId, other: Option<NodeId>, op: c_int) -> PyResult<Option<bool>> {
    let same = other.map(|other| other == id);
    let equality = match op {
        ffi::Py_EQ => Some(true),
        ffi::Py_NE => Some(false),
        _ => None,
    };
    match (equality, same) {
        (Some(eq), Some(true)) => Ok(Some(eq)),
        _ if tracing() => Err(traced_read("comparing a Value")),
        (Some(eq), Some(false)) => Ok(Some(!eq)),
        _ => Ok(None),
    }
}

/// `bool(v)`: always true, as for any Python object (micrograd's Value has no `__bool__`);
/// refused while tracing, where the Value may stand in for a number whose truth depends on it.
pub(crate) fn truth() -> PyResult<bool> {
    refuse_while_tracing("the truth value of a Value (`if v:`)")?;
    Ok(true)
}

/// `float(v)` is refused, as micrograd's Value has no `__float__`: read `v.data`.
#[cold]
pub(crate) fn float_refused() -> PyErr {
    if let Err(err) = refuse_while_tracing("float() of a Value") {
        return err;
    }
    PyTypeError::new_err(
        "float() argument must be a string or a real number, not 'gradrs.Value'; read v.data for its number",
    )
}

/// Rebuilds a pickled Value as a leaf.
#[pyfunction]
#[pyo3(signature = (data, grad = 0.0, label = String::new()))]
pub fn _restore_value(py: Python<'_>, data: f64, grad: f64, label: String) -> PyResult<Py<PyAny>> {
    let id = {
        let mut arena = ARENA.lock();
        let id = arena.leaf(data).map_err(engine_error)?;
        arena.set_grad(id, grad).map_err(engine_error)?;
        arena.set_label(id, Some(label)).map_err(engine_error)?;
        id
    };
    wrap(py, id)
}

/// Sets this thread's `flag` to `value` and returns its previous setting, keeping `count` (the
/// threads whose flag equals `counted`) right, so that the common case is one relaxed load.
fn set_counted_flag(
    flag: &'static std::thread::LocalKey<Cell<bool>>,
    count: &AtomicUsize,
    counted: bool,
    value: bool,
) -> bool {
    let previous = flag.with(|flag| flag.replace(value));
    if previous != value {
        if value == counted {
            count.fetch_add(1, Ordering::Relaxed);
        } else {
            count.fetch_sub(1, Ordering::Relaxed);
        }
    }
    previous
}

/// Turns recording on or off for this thread; returns the previous setting.
#[pyfunction]
pub fn _set_grad_enabled(enabled: bool) -> bool {
    set_counted_flag(&GRAD_ENABLED, &THREADS_WITHOUT_GRAD, false, enabled)
}

/// Marks this thread as tracing a function for `gradrs.compile` (or not); returns the previous
/// setting.
#[pyfunction]
pub fn _set_tracing(enabled: bool) -> bool {
    set_counted_flag(&TRACING, &THREADS_TRACING, true, enabled)
}

/// Whether ops record a graph on this thread.
#[pyfunction]
pub fn is_grad_enabled() -> bool {
    grad_enabled()
}

/// Turns anomaly detection on or off for the process; returns the previous setting.
#[pyfunction]
pub fn _set_detect_anomaly(enabled: bool) -> bool {
    DETECT_ANOMALY.swap(enabled, Ordering::Relaxed)
}

/// The number of nodes alive in the arena.
#[pyfunction]
pub fn _live_nodes() -> usize {
    ARENA.lock().live_nodes()
}

/// Applies the environment variable `GRADRS_MAX_NODES`, if set, as a cap on live nodes:
/// making one more raises MemoryError naming the variable. A value that is not a
/// whole number of nodes (>= 1) is a ValueError when `gradrs` is imported.
pub(crate) fn apply_max_nodes_from_env() -> PyResult<()> {
    let Some(raw) = std::env::var_os("GRADRS_MAX_NODES") else {
        return Ok(());
    };
    let limit = raw
        .to_str()
        .and_then(|text| text.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .ok_or_else(|| {
            PyValueError::new_err(format!(
                "the environment variable GRADRS_MAX_NODES must be a positive whole number \
                 of nodes, not {raw:?}"
            ))
        })?;
    ARENA.lock().set_max_nodes(Some(limit));
    Ok(())
}

/// The number of slots the arena has allocated (live or free).
#[pyfunction]
pub fn _capacity() -> usize {
    ARENA.lock().capacity()
}
