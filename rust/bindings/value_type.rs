//! `gradrs.Value` as CPython sees it: the object (a handle to one node), its type, and the
//! functions the interpreter calls on it.
//!
//! The type is written against CPython's C API rather than as a `#[pyclass]`. An eager op
//! (`a * b`, `v.tanh()`) does a few hundred instructions of arena work; PyO3's generic slot
//! trampoline, its way of making an object (calling the base type's `tp_new` with an empty
//! tuple) and the deallocation of a pyclass (always a GC type) cost about as much again, which
//! kept the drop-in path far from what a minimal C extension costs per op. So:
//!
//! - the arithmetic slots, the one-child methods and `softplus`, `Value(x)`, the `data`/`grad`
//!   getters and setters, comparisons and truth go from the interpreter to the arena and back
//!   through [`fast`], touching only the arena and CPython's own functions, and hand anything
//!   unusual (a number of another type, an error) to the same safe code every other entry
//!   point runs;
//! - every other entry point runs its body (in `value.rs`) through [`guarded`], attached
//!   through PyO3 as a `#[pymethods]` body would be;
//! - a Value is a plain (non-GC) object: it refers to no Python object, so it can never be in
//!   a reference cycle; its memory comes from CPython's object allocator, and the memory of
//!   the last few freed Values is kept for the next ones.
//!
//! No panic crosses into the interpreter: both wrappers turn one into a `PanicException`.

