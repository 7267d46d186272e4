//! `gradrs.Value`: a Python handle to one node of the shared arena.
//!
//! Every method converts its arguments, takes the arena's lock for pure-Rust work
//! only, and builds Python objects after letting go of it (a Python allocation can
//! run the garbage collector, which runs destructors, which must not find the lock
//! held by their own thread).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use gradrs_engine::{Arena, EngineError, NodeId, Op, Recording, ARENA};
use pyo3::exceptions::{PyMemoryError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyFloat, PySet, PyTuple};

use crate::handles::{not_an_operand, operand, real_number, Operand};

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
    THREADS_TRACING.load(Ordering::Relaxed) != 0 && TRACING.with(Cell::get)
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

/// A scalar value and its gradient, recorded in the graph that produced it.
#[pyclass(name = "Value", module = "gradrs", frozen, weakref)]
pub struct PyValue {
    pub(crate) id: NodeId,
}

impl Drop for PyValue {
    fn drop(&mut self) {
        ARENA.release_soon(self.id);
    }
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
    THREADS_WITHOUT_GRAD.load(Ordering::Relaxed) == 0 || GRAD_ENABLED.with(Cell::get)
}

/// Wraps a node that already holds one reference for its new handle.
pub(crate) fn wrap(py: Python<'_>, id: NodeId) -> PyResult<Py<PyAny>> {
    // On failure the PyValue is dropped, which releases the reference.
    let handle = Bound::new(py, PyValue { id })?;
    // A Value refers to no Python object, so it can never be part of a reference
    // cycle; keeping it out of the cyclic collector's lists spares every
    // collection a visit per live Value (micrograd spends most of its time there).
    // SAFETY: `handle` is a valid, fully initialised object owned by this thread;
    // untracking only removes it from the collector's lists, and PyO3's
    // deallocator tolerates an untracked object.
    unsafe { pyo3::ffi::PyObject_GC_UnTrack(handle.as_ptr().cast()) };
    Ok(handle.into_any().unbind())
}

/// Applies `op` to `children` as a new node (or, under `no_grad`, makes just its value a new
/// leaf) and returns the handle. The one path every op takes.
pub(crate) fn apply(py: Python<'_>, op: Op, children: &[NodeId]) -> PyResult<Py<PyAny>> {
    let id = apply_locked(&mut ARENA.lock(), op, children)?;
    wrap(py, id)
}

/// [`apply`] for a caller that already holds the arena's lock.
pub(crate) fn apply_locked(arena: &mut Arena, op: Op, children: &[NodeId]) -> PyResult<NodeId> {
    let how = recording()?;
    arena.apply_as(how, op, children).map_err(engine_error)
}

/// A new leaf holding `data`.
pub(crate) fn new_leaf(data: f64) -> PyResult<NodeId> {
    ARENA.lock().leaf(data).map_err(engine_error)
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
    let key = (u64::from(id.gen) << 32) | u64::from(id.slot);
    let found = cache.call_method1("get", (key,))?;
    if !found.is_none() {
        return Ok(found.unbind());
    }
    ARENA.lock().retain(id).map_err(engine_error)?;
    let handle = wrap(py, id)?;
    cache.set_item(key, handle.bind(py))?;
    Ok(handle)
}

impl PyValue {
    fn unary(&self, py: Python<'_>, op: Op) -> PyResult<Py<PyAny>> {
        apply(py, op, &[self.id])
    }

    /// `self ⊕ other`, with `on_number` giving the single-child op for a number.
    fn binary(
        &self,
        other: &Bound<'_, PyAny>,
        op: Op,
        on_number: impl FnOnce(f64) -> Op,
    ) -> PyResult<Py<PyAny>> {
        let py = other.py();
        match operand(other) {
            Ok(Operand::Node(b)) => apply(py, op, &[self.id, b]),
            Ok(Operand::Number(c)) => apply(py, on_number(c), &[self.id]),
            Err(err) => not_an_operand(other, err),
        }
    }

