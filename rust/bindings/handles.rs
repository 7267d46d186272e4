//! Node ids from Python objects, and the references the binding holds on nodes.
//!
//! Everything that turns a Python object into a node id (or a number an op takes in place of
//! one) reads it here, so every caller holds what it read the same way and says the same thing
//! about an object of the wrong type; and everything that keeps nodes alive past a call holds
//! them as a [`HeldGroup`] (made by `Arena::hold`, given back by [`let_go`]).

use std::ffi::c_int;
use std::sync::OnceLock;

use gradrs_engine::{Arena, HeldGroup, NodeId};
use pyo3::exceptions::{PyOverflowError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyList, PyTuple};

use crate::shared_arena::ARENA;
use crate::value::{engine_error, wrap};
use crate::value_type::{node, node_unchecked, value_type};

/// What `what` must be, for the error messages (one form for every caller).
const REAL_NUMBER: &str = "a real number (int, float or numpy scalar)";
const VALUES_OR_NUMBERS: &str = "Values or real numbers (int, float or numpy scalar)";

/// An argument an op takes: a node, or a number (an op over a constant, or a constant leaf).
pub(crate) enum Operand {
    Node(NodeId),
    Number(f64),
}

/// `obj` as an operand, or the error its conversion to a float raised. Exact Values and floats
/// are tried first: they are almost every operand an operator, a sum or a layer sees.
#[inline]
pub(crate) fn operand(obj: &Bound<'_, PyAny>) -> PyResult<Operand> {
    if let Some(id) = node(obj) {
        return Ok(Operand::Node(id));
    }
    if let Ok(number) = obj.cast_exact::<PyFloat>() {
        return Ok(Operand::Number(number.value()));
    }
    other_operand(obj)
}

/// [`operand`] for anything but a Value or an exact float: a number of another type (int,
/// numpy scalar, anything with `__float__` or `__index__`).
#[inline(never)]
fn other_operand(obj: &Bound<'_, PyAny>) -> PyResult<Operand> {
    obj.extract::<f64>().map(Operand::Number)
}

/// What an operator returns for an `other` that is no operand (`err` is why): `NotImplemented`,
/// so Python raises its usual TypeError, except for a number too large for a float (`10**400`),
/// which is an OverflowError, as in `1.0 + 10**400`.
#[cold]
pub(crate) fn not_an_operand(other: &Bound<'_, PyAny>, err: PyErr) -> PyResult<Py<PyAny>> {
    if err.is_instance_of::<PyOverflowError>(other.py()) {
        return Err(err);
    }
    Ok(other.py().NotImplemented())
}

/// `item`, item `i` of `what` (or `what` itself when `i` is None), as an operand; anything else
/// is a TypeError (or the OverflowError of a number too large for a float).
#[inline]
fn term(item: &Bound<'_, PyAny>, what: &str, i: Option<usize>) -> PyResult<Operand> {
    match operand(item) {
        Ok(operand) => Ok(operand),
        Err(err) => Err(not_a_term(item, what, i, err)),
    }
}

#[cold]
#[inline(never)]
fn not_a_term(item: &Bound<'_, PyAny>, what: &str, i: Option<usize>, err: PyErr) -> PyErr {
    if err.is_instance_of::<PyOverflowError>(item.py()) {
        return err;
    }
    match i {
        Some(i) => wrong_item(what, VALUES_OR_NUMBERS, i, item),
        None => PyTypeError::new_err(format!(
            "{what} must be a Value or {REAL_NUMBER}, not {}",
            type_name(item)
        )),
    }
}

