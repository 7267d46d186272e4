//! numpy in bulk: many leaves from one array, and a parameter group whose data and
//! gradients move to and from numpy in one call each (its optimiser steps are in `optim.rs`).

use gradrs_engine::optim::{Adam, Sgd};
use gradrs_engine::{HeldGroup, NodeId};
use numpy::{PyArray1, PyReadonlyArray1, PyReadwriteArray1};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::handles::{as_plain_list, handles_of, let_go, list_of, read_list, release_all, Held};
use crate::optim;
use crate::shared_arena::ARENA;
use crate::value::{engine_error, refuse_while_tracing};
use crate::value_type::value_type;

/// One new leaf Value per element of a 1-d float64 array.
#[pyfunction]
pub fn leaves<'py>(py: Python<'py>, array: PyReadonlyArray1<'py, f64>) -> PyResult<Bound<'py, PyList>> {
    let values = array.as_array();
    let ids = {
        let mut arena = ARENA.lock();
        let mut ids = Vec::with_capacity(values.len());
        for &v in values.iter() {
            match arena.leaf(v) {
                Ok(id) => ids.push(id),
                Err(err) => {
                    release_all(&mut arena, &ids); // the leaves made before the failure
                    return Err(engine_error(err));
                }
            }
        }
        ids
    };
    list_of(py, ids)
}

/// Sets the gradient of every Value in `values` to 0, as `Module.zero_grad()` does: one call that
/// reads a list's items in place, rather than a `ParamGroup` built (and its nodes retained) only
/// to be zeroed once.
#[pyfunction]
pub fn _zero_grads(values: &Bound<'_, PyAny>) -> PyResult<()> {
    refuse_while_tracing("zeroing gradients")?;
    let mut held: Held<'_, NodeId> = Held::new();
    match as_plain_list(values) {
        // No Python code runs from the first item read to the end of the engine call, so the
        // list's own references keep every Value read alive.
        Some(list) => read_list(&mut held.read, list, value_type(), "values")?,
        None => {
            held.values(values, "values")?;
        }
    }
    ARENA.lock().zero_grad_of(&held.read).map_err(engine_error)
}

/// A fixed list of Values (typically a model's parameters) handled as one array. The arena
/// holds its nodes alive until it is dropped, so its bulk calls check no handle.
#[pyclass(module = "gradrs", frozen)]
pub struct ParamGroup {
    group: HeldGroup,
}

impl Drop for ParamGroup {
    fn drop(&mut self) {
        let_go(&mut self.group);
    }
}

fn slice_of<'a>(array: &'a PyReadonlyArray1<'_, f64>, expected: usize) -> PyResult<&'a [f64]> {
    let slice = array
        .as_slice()
        .map_err(|_| PyValueError::new_err("the array must be contiguous"))?;
    check_len(expected, slice.len())?;
    Ok(slice)
}

pub(crate) fn check_len(expected: usize, got: usize) -> PyResult<()> {
    if expected == got {
        Ok(())
    } else {
        Err(PyValueError::new_err(format!(
            "expected an array of {expected} float64 values (one per parameter), got {got}"
        )))
    }
}

#[pymethods]
impl ParamGroup {
    #[new]
    fn new(values: &Bound<'_, PyAny>) -> PyResult<Self> {
        let mut held = Held::new();
        held.values(values, "ParamGroup items")?;
        // Held by the arena while `held` still holds the Values read.
        let group = ARENA
            .lock()
            .hold(std::mem::take(&mut held.read))
            .map_err(engine_error)?;
        Ok(ParamGroup { group })
    }

    fn __len__(&self) -> usize {
        self.group.len()
    }

    /// The Values, in order.
    fn values(&self, py: Python<'_>) -> PyResult<Vec<Py<PyAny>>> {
        handles_of(py, &self.group)
    }

    /// A copy of every Value's data.
    fn data<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<f64>>> {
        refuse_while_tracing("reading data")?;
        let data = ARENA.lock().group_data(&self.group).map_err(engine_error)?;
        Ok(PyArray1::from_vec(py, data))
    }

    /// A copy of every Value's gradient.
    fn grad<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<f64>>> {
        refuse_while_tracing("reading gradients")?;
        let grad = ARENA.lock().group_grad(&self.group).map_err(engine_error)?;
        Ok(PyArray1::from_vec(py, grad))
    }

    fn set_data(&self, values: PyReadonlyArray1<'_, f64>) -> PyResult<()> {
        refuse_while_tracing("setting data")?;
        let values = slice_of(&values, self.group.len())?;
        ARENA
            .lock()
            .set_group_data(&self.group, values)
            .map_err(engine_error)
    }

    fn set_grad(&self, values: PyReadonlyArray1<'_, f64>) -> PyResult<()> {
        refuse_while_tracing("setting gradients")?;
        let values = slice_of(&values, self.group.len())?;
        ARENA
            .lock()
            .set_group_grad(&self.group, values)
            .map_err(engine_error)
    }

    fn zero_grad(&self) -> PyResult<()> {
        refuse_while_tracing("zeroing gradients")?;
        ARENA.lock().zero_group_grad(&self.group);
        Ok(())
    }

    /// One `torch.optim.SGD` step; `velocity` (zeros at first) is updated in place.
    #[pyo3(signature = (lr, momentum, weight_decay, velocity, nesterov = false))]
    fn sgd_step(
        &self,
        lr: f64,
        momentum: f64,
        weight_decay: f64,
        velocity: PyReadwriteArray1<'_, f64>,
        nesterov: bool,
    ) -> PyResult<()> {
        let sgd = Sgd {
            lr,
            momentum,
            weight_decay,
            nesterov,
        };
        optim::sgd_step(&self.group, &sgd, velocity)
    }

    /// One `torch.optim.Adam` (or, with `decoupled`, `AdamW`) step number `step`
    /// (1-based); the moment arrays `m` and `v` (zeros at first) are updated in place.
    #[allow(clippy::too_many_arguments)]
    fn adam_step(
        &self,
        step: u64,
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
        decoupled: bool,
        m: PyReadwriteArray1<'_, f64>,
        v: PyReadwriteArray1<'_, f64>,
    ) -> PyResult<()> {
        let adam = Adam {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            decoupled,
        };
        optim::adam_step(&self.group, &adam, step, m, v)
    }
}
