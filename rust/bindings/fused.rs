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

fn terms(items: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<Term>> {
    items
        .try_iter()?
        .map(|item| {
            let item = item?;
            match item.cast::<PyValue>() {
                Ok(value) => Ok(Term::Node(value.get().id)),
                Err(_) => real_number(&item, what).map(Term::Number),
            }
        })
        .collect()
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
    let mut all = Vec::new();
    if let Some(start) = start {
        all.extend(terms(
            &pyo3::types::PyTuple::new(py, [start])?.into_any(),
            "sum() start",
        )?);
    }
    all.extend(terms(values, "sum() items")?);
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
    let mut all = terms(weights, "dot() weights")?;
    let n = all.len();
    all.extend(terms(inputs, "dot() inputs")?);
    if all.len() != 2 * n {
        return Err(PyValueError::new_err(format!(
            "dot() needs as many inputs as weights: got {n} weights and {} inputs",
            all.len() - n
        )));
    }
    match bias {
        Some(bias) if !bias.is_none() => all.extend(terms(
            &pyo3::types::PyTuple::new(py, [bias])?.into_any(),
            "dot() bias",
        )?),
        _ if n == 0 => all.push(Term::Number(0.0)),
        _ => {}
    }
    record_terms(py, Op::Dot, &all)
}