/// A real number from `obj`, or a TypeError naming what was given instead.
pub(crate) fn real_number(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<f64> {
    if let Ok(number) = obj.cast_exact::<PyFloat>() {
        return Ok(number.value());
    }
    if node(obj).is_some() {
        return Err(PyTypeError::new_err(format!(
            "{what} must be {REAL_NUMBER}, not Value; use v.data for its number"
        )));
    }
    obj.extract::<f64>().map_err(|err| {
        if err.is_instance_of::<PyOverflowError>(obj.py()) {
            return err;
        }
        PyTypeError::new_err(format!("{what} must be {REAL_NUMBER}, not {}", type_name(obj)))
    })
}

/// The TypeError for item `i` of `what`, which must be `expected`.
#[cold]
pub(crate) fn wrong_item(what: &str, expected: &str, i: usize, item: &Bound<'_, PyAny>) -> PyErr {
    PyTypeError::new_err(format!(
        "{what} must be {expected}; item {i} is {}",
        type_name(item)
    ))
}

/// The name of `obj`'s type, for error messages.
pub(crate) fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// The node of `item`, item `i` of `what`, which must be a Value; reading it runs no Python code.
/// `value_type` is `Value`'s type object, looked up once by the caller.
#[inline]
pub(crate) fn node_of(
    item: &Bound<'_, PyAny>,
    value_type: *mut ffi::PyTypeObject,
    what: &str,
    i: usize,
) -> PyResult<NodeId> {
    if item.get_type_ptr() == value_type {
        // SAFETY: the item's type is exactly Value's, checked just above (a pointer
        // comparison: a layer reads a few hundred weights per call).
        return Ok(unsafe { node_unchecked(item.as_ptr()) });
    }
    Err(not_a_value(item, what, i))
}

/// The error of `node_of`, kept out of line so a layer's loop over its weights stays a load
/// and a comparison per weight.
#[cold]
#[inline(never)]
fn not_a_value(item: &Bound<'_, PyAny>, what: &str, i: usize) -> PyErr {
    wrong_item(what, "Values", i, item)
}

/// `obj` as a list whose items can be read straight from its storage: an exact list, or a
/// subclass that keeps list's own iteration and length (such as the lists `gradrs.nn` keeps,
/// which only note their edits), so that reading its storage gives what iterating it would.
/// (Indexing is not compared: a subclass that defines `__setitem__` gets a generic `sq_item` slot
/// even when its `__getitem__` is list's own, and iterating a list does not index it.)
pub(crate) fn as_plain_list<'a, 'py>(obj: &'a Bound<'py, PyAny>) -> Option<&'a Bound<'py, PyList>> {
    if let Ok(list) = obj.cast_exact::<PyList>() {
        return Some(list);
    }
    let list = obj.cast::<PyList>().ok()?;
    // Compared at every call, not remembered per type: a class's `__iter__` can be replaced later.
    const SLOTS: [c_int; 3] = [ffi::Py_tp_iter, ffi::Py_sq_length, ffi::Py_mp_length];
    let slots_of = |tp: *mut ffi::PyTypeObject| {
        // SAFETY: `tp` is a valid type object (`obj`'s, or the static `list`), and
        // `PyType_GetSlot` only reads a slot's function pointer, which stays unused here.
        SLOTS.map(|slot| unsafe { ffi::PyType_GetSlot(tp, slot) } as usize)
    };
    // `list`'s own slots never change: read once.
    static LIST_SLOTS: OnceLock<[usize; 3]> = OnceLock::new();
    let list_slots = LIST_SLOTS.get_or_init(|| slots_of(std::ptr::addr_of_mut!(ffi::PyList_Type)));
    (slots_of(obj.get_type_ptr()) == *list_slots).then_some(list)
}

/// Appends the node of every Value in `list`, reading its items as borrowed references:
/// a layer reads hundreds of weights per call, and a new reference per weight doubled its cost.
/// The caller makes sure no Python code runs until it is done with the nodes read (the list
/// keeps its items alive only as long as nothing changes it).
pub(crate) fn read_list(
    read: &mut Vec<NodeId>,
    list: &Bound<'_, PyList>,
    value_type: *mut ffi::PyTypeObject,
    what: &str,
) -> PyResult<()> {
    let py = list.py();
    for i in 0..list.len() {
        // SAFETY: `i` is below the list's length, read just above with the GIL held and no
        // Python code run since, so `PyList_GetItem` returns a valid borrowed reference that
        // the list keeps alive; it is used only before any Python code can run.
        let item = unsafe {
            Borrowed::from_ptr_or_err(py, ffi::PyList_GetItem(list.as_ptr(), i as ffi::Py_ssize_t))?
        };
        read.push(node_of(&item, value_type, what, i)?);
    }
    Ok(())
}

/// The items of `iterable` in a tuple of our own (the tuple itself when it is one): Python code
/// run later cannot take an item out of it, as it can out of a list or an iterator.
pub(crate) fn tuple_of<'py>(iterable: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyTuple>> {
    if let Ok(tuple) = iterable.cast_exact::<PyTuple>() {
        return Ok(tuple.clone());
    }
    let copy = match as_plain_list(iterable) {
        // A list's storage is what iterating it gives (`as_plain_list`), copied in one call.
        // SAFETY: `list` is a valid list; `PyList_AsTuple` returns a new reference, or null
        // with an exception set, which `from_owned_ptr_or_err` turns into Err.
        Some(list) => unsafe { ffi::PyList_AsTuple(list.as_ptr()) },
        // SAFETY: `iterable` is a valid object; `PySequence_Tuple` (Python's `tuple(x)`) returns
        // a new reference, or null with an exception set, as above.
        None => unsafe { ffi::PySequence_Tuple(iterable.as_ptr()) },
    };
    // SAFETY: `copy` is a new reference to a tuple, or null with an exception set.
    unsafe { Bound::from_owned_ptr_or_err(iterable.py(), copy) }?
        .cast_into::<PyTuple>()
        .map_err(Into::into)
}

