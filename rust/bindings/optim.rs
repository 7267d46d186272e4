//! The optimisers' steps over a `ParamGroup` (`gradrs.optim.SGD`, `Adam`, `AdamW`): the
//! parameters' data and gradients are read, updated by the engine's `optim` and written back
//! under one lock, with the optimiser's state in numpy arrays the Python object keeps.

use gradrs_engine::optim::{Adam, Sgd};
use gradrs_engine::HeldGroup;
use numpy::PyReadwriteArray1;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::arrays::check_len;
use crate::shared_arena::ARENA;
use crate::value::{engine_error, refuse_while_tracing};

/// One `torch.optim.SGD` step over `params`; `velocity` is updated in place.
pub(crate) fn sgd_step(
    params: &HeldGroup,
    sgd: &Sgd,
    mut velocity: PyReadwriteArray1<'_, f64>,
) -> PyResult<()> {
    let velocity = state(&mut velocity, params.len(), "velocity")?;
    update(params, |start, data, grad| {
        sgd.step(data, grad, &mut velocity[start..start + data.len()])
    })
}

/// One `torch.optim.Adam` (or `AdamW`) step number `step` over `params`; the moments `m` and
/// `v` are updated in place.
pub(crate) fn adam_step(
    params: &HeldGroup,
    adam: &Adam,
    step: u64,
    mut m: PyReadwriteArray1<'_, f64>,
    mut v: PyReadwriteArray1<'_, f64>,
) -> PyResult<()> {
    let m = state(&mut m, params.len(), "m")?;
    let v = state(&mut v, params.len(), "v")?;
    update(params, |start, data, grad| {
        let block = start..start + data.len();
        adam.step(step, data, grad, &mut m[block.clone()], &mut v[block])
    })
}

/// Reads the parameters' data and gradients, lets `step` change the data, writes it back, a block
/// of parameters at a time (`step` gets the block's first index); all under one lock.
fn update(params: &HeldGroup, step: impl FnMut(usize, &mut [f64], &[f64])) -> PyResult<()> {
    refuse_while_tracing("an optimiser step")?;
    ARENA.lock().step_group(params, step).map_err(engine_error)
}

/// An optimiser's state array `name`, one number per parameter, to update in place.
fn state<'a>(
    array: &'a mut PyReadwriteArray1<'_, f64>,
    expected: usize,
    name: &str,
) -> PyResult<&'a mut [f64]> {
    let slice = array
        .as_slice_mut()
        .map_err(|_| PyValueError::new_err(format!("{name} must be a contiguous float64 array")))?;
    check_len(expected, slice.len())?;
    Ok(slice)
}
