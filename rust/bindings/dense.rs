//! A whole layer of neurons in one call: `act(W x + b)` for every row of `W`, each
//! neuron one `Dot` node as `gradrs.dot` makes. Nothing is kept between calls: the
//! weights are read from the lists given, so a layer always computes with the Values
//! its neurons hold at that moment.

use gradrs_engine::{NodeId, Op, ARENA};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString};

use crate::bulk::wrap_all;
use crate::fused::{release_all, resolve, Held};
use crate::value::{record_locked, type_name};

fn activation(name: &str) -> PyResult<Option<Op>> {
    match name {
        "relu" => Ok(Some(Op::Relu)),
        "tanh" => Ok(Some(Op::Tanh)),
        "sigmoid" => Ok(Some(Op::Sigmoid)),
        "linear" => Ok(None),
        other => Err(PyValueError::new_err(format!(
            "unknown activation '{other}'; choose relu, tanh, sigmoid or linear"
        ))),
    }
}

/// One activation for every neuron (a str), or one per neuron (an iterable of str).
fn activations(names: &Bound<'_, PyAny>, nout: usize) -> PyResult<Vec<Option<Op>>> {
    if let Ok(name) = names.cast::<PyString>() {
        return Ok(vec![activation(name.to_str()?)?; nout]);
    }
    let ops = names
        .try_iter()?
        .enumerate()
        .map(|(i, name)| {
            let name = name?;
            match name.cast::<PyString>() {
                Ok(name) => activation(name.to_str()?),
                Err(_) => Err(PyTypeError::new_err(format!(
                    "activations must be str; item {i} is {}",
                    type_name(&name)
                ))),
            }
        })
        .collect::<PyResult<Vec<_>>>()?;
    if ops.len() != nout {
        return Err(PyValueError::new_err(format!(
            "{} activations for {nout} neurons",
            ops.len()
        )));
    }
    Ok(ops)
}

/// `act_j(weights[j] · inputs + biases[j])` for every neuron `j`, one Value each.
///
/// `weights` holds one row of Values per neuron, each as long as `inputs` (Values or
/// numbers); `biases` one Value per neuron; `activations` one name for all or one per
/// neuron. Everything is read and checked before any node is made.
#[pyfunction]
pub fn _dense<'py>(
    py: Python<'py>,
    weights: &Bound<'py, PyAny>,
    biases: &Bound<'py, PyAny>,
    activations: &Bound<'py, PyAny>,
    inputs: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyList>> {
    // Inputs first: converting them may run Python code, and the weights read after it are
    // the ones the neurons hold when the nodes are made.
    let mut xs = Held::new();
    let nin = xs.terms(inputs, "layer input")?;
    let rows = weights.len().unwrap_or(0);
    let mut params: Held<'py, NodeId> = Held::with_capacity(rows + 1, rows * (nin + 1));
    let mut nout = 0;
    for row in weights.try_iter()? {
        let got = params.values(&row?, "layer weights")?;
        if got != nin {
            return Err(PyValueError::new_err(format!(
                "neuron {nout} of the layer expects {got} inputs, got {nin}"
            )));
        }
        nout += 1;
    }
    let nb = params.values(biases, "layer biases")?;
    if nb != nout {
        return Err(PyValueError::new_err(format!(
            "{nout} weight rows but {nb} biases"
        )));
    }
    let ops = self::activations(activations, nout)?;
    let (w, b) = params.read.split_at(nout * nin);
    let outputs = {
        let mut arena = ARENA.lock();
        let (inputs, constants) = resolve(&mut arena, &xs.read)?;
        let mut outputs = Vec::with_capacity(nout);
        let mut children = Vec::with_capacity(2 * nin + 1);
        let mut failure = None;
        for j in 0..nout {
            children.clear();
            children.extend_from_slice(&w[j * nin..(j + 1) * nin]);
            children.extend_from_slice(&inputs);
            children.push(b[j]);
            let step = record_locked(&mut arena, Op::Dot, &children).and_then(|pre| match ops[j] {
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
    // `xs` and `params` held every Value read until here, where the new nodes hold theirs.
    drop((xs, params));
    PyList::new(py, wrap_all(py, outputs)?)
}
