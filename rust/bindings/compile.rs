//! `gradrs._core._Program`: a graph recorded once (see `gradrs-engine`'s `program`
//! module) and replayed from Python with new inputs. Each replay reads the
//! parameters' current data from the arena, computes without holding the arena's
//! lock (and, for batches, without the GIL, on several threads), and hands back
//! Values whose backward carries the replayed gradients into the parameters.
//!
//! Private (`gradrs.compile` is the public door), but everything reachable from Python
//! is checked: wrong arguments raise, they never panic or reach the wrong Value.

use std::sync::OnceLock;

use gradrs_engine::program::{Output, Program, Reduce, ReplayError};
use gradrs_engine::{HeldGroup, NodeId, Recording};
use numpy::ndarray::Dimension;
use numpy::{PyArray, PyArray1, PyArray2, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::{PyMemoryError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::handles::{handles_of, let_go, list_of, release_all, Held};
use crate::shared_arena::ARENA;
use crate::value::{engine_error, recording};

#[pyclass(name = "_Program", module = "gradrs", frozen)]
pub struct PyProgram {
    program: Program,
    /// The program's parameters (the leaves it reads at each replay), held alive by the arena
    /// for as long as the program lives, so reading them checks no handle.
    params: HeldGroup,
}

impl Drop for PyProgram {
    fn drop(&mut self) {
        let_go(&mut self.params);
    }
}

fn threads_for(requested: Option<usize>) -> PyResult<usize> {
    // Asked once: on Linux the answer comes from reading cgroup files, which costs more than
    // replaying a small batch.
    static CORES: OnceLock<usize> = OnceLock::new();
    match requested {
        Some(0) => Err(PyValueError::new_err("threads must be at least 1")),
        Some(n) => Ok(n),
        None => Ok(*CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))),
    }
}

fn reduce_of(reduce: &str) -> PyResult<Reduce> {
    match reduce {
        "mean" => Ok(Reduce::Mean),
        "sum" => Ok(Reduce::Sum),
        other => Err(PyValueError::new_err(format!(
            "reduce must be 'mean' or 'sum', not {other:?}"
        ))),
    }
}

/// The Python exception for a replay that stopped: `interrupted` is what the signal check
/// raised (KeyboardInterrupt for Ctrl-C).
fn replay_error(err: ReplayError, interrupted: Option<PyErr>) -> PyErr {
    match err {
        ReplayError::Engine(err) => engine_error(err),
        ReplayError::OutOfMemory { .. } => PyMemoryError::new_err(err.to_string()),
        ReplayError::Interrupted => interrupted.unwrap_or_else(|| PyRuntimeError::new_err(err.to_string())),
    }
}

/// Runs `replay` without the GIL, giving it a poll that takes the GIL back for a moment to run
/// Python's signal handlers (Ctrl-C) and asks it to stop if one raised.
fn detached<T: Send>(
    py: Python<'_>,
    replay: impl FnOnce(&mut dyn FnMut() -> bool) -> Result<T, ReplayError> + Send,
) -> PyResult<T> {
    let mut interrupted = None;
    let result = py.detach(|| {
        let mut poll = || match Python::attach(|py| py.check_signals()) {
            Ok(()) => false,
            Err(err) => {
                interrupted = Some(err);
                true
            }
        };
        replay(&mut poll)
    });
    result.map_err(|err| replay_error(err, interrupted))
}

/// A copy of `array`'s numbers in row-major order, made while holding the GIL: the replay then
/// reads memory no Python code can write, resize or free. numpy's borrow of the array ends here,
/// before any Python code runs (a borrow held while Python resizes the array could not be
/// released).
fn copy_of<D: Dimension>(array: &Bound<'_, PyArray<f64, D>>) -> PyResult<Vec<f64>> {
    let borrowed = array.try_readonly()?;
    let mut numbers = Vec::new();
    numbers
        .try_reserve_exact(array.len())
        .map_err(|_| PyMemoryError::new_err(format!("not enough memory to copy {} numbers", array.len())))?;
    match borrowed.as_slice() {
        Ok(slice) => numbers.extend_from_slice(slice),
        Err(_) => numbers.extend(borrowed.as_array().iter().copied()),
    }
    Ok(numbers)
}

impl PyProgram {
    fn read_params(&self) -> PyResult<Vec<f64>> {
        ARENA.lock().group_data(&self.params).map_err(engine_error)
    }

    /// `rows`' numbers, copied, and how many rows there are.
    fn rows(&self, rows: &Bound<'_, PyArray2<f64>>) -> PyResult<(Vec<f64>, usize)> {
        let (n_rows, width) = rows.dims().into_pattern();
        if width != self.program.n_inputs() {
            return Err(PyValueError::new_err(format!(
                "each row needs {} numbers (the program's inputs), got {width}",
                self.program.n_inputs()
            )));
        }
        Ok((copy_of(rows)?, n_rows))
    }

    /// Values over the parameters (and `attached`) with the given value and partials, or with
    /// the given value alone as leaves when the replay computed no gradients.
    fn compiled_call_results<'py>(
        &self,
        py: Python<'py>,
        outputs: Vec<Output>,
        attached: &[NodeId],
        how: Recording,
    ) -> PyResult<Bound<'py, PyList>> {
        let ids = {
            let mut arena = ARENA.lock();
            let mut ids = Vec::with_capacity(outputs.len());
            for Output { value, partials } in outputs {
                match arena.compiled_call_as(how, value, &self.params, attached, partials) {
                    Ok(id) => ids.push(id),
                    Err(err) => {
                        release_all(&mut arena, &ids);
                        return Err(engine_error(err));
                    }
                }
            }
            ids
        };
        list_of(py, ids)
    }
}