use std::any::Any;
use std::cell::{Cell, UnsafeCell};
use std::ffi::{c_int, c_void, CStr};
use std::mem::offset_of;
use std::panic::{self, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

use gradrs_engine::{NodeId, Op};
use pyo3::exceptions::PyAttributeError;
use pyo3::ffi;
use pyo3::panic::PanicException;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::handles::real_number;
use crate::shared_arena::ARENA;
use crate::value::{self, Arithmetic};

/// A Value object: the object header, the node it holds one reference to, and the list of
/// weak references to it (`weakref` works on Values, and the handle cache relies on it).
#[repr(C)]
struct ValueObject {
    ob_base: ffi::PyObject,
    id: NodeId,
    weakrefs: *mut ffi::PyObject,
}

/// `Value`'s type object, made once when `gradrs._core` is first imported (PyO3 refuses a second
/// initialisation of the module, and sub-interpreters), and never freed.
static VALUE_TYPE: AtomicPtr<ffi::PyTypeObject> = AtomicPtr::new(ptr::null_mut());

/// `Value`'s type object (null before `gradrs._core` is imported, when no Value can exist).
#[inline]
pub(crate) fn value_type() -> *mut ffi::PyTypeObject {
    VALUE_TYPE.load(Ordering::Relaxed)
}

#[inline]
fn is_value(obj: *mut ffi::PyObject) -> bool {
    // SAFETY: every caller passes a live object (an argument of a call in progress).
    unsafe { ffi::Py_TYPE(obj) == value_type() }
}

/// The node a Value holds.
///
/// # Safety
/// `obj` must be a live Value (its type checked to be exactly [`value_type`]; Value has no
/// subclasses).
#[inline]
pub(crate) unsafe fn node_unchecked(obj: *mut ffi::PyObject) -> NodeId {
    // SAFETY: by the caller's promise `obj` points to a ValueObject, whose `id` never changes.
    unsafe { (*obj.cast::<ValueObject>()).id }
}

/// The node of `obj` if it is a Value.
#[inline]
pub(crate) fn node(obj: &Bound<'_, PyAny>) -> Option<NodeId> {
    let ptr = obj.as_ptr();
    // SAFETY: the type was just checked to be Value's.
    is_value(ptr).then(|| unsafe { node_unchecked(ptr) })
}

/// A new Value for `id`, which already holds the reference the Value takes over; null with
/// Python's MemoryError set (and the reference released) if no object can be allocated.
/// Runs no Python code.
fn new_handle(attached: Python<'_>, id: NodeId) -> *mut ffi::PyObject {
    let obj = match SPARE_VALUES.take(attached) {
        Some(obj) => obj,
        // SAFETY: a Value is not a GC type, so its objects come from CPython's object allocator.
        None => unsafe { ffi::PyObject_Malloc(size_of::<ValueObject>()).cast::<ffi::PyObject>() },
    };
    if obj.is_null() {
        ARENA.release_soon_attached(attached, id);
        // SAFETY: attached, as the caller proves.
        return unsafe { ffi::PyErr_NoMemory() };
    }
    // SAFETY: `obj` is a block of a Value's size from the object allocator that no object
    // occupies; the type is ready (no Value op can run before the module made it).
    // `PyObject_Init` sets the header (taking a reference to the type), and the two fields are
    // written before the object is seen by anyone.
    unsafe {
        ffi::PyObject_Init(obj, value_type());
        let value = obj.cast::<ValueObject>();
        (*value).id = id;
        (*value).weakrefs = ptr::null_mut();
    }
    obj
}

/// How many freed Values' memory is kept for the next ones.
const SPARES: usize = 64;

/// The memory of recently freed Values, kept for the next ones as CPython keeps freed floats'
/// (an op's temporary, `(a * b).tanh()`'s product, is freed as the next op makes its result):
/// making and freeing a Value then skips the object allocator.
struct SpareValues {
    blocks: UnsafeCell<[*mut ffi::PyObject; SPARES]>,
    count: Cell<usize>,
}

// SAFETY: used only through `take` and `keep`, whose callers prove they are attached to the
// interpreter, which with the GIL always on (see shared_arena.rs) means holding the GIL: one
// thread at a time, and neither runs any Python code in between.
unsafe impl Sync for SpareValues {}

static SPARE_VALUES: SpareValues = SpareValues {
    blocks: UnsafeCell::new([ptr::null_mut(); SPARES]),
    count: Cell::new(0),
};

impl SpareValues {
    #[inline]
    fn take(&self, _attached: Python<'_>) -> Option<*mut ffi::PyObject> {
        let count = self.count.get().checked_sub(1)?;
        self.count.set(count);
        // SAFETY: blocks below `count` hold kept blocks; no other reference to the array exists
        // while this runs (see the `Sync` impl).
        Some(unsafe { (*self.blocks.get())[count] })
    }

    /// Keeps `block` (a freed Value's memory), or gives it back to the allocator when full.
    #[inline]
    fn keep(&self, _attached: Python<'_>, block: *mut ffi::PyObject) {
        let count = self.count.get();
        if count == SPARES {
            // SAFETY: `block` came from PyObject_Malloc and nothing refers to it any more.
            unsafe { ffi::PyObject_Free(block.cast()) };
            return;
        }
        // SAFETY: as in `take`.
        unsafe { (*self.blocks.get())[count] = block };
        self.count.set(count + 1);
    }
}

/// A new Value for a node that already holds one reference for it.
pub(crate) fn wrap(py: Python<'_>, id: NodeId) -> PyResult<Py<PyAny>> {
    let obj = new_handle(py, id);
    // SAFETY: `obj` is a new reference, or null with an error set.
    unsafe { Bound::from_owned_ptr_or_err(py, obj) }.map(Bound::unbind)
}

/// Makes `Value`'s type and adds it to the module `m` (once per process).
pub(crate) fn add_to(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    if value_type().is_null() {
        let made = make_type(py)?;
        VALUE_TYPE.store(made.as_ptr().cast(), Ordering::Relaxed);
        // The static holds this reference for the life of the process.
        std::mem::forget(made);
    }
    // SAFETY: the pointer was just stored, from a live type object that is never freed.
    let value_type = unsafe { Bound::from_borrowed_ptr(py, value_type().cast()) };
    m.add("Value", value_type)
}

fn make_type(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    // CPython keeps pointers to the method, attribute and member tables for the type's life,
    // so they are leaked: one small table per process.
    let methods: &'static mut [ffi::PyMethodDef] = Box::leak(method_table().into_boxed_slice());
    let getset: &'static mut [ffi::PyGetSetDef] = Box::leak(attribute_table().into_boxed_slice());
    let members: &'static mut [ffi::PyMemberDef] = Box::leak(Box::new([
        ffi::PyMemberDef {
            name: c"__weaklistoffset__".as_ptr(),
            type_code: ffi::Py_T_PYSSIZET,
            offset: offset_of!(ValueObject, weakrefs) as ffi::Py_ssize_t,
            flags: ffi::Py_READONLY,
            doc: ptr::null(),
        },
        ffi::PyMemberDef::default(),
    ]));
    let slot = |slot: c_int, pfunc: *mut c_void| ffi::PyType_Slot { slot, pfunc };
    let mut slots = [
        slot(ffi::Py_tp_doc, DOC.as_ptr().cast_mut().cast()),
        slot(ffi::Py_tp_new, new as ffi::newfunc as *mut c_void),
        slot(ffi::Py_tp_dealloc, dealloc as ffi::destructor as *mut c_void),
        slot(ffi::Py_tp_repr, repr as ffi::reprfunc as *mut c_void),
        slot(ffi::Py_tp_hash, hash as ffi::hashfunc as *mut c_void),
        slot(
            ffi::Py_tp_richcompare,
            richcompare as ffi::richcmpfunc as *mut c_void,
        ),
        slot(ffi::Py_tp_methods, methods.as_mut_ptr().cast()),
        slot(ffi::Py_tp_getset, getset.as_mut_ptr().cast()),
        slot(ffi::Py_tp_members, members.as_mut_ptr().cast()),
        slot(ffi::Py_nb_add, add as ffi::binaryfunc as *mut c_void),
        slot(ffi::Py_nb_subtract, subtract as ffi::binaryfunc as *mut c_void),
        slot(ffi::Py_nb_multiply, multiply as ffi::binaryfunc as *mut c_void),
        slot(ffi::Py_nb_true_divide, divide as ffi::binaryfunc as *mut c_void),
        slot(ffi::Py_nb_power, power as ffi::ternaryfunc as *mut c_void),
        slot(ffi::Py_nb_negative, negative as ffi::unaryfunc as *mut c_void),
        slot(ffi::Py_nb_bool, truth as ffi::inquiry as *mut c_void),
        slot(ffi::Py_nb_float, to_float as ffi::unaryfunc as *mut c_void),
        ffi::PyType_Slot::default(),
    ];
    let mut spec = ffi::PyType_Spec {
        name: c"gradrs.Value".as_ptr(),
        basicsize: c_int::try_from(size_of::<ValueObject>()).expect("a Value is a few words"),
        itemsize: 0,
        // Not a base type (no subclasses: an exact type check identifies a Value), not GC.
        flags: ffi::Py_TPFLAGS_DEFAULT as _,
        slots: slots.as_mut_ptr(),
    };
    // SAFETY: the spec and its slots are valid for the call (CPython copies them); the tables
    // they point to live for the rest of the process.
    let made = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyType_FromSpec(&mut spec))? };
    // Makes numpy hand `ndarray * Value` to `Value.__rmul__` instead of building an object array.
    made.setattr("__array_ufunc__", py.None())?;
    Ok(made)
}

