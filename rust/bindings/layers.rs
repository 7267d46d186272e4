//! A whole layer of neurons in one call: `act(W x + b)` for every row of `W`, each
//! neuron one `Dot` node as `gradrs.dot` makes. Nothing is kept between calls: the
//! weights are read from the lists given, so a layer always computes with the Values
//! its neurons hold at that moment.

use gradrs_engine::{NodeId, Op};
use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString};

use crate::handles::{
    as_plain_list, list_of, node_of, read_list, release_all, resolve, tuple_of, wrong_item, Held,
};
use crate::shared_arena::ARENA;
use crate::value::{engine_error, recording};
use crate::value_type::value_type;

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
    let names = names.try_iter()?.collect::<PyResult<Vec<_>>>()?;
    let ops = activations_of(&names)?;
    if ops.len() != nout {
        return Err(PyValueError::new_err(format!(
            "{} activations for {nout} neurons",
            ops.len()
        )));
    }
    Ok(ops)
}

/// The op of each activation name.
fn activations_of(names: &[Bound<'_, PyAny>]) -> PyResult<Vec<Option<Op>>> {
    // The neurons of a layer usually share one str object: parse it once.
    let mut last: Option<(&Bound<'_, PyAny>, Option<Op>)> = None;
    let mut ops = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let op = match last {
            Some((same, op)) if same.as_ptr() == name.as_ptr() => op,
            _ => match name.cast::<PyString>() {
                Ok(text) => activation(text.to_str()?)?,
                Err(_) => return Err(wrong_item("activations", "str", i, name)),
            },
        };
        // `names` holds the name parsed, so no other object can take its address meanwhile.
        last = Some((name, op));
        ops.push(op);
    }
    Ok(ops)
}

/// The weight rows and biases when they are all exact lists.
fn plain_lists<'py>(
    weights: &Bound<'py, PyAny>,
    biases: &Bound<'py, PyAny>,
) -> Option<(Vec<Bound<'py, PyList>>, Bound<'py, PyList>)> {
    let biases = as_plain_list(biases)?;
    let rows = as_plain_list(weights)?
        .iter()
        .map(|row| as_plain_list(&row).cloned())
        .collect::<Option<Vec<_>>>()?;
    Some((rows, biases.clone()))
}

/// Reads the weight rows (each `nin` long) and then the biases, straight from their lists.
fn read_in_place(
    read: &mut Vec<NodeId>,
    rows: &[Bound<'_, PyList>],
    biases: &Bound<'_, PyList>,
    nin: usize,
) -> PyResult<()> {
    let value_type = value_type();
    for (j, row) in rows.iter().enumerate() {
        if row.len() != nin {
            return Err(wrong_row(j, row.len(), nin));
        }
        read_list(read, row, value_type, "layer weights")?;
    }
    if biases.len() != rows.len() {
        return Err(wrong_biases(rows.len(), biases.len()));
    }
    read_list(read, biases, value_type, "layer biases")
}

/// Reads any iterables of weight rows and biases into `params`, which holds their items;
/// returns the number of rows.
fn read_held<'py>(
    params: &mut Held<'py, NodeId>,
    weights: &Bound<'py, PyAny>,
    biases: &Bound<'py, PyAny>,
    nin: usize,
) -> PyResult<usize> {
    let mut nout = 0;
    for row in weights.try_iter()? {
        let got = params.values(&row?, "layer weights")?;
        if got != nin {
            return Err(wrong_row(nout, got, nin));
        }
        nout += 1;
    }
    let nb = params.values(biases, "layer biases")?;
    if nb != nout {
        return Err(wrong_biases(nout, nb));
    }
    Ok(nout)
}

fn wrong_row(j: usize, got: usize, nin: usize) -> PyErr {
    PyValueError::new_err(format!("neuron {j} of the layer expects {got} inputs, got {nin}"))
}

