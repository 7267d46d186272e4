//! gradrs-engine: a scalar reverse-mode autodiff engine over an arena of nodes.
//!
//! It knows nothing of Python. `op` is the calculus (one table of forward rules
//! and local derivatives), `arena` stores nodes and back-propagates through
//! them, `optim` updates parameter groups, `program` records a graph once and
//! replays it, and `shared` lends an arena to one user at a time (the Python binding keeps
//! its process-wide arena in one, under the GIL).

pub mod arena;
pub mod op;
pub mod optim;
pub mod program;
pub mod shared;

pub use arena::{Arena, BackwardPass, EngineError, HeldGroup, NodeId, NodeView, Recording, Traversal};
pub use op::Op;
pub use shared::{ArenaCell, ArenaGuard};
