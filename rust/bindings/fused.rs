//! `gradrs.sum`, `gradrs.dot` and `gradrs.logsumexp`: one node with n children instead of a chain of
//! n binary nodes, so a neuron costs one Python call and one node.

use gradrs_engine::{Arena, NodeId, Op, ARENA};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyTuple};
use pyo3::{ffi, PyTypeInfo};

use crate::value::{engine_error, real_number, record_locked, type_name, wrap, PyValue};

/// A term of a fused op: a node, or a number that becomes a constant leaf.
pub(crate) enum Term {
    Node(NodeId),
    Number(f64),
}

fn term(item: &Bound<'_, PyAny>, what: &str) -> PyResult<Term> {
    if let Ok(value) = item.cast_exact::<PyValue>() {
        return Ok(Term::Node(value.get().id));
    }
    if let Ok(number) = item.cast_exact::<PyFloat>() {
        return Ok(Term::Number(number.value()));
    }
    match item.cast::<PyValue>() {
        Ok(value) => Ok(Term::Node(value.get().id)),
        Err(_) => real_number(item, what).map(Term::Number),
    }
}

/// What was read from the items of Python iterables, with the items themselves.
///
/// A Value's node lives only while some handle to it does, and reading an item can run Python
/// code (`__float__`, `__index__`, a generator's next step) that drops every other handle, or
/// empties the list being read. So the items are first copied into a tuple of our own (one
/// call for a list, and immutable, so nothing can take an item out of it), held from before
/// the first item is read until the engine call that uses what was read is over: keep a
/// `Held` alive across that call.
pub(crate) struct Held<'py, T> {
    items: Vec<Bound<'py, PyTuple>>,
    pub(crate) read: Vec<T>,
}

impl<'py, T> Held<'py, T> {
    pub(crate) fn new() -> Self {
        Self::with_capacity(0, 0)
    }

    /// Room for `iterables` iterables of `items` items in all, so a layer's weights are read
    /// without reallocating.
    pub(crate) fn with_capacity(iterables: usize, items: usize) -> Self {
        Held {
            items: Vec::with_capacity(iterables),
            read: Vec::with_capacity(items),
        }
    }

    /// Holds every item of `iterable`, then reads each with `read(item, index)`; returns how
    /// many there were.
    fn extend(
        &mut self,
        iterable: &Bound<'py, PyAny>,
        read: impl Fn(&Bound<'py, PyAny>, usize) -> PyResult<T>,
    ) -> PyResult<usize> {
        let items = match iterable.cast_exact::<PyTuple>() {
            Ok(tuple) => tuple.clone(),
            // SAFETY: `iterable` is a valid object; `PySequence_Tuple` (Python's `tuple(x)`)
            // returns a new reference, or null with an exception set, which this turns into Err.
            Err(_) => unsafe {
                Bound::from_owned_ptr_or_err(iterable.py(), ffi::PySequence_Tuple(iterable.as_ptr()))?
                    .cast_into::<PyTuple>()?
            },
        };
        self.read.reserve(items.len());
        for (i, item) in items.iter_borrowed().enumerate() {
            self.read.push(read(&item, i)?);
        }
        let n = items.len();
        self.items.push(items);
        Ok(n)
    }
}

impl<'py> Held<'py, NodeId> {
    /// Appends the nodes of the Values in `iterable`; anything else is a TypeError naming
    /// `what` and the item's position.
    pub(crate) fn values(&mut self, iterable: &Bound<'py, PyAny>, what: &str) -> PyResult<usize> {
        let value_type = PyValue::type_object_raw(iterable.py());
        self.extend(iterable, |item, i| node_of(item, value_type, what, i))
    }
}

/// The node of `item`, item `i` of `what`, which must be a Value; reading it runs no Python code.
/// `value_type` is `Value`'s type object, looked up once by the caller.
pub(crate) fn node_of(
    item: &Bound<'_, PyAny>,
    value_type: *mut ffi::PyTypeObject,
    what: &str,
    i: usize,
) -> PyResult<NodeId> {
    if item.get_type_ptr() == value_type {
        // SAFETY: the item's type is exactly Value's, checked just above (a pointer
        // comparison: a layer reads a few hundred weights per call).
        return Ok(unsafe { item.cast_unchecked::<PyValue>() }.get().id);
    }
    match item.cast::<PyValue>() {
        Ok(value) => Ok(value.get().id),
        Err(_) => Err(PyTypeError::new_err(format!(
            "{what} must be Values; item {i} is {}",
            type_name(item)
        ))),
    }
}

impl<'py> Held<'py, Term> {
    /// Appends the terms (Values or real numbers) in `iterable`.
    pub(crate) fn terms(&mut self, iterable: &Bound<'py, PyAny>, what: &str) -> PyResult<usize> {
        self.extend(iterable, |item, _| term(item, what))
    }

