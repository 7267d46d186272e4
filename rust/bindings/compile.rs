//! `gradrs._core.Program`: a graph recorded once (see `gradrs-engine`'s `program`
//! module) and replayed from Python with new inputs. Each replay reads the
//! parameters' current data from the arena, computes without holding the arena's
//! lock (and, for batches, without the GIL, on several threads), and hands back
//! Values whose backward carries the replayed gradients into the parameters.

use std::sync::OnceLock;

use gradrs_engine::program::{Program, Reduce};
use gradrs_engine::{NodeId, ARENA};
use numpy::{PyArray2, PyReadonlyArray1, PyReadonlyArray2};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::value::{engine_error, grad_enabled, retain_all, wrap, PyValue};

#[pyclass(name = "Program", module = "gradrs", frozen)]
pub struct PyProgram {
    program: Program,
}

impl Drop for PyProgram {
    fn drop(&mut self) {
        for &id in self.program.params() {
            ARENA.release_soon(id);
        }
    }
}

fn ids_of(values: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<NodeId>> {
    values
        .try_iter()?
        .enumerate()
        .map(|(i, item)| match item?.cast::<PyValue>() {
            Ok(v) => Ok(v.get().id),
            Err(_) => Err(PyValueError::new_err(format!("{what} item {i} is not a Value"))),
        })
        .collect()
}

fn threads_for(requested: Option<usize>) -> usize {
    // Asked once: on Linux the answer comes from reading cgroup files, which costs more than
    // replaying a small batch.
    static CORES: OnceLock<usize> = OnceLock::new();
    requested
        .unwrap_or_else(|| *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get())))
}

impl PyProgram {
    fn read_params(&self) -> PyResult<Vec<f64>> {
        ARENA.lock().data_of(self.program.params()).map_err(engine_error)
    }

    fn rows<'a>(&self, rows: &'a PyReadonlyArray2<'_, f64>) -> PyResult<&'a [f64]> {
        let width = rows.as_array().ncols();
        if width != self.program.n_inputs() {
            return Err(PyValueError::new_err(format!(
                "each row needs {} numbers (the program's inputs), got {width}",
                self.program.n_inputs()
            )));
        }
        rows.as_slice()
            .map_err(|_| PyValueError::new_err("rows must be a C-contiguous float64 array"))
    }

    /// Values over the parameters (and `attached`) with the given value and partials.
    fn recorded<'py>(
        &self,
        py: Python<'py>,
        outputs: Vec<(f64, Vec<f64>)>,
        attached: &[NodeId],
    ) -> PyResult<Bound<'py, PyList>> {
        let ids = {
            let mut arena = ARENA.lock();
            let mut children = self.program.params().to_vec();
            children.extend_from_slice(attached);
            let mut ids = Vec::with_capacity(outputs.len());
            for (value, partials) in outputs {
                let made = if grad_enabled() {
                    arena.recorded(value, &children, partials)
                } else {
                    arena.leaf(value)
                };
                match made {
                    Ok(id) => ids.push(id),
                    Err(err) => {
                        ids.into_iter().for_each(|id| arena.release(id));
                        return Err(engine_error(err));
                    }
                }
            }
            ids
        };
        PyList::new(
            py,
            ids.into_iter()
                .map(|id| wrap(py, id))
                .collect::<PyResult<Vec<_>>>()?,
        )
    }
}

#[pymethods]
impl PyProgram {
    /// Records the graph under `outputs`; the Values in `inputs` become its input slots.
    #[new]
    fn new(outputs: &Bound<'_, PyAny>, inputs: &Bound<'_, PyAny>) -> PyResult<Self> {
        let outputs = ids_of(outputs, "outputs")?;
        let inputs = ids_of(inputs, "inputs")?;
        let mut arena = ARENA.lock();
        let program = Program::record(&arena, &outputs, &inputs).map_err(engine_error)?;
        retain_all(&mut arena, program.params())?;
        Ok(PyProgram { program })
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
        retain_all(&mut ARENA.lock(), self.program.params())?;
        self.program.params().iter().map(|&id| wrap(py, id)).collect()
    }