    /// `other ⊕ self` for a number `other` (Python tries `self.__rop__` only when
    /// `other` is not a Value).
    fn reflected(&self, other: &Bound<'_, PyAny>, on_number: impl FnOnce(f64) -> Op) -> PyResult<Py<PyAny>> {
        let py = other.py();
        match operand(other) {
            Ok(Operand::Number(c)) => apply(py, on_number(c), &[self.id]),
            Ok(Operand::Node(_)) => Ok(py.NotImplemented()),
            Err(err) => not_an_operand(other, err),
        }
    }
}

#[pymethods]
impl PyValue {
    #[new]
    #[pyo3(signature = (data, label = None))]
    fn new(data: &Bound<'_, PyAny>, label: Option<String>) -> PyResult<Self> {
        let data = real_number(data, "Value data")?;
        let id = new_leaf(data)?;
        if label.is_some() {
            ARENA.lock().set_label(id, label).map_err(engine_error)?;
        }
        Ok(PyValue { id })
    }

    /// The number this Value holds.
    #[getter]
    fn get_data(&self) -> PyResult<f64> {
        refuse_while_tracing("reading .data")?;
        ARENA.lock().data(self.id).map_err(engine_error)
    }

    #[setter]
    fn set_data(&self, value: &Bound<'_, PyAny>) -> PyResult<()> {
        refuse_while_tracing("setting .data")?;
        let value = real_number(value, "Value.data")?;
        ARENA.lock().set_data(self.id, value).map_err(engine_error)
    }

    /// d(output)/d(this Value) from the last `backward()`; accumulates on leaves.
    #[getter]
    fn get_grad(&self) -> PyResult<f64> {
        refuse_while_tracing("reading .grad")?;
        ARENA.lock().grad(self.id).map_err(engine_error)
    }

    #[setter]
    fn set_grad(&self, value: &Bound<'_, PyAny>) -> PyResult<()> {
        refuse_while_tracing("setting .grad")?;
        let value = real_number(value, "Value.grad")?;
        ARENA.lock().set_grad(self.id, value).map_err(engine_error)
    }

    /// An optional name, shown in graph pictures.
    #[getter]
    fn get_label(&self) -> PyResult<String> {
        let arena = ARENA.lock();
        Ok(arena
            .label(self.id)
            .map_err(engine_error)?
            .unwrap_or("")
            .to_owned())
    }

    #[setter]
    fn set_label(&self, label: Option<String>) -> PyResult<()> {
        ARENA.lock().set_label(self.id, label).map_err(engine_error)
    }

    /// The op that produced this Value, as micrograd spells it ('' for a leaf).
    #[getter]
    fn _op(&self) -> PyResult<String> {
        Ok(ARENA.lock().kind(self.id).map_err(engine_error)?.symbol())
    }

    /// The op with any constant it holds (`'+ 2'`, `'/'`), for pictures.
    #[getter]
    fn _op_detail(&self) -> PyResult<String> {
        Ok(ARENA.lock().kind(self.id).map_err(engine_error)?.describe())
    }

    /// The Values this one was computed from, as a set (as in micrograd).
    #[getter]
    fn _prev<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PySet>> {
        let children = ARENA.lock().children(self.id).map_err(engine_error)?;
        let set = PySet::empty(py)?;
        for child in children {
            set.add(canonical_handle(py, child)?)?;
        }
        Ok(set)
    }