    /// Appends one term.
    fn push(&mut self, item: &Bound<'py, PyAny>, what: &str) -> PyResult<()> {
        self.extend(PyTuple::new(item.py(), [item])?.as_any(), |item, _| {
            term(item, what)
        })?;
        Ok(())
    }
}

/// The nodes for `terms`, making a leaf for each number. The leaves are returned too: the
/// caller releases them once the nodes that use them hold them.
pub(crate) fn resolve(arena: &mut Arena, terms: &[Term]) -> PyResult<(Vec<NodeId>, Vec<NodeId>)> {
    let mut constants = Vec::new();
    let mut nodes = Vec::with_capacity(terms.len());
    for term in terms {
        match *term {
            Term::Node(id) => nodes.push(id),
            Term::Number(c) => match arena.leaf(c) {
                Ok(id) => {
                    constants.push(id);
                    nodes.push(id);
                }
                Err(err) => {
                    release_all(arena, &constants);
                    return Err(engine_error(err));
                }
            },
        }
    }
    Ok((nodes, constants))
}

/// Records `op` over `terms` under one lock, turning numbers into leaves held
/// only by the new node.
fn record_terms(py: Python<'_>, op: Op, terms: &[Term]) -> PyResult<Py<PyAny>> {
    let id = {
        let mut arena = ARENA.lock();
        let (children, constants) = resolve(&mut arena, terms)?;
        let result = record_locked(&mut arena, op, &children);
        release_all(&mut arena, &constants);
        result?
    };
    wrap(py, id)
}

pub(crate) fn release_all(arena: &mut Arena, ids: &[NodeId]) {
    for &id in ids {
        arena.release(id);
    }
}

/// `start + v0 + v1 + ...` as one node (`Sum`), like Python's `sum` over Values.
#[pyfunction]
#[pyo3(signature = (values, start = None))]
pub fn sum(
    py: Python<'_>,
    values: &Bound<'_, PyAny>,
    start: Option<&Bound<'_, PyAny>>,
) -> PyResult<Py<PyAny>> {
    let mut all = Held::new();
    if let Some(start) = start {
        all.push(start, "sum() start")?;
    }
    all.terms(values, "sum() items")?;
    record_terms(py, Op::Sum, &all.read)
}

/// `bias + w0*x0 + w1*x1 + ...` as one node (`Dot`), summed in micrograd's order.
#[pyfunction]
#[pyo3(signature = (weights, inputs, bias = None))]
pub fn dot(
    py: Python<'_>,
    weights: &Bound<'_, PyAny>,
    inputs: &Bound<'_, PyAny>,
    bias: Option<&Bound<'_, PyAny>>,
) -> PyResult<Py<PyAny>> {
    let mut all = Held::new();
    let n = all.terms(weights, "dot() weights")?;
    let m = all.terms(inputs, "dot() inputs")?;
    if m != n {
        return Err(PyValueError::new_err(format!(
            "dot() needs as many inputs as weights: got {n} weights and {m} inputs"
        )));
    }
    match bias {
        Some(bias) if !bias.is_none() => all.push(bias, "dot() bias")?,
        _ if n == 0 => all.read.push(Term::Number(0.0)),
        _ => {}
    }
    record_terms(py, Op::Dot, &all.read)
}

/// `log(exp(v0) + exp(v1) + ...)` as one node (`LogSumExp`), shifted by the largest value so
/// it stays finite for any finite values; its gradient is the softmax of the values.
#[pyfunction]
pub fn logsumexp(py: Python<'_>, values: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    let mut all = Held::new();
    all.terms(values, "logsumexp() items")?;
    record_terms(py, Op::LogSumExp, &all.read)
}