    /// Replays with `inputs`; `attached` (one Value or None per input) receive gradients
    /// for their slots.
    #[pyo3(signature = (inputs, attached = None))]
    fn run<'py>(
        &self,
        py: Python<'py>,
        inputs: PyReadonlyArray1<'py, f64>,
        attached: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let inputs = inputs
            .as_slice()
            .map_err(|_| PyValueError::new_err("inputs must be a contiguous float64 array"))?;
        if inputs.len() != self.program.n_inputs() {
            return Err(PyValueError::new_err(format!(
                "the program takes {} inputs, got {}",
                self.program.n_inputs(),
                inputs.len()
            )));
        }
        // Which input slots carry a Value that should receive a gradient.
        let mut slots = Vec::new();
        let mut attached_ids = Vec::new();
        if let Some(attached) = attached {
            for (i, item) in attached.try_iter()?.enumerate() {
                if let Ok(v) = item?.cast::<PyValue>() {
                    slots.push(i);
                    attached_ids.push(v.get().id);
                }
            }
        }
        let params = self.read_params()?;
        let (mut registers, mut adjoint, mut scratch) = (Vec::new(), Vec::new(), Vec::new());
        self.program
            .forward(inputs, &params, &mut registers, &mut scratch);
        let n_params = params.len();
        let want_grads = grad_enabled();
        let outputs = (0..self.program.n_outputs())
            .map(|k| {
                let value = self.program.output(&registers, k);
                if !want_grads {
                    return (value, Vec::new());
                }
                self.program.gradient(&registers, k, &mut adjoint, &mut scratch);
                let n_inputs = self.program.n_inputs();
                let mut partials = adjoint[n_inputs..n_inputs + n_params].to_vec();
                partials.extend(slots.iter().map(|&s| adjoint[s]));
                (value, partials)
            })
            .collect();
        self.recorded(py, outputs, &attached_ids)
    }

    /// Forward only, one row of inputs per row of `rows`: a (rows, outputs) array.
    #[pyo3(signature = (rows, threads = None))]
    fn map<'py>(
        &self,
        py: Python<'py>,
        rows: PyReadonlyArray2<'py, f64>,
        threads: Option<usize>,
    ) -> PyResult<Bound<'py, PyArray2<f64>>> {
        let data = self.rows(&rows)?;
        let n_rows = rows.as_array().nrows();
        let params = self.read_params()?;
        let threads = threads_for(threads);
        let out = py
            .detach(|| self.program.map(data, &params, threads))
            .map_err(engine_error)?;
        let n_out = self.program.n_outputs();
        let out = numpy::ndarray::Array2::from_shape_vec((n_rows, n_out), out)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(PyArray2::from_owned_array(py, out))
    }

    /// The outputs over every row, reduced by `reduce` ('mean' or 'sum'), as Values whose
    /// backward carries the reduced gradients into the parameters (leaves under no_grad).
    #[pyo3(signature = (rows, reduce = "mean", threads = None))]
    fn batch<'py>(
        &self,
        py: Python<'py>,
        rows: PyReadonlyArray2<'py, f64>,
        reduce: &str,
        threads: Option<usize>,
    ) -> PyResult<Bound<'py, PyList>> {
        let reduce = match reduce {
            "mean" => Reduce::Mean,
            "sum" => Reduce::Sum,
            other => {
                return Err(PyValueError::new_err(format!(
                    "reduce must be 'mean' or 'sum', not {other:?}"
                )))
            }
        };
        let data = self.rows(&rows)?;
        let params = self.read_params()?;
        let threads = threads_for(threads);
        let outputs = if grad_enabled() {
            let batch = py
                .detach(|| self.program.batch(data, &params, reduce, threads))
                .map_err(engine_error)?;
            batch.values.into_iter().zip(batch.grads).collect()
        } else {
            // Under no_grad the result is a leaf: skip every reverse sweep.
            py.detach(|| self.program.batch_values(data, &params, reduce, threads))
                .map_err(engine_error)?
                .into_iter()
                .map(|value| (value, Vec::new()))
                .collect()
        };
        self.recorded(py, outputs, &[])
    }
}