const DOC: &CStr = c"Value(data, label=None)\n--\n\nA scalar value and its gradient, recorded in the graph that produced it.";

// ---------------------------------------------------------------------------------------------
// The two ways in: `fast` for the hot entry points, `guarded` for the rest.

/// What an entry point returns to the interpreter when it has raised.
trait Raised {
    const RAISED: Self;
}

impl Raised for *mut ffi::PyObject {
    const RAISED: Self = ptr::null_mut();
}

impl Raised for c_int {
    const RAISED: Self = -1;
}

impl Raised for ffi::Py_hash_t {
    const RAISED: Self = -1;
}

/// Runs an entry point's body attached through PyO3 (as a `#[pymethods]` body runs, so any
/// Python object it drops is released at once), and raises its error, or a `PanicException`
/// for a Rust panic, in the interpreter.
fn guarded<T: Raised>(body: impl FnOnce(Python<'_>) -> PyResult<T>) -> T {
    Python::attach(|py| {
        let err = match panic::catch_unwind(AssertUnwindSafe(|| body(py))) {
            Ok(Ok(result)) => return result,
            Ok(Err(err)) => err,
            Err(payload) => panic_error(payload),
        };
        err.restore(py);
        T::RAISED
    })
}

/// Runs a hot entry point's body, which touches only the arena and CPython's own functions
/// (so it needs none of PyO3's per-call state; `Python::attach` alone cost a fifth of a
/// `v.data = x`). An error it returns, or a panic, is raised through [`guarded`].
#[inline(always)]
fn fast<T: Raised>(body: impl FnOnce() -> PyResult<T>) -> T {
    match panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(result)) => result,
        Ok(Err(err)) => raise(err),
        Err(payload) => raise(panic_error(payload)),
    }
}

#[cold]
#[inline(never)]
fn raise<T: Raised>(err: PyErr) -> T {
    guarded(|_| Err(err))
}

/// A token for a hot entry point's body: CPython calls every slot, method and attribute of
/// Value's (and its deallocator) attached to the interpreter.
#[inline(always)]
fn attached() -> Python<'static> {
    // SAFETY: called only from Value's own slots, methods and attributes (see above).
    unsafe { Python::assume_attached() }
}

#[cold]
fn panic_error(payload: Box<dyn Any + Send>) -> PyErr {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a Rust panic with no message".to_owned());
    PanicException::new_err(message)
}

/// `obj` as a Bound for the duration of a call that holds it.
///
/// # Safety
/// `obj` must be a live object for `'py`.
unsafe fn borrowed<'py>(py: Python<'py>, obj: *mut ffi::PyObject) -> Bound<'py, PyAny> {
    // SAFETY: as the caller promises.
    unsafe { Bound::from_borrowed_ptr(py, obj) }
}

