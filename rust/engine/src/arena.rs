//! The arena: every node of every live graph, in arrays addressed by slot.
//!
//! A node lives while something refers to it: each handle the user holds counts
//! once, and each parent counts once per edge to it. When the count reaches zero
//! the slot is freed, its children are released in turn (with a worklist, never
//! recursion, so dropping a million-node chain is a loop), and the slot is reused.
//! Every reuse bumps the slot's generation, so a stale [`NodeId`] is detected
//! instead of silently reading someone else's node.
//!
//! Backward needs the nodes below the root with every node before its children. A
//! node is always made after its children, so the order the nodes were made in is
//! such an order: the arena lists the nodes by birth, and each node knows the
//! earliest-born node below it, so a backward pass sweeps that stretch of the list
//! from the root down, reading it in sequence instead of discovering the graph
//! node by node. When the stretch is mostly other graphs that are still alive, the
//! pass walks the graph from the root instead (a depth-first post-order).
//!
//! Memory: every array that grows with the graph grows by fallible reservation before anything
//! is changed, so running out of memory is [`EngineError::OutOfMemory`] and leaves the arena as it
//! was; freeing never allocates (it runs in destructors). When a release leaves the top of the
//! slot arrays free and most of the arena unused, the arrays are cut back and their memory
//! returned; a slot made anew afterwards starts at a generation above any its index ever had, so
//! an old handle can never name the new node.

use std::collections::BTreeMap;
use std::fmt;

use crate::op::{Arity, Op};

/// A generational handle to a node: the slot index plus the generation the slot
/// had when the node was created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    pub slot: u32,
    pub gen: u32,
}

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

/// A node's children, sized for the common cases so binary ops never allocate; an n-ary
/// node's list lives in the arena's `lists`, and this holds its index there.
#[derive(Clone, Copy, Debug, Default)]
enum Children {
    #[default]
    None,
    One(u32),
    Two(u32, u32),
    Many(u32),
}

/// What a walk over the graph reads of a node: its children and the walk's mark, in 16 bytes,
/// so that testing whether a child was seen and then going down into it touch one cache line.
#[derive(Clone, Copy, Debug, Default)]
struct Link {
    children: Children,
    /// Equal to the arena's `epoch` once the current walk (or backward pass) has reached it.
    mark: u32,
}

// A node is kept in three arrays indexed by slot, split by who reads what: a backward walk reads
// the children and mark of every node it reaches (`links`, 16 bytes each, four to a cache line)
// before it reads their values (`nodes`, 32 bytes, two to a line), and only creating, checking
// and freeing a node read its reference count and generation (`slots`). One 64-byte record per
// node made a walk over a graph that had just left the caches load a whole line per node, twice.

/// A node's value, gradient and op.
#[derive(Clone, Copy, Debug)]
#[repr(align(32))]
struct Node {
    data: f64,
    grad: f64,
    op: Op,
}

const _: () = assert!(std::mem::size_of::<Node>() == 32);
const _: () = assert!(std::mem::size_of::<Link>() == 16);

impl Node {
    const VACANT: Node = Node {
        data: 0.0,
        grad: 0.0,
        op: Op::Leaf,
    };
}

/// The bookkeeping of one slot.
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    /// Handles plus parent edges referring to this node; 0 means the slot is free.
    refs: u32,
    /// Bumped each time the slot is freed, so that old handles to it are recognised.
    gen: u32,
    /// When the node was made: its index in the arena's `births`.
    birth: u32,
    /// The slot of the earliest-born node among this one and everything below it (kept alive
    /// by this one). A node is always made after its children, so everything a backward pass
    /// from here can reach was born between that node's birth and this one's.
    low: u32,
}

/// A read-only view of one node, for bindings and tests.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeView<'a> {
    pub data: f64,
    pub grad: f64,
    pub op: &'a Op,
}

#[derive(Debug)]
pub struct Arena {
    nodes: Vec<Node>,
    links: Vec<Link>,
    slots: Vec<Slot>,
    /// The slot of each node in the order the nodes were made; a freed node's entry is `DEAD`
    /// until the next compaction. Sweeping it backwards visits parents before children.
    births: Vec<u32>,
    /// Whether the last backward pass found sweeping its birth range cheap (see `backward_checked`).
    sweep_pays: bool,
    traversal: Traversal,
    free: Vec<u32>,
    /// The children of n-ary nodes (`Children::Many`), and the indices free for reuse.
    lists: Vec<Vec<u32>>,
    free_lists: Vec<u32>,
    live: usize,
    epoch: u32,
    labels: BTreeMap<u32, String>,
    /// The partial derivatives of `Op::Recorded` nodes, by slot.
    partials: BTreeMap<u32, Box<[f64]>>,
    /// Reused buffers, so that the hot paths do not allocate.
    inputs: Vec<f64>,
    worklist: Vec<u32>,
    order: Vec<u32>,
    stack: Vec<(u32, u32)>,
    /// The generation a slot made anew starts at: above every generation any discarded slot
    /// ever handed out, so a handle from before a trim never matches a node made after it.
    fresh_gen: u32,
    /// Bumped whenever `births` is renumbered or the slot arrays are cut back, which moves
    /// what a paused backward pass remembers its place by.
    layout: u32,
    /// A release leaving at most this many live nodes considers trimming (see `trim`).
    trim_below: usize,
    /// Slot arrays up to this long are never cut back (`KEEP_SLOTS` unless a test lowers it).
    keep_slots: usize,
    /// Cuts leave at least this many slots: the length of a graph rebuilt after a cut, as a
    /// training loop rebuilds its graph each step.
    floor: usize,
    /// The length of the arrays before the last cut, until a graph half that size is rebuilt.
    cut_from: usize,
    /// The most live nodes allowed at once (`usize::MAX` unless capped by `set_max_nodes`).
    max_nodes: usize,
}

/// A backward pass in progress: [`Arena::begin_backward`] starts it and
/// [`Arena::backward_step`] advances it a bounded amount of work at a time.
#[derive(Debug)]
pub struct BackwardPass {
    root: NodeId,
    stop_at_nan: bool,
    /// The arena's epoch the pass marks nodes with (first the walk's, then the gradients').
    epoch: u32,
    /// The arena's `layout` when the pass began: positions in `births` mean the same while equal.
    layout: u32,
    /// How many births a sweep from the root reads, to judge the next pass's strategy.
    span: usize,
    stage: Stage,
}

/// Where a backward pass stands.
#[derive(Debug)]
enum Stage {
    /// Sweeping `births` down to `low`; `next` is one past the next entry to read.
    Sweep {
        next: usize,
        low: usize,
        processed: usize,
    },
    /// Ordering the graph below the root by walking it.
    Order {
        order: Vec<u32>,
        stack: Vec<(u32, u32)>,
    },
    /// Back-propagating along the walk's order from its end; `next` is one past the next node.
    Walk {
        order: Vec<u32>,
        next: usize,
    },
    Done,
}

/// How a backward pass orders the nodes below its root.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Traversal {
    /// By birth while that stays cheap, else by walking (the default).
    #[default]
    Auto,
    /// Always sweep the births between the root and the earliest node below it.
    Births,
    /// Always walk the graph from the root.
    Walk,
}

/// Slot arrays up to this long are never cut back, so a training loop whose graph fits rebuilds
/// it in the same memory every step; beyond it, freeing most of the arena returns the storage to
/// the allocator, so one huge graph does not pin its memory forever.
const KEEP_SLOTS: usize = 1 << 20;

impl Default for Arena {
    fn default() -> Self {
        Self::new()
    }
}

