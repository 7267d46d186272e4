//! The Python extension `gradrs._core`: converts arguments, delegates to
//! `gradrs-engine`, and converts results back. No autodiff logic lives here.

mod arrays;
mod compile;
mod fused;
mod handles;
mod layers;
mod optim;
mod shared_arena;
mod value;
mod value_type;

#[pyo3::pymodule(gil_used = true)]
mod _core {
    use pyo3::prelude::*;

    #[pymodule_export]
    use crate::value::{
        _capacity, _live_nodes, _restore_value, _set_detect_anomaly, _set_grad_enabled, _set_tracing,
        is_grad_enabled, AnomalyError, TraceError,
    };

    #[pymodule_export]
    use crate::fused::{dot, logsumexp, sum};

    #[pymodule_export]
    use crate::arrays::{_zero_grads, leaves, ParamGroup};

    #[pymodule_export]
    use crate::layers::{_dense, _layer};

    #[pymodule_export]
    use crate::compile::PyProgram;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        let py = m.py();
        // The arena's only lock is the GIL (shared_arena.rs). `gil_used = true` makes a
        // free-threaded CPython turn the GIL on when importing this module, unless told not to
        // (PYTHON_GIL=0): then refuse to load rather than race.
        if let Ok(is_gil_enabled) = py.import("sys")?.getattr("_is_gil_enabled") {
            if !is_gil_enabled.call0()?.is_truthy()? {
                return Err(pyo3::exceptions::PyImportError::new_err(
                    "gradrs needs the GIL, and this interpreter runs without it (PYTHON_GIL=0 or -X gil=0); \
                     unset that to use gradrs",
                ));
            }
        }
        // rust-numpy finds NumPy's C API on first use and panics if that fails; finding it runs
        // Python code (NumPy's version check), so a Ctrl-C arriving then became a Rust panic in
        // the middle of training. Found here instead, a failure is this import's exception, and
        // afterwards the lookup runs no Python code.
        numpy::get_array_module(py)?;
        drop(numpy::PyArray1::<f64>::zeros(py, 0, false));
        crate::value_type::add_to(m)?;
        crate::value::apply_max_nodes_from_env()?;
        m.add("__version__", env!("CARGO_PKG_VERSION"))
    }
}