/// Applies `op` to `children` and returns the new Value: the whole of an eager op.
#[inline(always)]
fn apply(op: Op, children: &[NodeId]) -> PyResult<*mut ffi::PyObject> {
    let attached = attached();
    let id = value::apply_locked(&mut ARENA.lock_attached(attached), op, children)?;
    Ok(new_handle(attached, id))
}

/// `obj`'s number if it is an exact float or int that fits one; None for anything else, which
/// the safe path then reads (or refuses) as every other operand is.
#[inline(always)]
fn plain_number(obj: *mut ffi::PyObject) -> Option<f64> {
    // SAFETY: `obj` is a live argument; both conversions are defined for their exact types.
    unsafe {
        if ffi::PyFloat_CheckExact(obj) != 0 {
            return Some(ffi::PyFloat_AsDouble(obj));
        }
        if ffi::PyLong_CheckExact(obj) != 0 {
            let number = ffi::PyLong_AsDouble(obj);
            if number == -1.0 && !ffi::PyErr_Occurred().is_null() {
                // Too large for a float: the safe path raises the OverflowError itself.
                ffi::PyErr_Clear();
                return None;
            }
            return Some(number);
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Arithmetic: CPython calls one slot for `v + x` and `x + v` alike.

#[inline(always)]
fn arithmetic(x: *mut ffi::PyObject, y: *mut ffi::PyObject, how: Arithmetic) -> *mut ffi::PyObject {
    fast(|| {
        if is_value(x) {
            // SAFETY: `x` (and `y`, where checked) is a Value.
            let a = unsafe { node_unchecked(x) };
            if is_value(y) {
                return apply(how.both, &[a, unsafe { node_unchecked(y) }]);
            }
            if let Some(c) = plain_number(y) {
                return apply((how.number_right)(c), &[a]);
            }
        } else if is_value(y) {
            if let Some(c) = plain_number(x) {
                // SAFETY: `y` is a Value.
                return apply((how.number_left)(c), &[unsafe { node_unchecked(y) }]);
            }
        }
        Ok(guarded(|py| {
            // SAFETY: both are arguments of this call.
            let (x, y) = unsafe { (borrowed(py, x), borrowed(py, y)) };
            value::arithmetic(py, &x, &y, how).map(Py::into_ptr)
        }))
    })
}

unsafe extern "C" fn add(x: *mut ffi::PyObject, y: *mut ffi::PyObject) -> *mut ffi::PyObject {
    arithmetic(x, y, value::ADD)
}

unsafe extern "C" fn subtract(x: *mut ffi::PyObject, y: *mut ffi::PyObject) -> *mut ffi::PyObject {
    arithmetic(x, y, value::SUBTRACT)
}

unsafe extern "C" fn multiply(x: *mut ffi::PyObject, y: *mut ffi::PyObject) -> *mut ffi::PyObject {
    arithmetic(x, y, value::MULTIPLY)
}

unsafe extern "C" fn divide(x: *mut ffi::PyObject, y: *mut ffi::PyObject) -> *mut ffi::PyObject {
    arithmetic(x, y, value::DIVIDE)
}

unsafe extern "C" fn power(
    x: *mut ffi::PyObject,
    y: *mut ffi::PyObject,
    modulo: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: `modulo` is a live argument (None for two-argument pow).
    if unsafe { modulo != ffi::Py_None() } {
        return guarded(|_| Err(value::modulo_refused()));
    }
    arithmetic(x, y, value::POWER)
}

// ---------------------------------------------------------------------------------------------
// One-child ops: `-v` and the methods that take no argument.

#[inline(always)]
fn unary(slf: *mut ffi::PyObject, op: Op) -> *mut ffi::PyObject {
    // SAFETY: CPython passes a Value as `self` to its own type's slots and methods.
    fast(|| apply(op, &[unsafe { node_unchecked(slf) }]))
}

unsafe extern "C" fn negative(slf: *mut ffi::PyObject) -> *mut ffi::PyObject {
    unary(slf, Op::Neg)
}

/// The one-child methods that take no argument: (name, op, docstring with its signature).
macro_rules! unary_methods {
    ($($function:ident: $name:literal => $op:expr, $doc:literal;)*) => {
        $(
            unsafe extern "C" fn $function(slf: *mut ffi::PyObject, _: *mut ffi::PyObject) -> *mut ffi::PyObject {
                unary(slf, $op)
            }
        )*
        const UNARY_METHODS: &[(&CStr, ffi::PyCFunction, &CStr)] = &[$(($name, $function, $doc)),*];
    };
}

unary_methods! {
    relu: c"relu" => Op::Relu,
        c"relu($self, /)\n--\n\nmax(0, x); its gradient at exactly 0 is 0, as in micrograd and PyTorch.";
    tanh: c"tanh" => Op::Tanh, c"tanh($self, /)\n--\n\nThe hyperbolic tangent.";
    exp: c"exp" => Op::Exp, c"exp($self, /)\n--\n\ne to the power of this Value.";
    log: c"log" => Op::Log, c"log($self, /)\n--\n\nThe natural logarithm (-inf at 0, nan below).";
    sigmoid: c"sigmoid" => Op::Sigmoid, c"sigmoid($self, /)\n--\n\n1 / (1 + exp(-x)).";
}

// ---------------------------------------------------------------------------------------------
// The other methods.

/// The Value `slf` of a method call.
///
/// # Safety
/// `slf` must be the `self` CPython passes to one of Value's methods or slots.
unsafe fn this(slf: *mut ffi::PyObject) -> NodeId {
    // SAFETY: CPython checks `self`'s type before calling a method or slot of the type.
    unsafe { node_unchecked(slf) }
}

unsafe extern "C" fn softplus(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    if kwnames.is_null() {
        // The usual calls, `v.softplus()` and `v.softplus(t)` with a float or int, as any op.
        match nargs {
            0 => return unary(slf, Op::Softplus(value::SOFTPLUS_THRESHOLD)),
            // SAFETY: there is one positional argument.
            1 => {
                if let Some(threshold) = plain_number(unsafe { *args }) {
                    return unary(slf, Op::Softplus(threshold));
                }
            }
            _ => {}
        }
    }
    guarded(|py| {
        // SAFETY: a vectorcall passes `nargs` positional arguments, then one per keyword name.
        let threshold = unsafe { one_optional_argument(py, args, nargs, kwnames, "softplus", "threshold")? };
        let threshold = match threshold {
            Some(t) => t
                .extract::<f64>()
                .map_err(|_| value::argument_error("softplus", "threshold", &t))?,
            None => value::SOFTPLUS_THRESHOLD,
        };
        Ok(value::apply(py, Op::Softplus(threshold), &[unsafe { this(slf) }])?.into_ptr())
    })
}

/// The one optional argument `name` of method `method`, given by position or keyword.
///
/// # Safety
/// `args`, `nargs` and `kwnames` must be those of a vectorcall in progress.
unsafe fn one_optional_argument<'py>(
    py: Python<'py>,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
    method: &str,
    name: &str,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let positional = usize::try_from(nargs).unwrap_or(0);
    // SAFETY: as the caller promises, `kwnames` is null or a tuple of strings.
    let keywords = unsafe { Bound::from_borrowed_ptr_or_opt(py, kwnames) }
        .map(|names| names.cast_into::<PyTuple>())
        .transpose()?;
    let given = positional + keywords.as_ref().map_or(0, |k| k.len());
    if given > 1 {
        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "Value.{method}() takes at most 1 argument ({given} given)"
        )));
    }
    if given == 0 {
        return Ok(None);
    }
    if let Some(keywords) = keywords.filter(|k| !k.is_empty()) {
        let keyword = keywords.get_item(0)?;
        if keyword.extract::<&str>()? != name {
            return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "Value.{method}() got an unexpected keyword argument '{keyword}'"
            )));
        }
    }
    // SAFETY: there is exactly one argument, at `args[0]`.
    Ok(Some(unsafe { borrowed(py, *args) }))
}

