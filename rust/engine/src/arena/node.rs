//! What the arena keeps of a node, split by who reads it: handles, child links, values, slots.

use crate::op::Op;

/// A generational handle to a node: the slot index plus the generation the slot
/// had when the node was created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    pub slot: u32,
    pub gen: u32,
}

/// A node's children, sized for the common cases so binary ops never allocate; an n-ary
/// node's list lives in the arena's `lists`, and this holds its index there.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) enum Children {
    #[default]
    None,
    One(u32),
    Two(u32, u32),
    Many(u32),
}

impl Children {
    /// Child `i`, reading an n-ary node's list in `lists`.
    #[inline(always)]
    pub(crate) fn nth(self, i: usize, lists: &[Vec<u32>]) -> Option<u32> {
        match (self, i) {
            (Children::One(a), 0) | (Children::Two(a, _), 0) => Some(a),
            (Children::Two(_, b), 1) => Some(b),
            (Children::Many(list), i) => lists[list as usize].get(i).copied(),
            _ => None,
        }
    }
}

/// What a walk over the graph reads of a node: its children and the walk's mark, in 16 bytes,
/// so that testing whether a child was seen and then going down into it touch one cache line.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Link {
    pub(crate) children: Children,
    /// Equal to the arena's `epoch` once the current walk (or backward pass) has reached it.
    pub(crate) mark: u32,
}

// A node is kept in three arrays indexed by slot, split by who reads what: a backward walk reads
// the children and mark of every node it reaches (`links`, 16 bytes each, four to a cache line)
// before it reads their values (`nodes`, 32 bytes, two to a line), and only creating, checking
// and freeing a node read its reference count and generation (`slots`). One 64-byte record per
// node made a walk over a graph that had just left the caches load a whole line per node, twice.

/// What made a node.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// Nothing: a value the user made (a parameter or an input), or a result under `no_grad`.
    Leaf,
    /// An op of the op table, applied to the node's children.
    Op(Op),
    /// A recorded program replayed as one step (`gradrs.compile`): its value and its partial
    /// derivatives with respect to each child were computed by the program, and the arena keeps
    /// them with the node.
    CompiledCall,
}

impl Kind {
    /// The op string micrograd's `Value._op` gives: `''` for a leaf.
    pub fn symbol(&self) -> String {
        match self {
            Kind::Leaf => String::new(),
            Kind::Op(op) => op.symbol(),
            Kind::CompiledCall => "compiled".into(),
        }
    }

    /// A fuller description for pictures and error messages (see [`Op::describe`]).
    pub fn describe(&self) -> String {
        match self {
            Kind::Leaf => "leaf".into(),
            Kind::Op(op) => op.describe(),
            Kind::CompiledCall => "compiled".into(),
        }
    }
}

/// A node's value, gradient and what made it.
#[derive(Clone, Copy, Debug)]
#[repr(align(32))]
pub(crate) struct Node {
    pub(crate) data: f64,
    pub(crate) grad: f64,
    pub(crate) kind: Kind,
}

const _: () = assert!(std::mem::size_of::<Node>() == 32);

const _: () = assert!(std::mem::size_of::<Link>() == 16);

impl Node {
    pub(crate) const VACANT: Node = Node {
        data: 0.0,
        grad: 0.0,
        kind: Kind::Leaf,
    };
}

/// The bookkeeping of one slot.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Slot {
    /// Handles plus parent edges referring to this node; 0 means the slot is free.
    pub(crate) refs: u32,
    /// Bumped each time the slot is freed, so that old handles to it are recognised.
    pub(crate) gen: u32,
    /// When the node was made: its index in the arena's `births`.
    pub(crate) birth: u32,
    /// The slot of the earliest-born node among this one and everything below it (kept alive
    /// by this one). A node is always made after its children, so everything a backward pass
    /// from here can reach was born between that node's birth and this one's.
    pub(crate) earliest_below: u32,
}

/// A read-only view of one node, for bindings and tests.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeView<'a> {
    pub data: f64,
    pub grad: f64,
    pub kind: &'a Kind,
}