#[pymethods]
impl PyProgram {
    /// Records the graph under `outputs`; the Values in `inputs` become its input slots.
    #[new]
    fn new(outputs: &Bound<'_, PyAny>, inputs: &Bound<'_, PyAny>) -> PyResult<Self> {
        let mut held = Held::new();
        let n_outputs = held.values(outputs, "outputs")?;
        held.values(inputs, "inputs")?;
        let (outputs, inputs) = held.read.split_at(n_outputs);
        let mut arena = ARENA.lock();
        let program = Program::record(&arena, outputs, inputs).map_err(engine_error)?;
        let params = arena.hold(program.params().to_vec()).map_err(engine_error)?;
        Ok(PyProgram { program, params })
    }

    #[getter]
    fn n_inputs(&self) -> usize {
        self.program.n_inputs()
    }

    #[getter]
    fn n_outputs(&self) -> usize {
        self.program.n_outputs()
    }

    #[getter]
    fn n_instructions(&self) -> usize {
        self.program.n_instructions()
    }

    /// The leaves the program reads at each replay.
    fn parameters(&self, py: Python<'_>) -> PyResult<Vec<Py<PyAny>>> {
        handles_of(py, &self.params)
    }

    /// Replays with `inputs` (one float64 per input); `attached` (exactly one Value or None per
    /// input) receive gradients for their slots.
    #[pyo3(signature = (inputs, attached = None))]
    fn run<'py>(
        &self,
        py: Python<'py>,
        inputs: Bound<'py, PyArray1<f64>>,
        attached: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let n_inputs = self.program.n_inputs();
        // Copied before `attached` is iterated, which may run Python code.
        let inputs = copy_of(&inputs)?;
        if inputs.len() != n_inputs {
            return Err(PyValueError::new_err(format!(
                "the program takes {n_inputs} inputs, got {}",
                inputs.len()
            )));
        }
        // One Value or None per input; `held` holds the Values until their nodes are children.
        let mut held = Held::new();
        if let Some(attached) = attached {
            let n = held.values_or_none(attached, n_inputs, "attached")?;
            if n > n_inputs {
                return Err(PyValueError::new_err(format!(
                    "attached has more than {n_inputs} items (one per input, a Value or None)"
                )));
            }
            if n != n_inputs {
                return Err(PyValueError::new_err(format!(
                    "attached has {n} items, but the program has {n_inputs} inputs (one item per input, a Value or None)"
                )));
            }
        }
        // Which input slots carry a Value that receives a gradient.
        let (slots, attached): (Vec<usize>, Vec<NodeId>) = held
            .read
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| (i, v)))
            .unzip();
        let params = self.read_params()?;
        let how = recording()?;
        let outputs = self
            .program
            .call(&inputs, &params, &slots, how.grads)
            .map_err(|err| replay_error(err, None))?;
        self.compiled_call_results(py, outputs, &attached, how)
    }

    /// Forward only, one row of inputs per row of `rows`: a (rows, outputs) array.
    #[pyo3(signature = (rows, threads = None))]
    fn map<'py>(
        &self,
        py: Python<'py>,
        rows: Bound<'py, PyArray2<f64>>,
        threads: Option<usize>,
    ) -> PyResult<Bound<'py, PyArray2<f64>>> {
        let threads = threads_for(threads)?;
        let (data, n_rows) = self.rows(&rows)?;
        let params = self.read_params()?;
        let out = detached(py, |poll| self.program.map(&data, n_rows, &params, threads, poll))?;
        drop(data);
        let out = numpy::ndarray::Array2::from_shape_vec((n_rows, self.program.n_outputs()), out)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(PyArray2::from_owned_array(py, out))
    }

    /// The outputs over every row (at least one), reduced by `reduce` ('mean' or 'sum'), as
    /// Values whose backward carries the reduced gradients into the parameters (leaves under
    /// no_grad).
    #[pyo3(signature = (rows, reduce = "mean", threads = None))]
    fn batch<'py>(
        &self,
        py: Python<'py>,
        rows: Bound<'py, PyArray2<f64>>,
        reduce: &str,
        threads: Option<usize>,
    ) -> PyResult<Bound<'py, PyList>> {
        let reduce = reduce_of(reduce)?;
        let threads = threads_for(threads)?;
        let (data, n_rows) = self.rows(&rows)?;
        if n_rows == 0 {
            return Err(PyValueError::new_err("batch() needs at least one row"));
        }
        let params = self.read_params()?;
        let program = &self.program;
        let how = recording()?;
        let outputs = if how.grads {
            let batch = detached(py, |poll| {
                program.batch(&data, n_rows, &params, reduce, threads, poll)
            })?;
            batch
                .values
                .into_iter()
                .zip(batch.grads)
                .map(|(value, partials)| Output { value, partials })
                .collect()
        } else {
            // Under no_grad the result is a leaf: skip every reverse sweep.
            detached(py, |poll| {
                program.batch_values(&data, n_rows, &params, reduce, threads, poll)
            })?
            .into_iter()
            .map(|value| Output {
                value,
                partials: Vec::new(),
            })
            .collect()
        };
        self.compiled_call_results(py, outputs, &[], how)
    }
}