    /// The children in order, with repeats (`a * a` gives two).
    #[getter]
    fn _children<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let children = ARENA.lock().children(self.id).map_err(engine_error)?;
        let handles = children
            .into_iter()
            .map(|child| canonical_handle(py, child))
            .collect::<PyResult<Vec<_>>>()?;
        PyTuple::new(py, handles)
    }

    fn __add__(&self, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        self.binary(other, Op::Add, Op::AddScalar)
    }

    fn __radd__(&self, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        self.reflected(other, Op::AddScalar)
    }

    fn __sub__(&self, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        self.binary(other, Op::Sub, |c| Op::AddScalar(-c))
    }

    fn __rsub__(&self, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        self.reflected(other, Op::ScalarSub)
    }

    fn __mul__(&self, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        self.binary(other, Op::Mul, Op::MulScalar)
    }

    fn __rmul__(&self, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        self.reflected(other, Op::MulScalar)
    }

    fn __truediv__(&self, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        self.binary(other, Op::Div, Op::DivScalar)
    }

    fn __rtruediv__(&self, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        self.reflected(other, Op::ScalarDiv)
    }

    fn __pow__(&self, exponent: &Bound<'_, PyAny>, modulo: Option<&Bound<'_, PyAny>>) -> PyResult<Py<PyAny>> {
        refuse_modulo(modulo)?;
        self.binary(exponent, Op::Pow, Op::PowScalar)
    }

    fn __rpow__(&self, base: &Bound<'_, PyAny>, modulo: Option<&Bound<'_, PyAny>>) -> PyResult<Py<PyAny>> {
        refuse_modulo(modulo)?;
        self.reflected(base, Op::ScalarPow)
    }

    fn __neg__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.unary(py, Op::Neg)
    }

    /// max(0, x); its gradient at exactly 0 is 0, as in micrograd and PyTorch.
    fn relu(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.unary(py, Op::Relu)
    }

    fn tanh(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.unary(py, Op::Tanh)
    }

    fn exp(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.unary(py, Op::Exp)
    }

    /// The natural logarithm (-inf at 0, nan below).
    fn log(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.unary(py, Op::Log)
    }

    fn sigmoid(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.unary(py, Op::Sigmoid)
    }

    /// log(1 + exp(x)) without overflow, as PyTorch's `softplus`: x itself above
    /// `threshold` (PyTorch's 20); `threshold=math.inf` gives the exact value everywhere.
    // The default is written out (op::SOFTPLUS_THRESHOLD) so that Python's signature shows it.
    #[pyo3(signature = (threshold = 20.0))]
    fn softplus(&self, py: Python<'_>, threshold: f64) -> PyResult<Py<PyAny>> {
        self.unary(py, Op::Softplus(threshold))
    }

    /// One step of the chain rule, as micrograd's `_backward`: adds this Value's `grad` times
    /// each local derivative to its children's `grad` (the lecture's backward by hand).
    fn _backward(&self) -> PyResult<()> {
        refuse_while_tracing("calling _backward()")?;
        ARENA.lock().propagate(self.id).map_err(engine_error)
    }

    /// Fills `.grad` of every Value this one depends on with d(self)/d(that).
    ///
    /// Leaves accumulate across calls until reset (`p.grad = 0` or
    /// `model.zero_grad()`); interior gradients are recomputed on each call.
    ///
    /// A graph of millions of nodes is processed in chunks, and Ctrl-C (or any signal
    /// whose Python handler raises) is honoured between them: the exception propagates
    /// and the gradients are left partial. A RuntimeError says so likewise if another
    /// backward pass ran in between (from a signal handler, say).
    fn backward(&self, py: Python<'_>) -> PyResult<()> {
        refuse_while_tracing("calling backward()")?;
        let check = DETECT_ANOMALY.load(Ordering::Relaxed);
        let mut pass = {
            let mut arena = ARENA.lock();
            let mut pass = arena.begin_backward(self.id, check).map_err(engine_error)?;
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

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        if tracing() {
            // Printing inside a traced function is common; the numbers there are only stand-ins.
            return Ok("Value(<traced>)".to_owned());
        }
        let (data, grad) = {
            let arena = ARENA.lock();
            (arena.data(self.id), arena.grad(self.id))
        };
        let data = PyFloat::new(py, data.map_err(engine_error)?).repr()?;
        let grad = PyFloat::new(py, grad.map_err(engine_error)?).repr()?;
        Ok(format!("Value(data={data}, grad={grad})"))
    }

    /// A copy is a new leaf with the same data, grad and label.
    fn __copy__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        refuse_while_tracing("copying a Value (a copy is a new leaf holding the current number)")?;
        let id = {
            let mut arena = ARENA.lock();
            let (data, grad) = (arena.data(self.id), arena.grad(self.id));
            let label = arena.label(self.id).map_err(engine_error)?.map(str::to_owned);
            let id = arena.leaf(data.map_err(engine_error)?).map_err(engine_error)?;
            arena
                .set_grad(id, grad.map_err(engine_error)?)
                .map_err(engine_error)?;
            arena.set_label(id, label).map_err(engine_error)?;
            id
        };
        wrap(py, id)
    }

    fn __deepcopy__(&self, py: Python<'_>, _memo: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        self.__copy__(py)
    }

    /// Pickles as a leaf: data, grad and label (the graph is not saved).
    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        refuse_while_tracing("pickling a Value")?;
        let (data, grad, label) = {
            let arena = ARENA.lock();
            (
                arena.data(self.id).map_err(engine_error)?,
                arena.grad(self.id).map_err(engine_error)?,
                arena
                    .label(self.id)
                    .map_err(engine_error)?
                    .unwrap_or("")
                    .to_owned(),
            )
        };
        let rebuild = py.import("gradrs._core")?.getattr("_restore_value")?;
        PyTuple::new(py, [rebuild, (data, grad, label).into_pyobject(py)?.into_any()])
    }

    /// Values compare by identity, as micrograd's do (two handles to one node are equal); they
    /// have no order. While a trace runs, a Value may stand in for a number the caller passed,
    /// and a number compares by value: any comparison but identity is refused there.
    fn __richcmp__(&self, other: &Bound<'_, PyAny>, op: CompareOp) -> PyResult<Py<PyAny>> {
        let py = other.py();
        let same = other.cast::<PyValue>().ok().map(|v| v.get().id == self.id);
        let equality = match op {
            CompareOp::Eq => Some(true),
            CompareOp::Ne => Some(false),
            _ => None,
        };
        match (equality, same) {
            (Some(eq), Some(true)) => Ok(PyBool::new(py, eq).to_owned().into_any().unbind()),
            _ if tracing() => Err(traced_read("comparing a Value")),
            (Some(eq), Some(false)) => Ok(PyBool::new(py, !eq).to_owned().into_any().unbind()),
            _ => Ok(py.NotImplemented()),
        }
    }

    fn __hash__(&self) -> u64 {
        (u64::from(self.id.gen) << 32) | u64::from(self.id.slot)
    }

    /// Always true, as for any Python object (micrograd's Value has no `__bool__`); refused
    /// while tracing, where the Value may stand in for a number whose truth depends on it.
    fn __bool__(&self) -> PyResult<bool> {
        refuse_while_tracing("the truth value of a Value (`if v:`)")?;
        Ok(true)
    }

    /// `float(v)` is refused, as micrograd's Value has no `__float__`: read `v.data`.
    fn __float__(&self) -> PyResult<f64> {
        refuse_while_tracing("float() of a Value")?;
        Err(PyTypeError::new_err(
            "float() argument must be a string or a real number, not 'gradrs.Value'; read v.data for its number",
        ))
    }

    /// Makes numpy hand `ndarray * Value` to `Value.__rmul__` instead of
    /// building an object array.
    #[classattr]
    fn __array_ufunc__(py: Python<'_>) -> Py<PyAny> {
        py.None()
    }
}

fn refuse_modulo(modulo: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
    match modulo {
        Some(m) if !m.is_none() => Err(PyTypeError::new_err(
            "pow() with a modulus is not supported for Value",
        )),
        _ => Ok(()),
    }
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
