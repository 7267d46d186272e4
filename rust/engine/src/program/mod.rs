//! A recorded program: a graph flattened once into a tape of instructions over
//! registers, then replayed with new inputs, forward and backward, without the
//! arena and without any per-node bookkeeping.
//!
//! Registers are laid out as `[inputs | parameters | one per instruction]`. Inputs
//! are the slots a caller fills at each replay; parameters are the leaves the graph
//! reads (a model's weights), fetched from the arena before each replay so that
//! training updates are seen.
//!
//! `record` flattens a graph into a tape; `replay` runs the tape for one call; `block` runs it
//! over a chunk of rows at once, with each layer of neurons found by `dense` as matrix products
//! over the chunk's registers in place;
//! `batch` splits many rows into chunks and `chunks` folds their results in order on several
//! threads.

mod batch;
mod block;
mod chunks;
mod dense;
mod record;
mod replay;

use std::fmt;
use std::time::Duration;

use crate::arena::{EngineError, NodeId, Result};
use crate::op::Op;

#[derive(Clone, Debug)]
struct Instr {
    op: Op,
    /// Range into `Program::args`.
    start: u32,
    len: u32,
}

#[derive(Clone, Debug)]
pub struct Program {
    n_inputs: usize,
    params: Vec<NodeId>,
    instrs: Vec<Instr>,
    args: Vec<u32>,
    outputs: Vec<u32>,
    /// The tape's layers, replayed over blocks of rows as matrix products.
    layers: Vec<dense::DenseLayer>,
    /// Each instruction's place in `layers`.
    roles: Vec<dense::Role>,
}

/// How a batch's per-row outputs are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    Sum,
    Mean,
}

/// Rows per unit of work in a batch. Fixed, not derived from the thread count, so that a batch
/// adds its numbers in the same order however many threads run it. 64 rows make a layer's matrix
/// products long enough to pay for packing its weights, and keep a chunk's registers in cache
/// for a model the size of `MLP(64, [64, 64, 10])`; 32 and 128 were slower there.
pub const CHUNK_ROWS: usize = 64;

/// How often, at most, a long replay asks its caller whether to stop: often enough that Ctrl-C
/// is answered within a fraction of a second, rarely enough to cost nothing.
pub const POLL_EVERY: Duration = Duration::from_millis(50);

/// Asked now and then during a long replay, on the calling thread: true means stop.
pub type Poll<'a> = &'a mut dyn FnMut() -> bool;

/// What a replay gives, or why it gave nothing.
pub type Replay<T> = std::result::Result<T, ReplayError>;

/// Why a replay stopped.
#[derive(Clone, Debug, PartialEq)]
pub enum ReplayError {
    /// Arguments that do not fit the program.
    Engine(EngineError),
    /// A buffer sized by the caller's arguments (rows, outputs, parameters) could not be had.
    OutOfMemory { what: &'static str, bytes: usize },
    /// The caller's `poll` asked to stop.
    Interrupted,
}

impl From<EngineError> for ReplayError {
    fn from(err: EngineError) -> Self {
        ReplayError::Engine(err)
    }
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplayError::Engine(err) => err.fmt(f),
            ReplayError::OutOfMemory { what, bytes } => {
                write!(f, "not enough memory for {what} ({bytes} bytes)")
            }
            ReplayError::Interrupted => write!(f, "the replay was interrupted"),
        }
    }
}

impl std::error::Error for ReplayError {}

/// One output of a call: its value and its partial derivatives (see [`Program::call`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub value: f64,
    pub partials: Vec<f64>,
}

/// A batch's reduced outputs and, per output, its reduced gradient over the parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub values: Vec<f64>,
    pub grads: Vec<Vec<f64>>,
}

impl Program {
    pub fn n_inputs(&self) -> usize {
        self.n_inputs
    }

    pub fn n_outputs(&self) -> usize {
        self.outputs.len()
    }