impl Arena {
    pub const fn new() -> Self {
        Arena {
            nodes: Vec::new(),
            links: Vec::new(),
            slots: Vec::new(),
            births: Vec::new(),
            sweep_pays: true,
            traversal: Traversal::Auto,
            free: Vec::new(),
            lists: Vec::new(),
            free_lists: Vec::new(),
            live: 0,
            epoch: 0,
            labels: BTreeMap::new(),
            partials: BTreeMap::new(),
            inputs: Vec::new(),
            worklist: Vec::new(),
            order: Vec::new(),
            stack: Vec::new(),
            fresh_gen: 0,
            layout: 0,
            trim_below: usize::MAX,
            keep_slots: KEEP_SLOTS,
            floor: 0,
            cut_from: 0,
            max_nodes: usize::MAX,
        }
    }
}

impl Arena {
    /// The number of nodes currently alive.
    pub fn live_nodes(&self) -> usize {
        self.live
    }

    /// The number of slots allocated, live or free.
    pub fn capacity(&self) -> usize {
        self.nodes.len()
    }

    /// Caps the number of live nodes: making one more than `limit` fails with
    /// [`EngineError::NodeLimit`]. `None` lifts the cap.
    pub fn set_max_nodes(&mut self, limit: Option<usize>) {
        self.max_nodes = limit.unwrap_or(usize::MAX);
    }

    /// How long the slot arrays may be before freeing most of their nodes cuts them back (by
    /// default 2**20, so a training loop below that never reallocates); tests lower it.
    pub fn set_keep_slots(&mut self, slots: usize) {
        self.keep_slots = slots;
    }

    /// A new leaf holding `data`, with one reference owned by the caller.
    pub fn leaf(&mut self, data: f64) -> Result<NodeId> {
        self.reserve_node(false)?;
        Ok(self.alloc(data, Op::Leaf, Children::None))
    }

    /// Applies `op` to `children`, computing the value now. The new node holds one
    /// reference for the caller and one on each child per edge.
    pub fn apply(&mut self, op: Op, children: &[NodeId]) -> Result<NodeId> {
        let data = self.evaluate(&op, children)?;
        self.reserve_node(children.len() > 2)?;
        let links = self.children_of(children)?;
        for c in children {
            self.slots[c.slot as usize].refs += 1;
        }
        Ok(self.alloc(data, op, links))
    }

    /// `op(a)` without allocating for the child list.
    pub fn apply1(&mut self, op: Op, a: NodeId) -> Result<NodeId> {
        let x = self.check(a)?.data;
        if op.arity() != Arity::One {
            return Err(wrong_arity(&op, 1));
        }
        let data = op.forward(&[x]);
        self.reserve_node(false)?;
        self.slots[a.slot as usize].refs += 1;
        Ok(self.alloc(data, op, Children::One(a.slot)))
    }

    /// `op(a, b)` without allocating for the child list.
    pub fn apply2(&mut self, op: Op, a: NodeId, b: NodeId) -> Result<NodeId> {
        let x = self.check(a)?.data;
        let y = self.check(b)?.data;
        if op.arity() != Arity::Two {
            return Err(wrong_arity(&op, 2));
        }
        let data = op.forward(&[x, y]);
        self.reserve_node(false)?;
        self.slots[a.slot as usize].refs += 1;
        self.slots[b.slot as usize].refs += 1;
        Ok(self.alloc(data, op, Children::Two(a.slot, b.slot)))
    }

    /// A node whose value and partial derivatives (one per child) were computed
    /// elsewhere, by a recorded program (`Op::Recorded`).
    pub fn recorded(&mut self, value: f64, children: &[NodeId], partials: Vec<f64>) -> Result<NodeId> {
        if partials.len() != children.len() {
            return Err(EngineError::LengthMismatch {
                expected: children.len(),
                got: partials.len(),
            });
        }
        for &c in children {
            self.check(c)?;
        }
        self.reserve_node(true)?;
        let list = self.list_of(children)?;
        for c in children {
            self.slots[c.slot as usize].refs += 1;
        }
        let id = self.alloc(value, Op::Recorded, Children::Many(list));
        self.partials.insert(id.slot, partials.into());
        Ok(id)
    }

    /// The value `op` would give on `children`, without recording a node
    /// (for `no_grad` evaluation).
    pub fn evaluate(&mut self, op: &Op, children: &[NodeId]) -> Result<f64> {
        if !op.accepts(children.len()) {
            return Err(wrong_arity(op, children.len()));
        }
        let mut x = std::mem::take(&mut self.inputs);
        x.clear();
        if x.try_reserve(children.len()).is_err() {
            self.inputs = x;
            return Err(out_of_memory("the operand buffer", children.len()));
        }
        for &c in children {
            match self.check(c) {
                Ok(node) => x.push(node.data),
                Err(e) => {
                    self.inputs = x;
                    return Err(e);
                }
            }
        }
        let value = op.forward(&x);
        self.inputs = x;
        Ok(value)
    }

    /// The children of a new node over `ids`, its list stored when there are more than two
    /// (after `reserve_node(true)` made room for the list).
    fn children_of(&mut self, ids: &[NodeId]) -> Result<Children> {
        Ok(match *ids {
            [] => Children::None,
            [a] => Children::One(a.slot),
            [a, b] => Children::Two(a.slot, b.slot),
            _ => Children::Many(self.list_of(ids)?),
        })
    }

    fn list_of(&mut self, ids: &[NodeId]) -> Result<u32> {
        let mut list = Vec::new();
        list.try_reserve_exact(ids.len())
            .map_err(|_| out_of_memory("a list of children", ids.len()))?;
        list.extend(ids.iter().map(|c| c.slot));
        Ok(match self.free_lists.pop() {
            Some(index) => {
                self.lists[index as usize] = list;
                index
            }
            None => {
                self.lists.push(list); // within the capacity `reserve_node` made
                (self.lists.len() - 1) as u32
            }
        })
    }

    /// Child `i` of a node with `children`.
    fn child(&self, children: Children, i: usize) -> Option<u32> {
        match (children, i) {
            (Children::One(a), 0) | (Children::Two(a, _), 0) => Some(a),
            (Children::Two(_, b), 1) => Some(b),
            (Children::Many(list), i) => self.lists[list as usize].get(i).copied(),
            _ => None,
        }
    }

    fn child_slots(&self, children: Children) -> Vec<u32> {
        match children {
            Children::None => vec![],
            Children::One(a) => vec![a],
            Children::Two(a, b) => vec![a, b],
            Children::Many(list) => self.lists[list as usize].clone(),
        }
    }

    /// Makes room for one more node (and with `list`, one more list of children), so that making
    /// it cannot fail halfway: every push `alloc` and `list_of` make fits afterwards, and so does
    /// every push a later release makes (a release runs in destructors and cannot fail).
    #[inline(always)]
    fn reserve_node(&mut self, list: bool) -> Result<()> {
        // The common case, a free slot and room everywhere, decided in a few compares.
        let roomy = !self.free.is_empty()
            && self.births.len() < self.births.capacity()
            && self.births.len() < 2 * self.live + 4096
            && self.live < self.max_nodes;
        if roomy && !list {
            return Ok(());
        }
        self.reserve_node_slowly(list)
    }

    #[inline(never)]
    fn reserve_node_slowly(&mut self, list: bool) -> Result<()> {
        if self.live >= self.max_nodes {
            return Err(EngineError::NodeLimit {
                limit: self.max_nodes,
            });
        }
        if self.free.is_empty() {
            let slots = self.nodes.len() + 1;
            if slots >= u32::MAX as usize {
                return Err(EngineError::TooManyNodes);
            }
            grow(&mut self.nodes, "the arena's node values")?;
            grow(&mut self.links, "the arena's child links")?;
            grow(&mut self.slots, "the arena's slot table")?;
            // Each freed slot goes on `free`: room for all of them now, none while freeing.
            if self.free.capacity() < slots {
                let more = slots - self.free.len();
                self.free
                    .try_reserve(more)
                    .map_err(|_| out_of_memory("the arena's free list", slots))?;
            }
        }
        if self.births.len() >= 2 * self.live + 4096 {
            self.compact_births();
        }
        if self.births.len() >= u32::MAX as usize {
            return Err(EngineError::TooManyNodes);
        }
        grow(&mut self.births, "the arena's list of births")?;
        if list && self.free_lists.is_empty() {
            grow(&mut self.lists, "the arena's lists of children")?;
            let lists = self.lists.len() + 1;
            if self.free_lists.capacity() < lists {
                let more = lists - self.free_lists.len();
                self.free_lists
                    .try_reserve(more)
                    .map_err(|_| out_of_memory("the arena's free lists", lists))?;
            }
        }
        Ok(())
    }

