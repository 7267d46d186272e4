//! `gradrs.sum`, `gradrs.dot` and `gradrs.logsumexp`: one node with n children instead of a chain of
//! n binary nodes, so a neuron costs one Python call and one node.

use gradrs_engine::{Arena, NodeId, Op, ARENA};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyList, PyTuple};

use crate::value::{engine_error, real_number, record_locked, wrap, PyValue};

/// A term of a fused op: a node, or a number that becomes a constant leaf.
pub(crate) enum Term {
    Node(NodeId),
    Number(f64),
}

pub(crate) fn term(item: &Bound<'_, PyAny>, what: &str) -> PyResult<Term> {
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

/// Appends the terms of `items` to `out`. Lists and tuples are read in place
/// (they keep their items alive); any other iterable's items are kept in `alive`,
/// or a temporary Value yielded by a generator could free its node before the
/// fused node refers to it.
fn collect<'py>(
    items: &Bound<'py, PyAny>,
    what: &str,
    out: &mut Vec<Term>,
    alive: &mut Vec<Bound<'py, PyAny>>,
) -> PyResult<usize> {
    let start = out.len();
    if let Ok(list) = items.cast_exact::<PyList>() {
        out.reserve(list.len());
        for i in 0..list.len() {
            out.push(term(&list.get_item(i)?, what)?);
        }
    } else if let Ok(tuple) = items.cast_exact::<PyTuple>() {
        out.reserve(tuple.len());
        for item in tuple.iter() {
            out.push(term(&item, what)?);
        }
    } else {
        for item in items.try_iter()? {
            let item = item?;
            out.push(term(&item, what)?);
            alive.push(item);
        }
    }
    Ok(out.len() - start)
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
    let mut all = Vec::new();
    let mut alive = Vec::new();
    if let Some(start) = start {
        all.push(term(start, "sum() start")?);
    }
    collect(values, "sum() items", &mut all, &mut alive)?;
    record_terms(py, Op::Sum, &all)
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
    let mut all = Vec::with_capacity(2 * weights.len().unwrap_or(0) + 1);
    let mut alive = Vec::new();
    let n = collect(weights, "dot() weights", &mut all, &mut alive)?;
    let m = collect(inputs, "dot() inputs", &mut all, &mut alive)?;
    if m != n {
        return Err(PyValueError::new_err(format!(
            "dot() needs as many inputs as weights: got {n} weights and {m} inputs"
        )));
    }
    match bias {
        Some(bias) if !bias.is_none() => all.push(term(bias, "dot() bias")?),
        _ if n == 0 => all.push(Term::Number(0.0)),
        _ => {}
    }
    record_terms(py, Op::Dot, &all)
}

/// `log(exp(v0) + exp(v1) + ...)` as one node (`LogSumExp`), shifted by the largest value so
/// it stays finite for any finite values; its gradient is the softmax of the values.
#[pyfunction]
pub fn logsumexp(py: Python<'_>, values: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    let mut all = Vec::new();
    let mut alive = Vec::new();
    collect(values, "logsumexp() items", &mut all, &mut alive)?;
    record_terms(py, Op::LogSumExp, &all)
}
