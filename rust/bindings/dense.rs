//! A whole layer of neurons in one call: `act(W x + b)` for every row of `W`, each
//! neuron one `Dot` node as `gradrs.dot` makes, but with the weights' handles held
//! here so a forward pass does not convert them again for every sample.

use gradrs_engine::{NodeId, Op, ARENA};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::fused::{release_all, resolve, term};
use crate::value::{record_locked, retain_all, wrap, PyValue};

#[pyclass(module = "gradrs", frozen)]
pub struct Dense {
    /// `nout` rows of `nin` weights, then the `nout` biases.
    params: Vec<NodeId>,
    nin: usize,
    nout: usize,
    activation: Option<Op>,
}

impl Drop for Dense {
    fn drop(&mut self) {
        for &id in &self.params {
            ARENA.release_soon(id);
        }
    }
}

fn activation(name: &str) -> PyResult<Option<Op>> {
    match name {
        "relu" => Ok(Some(Op::Relu)),
        "tanh" => Ok(Some(Op::Tanh)),
        "sigmoid" => Ok(Some(Op::Sigmoid)),
        "linear" => Ok(None),
        other => Err(PyValueError::new_err(format!(
            "unknown activation {other:?}; choose relu, tanh, sigmoid or linear"
        ))),
    }
}

fn value_id(item: &Bound<'_, PyAny>) -> PyResult<NodeId> {
    Ok(item.cast::<PyValue>()?.get().id)
}

#[pymethods]
impl Dense {
    /// `weights`: one list of `nin` Values per neuron; `biases`: one Value per neuron.
    #[new]
    fn new(weights: &Bound<'_, PyAny>, biases: &Bound<'_, PyAny>, activation_name: &str) -> PyResult<Self> {
        let rows = weights.try_iter()?.collect::<PyResult<Vec<_>>>()?;
        let biases = biases.try_iter()?.collect::<PyResult<Vec<_>>>()?;
        if rows.len() != biases.len() {
            return Err(PyValueError::new_err(format!(
                "{} weight rows but {} biases",
                rows.len(),
                biases.len()
            )));
        }
        let mut params = Vec::new();
        let mut nin = None;
        for row in &rows {
            let row = row.try_iter()?.collect::<PyResult<Vec<_>>>()?;
            if *nin.get_or_insert(row.len()) != row.len() {
                return Err(PyValueError::new_err(
                    "every neuron needs the same number of weights",
                ));
            }
            for w in &row {
                params.push(value_id(w)?);
            }
        }
        for b in &biases {
            params.push(value_id(b)?);
        }
        retain_all(&mut ARENA.lock(), &params)?;
        Ok(Dense {
            params,
            nin: nin.unwrap_or(0),
            nout: rows.len(),
            activation: activation(activation_name)?,
        })
    }

    /// The layer's outputs for `inputs` (Values or numbers), one Value per neuron.
    fn __call__<'py>(&self, py: Python<'py>, inputs: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
        let list;
        let items = match inputs.cast_exact::<PyList>() {
            Ok(l) => l,
            Err(_) => {
                list = PyList::new(py, inputs.try_iter()?.collect::<PyResult<Vec<_>>>()?)?;
                &list
            }
        };
        if items.len() != self.nin {
            return Err(PyValueError::new_err(format!(
                "this layer expects {} inputs, got {}",
                self.nin,
                items.len()
            )));
        }
        let xs = items
            .iter()
            .map(|item| term(&item, "layer input"))
            .collect::<PyResult<Vec<_>>>()?;
        let outputs = {
            let mut arena = ARENA.lock();
            let (inputs, constants) = resolve(&mut arena, &xs)?;
            let mut outputs = Vec::with_capacity(self.nout);
            let mut children = Vec::with_capacity(2 * self.nin + 1);
            let mut failure = None;
            for j in 0..self.nout {
                children.clear();
                children.extend_from_slice(&self.params[j * self.nin..(j + 1) * self.nin]);
                children.extend_from_slice(&inputs);
                children.push(self.params[self.nout * self.nin + j]);
                let step =
                    record_locked(&mut arena, Op::Dot, &children).and_then(|pre| match self.activation {
                        None => Ok(pre),
                        Some(op) => {
                            let out = record_locked(&mut arena, op, &[pre]);
                            arena.release(pre); // the activation's node holds it now
                            out
                        }
                    });
                match step {
                    Ok(id) => outputs.push(id),
                    Err(err) => {
                        failure = Some(err);
                        break;
                    }
                }
            }
            release_all(&mut arena, &constants);
            if let Some(err) = failure {
                release_all(&mut arena, &outputs);
                return Err(err);
            }
            outputs
        };
        let handles = outputs
            .into_iter()
            .map(|id| wrap(py, id))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, handles)
    }

    #[getter]
    fn nin(&self) -> usize {
        self.nin
    }

    #[getter]
    fn nout(&self) -> usize {
        self.nout
    }
}