/// What was read from the items of Python iterables, with the items themselves.
///
/// A Value's node lives only while some handle to it does, and reading an item can run Python
/// code (`__float__`, `__index__`, a generator's next step) that drops every other handle, or
/// empties the list being read. So the items are first copied into a tuple of our own (one
/// call for a list, and immutable, so nothing can take an item out of it), held from before
/// the first item is read until the engine call that uses what was read is over: keep a
/// `Held` alive across that call.
pub(crate) struct Held<'py, T> {
    items: Vec<Bound<'py, PyTuple>>,
    pub(crate) read: Vec<T>,
}

impl<'py, T> Held<'py, T> {
    /// Nothing held yet.
    pub(crate) fn new() -> Self {
        Held {
            items: Vec::new(),
            read: Vec::new(),
        }
    }

    /// Holds every item of `iterable`, then reads each with `read(item, index)`; returns how
    /// many there were.
    fn extend(
        &mut self,
        iterable: &Bound<'py, PyAny>,
        read: impl Fn(&Bound<'py, PyAny>, usize) -> PyResult<T>,
    ) -> PyResult<usize> {
        self.read_all(tuple_of(iterable)?, read)
    }

    /// [`Held::extend`] for an iterable that may be endless: takes at most `limit` items (then
    /// returns `limit + 1`, for the caller to refuse).
    fn extend_at_most(
        &mut self,
        iterable: &Bound<'py, PyAny>,
        limit: usize,
        read: impl Fn(&Bound<'py, PyAny>, usize) -> PyResult<T>,
    ) -> PyResult<usize> {
        let items = iterable
            .try_iter()?
            .take(limit.saturating_add(1))
            .collect::<PyResult<Vec<_>>>()?;
        if items.len() > limit {
            return Ok(items.len());
        }
        self.read_all(PyTuple::new(iterable.py(), items)?, read)
    }

    fn read_all(
        &mut self,
        items: Bound<'py, PyTuple>,
        read: impl Fn(&Bound<'py, PyAny>, usize) -> PyResult<T>,
    ) -> PyResult<usize> {
        self.read.reserve(items.len());
        for (i, item) in items.iter_borrowed().enumerate() {
            self.read.push(read(&item, i)?);
        }
        let n = items.len();
        self.items.push(items);
        Ok(n)
    }
}

impl<'py> Held<'py, NodeId> {
    /// Appends the nodes of the Values in `iterable`; anything else is a TypeError naming
    /// `what` and the item's position.
    pub(crate) fn values(&mut self, iterable: &Bound<'py, PyAny>, what: &str) -> PyResult<usize> {
        let value_type = value_type();
        self.extend(iterable, |item, i| node_of(item, value_type, what, i))
    }
}

impl<'py> Held<'py, Option<NodeId>> {
    /// Appends the nodes of the Values in `iterable`, None for each None, reading at most
    /// `limit` items (`limit + 1` is returned for more).
    pub(crate) fn values_or_none(
        &mut self,
        iterable: &Bound<'py, PyAny>,
        limit: usize,
        what: &str,
    ) -> PyResult<usize> {
        self.extend_at_most(iterable, limit, |item, i| {
            if item.is_none() {
                return Ok(None);
            }
            match node(item) {
                Some(id) => Ok(Some(id)),
                None => Err(wrong_item(what, "Values or None", i, item)),
            }
        })
    }
}

impl<'py> Held<'py, Operand> {
    /// Appends the operands (Values or real numbers) in `iterable`.
    pub(crate) fn operands(&mut self, iterable: &Bound<'py, PyAny>, what: &str) -> PyResult<usize> {
        self.extend(iterable, |item, i| term(item, what, Some(i)))
    }

    /// Appends one operand, an argument of the call (which holds it).
    pub(crate) fn push(&mut self, item: &Bound<'py, PyAny>, what: &str) -> PyResult<()> {
        self.read.push(term(item, what, None)?);
        Ok(())
    }
}

/// The nodes for `operands`, making a leaf for each number. The leaves are returned too: the
/// caller releases them once the nodes that use them hold them.
pub(crate) fn resolve(arena: &mut Arena, operands: &[Operand]) -> PyResult<(Vec<NodeId>, Vec<NodeId>)> {
    let mut constants = Vec::new();
    let mut nodes = Vec::with_capacity(operands.len());
    for operand in operands {
        match *operand {
            Operand::Node(id) => nodes.push(id),
            Operand::Number(c) => match arena.leaf(c) {
                Ok(id) => {
                    constants.push(id);
                    nodes.push(id);
                }
                Err(err) => {
                    release_all(arena, &constants);
                    return Err(engine_error(err));
                }
            },
        }
    }
    Ok((nodes, constants))
}

/// Adds a reference to every node in `ids`, or to none of them if one is stale.
pub(crate) fn retain_all(arena: &mut Arena, ids: &[NodeId]) -> PyResult<()> {
    for (n, &id) in ids.iter().enumerate() {
        if let Err(err) = arena.retain(id) {
            release_all(arena, &ids[..n]);
            return Err(engine_error(err));
        }
    }
    Ok(())
}

pub(crate) fn release_all(arena: &mut Arena, ids: &[NodeId]) {
    for &id in ids {
        arena.release(id);
    }
}

/// A handle for each of `ids`, each already holding the reference its handle takes over.
/// If one cannot be made, the references of the rest are released too.
pub(crate) fn wrap_all(py: Python<'_>, ids: Vec<NodeId>) -> PyResult<Vec<Py<PyAny>>> {
    let mut handles = Vec::with_capacity(ids.len());
    for (n, &id) in ids.iter().enumerate() {
        match wrap(py, id) {
            Ok(handle) => handles.push(handle),
            Err(err) => {
                release_all(&mut ARENA.lock(), &ids[n + 1..]);
                return Err(err);
            }
        }
    }
    Ok(handles)
}

/// [`wrap_all`] as a list.
pub(crate) fn list_of(py: Python<'_>, ids: Vec<NodeId>) -> PyResult<Bound<'_, PyList>> {
    PyList::new(py, wrap_all(py, ids)?)
}

/// New handles to the nodes of `group`, in order.
pub(crate) fn handles_of(py: Python<'_>, group: &HeldGroup) -> PyResult<Vec<Py<PyAny>>> {
    let ids = group.ids();
    retain_all(&mut ARENA.lock(), ids)?;
    wrap_all(py, ids.to_vec())
}

/// Gives back every reference `group` holds, leaving it empty: for a destructor, so from any
/// thread and never waiting for the arena's lock.
pub(crate) fn let_go(group: &mut HeldGroup) {
    for id in std::mem::take(group).into_ids() {
        ARENA.release_soon(id);
    }
}