fn wrong_biases(nout: usize, nb: usize) -> PyErr {
    PyValueError::new_err(format!("{nout} weight rows but {nb} biases"))
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
    let nin = xs.operands(inputs, "layer input")?;
    let mut params: Held<'py, NodeId> = Held::new();
    let (nout, ops) = match plain_lists(weights, biases) {
        Some((rows, biases)) => {
            // The weights and biases are plain lists, as `Layer` passes them, and the
            // activations are read first: from the first weight read to the engine call below
            // no Python code runs (reading a list's item or a Value's node runs none), so no
            // Value can be dropped in between, and the lists' own references are enough.
            let nout = rows.len();
            let ops = self::activations(activations, nout)?;
            params.read.reserve(nout * (nin + 1));
            read_in_place(&mut params.read, &rows, &biases, nin)?;
            (nout, ops)
        }
        None => {
            let nout = read_held(&mut params, weights, biases, nin)?;
            (nout, self::activations(activations, nout)?)
        }
    };
    let outputs = make_layer(&xs.read, &params.read, nout, &ops)?;
    // `xs` and `params` held every Value read until here, where the new nodes hold theirs.
    drop((xs, params));
    list_of(py, outputs)
}

/// `act(n.w · inputs + n.b)` for every neuron `n` of `neurons`, one Value each, with each
/// neuron's `w` (a list of Values as long as `inputs`), `b` and `_activation` read now.
///
/// What `gradrs.nn.Layer` calls: one call per layer, reading the neurons' attributes here
/// rather than in three Python comprehensions, which cost a layer call a third of its time.
#[pyfunction]
pub fn _layer<'py>(
    py: Python<'py>,
    neurons: &Bound<'py, PyAny>,
    inputs: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyList>> {
    // The neurons are read when the layer is called, as `[n.w for n in neurons]` would read
    // them, before the inputs are converted (which may run Python code). Reading an attribute
    // may run Python code too (a property, `__getattr__`): everything is fetched, and held by
    // these vectors, before any Value's node is read.
    let neurons = tuple_of(neurons)?;
    let nout = neurons.len();
    let mut rows = Vec::with_capacity(nout);
    let mut biases = Vec::with_capacity(nout);
    let mut names = Vec::with_capacity(nout);
    for neuron in neurons.iter() {
        rows.push(neuron.getattr(intern!(py, "w"))?);
        biases.push(neuron.getattr(intern!(py, "b"))?);
        names.push(neuron.getattr(intern!(py, "_activation"))?);
    }
    let ops = activations_of(&names)?;
    let mut xs = Held::new();
    let nin = xs.operands(inputs, "layer input")?;
    let mut params: Held<'py, NodeId> = Held::new();
    params.read.reserve(nout * (nin + 1));
    match rows
        .iter()
        .map(|row| as_plain_list(row))
        .collect::<Option<Vec<_>>>()
    {
        // From the first weight read to the engine call no Python code runs, so the lists'
        // own references (and `rows`, which holds the lists) keep every Value read alive.
        Some(lists) => {
            let value_type = value_type();
            for (j, row) in lists.iter().enumerate() {
                if row.len() != nin {
                    return Err(wrong_row(j, row.len(), nin));
                }
                read_list(&mut params.read, row, value_type, "layer weights")?;
            }
        }
        None => {
            for (j, row) in rows.iter().enumerate() {
                let got = params.values(row, "layer weights")?;
                if got != nin {
                    return Err(wrong_row(j, got, nin));
                }
            }
        }
    }
    let value_type = value_type();
    for (j, bias) in biases.iter().enumerate() {
        params.read.push(node_of(bias, value_type, "layer biases", j)?);
    }
    let outputs = make_layer(&xs.read, &params.read, nout, &ops)?;
    drop((xs, params, rows, biases));
    list_of(py, outputs)
}

/// Makes the layer's nodes from the nodes read: `params` is the weight rows (`nout` of
/// `inputs.len()` each) and then the `nout` biases.
fn make_layer(
    inputs: &[crate::handles::Operand],
    params: &[NodeId],
    nout: usize,
    ops: &[Option<Op>],
) -> PyResult<Vec<NodeId>> {
    let how = recording()?;
    let (w, b) = params.split_at(nout * inputs.len());
    let mut arena = ARENA.lock();
    let (inputs, constants) = resolve(&mut arena, inputs)?;
    let mut outputs = Vec::with_capacity(nout);
    let made = arena.layer(how, w, b, &inputs, ops, &mut outputs);
    release_all(&mut arena, &constants);
    made.map_err(engine_error)?;
    Ok(outputs)
}