    pub fn n_instructions(&self) -> usize {
        self.instrs.len()
    }

    /// The leaves the program reads, in register order.
    pub fn params(&self) -> &[NodeId] {
        &self.params
    }

    pub fn n_registers(&self) -> usize {
        self.n_inputs + self.params.len() + self.instrs.len()
    }

    fn arg_slice(&self, instr: &Instr) -> &[u32] {
        &self.args[instr.start as usize..(instr.start + instr.len) as usize]
    }

    fn check_call(&self, inputs: &[f64], params: &[f64]) -> Result<()> {
        if inputs.len() != self.n_inputs {
            return Err(EngineError::LengthMismatch {
                expected: self.n_inputs,
                got: inputs.len(),
            });
        }
        self.check_params(params)
    }

    fn check_params(&self, params: &[f64]) -> Result<()> {
        if params.len() != self.params.len() {
            return Err(EngineError::LengthMismatch {
                expected: self.params.len(),
                got: params.len(),
            });
        }
        Ok(())
    }

    /// `rows` must hold `n_rows` rows of `n_inputs` numbers (a 0-input program still has rows:
    /// it gives the same outputs in each).
    fn check_rows(&self, rows: &[f64], n_rows: usize, params: &[f64]) -> Result<()> {
        let expected = n_rows
            .checked_mul(self.n_inputs)
            .ok_or(EngineError::LengthMismatch {
                expected: usize::MAX,
                got: rows.len(),
            })?;
        if rows.len() != expected {
            return Err(EngineError::LengthMismatch {
                expected,
                got: rows.len(),
            });
        }
        self.check_params(params)
    }

    fn row<'a>(&self, rows: &'a [f64], row: usize) -> &'a [f64] {
        &rows[row * self.n_inputs..(row + 1) * self.n_inputs]
    }
}

/// A `Vec` with room for `len` items, or [`ReplayError::OutOfMemory`] naming `what`.
fn try_vec<T>(len: usize, what: &'static str) -> Replay<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| ReplayError::OutOfMemory {
        what,
        bytes: len.saturating_mul(std::mem::size_of::<T>()),
    })?;
    Ok(v)
}

/// Fails as [`try_vec`] would if `len` numbers, to be held in several buffers, could not be had
/// at once: the kernel refuses such a request up front, where filling the buffers one by one
/// would run the process out of memory.
fn ensure_room(len: usize, what: &'static str) -> Replay<()> {
    try_vec::<f64>(len, what).map(drop)
}

/// `len` zeros, or [`ReplayError::OutOfMemory`] naming `what`.
fn try_zeros(len: usize, what: &'static str) -> Replay<Vec<f64>> {
    let mut v = try_vec(len, what)?;
    v.resize(len, 0.0);
    Ok(v)
}

/// `a * b` items, or [`ReplayError::OutOfMemory`] when that many could never be held.
fn product(a: usize, b: usize) -> Replay<usize> {
    a.checked_mul(b).ok_or(ReplayError::OutOfMemory {
        what: "a buffer of more than usize::MAX items",
        bytes: usize::MAX,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::arena::Arena;

    /// out = tanh(w * x + b) for input x and parameters w, b.
    pub(crate) fn neuron(arena: &mut Arena) -> (NodeId, NodeId, NodeId, NodeId, Program) {
        let x = arena.leaf(0.5).unwrap();
        let w = arena.leaf(-1.5).unwrap();
        let b = arena.leaf(0.25).unwrap();
        let wx = arena.apply2(Op::Mul, w, x).unwrap();
        let pre = arena.apply2(Op::Add, wx, b).unwrap();
        let out = arena.apply1(Op::Tanh, pre).unwrap();
        let program = Program::record(arena, &[out], &[x]).unwrap();
        (x, w, b, out, program)
    }

    /// A poll that never asks to stop.
    pub(crate) fn go_on() -> impl FnMut() -> bool {
        || false
    }
}
