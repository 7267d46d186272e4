//! What can go wrong when using the arena, and the messages that say so.

use std::fmt;

use super::node::{Kind, NodeId};
use crate::op::Op;

/// What can go wrong when using the arena. None of these can be caused by a
/// correct program using valid handles, except `TooManyNodes`, `OutOfMemory`, `NodeLimit`
/// and `BackwardInterrupted`.
#[derive(Clone, Debug, PartialEq)]
pub enum EngineError {
    /// The handle's node was freed (or never existed in this process).
    StaleHandle(NodeId),
    /// An op was given the wrong number of children.
    WrongArity { op: String, got: usize },
    /// The arena would exceed `u32::MAX` slots.
    TooManyNodes,
    /// A shape mismatch in a bulk operation.
    LengthMismatch { expected: usize, got: usize },
    /// Anomaly detection found a nan made by the forward pass from inputs that held none.
    NanForward { op: String, inputs: Vec<f64> },
    /// Anomaly detection found a nan gradient.
    NanGradient {
        op: String,
        inputs: Vec<f64>,
        upstream: f64,
    },
    /// A graph being recorded into a program contains a compiled call's result that was
    /// computed from one of the program's input slots: its value cannot be replayed.
    CompiledCallOnInputs,
    /// An array of the arena could not grow: `what` names it, `count` the elements it needed.
    /// Nothing was changed by the operation that failed.
    OutOfMemory { what: &'static str, count: usize },
    /// Making a node would exceed the cap set with [`Arena::set_max_nodes`] (from the
    /// environment variable `GRADRS_MAX_NODES` in the Python extension).
    NodeLimit { limit: usize },
    /// A backward pass advanced in chunks ([`Arena::backward_step`]) found between two chunks
    /// that another pass had run or the arena had been reorganised: its gradients are incomplete.
    BackwardInterrupted,
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::StaleHandle(id) => write!(
                f,
                "this Value refers to a node that no longer exists (slot {}, generation {}); \
                 it may come from another process or a corrupted pickle",
                id.slot, id.gen
            ),
            EngineError::WrongArity { op, got } => {
                write!(f, "op '{op}' cannot take {got} operand(s)")
            }
            EngineError::TooManyNodes => write!(f, "the arena is full (2**32 - 1 live nodes)"),
            EngineError::LengthMismatch { expected, got } => {
                write!(f, "expected {expected} values, got {got}")
            }
            EngineError::NanForward { op, inputs } => {
                write!(
                    f,
                    "op '{op}' produced nan in the forward pass from inputs {inputs:?}"
                )
            }
            EngineError::NanGradient { op, inputs, upstream } => write!(
                f,
                "backward of op '{op}' produced nan (its inputs were {inputs:?}, \
                 the gradient flowing into it was {upstream})"
            ),
            EngineError::CompiledCallOnInputs => write!(
                f,
                "cannot record a graph that contains a compiled call on the recorded inputs \
                 (call the inner function uncompiled, or let gradrs.compile inline it)"
            ),
            EngineError::OutOfMemory { what, count } => write!(
                f,
                "out of memory: could not grow {what} to {count} entries \
                 (drop some Values, or build a smaller graph)"
            ),
            EngineError::NodeLimit { limit } => write!(
                f,
                "cannot make more than {limit} live nodes: the environment variable \
                 GRADRS_MAX_NODES={limit} caps the arena (drop some Values, or raise the cap)"
            ),
            EngineError::BackwardInterrupted => write!(
                f,
                "backward() was interrupted: between two of its chunks another backward pass ran or \
                 the arena was reorganised, so the gradients it left are incomplete; call backward() again"
            ),
        }
    }
}

impl std::error::Error for EngineError {}

pub type Result<T> = std::result::Result<T, EngineError>;
#[cold]
pub(crate) fn nan_gradient(kind: Kind, inputs: &[f64], upstream: f64) -> EngineError {
    EngineError::NanGradient {
        op: kind.describe(),
        inputs: inputs.to_vec(),
        upstream,
    }
}

#[cold]
pub(crate) fn out_of_memory(what: &'static str, count: usize) -> EngineError {
    EngineError::OutOfMemory { what, count }
}

pub(crate) fn wrong_arity(op: &Op, got: usize) -> EngineError {
    EngineError::WrongArity {
        op: op.describe(),
        got,
    }
}
