//! `gradrs.sum`, `gradrs.dot` and `gradrs.logsumexp`: one node with n children instead of a chain of
//! n binary nodes, so a neuron costs one Python call and one node.

use gradrs_engine::Op;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::handles::{release_all, resolve, Held, Operand};
use crate::shared_arena::ARENA;
use crate::value::{apply_locked, wrap};

/// Records `op` over `operands` under one lock, turning numbers into leaves held
/// only by the new node.
fn apply_to_operands(py: Python<'_>, op: Op, operands: &[Operand]) -> PyResult<Py<PyAny>> {
    let id = {
        let mut arena = ARENA.lock();
        let (children, constants) = resolve(&mut arena, operands)?;
        let result = apply_locked(&mut arena, op, &children);
        release_all(&mut arena, &constants);
        result?
    };
    wrap(py, id)
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
    all.operands(values, "sum() items")?;
    apply_to_operands(py, Op::Sum, &all.read)
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
    let n = all.operands(weights, "dot() weights")?;
    let m = all.operands(inputs, "dot() inputs")?;
    if m != n {
        return Err(PyValueError::new_err(format!(
            "dot() needs as many inputs as weights: got {n} weights and {m} inputs"
        )));
    }
    match bias {
        Some(bias) if !bias.is_none() => all.push(bias, "dot() bias")?,
        _ if n == 0 => all.read.push(Operand::Number(0.0)),
        _ => {}
    }
    apply_to_operands(py, Op::Dot, &all.read)
}

/// `log(exp(v0) + exp(v1) + ...)` as one node (`LogSumExp`), shifted by the largest value so
/// it stays finite for any finite values; its gradient is the softmax of the values.
#[pyfunction]
pub fn logsumexp(py: Python<'_>, values: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    let mut all = Held::new();
    all.operands(values, "logsumexp() items")?;
    apply_to_operands(py, Op::LogSumExp, &all.read)
}