unsafe extern "C" fn backward(slf: *mut ffi::PyObject, _: *mut ffi::PyObject) -> *mut ffi::PyObject {
    guarded(|py| {
        value::backward(py, unsafe { this(slf) })?;
        Ok(py.None().into_ptr())
    })
}

unsafe extern "C" fn backward_one_step(slf: *mut ffi::PyObject, _: *mut ffi::PyObject) -> *mut ffi::PyObject {
    guarded(|py| {
        value::backward_one_step(unsafe { this(slf) })?;
        Ok(py.None().into_ptr())
    })
}

unsafe extern "C" fn copy(slf: *mut ffi::PyObject, _: *mut ffi::PyObject) -> *mut ffi::PyObject {
    guarded(|py| Ok(value::copy(py, unsafe { this(slf) })?.into_ptr()))
}

unsafe extern "C" fn reduce(slf: *mut ffi::PyObject, _: *mut ffi::PyObject) -> *mut ffi::PyObject {
    guarded(|py| Ok(value::reduce(py, unsafe { this(slf) })?.into_ptr()))
}

fn method_table() -> Vec<ffi::PyMethodDef> {
    let method = |name: &'static CStr, meth: ffi::PyMethodDefPointer, flags: c_int, doc: &'static CStr| {
        ffi::PyMethodDef {
            ml_name: name.as_ptr(),
            ml_meth: meth,
            ml_flags: flags,
            ml_doc: doc.as_ptr(),
        }
    };
    let no_arguments = |f: ffi::PyCFunction| ffi::PyMethodDefPointer { PyCFunction: f };
    let mut table: Vec<ffi::PyMethodDef> = UNARY_METHODS
        .iter()
        .map(|&(name, f, doc)| method(name, no_arguments(f), ffi::METH_NOARGS, doc))
        .collect();
    table.extend([
        method(
            c"softplus",
            ffi::PyMethodDefPointer { PyCFunctionFastWithKeywords: softplus },
            ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
            c"softplus($self, /, threshold=20.0)\n--\n\nlog(1 + exp(x)) without overflow, as PyTorch's `softplus`: x itself above\n`threshold` (PyTorch's 20); `threshold=math.inf` gives the exact value everywhere.",
        ),
        method(c"backward", no_arguments(backward), ffi::METH_NOARGS, c"backward($self, /)\n--\n\nFills `.grad` of every Value this one depends on with d(self)/d(that).\n\nLeaves accumulate across calls until reset (`p.grad = 0` or\n`model.zero_grad()`); interior gradients are recomputed on each call.\n\nA graph of millions of nodes is processed in chunks, and Ctrl-C (or any signal\nwhose Python handler raises) is honoured between them: the exception propagates\nand the gradients are left partial. A RuntimeError says so likewise if another\nbackward pass ran in between (from a signal handler, say)."),
        method(c"_backward", no_arguments(backward_one_step), ffi::METH_NOARGS, c"_backward($self, /)\n--\n\nOne step of the chain rule, as micrograd's `_backward`: adds this Value's `grad` times\neach local derivative to its children's `grad` (the lecture's backward by hand)."),
        method(c"__copy__", no_arguments(copy), ffi::METH_NOARGS, c"__copy__($self, /)\n--\n\nA copy is a new leaf with the same data, grad and label."),
        // `copy.deepcopy` passes its memo; a Value refers to no Python object, so it is unused.
        method(c"__deepcopy__", no_arguments(copy), ffi::METH_O, c"__deepcopy__($self, memo, /)\n--\n\nA copy is a new leaf with the same data, grad and label."),
        method(c"__reduce__", no_arguments(reduce), ffi::METH_NOARGS, c"__reduce__($self, /)\n--\n\nPickles as a leaf: data, grad and label (the graph is not saved)."),
        ffi::PyMethodDef::zeroed(),
    ]);
    table
}