    /// Makes a node in room `reserve_node` made.
    fn alloc(&mut self, data: f64, op: Op, children: Children) -> NodeId {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                let slot = self.nodes.len() as u32; // below u32::MAX: checked by `reserve_node`
                self.nodes.push(Node::VACANT);
                self.links.push(Link::default());
                self.slots.push(Slot {
                    gen: self.fresh_gen,
                    ..Slot::default()
                });
                self.trim_below = usize::MAX;
                if self.cut_from != 0 && self.nodes.len() >= self.cut_from / 2 {
                    // The graph the arrays were cut back from is being rebuilt, as a training loop
                    // does each step: keep room for it from now on instead of cutting every step.
                    self.floor = self.floor.max(self.cut_from);
                    self.cut_from = 0;
                }
                slot
            }
        };
        let birth = self.births.len() as u32; // at most 2 * live + 4096 after `reserve_node`
        let earlier = |a: u32, b: u32| {
            if self.slots[a as usize].birth <= self.slots[b as usize].birth {
                a
            } else {
                b
            }
        };
        let low = match children {
            Children::None => slot,
            Children::One(a) => self.slots[a as usize].low,
            Children::Two(a, b) => earlier(self.slots[a as usize].low, self.slots[b as usize].low),
            Children::Many(list) => {
                let lows = self.lists[list as usize]
                    .iter()
                    .map(|&c| self.slots[c as usize].low);
                lows.reduce(earlier).unwrap_or(slot)
            }
        };
        self.births.push(slot);
        let at = slot as usize;
        self.nodes[at] = Node { data, grad: 0.0, op };
        self.links[at].children = children;
        let bookkeeping = &mut self.slots[at];
        bookkeeping.refs = 1;
        bookkeeping.birth = birth;
        bookkeeping.low = low;
        self.live += 1;
        NodeId {
            slot,
            gen: bookkeeping.gen,
        }
    }

    /// Drops the entries of freed nodes from `births`, renumbering the living in the same order.
    fn compact_births(&mut self) {
        let mut kept = 0;
        for at in 0..self.births.len() {
            let slot = self.births[at];
            if slot != DEAD {
                self.births[kept] = slot;
                self.slots[slot as usize].birth = kept as u32;
                kept += 1;
            }
        }
        self.births.truncate(kept);
        self.layout = self.layout.wrapping_add(1);
    }

    /// Whether `id` names the node living in its slot now.
    fn holds(&self, id: NodeId) -> bool {
        matches!(self.slots.get(id.slot as usize), Some(s) if s.refs > 0 && s.gen == id.gen)
    }

    fn check(&self, id: NodeId) -> Result<&Node> {
        match self.holds(id) {
            true => Ok(&self.nodes[id.slot as usize]),
            false => Err(EngineError::StaleHandle(id)),
        }
    }

    fn check_mut(&mut self, id: NodeId) -> Result<&mut Node> {
        match self.holds(id) {
            true => Ok(&mut self.nodes[id.slot as usize]),
            false => Err(EngineError::StaleHandle(id)),
        }
    }

    /// Whether `id` names a live node.
    pub fn is_live(&self, id: NodeId) -> bool {
        self.holds(id)
    }

    /// Adds a reference (a new handle to the same node).
    pub fn retain(&mut self, id: NodeId) -> Result<()> {
        if !self.holds(id) {
            return Err(EngineError::StaleHandle(id));
        }
        self.slots[id.slot as usize].refs += 1;
        Ok(())
    }

    /// Drops a reference; frees the node and, in turn, any children nothing else
    /// refers to. A stale handle is ignored: releasing is called from destructors,
    /// which have no way to report an error.
    #[inline]
    pub fn release(&mut self, id: NodeId) {
        match self.slots.get_mut(id.slot as usize) {
            Some(bookkeeping) if bookkeeping.refs > 0 && bookkeeping.gen == id.gen => {
                // The common case: something else still refers to the node.
                if bookkeeping.refs > 1 {
                    bookkeeping.refs -= 1;
                    return;
                }
            }
            _ => return,
        }
        self.free_from(id.slot);
    }

    /// Drops the last reference to the node in `slot`, freeing it and whatever only it kept.
    #[inline(never)]
    fn free_from(&mut self, slot: u32) {
        let mut work = std::mem::take(&mut self.worklist);
        work.clear();
        if work.try_reserve(1).is_err() {
            self.worklist = work;
            return; // out of memory for even one entry: keep the node (a leak, never a crash)
        }
        work.push(slot);
        while let Some(slot) = work.pop() {
            let at = slot as usize;
            let bookkeeping = &mut self.slots[at];
            bookkeeping.refs -= 1;
            if bookkeeping.refs > 0 {
                continue;
            }
            bookkeeping.gen = bookkeeping.gen.wrapping_add(1);
            self.births[bookkeeping.birth as usize] = DEAD;
            let children = std::mem::take(&mut self.links[at].children);
            let below = match children {
                Children::None => 0,
                Children::One(_) => 1,
                Children::Two(..) => 2,
                Children::Many(list) => self.lists[list as usize].len(),
            };
            // Freeing runs in destructors and cannot report failure. Should the worklist not
            // grow, the children keep the references this node held: they stay alive,
            // unreachable (a leak, counted by `live_nodes`), rather than the process aborting.
            let room = work.capacity() - work.len() >= below || work.try_reserve(below).is_ok();
            match children {
                Children::None => {}
                Children::One(a) if room => work.push(a),
                Children::Two(a, b) if room => work.extend([a, b]),
                Children::Many(list) => {
                    let list_children = std::mem::take(&mut self.lists[list as usize]);
                    if room {
                        work.extend_from_slice(&list_children);
                    }
                    self.free_lists.push(list); // within capacity: see `reserve_node`
                }
                Children::One(_) | Children::Two(..) => {}
            }
            if matches!(self.nodes[at].op, Op::Recorded) {
                self.partials.remove(&slot);
            }
            self.nodes[at].op = Op::Leaf;
            if !self.labels.is_empty() {
                self.labels.remove(&slot);
            }
            self.free.push(slot); // within capacity: see `reserve_node`
            self.live -= 1;
        }
        self.worklist = work;
        if self.live <= self.trim_below
            && self.nodes.len() > self.keep_slots
            && self.live < self.nodes.len() / 4
        {
            self.trim();
        }
    }

    /// Cuts the slot arrays back to just past the highest live slot (but not below `floor`)
    /// and returns the memory, when that frees at least half of them (the common case: a model
    /// made first, then a big graph over it, now dropped). Called only once most of the arena is
    /// free, and not again until the live count halves or the arrays grow; and once a graph is
    /// rebuilt after a cut, its size is kept, so a loop that builds and drops a big graph each
    /// step pays for one cut, not one per step.
    #[cold]
    fn trim(&mut self) {
        self.trim_below = self.live / 2;
        let mut end = self.slots.len();
        let mut fresh_gen = self.fresh_gen;
        while end > self.floor && self.slots[end - 1].refs == 0 {
            end -= 1;
            // A freed slot's generation was bumped when it was freed: no handle has it yet.
            fresh_gen = fresh_gen.max(self.slots[end].gen);
        }
        if end > self.slots.len() / 2 {
            return;
        }
        self.fresh_gen = fresh_gen;
        self.cut_from = self.slots.len();
        self.nodes.truncate(end);
        self.links.truncate(end);
        self.slots.truncate(end);
        self.free.retain(|&slot| (slot as usize) < end);
        self.nodes.shrink_to_fit();
        self.links.shrink_to_fit();
        self.slots.shrink_to_fit();
        self.free.shrink_to(end); // still room for every slot, as releases need
        self.compact_births();
        self.births.shrink_to_fit();
        // The lists at the end that are free go too (a free list's vector is empty already).
        self.free_lists.sort_unstable();
        while self
            .free_lists
            .last()
            .is_some_and(|&last| last as usize + 1 == self.lists.len())
        {
            self.free_lists.pop();
            self.lists.pop();
        }
        self.lists.shrink_to_fit();
        self.free_lists.shrink_to(self.lists.len());
        // The scratch buffers grew with the graph; they regrow on demand.
        for buffer in [&mut self.worklist, &mut self.order] {
            if buffer.capacity() > end + 4096 {
                *buffer = Vec::new();
            }
        }
        if self.stack.capacity() > end + 4096 {
            self.stack = Vec::new();
        }
        if self.inputs.capacity() > 4096 {
            self.inputs = Vec::new();
        }
        return_free_heap_to_the_system();
    }

    pub fn view(&self, id: NodeId) -> Result<NodeView<'_>> {
        let node = self.check(id)?;
        Ok(NodeView {
            data: node.data,
            grad: node.grad,
            op: &node.op,
        })
    }

    pub fn data(&self, id: NodeId) -> Result<f64> {
        Ok(self.check(id)?.data)
    }

    pub fn grad(&self, id: NodeId) -> Result<f64> {
        Ok(self.check(id)?.grad)
    }

    pub fn set_data(&mut self, id: NodeId, value: f64) -> Result<()> {
        self.check_mut(id)?.data = value;
        Ok(())
    }

    pub fn set_grad(&mut self, id: NodeId, value: f64) -> Result<()> {
        self.check_mut(id)?.grad = value;
        Ok(())
    }

    /// The data of many nodes, in order.
    pub fn data_of(&self, ids: &[NodeId]) -> Result<Vec<f64>> {
        ids.iter().map(|&id| self.data(id)).collect()
    }

    /// The gradients of many nodes, in order.
    pub fn grad_of(&self, ids: &[NodeId]) -> Result<Vec<f64>> {
        ids.iter().map(|&id| self.grad(id)).collect()
    }

    /// Sets the data of many nodes; nothing changes unless every handle is live.
    pub fn set_data_of(&mut self, ids: &[NodeId], values: &[f64]) -> Result<()> {
        self.check_all(ids, values.len())?;
        for (&id, &v) in ids.iter().zip(values) {
            self.nodes[id.slot as usize].data = v;
        }
        Ok(())
    }

    /// Sets the gradients of many nodes; nothing changes unless every handle is live.
    pub fn set_grad_of(&mut self, ids: &[NodeId], values: &[f64]) -> Result<()> {
        self.check_all(ids, values.len())?;
        for (&id, &v) in ids.iter().zip(values) {
            self.nodes[id.slot as usize].grad = v;
        }
        Ok(())
    }

    fn check_all(&self, ids: &[NodeId], len: usize) -> Result<()> {
        if ids.len() != len {
            return Err(EngineError::LengthMismatch {
                expected: ids.len(),
                got: len,
            });
        }
        ids.iter().try_for_each(|&id| self.check(id).map(|_| ()))
    }

    pub fn op(&self, id: NodeId) -> Result<&Op> {
        Ok(&self.check(id)?.op)
    }

    /// The children of a node, in order, as handles (not retained: the caller
    /// retains what it keeps).
    pub fn children(&self, id: NodeId) -> Result<Vec<NodeId>> {
        self.check(id)?;
        Ok(self
            .child_slots(self.links[id.slot as usize].children)
            .into_iter()
            .map(|slot| NodeId {
                slot,
                gen: self.slots[slot as usize].gen,
            })
            .collect())
    }

    pub fn label(&self, id: NodeId) -> Result<Option<&str>> {
        self.check(id)?;
        Ok(self.labels.get(&id.slot).map(String::as_str))
    }

    pub fn set_label(&mut self, id: NodeId, label: Option<String>) -> Result<()> {
        self.check(id)?;
        match label {
            Some(text) if !text.is_empty() => self.labels.insert(id.slot, text),
            _ => self.labels.remove(&id.slot),
        };
        Ok(())
    }

    /// The nodes reachable from `root`, children before parents (a post-order
    /// of an explicit-stack depth-first search; each node appears once).
    pub fn topological_order(&mut self, root: NodeId) -> Result<Vec<NodeId>> {
        self.check(root)?;
        let epoch = self.next_epoch();
        let mut order = Vec::new();
        let mut stack = std::mem::take(&mut self.stack);
        let walked = self
            .start_walk(root.slot, &mut stack, epoch)
            .and_then(|()| self.walk_post_order(&mut order, &mut stack, epoch, usize::MAX));
        self.stack = stack;
        walked?;
        Ok(order
            .into_iter()
            .map(|slot| NodeId {
                slot,
                gen: self.slots[slot as usize].gen,
            })
            .collect())
    }

    fn next_epoch(&mut self) -> u32 {
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.links.iter_mut().for_each(|link| link.mark = 0);
            self.epoch = 1;
        }
        self.epoch
    }

    fn start_walk(&mut self, root: u32, stack: &mut Vec<(u32, u32)>, epoch: u32) -> Result<()> {
        stack.clear();
        grow(stack, "the backward pass's walk stack")?;
        stack.push((root, 0));
        self.links[root as usize].mark = epoch;
        Ok(())
    }

    /// Continues a depth-first walk, appending to `order` in post-order, for about `budget` steps
    /// (one per node and one per edge); `Ok(true)` once the walk is complete. It reads only the children and the
    /// marks, and the buffers are kept between calls, so a training loop's backward does not
    /// allocate.
    fn walk_post_order(
        &mut self,
        order: &mut Vec<u32>,
        stack: &mut Vec<(u32, u32)>,
        epoch: u32,
        budget: usize,
    ) -> Result<bool> {
        let mut spent = 0usize;
        while let Some(top) = stack.last_mut() {
            if spent >= budget {
                return Ok(false);
            }
            spent += 1;
            let (slot, next) = *top;
            match self.child(self.links[slot as usize].children, next as usize) {
                Some(child) => {
                    top.1 += 1;
                    let mark = &mut self.links[child as usize].mark;
                    if *mark != epoch {
                        *mark = epoch;
                        grow(stack, "the backward pass's walk stack")?;
                        stack.push((child, 0));
                    }
                }
                None => {
                    grow(order, "the backward pass's node order")?;
                    order.push(slot);
                    stack.pop();
                }
            }
        }
        Ok(true)
    }

    /// Back-propagates from `root`: resets the gradients of the interior nodes it
    /// reaches, seeds `root` with 1, and accumulates into every node below it.
    /// Leaves keep what earlier calls gave them, so a second call adds the same
    /// amounts again (PyTorch's `retain_graph=True`), and interior gradients stay
    /// readable afterwards, as the micrograd lecture reads them.
    pub fn backward(&mut self, root: NodeId) -> Result<()> {
        self.backward_checked(root, false)
    }

    /// [`Arena::backward`], optionally stopping at the first nan contribution
    /// with [`EngineError::NanGradient`] naming the op that produced it.
    pub fn backward_checked(&mut self, root: NodeId, stop_at_nan: bool) -> Result<()> {
        let mut pass = self.begin_backward(root, stop_at_nan)?;
        while !self.backward_step(&mut pass, usize::MAX)? {}
        Ok(())
    }

    /// Starts a backward pass from `root` without running it: [`Arena::backward_step`] runs it,
    /// a bounded number of nodes at a time, so that a caller can let go of the arena between
    /// chunks. Until it is complete, the gradients below `root` are a mix of this pass's and
    /// the last one's.
    pub fn begin_backward(&mut self, root: NodeId, stop_at_nan: bool) -> Result<BackwardPass> {
        self.check(root)?;
        let span = self.birth_span(root.slot);
        let by_birth = match self.traversal {
            Traversal::Auto => self.sweep_pays,
            Traversal::Births => true,
            Traversal::Walk => false,
        };
        let epoch = self.next_epoch();
        let stage = if by_birth {
            self.give(root.slot, 1.0, epoch);
            Stage::Sweep {
                next: span.end,
                low: span.start,
                processed: 0,
            }
        } else {
            let mut order = std::mem::take(&mut self.order);
            let mut stack = std::mem::take(&mut self.stack);
            order.clear();
            self.start_walk(root.slot, &mut stack, epoch)?;
            Stage::Order { order, stack }
        };
        Ok(BackwardPass {
            root,
            stop_at_nan,
            epoch,
            layout: self.layout,
            span: span.len(),
            stage,
        })
    }

    /// Advances `pass` by about `budget` nodes; `Ok(true)` once it is complete. A pass can be
    /// resumed after any other use of the arena except one that invalidates where it stands:
    /// another backward pass or `topological_order`, a renumbering of the births (making nodes
    /// or freeing many can cause one), or freeing its root. Then it fails with
    /// [`EngineError::BackwardInterrupted`] rather than finish with wrong gradients.
    pub fn backward_step(&mut self, pass: &mut BackwardPass, budget: usize) -> Result<bool> {
        if matches!(pass.stage, Stage::Done) {
            return Ok(true);
        }
        if self.epoch != pass.epoch || self.layout != pass.layout || !self.holds(pass.root) {
            pass.stage = Stage::Done;
            return Err(EngineError::BackwardInterrupted);
        }
        let (root, stop_at_nan, epoch) = (pass.root.slot, pass.stop_at_nan, pass.epoch);
        let outcome = match &mut pass.stage {
            Stage::Sweep { next, low, processed } => {
                let outcome = self.sweep_births(next, *low, budget, stop_at_nan, epoch, processed);
                outcome.map(|()| (*next == *low).then_some(*processed))
            }
            Stage::Order { order, stack } => match self.walk_post_order(order, stack, epoch, budget) {
                Ok(false) => return Ok(false),
                Ok(true) => {
                    let order = std::mem::take(order);
                    pass.epoch = self.next_epoch();
                    self.give(root, 1.0, pass.epoch);
                    pass.stage = Stage::Walk {
                        next: order.len(),
                        order,
                    };
                    return Ok(false);
                }
                Err(e) => {
                    pass.stage = Stage::Done; // no gradient was given yet
                    return Err(e);
                }
            },
            Stage::Walk { order, next } => {
                let outcome = self.propagate_along(order, next, budget, stop_at_nan, epoch);
                outcome.map(|()| (*next == 0).then_some(order.len()))
            }
            Stage::Done => Ok(None),
        };
        match outcome {
            Ok(None) => Ok(false),
            Ok(Some(processed)) => {
                // Sweeping the births from the root's down to its `low` reads every node made in
                // between, reached or not: far cheaper than discovering the graph by walking it,
                // unless the span is mostly other graphs still alive. Judge by this pass for the
                // next one.
                self.sweep_pays = pass.span <= 8 * processed + 4096;
                if let Stage::Walk { order, .. } = std::mem::replace(&mut pass.stage, Stage::Done) {
                    self.order = order; // kept for the next pass
                }
                Ok(true)
            }
            Err(e) => {
                pass.stage = Stage::Done;
                self.clear_unreached(root, epoch);
                Err(e)
            }
        }
    }

    /// The births a backward pass from `root` may reach: from the earliest-born node below it
    /// to its own.
    fn birth_span(&self, root: u32) -> std::ops::Range<usize> {
        let Slot { birth, low, .. } = self.slots[root as usize];
        self.slots[low as usize].birth as usize..birth as usize + 1
    }

    /// Chooses how backward passes order the graph (for comparing and testing the two ways;
    /// both give the same gradients up to the order in which a node's shares are added).
    pub fn set_traversal(&mut self, traversal: Traversal) {
        self.traversal = traversal;
    }

    /// Backward over the births from `*next` down to `low`, latest first, until about `budget`
    /// units of work are done (a node, plus its children when it has many); leaves `*next` at
    /// where to resume. Each node comes after every node made from it, and the order is read
    /// sequentially instead of discovered. Counts the nodes it goes through into `processed`.
    fn sweep_births(
        &mut self,
        next: &mut usize,
        low: usize,
        budget: usize,
        stop_at_nan: bool,
        pass: u32,
        processed: &mut usize,
    ) -> Result<()> {
        let stop = next.saturating_sub(budget).max(low);
        let mut x = std::mem::take(&mut self.inputs);
        let mut outcome = Ok(());
        let mut resume = stop;
        // The budget counts births read; n-ary nodes' children are added as they come.
        let mut extra = 0usize;
        let mut reached = 0usize;
        for at in (stop..*next).rev() {
            if let Some(ahead) = at.checked_sub(PREFETCH_DISTANCE).filter(|&a| a >= low) {
                let slot = self.births[ahead] as usize;
                if slot != DEAD as usize {
                    prefetch(&self.links[slot]);
                    prefetch(&self.nodes[slot]);
                }
            }
            let slot = self.births[at];
            if slot == DEAD {
                continue;
            }
            if self.links[slot as usize].mark != pass {
                continue; // not below the root (nothing passed it a gradient)
            }
            reached += 1;
            match self.propagate_step(slot, &mut x, stop_at_nan, pass) {
                Ok(0) => {}
                Ok(more) => {
                    extra += more;
                    if extra + (*next - at) >= budget {
                        resume = at;
                        break;
                    }
                }
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        *next = resume;
        *processed += reached;
        self.inputs = x;
        outcome
    }

    /// Backward along `order` (a post-order walk from the root) from `*next` down to its start,
    /// last node first, until about `budget` units of work are done (as `sweep_births`).
    fn propagate_along(
        &mut self,
        order: &[u32],
        next: &mut usize,
        budget: usize,
        stop_at_nan: bool,
        pass: u32,
    ) -> Result<()> {
        let stop = next.saturating_sub(budget);
        let mut x = std::mem::take(&mut self.inputs);
        let mut outcome = Ok(());
        let mut resume = stop;
        let mut extra = 0usize;
        for at in (stop..*next).rev() {
            if let Some(&ahead) = order.get(at.wrapping_sub(PREFETCH_DISTANCE)) {
                prefetch(&self.nodes[ahead as usize]);
                prefetch(&self.links[ahead as usize]);
            }
            match self.propagate_step(order[at], &mut x, stop_at_nan, pass) {
                Ok(0) => {}
                Ok(more) => {
                    extra += more;
                    if extra + (*next - at) >= budget {
                        resume = at;
                        break;
                    }
                }
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        *next = resume;
        self.inputs = x;
        outcome
    }

    /// After a pass stopped early: the interior nodes below the root that it had not reached
    /// hold an earlier pass's gradients, which must not pass for this one's.
    #[cold]
    fn clear_unreached(&mut self, root: u32, pass: u32) {
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![root];
        while let Some(slot) = stack.pop() {
            if !seen.insert(slot) {
                continue;
            }
            let at = slot as usize;
            if self.links[at].mark != pass && !matches!(self.nodes[at].op, Op::Leaf) {
                self.nodes[at].grad = 0.0;
            }
            stack.extend(self.child_slots(self.links[at].children));
        }
    }

    /// One node's share of a backward pass: its gradient times each local derivative, given to
    /// its children. Returns the work beyond one unit it took: the children of an n-ary node,
    /// so that a chunk of a pass is bounded in time and not only in nodes.
    #[inline(always)]
    fn propagate_step(&mut self, slot: u32, x: &mut Vec<f64>, stop_at_nan: bool, pass: u32) -> Result<usize> {
        let node = &self.nodes[slot as usize];
        let (op, g, out) = (node.op, node.grad, node.data);
        match self.links[slot as usize].children {
            Children::None => Ok(0),
            Children::One(a) => {
                let x = [self.nodes[a as usize].data];
                let da = op.local_grad(&x, out, 0) * g;
                if stop_at_nan && da.is_nan() {
                    Err(nan_gradient(op, &x, g))
                } else {
                    self.give(a, da, pass);
                    Ok(0)
                }
            }
            Children::Two(a, b) => {
                let x = [self.nodes[a as usize].data, self.nodes[b as usize].data];
                let da = op.local_grad(&x, out, 0) * g;
                let db = op.local_grad(&x, out, 1) * g;
                if stop_at_nan && (da.is_nan() || db.is_nan()) {
                    Err(nan_gradient(op, &x, g))
                } else {
                    self.give(a, da, pass);
                    self.give(b, db, pass);
                    Ok(0)
                }
            }
            Children::Many(list) => {
                self.backward_many(slot, list, x, stop_at_nan, pass)?;
                Ok(x.len())
            }
        }
    }

    /// One step of the chain rule from `id`, as micrograd's `Value._backward`: adds the node's
    /// gradient times each local derivative to its children's gradients, and nothing else (no
    /// reset, no walk), so that the lecture's back-propagation by hand can be followed step by step.
    pub fn propagate(&mut self, id: NodeId) -> Result<()> {
        let Node {
            data: out,
            grad: g,
            op,
        } = *self.check(id)?;
        let children = self.child_slots(self.links[id.slot as usize].children);
        let x: Vec<f64> = children.iter().map(|&c| self.nodes[c as usize].data).collect();
        for (i, &child) in children.iter().enumerate() {
            let local = match op {
                Op::Recorded => self.partials.get(&id.slot).map_or(f64::NAN, |p| p[i]),
                _ => op.local_grad(&x, out, i),
            };
            self.nodes[child as usize].grad += local * g;
        }
        Ok(())
    }

    /// Adds `amount` to a node's gradient in backward pass `pass`. An interior node's first
    /// amount in a pass replaces what an earlier pass left there; a leaf accumulates across
    /// passes. (Resetting interior nodes here rather than while ordering them keeps the
    /// ordering walk from touching the nodes themselves.)
    #[inline(always)]
    fn give(&mut self, slot: u32, amount: f64, pass: u32) {
        let at = slot as usize;
        let node = &mut self.nodes[at];
        let link = &mut self.links[at];
        if link.mark != pass {
            link.mark = pass;
            if !matches!(node.op, Op::Leaf) {
                node.grad = 0.0;
            }
        }
        node.grad += amount;
    }

    /// The backward step of an n-ary node (`Sum`, `Dot`).
    fn backward_many(
        &mut self,
        slot: u32,
        list: u32,
        x: &mut Vec<f64>,
        stop_at_nan: bool,
        pass: u32,
    ) -> Result<()> {
        let Node {
            data: out,
            grad: g,
            op,
        } = self.nodes[slot as usize];
        let children = std::mem::take(&mut self.lists[list as usize]);
        x.clear();
        if x.try_reserve(children.len()).is_err() {
            let count = children.len();
            self.lists[list as usize] = children;
            return Err(out_of_memory("the backward pass's operand buffer", count));
        }
        x.extend(children.iter().map(|&c| self.nodes[c as usize].data));
        // Borrowed out of the map for the loop (an empty box takes its place), not copied.
        let recorded = match op {
            Op::Recorded => self.partials.get_mut(&slot).map(std::mem::take),
            _ => None,
        };
        let mut result = Ok(());
        for (i, &child) in children.iter().enumerate() {
            let local = match &recorded {
                Some(partials) => partials[i],
                None => op.local_grad(x, out, i),
            };
            let amount = local * g;
            if stop_at_nan && amount.is_nan() {
                result = Err(nan_gradient(op, x, g));
                break;
            }
            self.give(child, amount, pass);
        }
        self.lists[list as usize] = children;
        if let (Some(partials), Some(entry)) = (recorded, self.partials.get_mut(&slot)) {
            *entry = partials;
        }
        result
    }
}

/// The entry in `births` of a node freed since.
const DEAD: u32 = u32::MAX;

/// How many nodes ahead the backward sweep asks for a node's cache line. The sweep's order is
/// known in advance, but a graph built just before its backward is mostly out of the nearer
/// caches, and waiting for each node in turn would make the sweep latency-bound.
const PREFETCH_DISTANCE: usize = 16;

#[inline(always)]
fn prefetch<T>(item: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults and changes no memory.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>((item as *const T).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = item;
}

#[cold]
fn nan_gradient(op: Op, inputs: &[f64], upstream: f64) -> EngineError {
    EngineError::NanGradient {
        op: op.describe(),
        inputs: inputs.to_vec(),
        upstream,
    }
}

/// glibc serves allocations below its (self-raising) mmap threshold, up to 32 MiB, from the heap,
/// and gives the heap's free pages back only when the free space at its top is large: the arrays
/// `trim` just freed could stay resident. Asking explicitly returns them.
fn return_free_heap_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: glibc's malloc_trim takes no pointers and only releases free memory of the
        // allocator that std uses; it is safe to call from any thread at any time.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// Makes room for one more element in `items`, growing it the amortised way, or says what could
/// not be allocated.
#[inline(always)]
fn grow<T>(items: &mut Vec<T>, what: &'static str) -> Result<()> {
    if items.len() == items.capacity() {
        let needed = items.len() + 1;
        items.try_reserve(1).map_err(|_| out_of_memory(what, needed))?;
    }
    Ok(())
}

#[cold]
fn out_of_memory(what: &'static str, count: usize) -> EngineError {
    EngineError::OutOfMemory { what, count }
}

fn wrong_arity(op: &Op, got: usize) -> EngineError {
    EngineError::WrongArity {
        op: op.describe(),
        got,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backward_accumulates_through_shared_nodes() {
        // a=1; b=a+a; c=b+b  (micrograd issue #64): a.grad 4, b.grad 2
        let mut arena = Arena::new();
        let a = arena.leaf(1.0).unwrap();
        let b = arena.apply2(Op::Add, a, a).unwrap();
        let c = arena.apply2(Op::Add, b, b).unwrap();
        arena.backward(c).unwrap();
        assert_eq!(arena.grad(a).unwrap(), 4.0);
        assert_eq!(arena.grad(b).unwrap(), 2.0);
    }

    #[test]
    fn a_child_reached_again_through_a_sibling_waits_for_it() {
        // r = a * b where a = b * b: b's gradient needs a's, so a must be processed first.
        let mut arena = Arena::new();
        let b = arena.leaf(3.0).unwrap();
        let a = arena.apply2(Op::Mul, b, b).unwrap();
        let r = arena.apply2(Op::Mul, a, b).unwrap(); // r = b^3
        arena.backward(r).unwrap();
        assert_eq!(arena.grad(b).unwrap(), 27.0);
        let b2 = arena.leaf(3.0).unwrap();
        let a2 = arena.apply2(Op::Mul, b2, b2).unwrap();
        let r2 = arena.apply2(Op::Mul, b2, a2).unwrap(); // children in the other order
        arena.backward(r2).unwrap();
        assert_eq!(arena.grad(b2).unwrap(), 27.0);
    }

    #[test]
    fn second_backward_adds_exactly_the_same_to_leaves() {
        let mut arena = Arena::new();
        let a = arena.leaf(2.0).unwrap();
        let b = arena.leaf(3.0).unwrap();
        let c = arena.apply2(Op::Mul, a, b).unwrap();
        let d = arena.apply2(Op::Mul, c, c).unwrap();
        arena.backward(d).unwrap();
        assert_eq!(arena.grad(a).unwrap(), 36.0);
        arena.backward(d).unwrap();
        assert_eq!(arena.grad(a).unwrap(), 72.0);
        assert_eq!(arena.grad(c).unwrap(), 12.0);
    }

    #[test]
    fn nodes_are_freed_when_unreferenced_and_slots_reused() {
        let mut arena = Arena::new();
        let a = arena.leaf(1.0).unwrap();
        let b = arena.apply1(Op::Exp, a).unwrap();
        arena.release(a); // b still holds a
        assert_eq!(arena.live_nodes(), 2);
        assert!(arena.is_live(a));
        arena.release(b);
        assert_eq!(arena.live_nodes(), 0);
        assert!(!arena.is_live(a));
        assert_eq!(arena.data(a), Err(EngineError::StaleHandle(a)));
        let c = arena.leaf(5.0).unwrap();
        let d = arena.leaf(6.0).unwrap();
        assert_eq!(arena.capacity(), 2, "freed slots are reused");
        assert_eq!({ [c.slot, d.slot] }.iter().copied().max(), Some(1));
        // the old handles are stale now: they never read the slots' new occupants
        assert!(arena.data(a).is_err() && arena.data(b).is_err());
        assert_eq!((arena.data(c), arena.data(d)), (Ok(5.0), Ok(6.0)));
    }

    #[test]
    fn million_node_chain_backward_and_drop_without_recursion() {
        let mut arena = Arena::new();
        let x = arena.leaf(1.0).unwrap();
        let mut y = x;
        arena.retain(y).unwrap();
        for _ in 0..1_000_000 {
            let next = arena.apply1(Op::AddScalar(1.0), y).unwrap();
            arena.release(y);
            y = next;
        }
        arena.backward(y).unwrap();
        assert_eq!(arena.grad(x).unwrap(), 1.0);
        arena.release(y);
        arena.release(x);
        assert_eq!(arena.live_nodes(), 0);
    }

    #[test]
    fn recorded_nodes_back_propagate_their_stored_partials() {
        let mut arena = Arena::new();
        let w = arena.leaf(2.0).unwrap();
        let x = arena.leaf(5.0).unwrap();
        // out = w * x computed elsewhere, with d/dw = x and d/dx = w
        let out = arena.recorded(10.0, &[w, x], vec![5.0, 2.0]).unwrap();
        let y = arena.apply1(Op::MulScalar(3.0), out).unwrap();
        arena.backward(y).unwrap();
        assert_eq!((arena.grad(w).unwrap(), arena.grad(x).unwrap()), (15.0, 6.0));
        assert_eq!(arena.op(out).unwrap().symbol(), "compiled");
        assert!(arena.recorded(1.0, &[w], vec![]).is_err());
        arena.release(y);
        arena.release(out);
        arena.release(w);
        arena.release(x);
        assert_eq!(arena.live_nodes(), 0);
    }

    #[test]
    fn births_are_compacted_and_a_sweep_across_other_graphs_gives_way_to_a_walk() {
        let mut arena = Arena::new();
        let w = arena.leaf(2.0).unwrap();
        // A long chain kept alive, born between w and the small graphs below.
        let mut chain = arena.leaf(1.0).unwrap();
        for _ in 0..100_000 {
            let next = arena.apply1(Op::AddScalar(1.0), chain).unwrap();
            arena.release(chain);
            chain = next;
        }
        for step in 1..=3 {
            for _ in 0..10_000 {
                let id = arena.leaf(0.0).unwrap(); // dead births, compacted away
                arena.release(id);
            }
            let y = arena.apply2(Op::Mul, w, w).unwrap();
            arena.backward(y).unwrap();
            assert_eq!(arena.grad(w).unwrap(), 4.0 * step as f64);
            // Sweeping from y down to w crosses the whole chain to reach two nodes: not again.
            assert!(!arena.sweep_pays);
            arena.release(y);
        }
        assert!(arena.births.len() <= 2 * arena.live_nodes() + 4096);
        arena.backward(chain).unwrap(); // a pass that walks, and finds sweeping would pay
        assert!(arena.sweep_pays);
        arena.backward(chain).unwrap();
        assert_eq!(arena.grad(chain).unwrap(), 1.0);
    }

    #[test]
    fn propagating_by_hand_equals_backward() {
        // o = tanh(x*w + b), back-propagated one node at a time in reverse order
        let mut arena = Arena::new();
        let (x, w, b) = (
            arena.leaf(2.0).unwrap(),
            arena.leaf(-3.0).unwrap(),
            arena.leaf(6.9).unwrap(),
        );
        let xw = arena.apply2(Op::Mul, x, w).unwrap();
        let n = arena.apply2(Op::Add, xw, b).unwrap();
        let o = arena.apply1(Op::Tanh, n).unwrap();
        arena.set_grad(o, 1.0).unwrap();
        for node in [o, n, xw, x] {
            arena.propagate(node).unwrap(); // a leaf has nothing to propagate
        }
        let by_hand = [x, w, b].map(|v| arena.grad(v).unwrap());
        for v in [x, w, b] {
            arena.set_grad(v, 0.0).unwrap();
        }
        arena.backward(o).unwrap();
        assert_eq!(by_hand, [x, w, b].map(|v| arena.grad(v).unwrap()));
    }

    #[test]
    fn wrong_arity_is_an_error_not_a_panic() {
        let mut arena = Arena::new();
        let a = arena.leaf(1.0).unwrap();
        assert!(matches!(
            arena.apply(Op::Add, &[a]),
            Err(EngineError::WrongArity { .. })
        ));
        assert!(matches!(
            arena.apply1(Op::Add, a),
            Err(EngineError::WrongArity { .. })
        ));
    }

    #[test]
    fn nan_gradients_are_reported_when_asked() {
        let mut arena = Arena::new();
        let a = arena.leaf(0.0).unwrap();
        let b = arena.apply1(Op::PowScalar(0.5), a).unwrap(); // d/da = inf at 0
        let c = arena.apply1(Op::MulScalar(0.0), b).unwrap(); // 0 * inf = nan
        let d = arena.apply2(Op::Mul, c, a).unwrap();
        arena.backward(d).unwrap();
        assert!(arena.grad(a).unwrap().is_nan());
        let err = arena.backward_checked(d, true).unwrap_err();
        assert!(matches!(err, EngineError::NanGradient { .. }), "{err}");
    }

    /// A chain of `n` nodes over `x` (`x + 1 + 1 ...`), its end held by the caller.
    fn chain(arena: &mut Arena, x: NodeId, n: usize) -> NodeId {
        arena.retain(x).unwrap();
        let mut y = x;
        for _ in 0..n {
            let next = arena.apply1(Op::AddScalar(1.0), y).unwrap();
            arena.release(y);
            y = next;
        }
        y
    }

    #[test]
    fn a_handle_from_before_the_arrays_were_cut_back_stays_stale() {
        let mut arena = Arena::new();
        arena.set_keep_slots(16);
        let mut old: Vec<NodeId> = Vec::new();
        // Rebuilding a graph as big as the one cut keeps that many slots from then on; the
        // rounds grow so that each cuts some slots anew.
        for (n, kept) in [(100, 0), (400, 100), (1600, 400)] {
            let ids: Vec<NodeId> = (0..n).map(|i| arena.leaf(i as f64).unwrap()).collect();
            for &id in &ids {
                arena.release(id);
            }
            assert_eq!(arena.capacity(), kept, "everything was freed, so cut back");
            old.extend(ids);
            // New nodes fill slot 0 and up again; none of them may answer to an old handle.
            let new: Vec<NodeId> = (0..n).map(|i| arena.leaf(-(i as f64)).unwrap()).collect();
            for &id in &old {
                assert!(!arena.is_live(id), "{id:?} names a new node");
                assert_eq!(arena.data(id), Err(EngineError::StaleHandle(id)));
                arena.release(id); // ignored, not taken from the new node
            }
            assert_eq!(arena.live_nodes(), n);
            assert!(new.iter().all(|&id| arena.is_live(id)));
            old.extend(new.iter().copied());
            for id in new {
                arena.release(id);
            }
        }
    }

    #[test]
    fn dropping_a_big_graph_made_after_a_model_returns_its_memory() {
        let mut arena = Arena::new();
        arena.set_keep_slots(1000);
        let model: Vec<NodeId> = (0..10).map(|i| arena.leaf(i as f64).unwrap()).collect();
        let y = chain(&mut arena, model[3], 100_000);
        let below = chain(&mut arena, model[4], 10);
        arena.release(below);
        arena.backward(y).unwrap();
        assert_eq!(arena.grad(model[3]).unwrap(), 1.0);
        assert!(arena.capacity() > 100_000);
        arena.release(y);
        assert_eq!(arena.live_nodes(), 10);
        assert_eq!(arena.capacity(), 10, "cut back to the model");
        assert!(arena.nodes.capacity() < 100 && arena.births.capacity() < 100);
        assert!(arena.free.is_empty() && arena.order.capacity() < 5000);
        assert!(!arena.is_live(y));
        // The model still works, and a smaller graph grows the arrays again, to be cut again.
        let y = chain(&mut arena, model[3], 20_000);
        arena.backward(y).unwrap();
        assert_eq!(arena.grad(model[3]).unwrap(), 2.0);
        arena.release(y);
        assert_eq!(arena.capacity(), 10);
    }

    #[test]
    fn a_loop_rebuilding_a_big_graph_is_cut_back_once_not_every_step() {
        let mut arena = Arena::new();
        arena.set_keep_slots(1000);
        let x = arena.leaf(1.0).unwrap();
        let mut capacities = Vec::new();
        for _ in 0..4 {
            let y = chain(&mut arena, x, 100_000);
            arena.release(y);
            capacities.push(arena.capacity());
        }
        assert_eq!(capacities, [1, 100_001, 100_001, 100_001]);
        let stale = chain(&mut arena, x, 10); // generations stay fresh across the kept slots
        arena.release(stale);
        assert!(!arena.is_live(stale));
        arena.release(x);
    }

    #[test]
    fn arrays_are_not_cut_while_their_top_is_alive() {
        let mut arena = Arena::new();
        arena.set_keep_slots(1000);
        let x = arena.leaf(1.0).unwrap();
        let y = chain(&mut arena, x, 10_000);
        let top = arena.leaf(2.0).unwrap(); // made last: holds the top slot
        arena.release(y);
        assert_eq!(arena.live_nodes(), 2);
        assert_eq!(arena.capacity(), 10_002);
        // Releases below half the live count at the last attempt try again; nothing else does.
        assert_eq!(arena.trim_below, 1);
        arena.release(top);
        assert_eq!(arena.capacity(), 1);
        arena.release(x);
    }

    #[test]
    fn a_node_limit_fails_cleanly() {
        let mut arena = Arena::new();
        arena.set_max_nodes(Some(3));
        let a = arena.leaf(1.0).unwrap();
        let b = arena.leaf(2.0).unwrap();
        let c = arena.apply2(Op::Mul, a, b).unwrap();
        assert_eq!(arena.leaf(0.0), Err(EngineError::NodeLimit { limit: 3 }));
        assert_eq!(
            arena.apply2(Op::Add, a, c),
            Err(EngineError::NodeLimit { limit: 3 })
        );
        assert!(arena.apply(Op::Sum, &[a, b, c]).is_err());
        assert!(arena.recorded(1.0, &[a], vec![1.0]).is_err());
        assert!(arena
            .leaf(0.0)
            .unwrap_err()
            .to_string()
            .contains("GRADRS_MAX_NODES=3"));
        // Nothing was half made: the refcounts are as they were, so one release frees each.
        arena.release(c);
        assert_eq!(arena.live_nodes(), 2);
        let d = arena.apply2(Op::Add, a, b).unwrap();
        arena.backward(d).unwrap();
        assert_eq!(arena.grad(a).unwrap(), 1.0);
        for id in [d, a, b] {
            arena.release(id);
        }
        assert_eq!(arena.live_nodes(), 0);
        arena.set_max_nodes(None);
        assert!(arena.leaf(0.0).is_ok());
    }

    /// Runs a backward pass `budget` nodes at a time.
    fn backward_in_chunks(
        arena: &mut Arena,
        root: NodeId,
        budget: usize,
        stop_at_nan: bool,
    ) -> Result<usize> {
        let mut pass = arena.begin_backward(root, stop_at_nan)?;
        let mut steps = 1;
        while !arena.backward_step(&mut pass, budget)? {
            steps += 1;
        }
        Ok(steps)
    }

    #[test]
    fn a_backward_in_chunks_equals_one_in_one_go() {
        for traversal in [Traversal::Births, Traversal::Walk] {
            let mut arena = Arena::new();
            arena.set_traversal(traversal);
            let (a, b) = (arena.leaf(0.3).unwrap(), arena.leaf(-0.7).unwrap());
            let mut y = arena.apply2(Op::Mul, a, b).unwrap();
            for i in 0..200 {
                let t = arena.apply1(Op::Tanh, y).unwrap();
                let next = arena
                    .apply(Op::Sum, &[t, if i % 2 == 0 { a } else { b }, y])
                    .unwrap();
                arena.release(t);
                arena.release(y);
                y = next;
            }
            arena.backward(y).unwrap();
            let whole = [arena.grad(a).unwrap(), arena.grad(b).unwrap()];
            for budget in [1, 7, 1000] {
                arena.set_grad_of(&[a, b], &[0.0, 0.0]).unwrap();
                let steps = backward_in_chunks(&mut arena, y, budget, false).unwrap();
                assert!(budget > 500 || steps > 50, "{traversal:?}: {steps} steps");
                assert_eq!([arena.grad(a).unwrap(), arena.grad(b).unwrap()], whole);
            }
        }
    }

    #[test]
    fn a_paused_backward_refuses_to_resume_on_a_changed_arena() {
        let mut arena = Arena::new();
        let x = arena.leaf(1.0).unwrap();
        let y = chain(&mut arena, x, 1000);
        // Another backward pass in between.
        let mut pass = arena.begin_backward(y, false).unwrap();
        assert!(!arena.backward_step(&mut pass, 10).unwrap());
        arena.backward(y).unwrap();
        assert_eq!(
            arena.backward_step(&mut pass, 10),
            Err(EngineError::BackwardInterrupted)
        );
        assert_eq!(
            arena.backward_step(&mut pass, 10),
            Ok(true),
            "and it stays finished"
        );
        // Births renumbered in between (churn makes the arena compact them).
        let mut pass = arena.begin_backward(y, false).unwrap();
        assert!(!arena.backward_step(&mut pass, 10).unwrap());
        for _ in 0..10_000 {
            let id = arena.leaf(0.0).unwrap();
            arena.release(id);
        }
        assert_eq!(
            arena.backward_step(&mut pass, 10),
            Err(EngineError::BackwardInterrupted)
        );
        // Making and freeing a few nodes does not disturb it.
        let mut pass = arena.begin_backward(y, false).unwrap();
        assert!(!arena.backward_step(&mut pass, 10).unwrap());
        let z = arena.apply1(Op::Exp, x).unwrap();
        arena.release(z);
        while !arena.backward_step(&mut pass, 10).unwrap() {}
        arena.set_grad(x, 0.0).unwrap();
        arena.backward(y).unwrap();
        assert_eq!(arena.grad(x).unwrap(), 1.0);
    }

    #[test]
    fn nan_gradients_are_reported_in_chunks_too() {
        let mut arena = Arena::new();
        let a = arena.leaf(0.0).unwrap();
        let b = arena.apply1(Op::PowScalar(0.5), a).unwrap();
        let c = arena.apply1(Op::MulScalar(0.0), b).unwrap();
        let d = chain(&mut arena, c, 50);
        for traversal in [Traversal::Births, Traversal::Walk] {
            arena.set_traversal(traversal);
            let err = backward_in_chunks(&mut arena, d, 3, true).unwrap_err();
            assert!(matches!(err, EngineError::NanGradient { .. }), "{err}");
        }
    }
}
