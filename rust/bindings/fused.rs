//! `gradrs.sum` and `gradrs.dot`: one node with n children instead of a chain of
//! n binary nodes, so a neuron costs one Python call and one node.

use gradrs_engine::{NodeId, Op, ARENA};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::value::{engine_error, real_number, record, PyValue};

/// A term of a fused op: a node, or a number that becomes a constant leaf.
enum Term {
    Node(NodeId),
    Number(f64),
}

/// The terms of `items`, with the Python objects they came from: those must stay
/// alive until the node is recorded, or a temporary Value yielded by a generator
/// could free its node in between.
fn terms<'py>(items: &Bound<'py, PyAny>, what: &str) -> PyResult<(Vec<Term>, Vec<Bound<'py, PyAny>>)> {
    let objects = items.try_iter()?.collect::<PyResult<Vec<_>>>()?;
    let terms = objects
        .iter()
        .map(|item| single_term(item, what))
        .collect::<PyResult<Vec<_>>>()?;
    Ok((terms, objects))
}

fn single_term(item: &Bound<'_, PyAny>, what: &str) -> PyResult<Term> {
    match item.cast::<PyValue>() {
        Ok(value) => Ok(Term::Node(value.get().id)),
        Err(_) => real_number(item, what).map(Term::Number),
    }
}

/// Records `op` over `terms`, turning numbers into leaves held only by the new node.
fn record_terms(py: Python<'_>, op: Op, terms: &[Term]) -> PyResult<Py<PyAny>> {
    let mut constants = Vec::new();
    let children = {
        let mut arena = ARENA.lock();
        let mut children = Vec::with_capacity(terms.len());
        for term in terms {
            children.push(match *term {
                Term::Node(id) => id,
                Term::Number(c) => {
                    let id = arena.leaf(c).map_err(engine_error)?;
                    constants.push(id);
                    id
                }
            });
        }
        children
    };
    let result = record(py, op, &children);
    // The new node now holds the constants; drop the references made above.
    let mut arena = ARENA.lock();
    for id in constants {
        arena.release(id);
    }
    result
}

/// `start + v0 + v1 + ...` as one node (`Sum`), like Python's `sum` over Values.
#[pyfunction]
#[pyo3(signature = (values, start = None))]
pub fn sum(
    py: Python<'_>,
    values: &Bound<'_, PyAny>,
    start: Option<&Bound<'_, PyAny>>,
) -> PyResult<Py<PyAny>> {
    let (mut all, _keep_alive) = terms(values, "sum() items")?;
    if let Some(start) = start {
        all.insert(0, single_term(start, "sum() start")?);
    }
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
    let (mut all, _keep_weights) = terms(weights, "dot() weights")?;
    let n = all.len();
    let (input_terms, _keep_inputs) = terms(inputs, "dot() inputs")?;
    all.extend(input_terms);
    if all.len() != 2 * n {
        return Err(PyValueError::new_err(format!(
            "dot() needs as many inputs as weights: got {n} weights and {} inputs",
            all.len() - n
        )));
    }
    match bias {
        Some(bias) if !bias.is_none() => all.push(single_term(bias, "dot() bias")?),
        _ if n == 0 => all.push(Term::Number(0.0)),
        _ => {}
    }
    record_terms(py, Op::Dot, &all)
}