// ---------------------------------------------------------------------------------------------
// Attributes.

/// The getter of a number attribute (`data`, `grad`): read straight from the arena, as often as
/// a training loop reads them; errors (a traced read) go the safe way.
#[inline(always)]
fn number_attribute(
    slf: *mut ffi::PyObject,
    read: fn(Python<'_>, NodeId) -> PyResult<f64>,
) -> *mut ffi::PyObject {
    // SAFETY: a getter's `self` is a Value; PyFloat_FromDouble returns a new reference or null
    // with MemoryError set.
    fast(|| Ok(unsafe { ffi::PyFloat_FromDouble(read(attached(), this(slf))?) }))
}

unsafe extern "C" fn get_data(slf: *mut ffi::PyObject, _: *mut c_void) -> *mut ffi::PyObject {
    number_attribute(slf, value::data)
}

unsafe extern "C" fn get_grad(slf: *mut ffi::PyObject, _: *mut c_void) -> *mut ffi::PyObject {
    number_attribute(slf, value::grad)
}

/// A setter: `write` with the new value, or the AttributeError for `del v.attribute`.
fn setter(
    slf: *mut ffi::PyObject,
    new: *mut ffi::PyObject,
    write: impl FnOnce(Python<'_>, NodeId, &Bound<'_, PyAny>) -> PyResult<()>,
) -> c_int {
    guarded(|py| {
        if new.is_null() {
            return Err(PyAttributeError::new_err("property has no deleter"));
        }
        // SAFETY: `self` is a Value; `new` is the live object being assigned.
        write(py, unsafe { this(slf) }, &unsafe { borrowed(py, new) })?;
        Ok(0)
    })
}

/// What a number attribute's setter needs: its name in errors, what a trace refuses, the write.
struct NumberSetter {
    name: &'static str,
    setting: &'static str,
    write: fn(Python<'_>, NodeId, f64) -> PyResult<()>,
}

/// The setter of a number attribute: a float or int (`p.data += -lr * p.grad` in a training loop)
/// is written straight to the arena; anything else is read, or refused, the safe way.
#[inline(always)]
fn number_setter(slf: *mut ffi::PyObject, new: *mut ffi::PyObject, how: &NumberSetter) -> c_int {
    if !new.is_null() {
        if let Some(number) = plain_number(new) {
            // SAFETY: a setter's `self` is a Value.
            return fast(|| (how.write)(attached(), unsafe { this(slf) }, number).map(|()| 0));
        }
    }
    setter(slf, new, |py, id, new| {
        value::refuse_while_tracing(how.setting)?;
        (how.write)(py, id, real_number(new, how.name)?)
    })
}

unsafe extern "C" fn set_data(slf: *mut ffi::PyObject, new: *mut ffi::PyObject, _: *mut c_void) -> c_int {
    const DATA: NumberSetter = NumberSetter {
        name: "Value.data",
        setting: value::SETTING_DATA,
        write: value::set_data,
    };
    number_setter(slf, new, &DATA)
}

unsafe extern "C" fn set_grad(slf: *mut ffi::PyObject, new: *mut ffi::PyObject, _: *mut c_void) -> c_int {
    const GRAD: NumberSetter = NumberSetter {
        name: "Value.grad",
        setting: value::SETTING_GRAD,
        write: value::set_grad,
    };
    number_setter(slf, new, &GRAD)
}

unsafe extern "C" fn set_label(slf: *mut ffi::PyObject, new: *mut ffi::PyObject, _: *mut c_void) -> c_int {
    setter(slf, new, |_, id, label| value::set_label(id, label.extract()?))
}

/// A read-only attribute computed by `read`.
fn getter(
    slf: *mut ffi::PyObject,
    read: fn(Python<'_>, NodeId) -> PyResult<Py<PyAny>>,
) -> *mut ffi::PyObject {
    // SAFETY: a getter's `self` is a Value.
    guarded(|py| Ok(read(py, unsafe { this(slf) })?.into_ptr()))
}

unsafe extern "C" fn get_label(slf: *mut ffi::PyObject, _: *mut c_void) -> *mut ffi::PyObject {
    getter(slf, |py, id| {
        Ok(value::label(id)?.into_pyobject(py)?.into_any().unbind())
    })
}

unsafe extern "C" fn get_op(slf: *mut ffi::PyObject, _: *mut c_void) -> *mut ffi::PyObject {
    getter(slf, |py, id| {
        Ok(value::op_symbol(id)?.into_pyobject(py)?.into_any().unbind())
    })
}

unsafe extern "C" fn get_op_detail(slf: *mut ffi::PyObject, _: *mut c_void) -> *mut ffi::PyObject {
    getter(slf, |py, id| {
        Ok(value::op_detail(id)?.into_pyobject(py)?.into_any().unbind())
    })
}

unsafe extern "C" fn get_prev(slf: *mut ffi::PyObject, _: *mut c_void) -> *mut ffi::PyObject {
    getter(slf, |py, id| Ok(value::prev(py, id)?.into_any().unbind()))
}

unsafe extern "C" fn get_children(slf: *mut ffi::PyObject, _: *mut c_void) -> *mut ffi::PyObject {
    getter(slf, |py, id| Ok(value::children(py, id)?.into_any().unbind()))
}

fn attribute_table() -> Vec<ffi::PyGetSetDef> {
    let attribute = |name: &'static CStr, get: ffi::getter, set: Option<ffi::setter>, doc: &'static CStr| {
        ffi::PyGetSetDef {
            name: name.as_ptr(),
            get: Some(get),
            set,
            doc: doc.as_ptr(),
            closure: ptr::null_mut(),
        }
    };
    vec![
        attribute(c"data", get_data, Some(set_data), c"The number this Value holds."),
        attribute(
            c"grad",
            get_grad,
            Some(set_grad),
            c"d(output)/d(this Value) from the last `backward()`; accumulates on leaves.",
        ),
        attribute(
            c"label",
            get_label,
            Some(set_label),
            c"An optional name, shown in graph pictures.",
        ),
        attribute(
            c"_op",
            get_op,
            None,
            c"The op that produced this Value, as micrograd spells it ('' for a leaf).",
        ),
        attribute(
            c"_op_detail",
            get_op_detail,
            None,
            c"The op with any constant it holds (`'+ 2'`, `'/'`), for pictures.",
        ),
        attribute(
            c"_prev",
            get_prev,
            None,
            c"The Values this one was computed from, as a set (as in micrograd).",
        ),
        attribute(
            c"_children",
            get_children,
            None,
            c"The children in order, with repeats (`a * a` gives two).",
        ),
        ffi::PyGetSetDef::default(),
    ]
}

// ---------------------------------------------------------------------------------------------
// Making, showing, comparing and freeing a Value.

unsafe extern "C" fn new(
    _: *mut ffi::PyTypeObject,
    args: *mut ffi::PyObject,
    kwargs: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // The usual call, `Value(x)` with a float or int, makes the leaf straight away.
    // SAFETY: `tp_new` gets a tuple of arguments and a dict of keywords or null; item 0 is read
    // (borrowed, as the tuple holds it) only when the tuple has exactly one.
    let data = unsafe {
        let no_keywords = kwargs.is_null() || ffi::PyDict_Size(kwargs) == 0;
        (no_keywords && ffi::PyTuple_Size(args) == 1)
            .then(|| plain_number(ffi::PyTuple_GetItem(args, 0)))
            .flatten()
    };
    if let Some(data) = data {
        return fast(|| {
            let attached = attached();
            Ok(new_handle(attached, value::new_leaf(attached, data)?))
        });
    }
    guarded(|py| {
        // SAFETY: `tp_new` gets a tuple of arguments and a dict of keywords or null.
        let args = unsafe { Bound::from_borrowed_ptr(py, args) }.cast_into::<PyTuple>()?;
        let kwargs = unsafe { Bound::from_borrowed_ptr_or_opt(py, kwargs) }
            .map(|k| k.cast_into::<PyDict>())
            .transpose()?;
        let id = value::new(&args, kwargs.as_ref())?;
        Ok(new_handle(py, id))
    })
}

unsafe extern "C" fn dealloc(obj: *mut ffi::PyObject) {
    // SAFETY: CPython calls this once, for a Value whose last reference is gone. A Value holds
    // no Python object, so nothing else refers to it; it was allocated by PyType_GenericAlloc
    // (CPython's object allocator) and holds a reference to its (heap) type.
    unsafe {
        let value = obj.cast::<ValueObject>();
        if !(*value).weakrefs.is_null() {
            ffi::PyObject_ClearWeakRefs(obj);
        }
        let id = (*value).id;
        // Never waits for the arena: a destructor may run while this thread is using it, and
        // then the release is queued.
        if panic::catch_unwind(|| ARENA.release_soon_attached(attached(), id)).is_err() {
            guarded(|py| -> PyResult<c_int> {
                PanicException::new_err("releasing a Value's node panicked").write_unraisable(py, None);
                Ok(0)
            });
        }
        let value_type = ffi::Py_TYPE(obj);
        SPARE_VALUES.keep(attached(), obj);
        ffi::Py_DECREF(value_type.cast());
    }
}

unsafe extern "C" fn repr(slf: *mut ffi::PyObject) -> *mut ffi::PyObject {
    getter(slf, |py, id| {
        Ok(value::repr(py, id)?.into_pyobject(py)?.into_any().unbind())
    })
}

unsafe extern "C" fn hash(slf: *mut ffi::PyObject) -> ffi::Py_hash_t {
    // SAFETY: `self` is a Value.
    let id = unsafe { this(slf) };
    // Python reserves -1 for "an error was raised".
    match value::hash(id) as ffi::Py_hash_t {
        -1 => -2,
        h => h,
    }
}

unsafe extern "C" fn richcompare(
    slf: *mut ffi::PyObject,
    other: *mut ffi::PyObject,
    op: c_int,
) -> *mut ffi::PyObject {
    // SAFETY: `self` is a Value; `other` is a live object, whose node is read only if it is one.
    let other = is_value(other).then(|| unsafe { node_unchecked(other) });
    fast(|| {
        let answer = match value::compare(unsafe { this(slf) }, other, op)? {
            // SAFETY: True, False and NotImplemented live as long as the interpreter; each is
            // returned as a new reference, as a slot must.
            Some(true) => unsafe { ffi::Py_True() },
            Some(false) => unsafe { ffi::Py_False() },
            None => unsafe { ffi::Py_NotImplemented() },
        };
        Ok(unsafe { ffi::Py_NewRef(answer) })
    })
}

unsafe extern "C" fn truth(_: *mut ffi::PyObject) -> c_int {
    fast(|| value::truth().map(c_int::from))
}

unsafe extern "C" fn to_float(_: *mut ffi::PyObject) -> *mut ffi::PyObject {
    guarded(|_| Err(value::float_refused()))
}
