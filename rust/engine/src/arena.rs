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
/// correct program using valid handles, except `TooManyNodes`.
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

/// Slots kept allocated after the last node dies; beyond this the storage is
/// returned to the allocator so one huge graph does not pin its memory forever.
const KEEP_SLOTS_WHEN_EMPTY: usize = 1 << 20;

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

    /// A new leaf holding `data`, with one reference owned by the caller.
    pub fn leaf(&mut self, data: f64) -> Result<NodeId> {
        self.alloc(data, Op::Leaf, Children::None)
    }

    /// Applies `op` to `children`, computing the value now. The new node holds one
    /// reference for the caller and one on each child per edge.
    pub fn apply(&mut self, op: Op, children: &[NodeId]) -> Result<NodeId> {
        let data = self.evaluate(&op, children)?;
        for c in children {
            self.slots[c.slot as usize].refs += 1;
        }
        let children = self.children_of(children);
        self.alloc(data, op, children)
    }

    /// `op(a)` without allocating for the child list.
    pub fn apply1(&mut self, op: Op, a: NodeId) -> Result<NodeId> {
        let x = self.check(a)?.data;
        if op.arity() != Arity::One {
            return Err(wrong_arity(&op, 1));
        }
        let data = op.forward(&[x]);
        self.slots[a.slot as usize].refs += 1;
        self.alloc(data, op, Children::One(a.slot))
    }

    /// `op(a, b)` without allocating for the child list.
    pub fn apply2(&mut self, op: Op, a: NodeId, b: NodeId) -> Result<NodeId> {
        let x = self.check(a)?.data;
        let y = self.check(b)?.data;
        if op.arity() != Arity::Two {
            return Err(wrong_arity(&op, 2));
        }
        let data = op.forward(&[x, y]);
        self.slots[a.slot as usize].refs += 1;
        self.slots[b.slot as usize].refs += 1;
        self.alloc(data, op, Children::Two(a.slot, b.slot))
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
        for c in children {
            self.slots[c.slot as usize].refs += 1;
        }
        let list = self.list_of(children);
        let id = self.alloc(value, Op::Recorded, Children::Many(list))?;
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

    /// The children of a new node over `ids`, its list stored when there are more than two.
    fn children_of(&mut self, ids: &[NodeId]) -> Children {
        match *ids {
            [] => Children::None,
            [a] => Children::One(a.slot),
            [a, b] => Children::Two(a.slot, b.slot),
            _ => Children::Many(self.list_of(ids)),
        }
    }

    fn list_of(&mut self, ids: &[NodeId]) -> u32 {
        let list = ids.iter().map(|c| c.slot).collect();
        match self.free_lists.pop() {
            Some(index) => {
                self.lists[index as usize] = list;
                index
            }
            None => {
                self.lists.push(list);
                (self.lists.len() - 1) as u32
            }
        }
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

    fn alloc(&mut self, data: f64, op: Op, children: Children) -> Result<NodeId> {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                let slot = u32::try_from(self.nodes.len()).map_err(|_| EngineError::TooManyNodes)?;
                if slot == u32::MAX {
                    return Err(EngineError::TooManyNodes);
                }
                self.nodes.push(Node::VACANT);
                self.links.push(Link::default());
                self.slots.push(Slot::default());
                slot
            }
        };
        if self.births.len() >= 2 * self.live + 4096 {
            self.compact_births();
        }
        let birth = u32::try_from(self.births.len()).map_err(|_| EngineError::TooManyNodes)?;
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
        Ok(NodeId {
            slot,
            gen: bookkeeping.gen,
        })
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
        let mut work = std::mem::take(&mut self.worklist);
        work.clear();
        work.push(id.slot);
        while let Some(slot) = work.pop() {
            let at = slot as usize;
            let bookkeeping = &mut self.slots[at];
            bookkeeping.refs -= 1;
            if bookkeeping.refs > 0 {
                continue;
            }
            bookkeeping.gen = bookkeeping.gen.wrapping_add(1);
            self.births[bookkeeping.birth as usize] = DEAD;
            match std::mem::take(&mut self.links[at].children) {
                Children::None => {}
                Children::One(a) => work.push(a),
                Children::Two(a, b) => work.extend([a, b]),
                Children::Many(list) => {
                    work.extend_from_slice(&std::mem::take(&mut self.lists[list as usize]));
                    self.free_lists.push(list);
                }
            }
            if matches!(self.nodes[at].op, Op::Recorded) {
                self.partials.remove(&slot);
            }
            self.nodes[at].op = Op::Leaf;
            if !self.labels.is_empty() {
                self.labels.remove(&slot);
            }
            self.free.push(slot);
            self.live -= 1;
        }
        self.worklist = work;
        if self.live == 0 && self.nodes.len() > KEEP_SLOTS_WHEN_EMPTY {
            self.shrink();
        }
    }

    /// Returns the storage of an empty arena. Generations restart, which is safe
    /// because no handle can exist while nothing is live.
    fn shrink(&mut self) {
        self.nodes = Vec::new();
        self.links = Vec::new();
        self.slots = Vec::new();
        self.births = Vec::new();
        self.lists = Vec::new();
        self.free_lists = Vec::new();
        self.free = Vec::new();
        self.worklist = Vec::new();
        self.order = Vec::new();
        self.stack = Vec::new();
        self.labels = BTreeMap::new();
        self.partials = BTreeMap::new();
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
        Ok(self
            .topo_slots(root.slot)
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

    /// Post-order from `root` into `self.order`. It reads only the children and the
    /// marks, and the buffers are kept between calls, so a training loop's backward
    /// does not allocate.
    fn topo_slots(&mut self, root: u32) -> Vec<u32> {
        let epoch = self.next_epoch();
        let mut order = std::mem::take(&mut self.order);
        let mut stack = std::mem::take(&mut self.stack);
        order.clear();
        stack.clear();
        stack.push((root, 0));
        self.links[root as usize].mark = epoch;
        while let Some(top) = stack.last_mut() {
            let (slot, next) = *top;
            match self.child(self.links[slot as usize].children, next as usize) {
                Some(child) => {
                    top.1 += 1;
                    let mark = &mut self.links[child as usize].mark;
                    if *mark != epoch {
                        *mark = epoch;
                        stack.push((child, 0));
                    }
                }
                None => {
                    order.push(slot);
                    stack.pop();
                }
            }
        }
        self.stack = stack;
        order
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
        self.check(root)?;
        let span = self.birth_span(root.slot).len();
        let by_birth = match self.traversal {
            Traversal::Auto => self.sweep_pays,
            Traversal::Births => true,
            Traversal::Walk => false,
        };
        let (outcome, processed) = if by_birth {
            self.backward_by_birth(root.slot, stop_at_nan)
        } else {
            self.backward_by_walk(root.slot, stop_at_nan)
        };
        // Sweeping the births from the root's down to its `low` reads every node made in
        // between, reached or not: far cheaper than discovering the graph by walking it, unless
        // the span is mostly other graphs still alive. Judge by this pass for the next one.
        self.sweep_pays = span <= 8 * processed + 4096;
        outcome
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

    /// Backward in reverse order of birth over `low..=birth` of the root: each node comes after
    /// every node made from it, and the order is read sequentially instead of discovered.
    fn backward_by_birth(&mut self, root: u32, stop_at_nan: bool) -> (Result<()>, usize) {
        let span = self.birth_span(root);
        let low = span.start;
        let pass = self.next_epoch();
        self.give(root, 1.0, pass);
        let mut x = std::mem::take(&mut self.inputs);
        let mut processed = 0;
        let mut outcome = Ok(());
        for at in span.rev() {
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
            processed += 1;
            if let Err(e) = self.propagate_step(slot, &mut x, stop_at_nan, pass) {
                outcome = Err(e);
                break;
            }
        }
        self.inputs = x;
        if outcome.is_err() {
            self.clear_unreached(root, pass);
        }
        (outcome, processed)
    }

    /// Backward in reverse post-order of a walk from the root.
    fn backward_by_walk(&mut self, root: u32, stop_at_nan: bool) -> (Result<()>, usize) {
        let order = self.topo_slots(root);
        let pass = self.next_epoch();
        self.give(root, 1.0, pass);
        let mut x = std::mem::take(&mut self.inputs);
        let mut outcome = Ok(());
        for (at, &slot) in order.iter().enumerate().rev() {
            if let Some(&ahead) = order.get(at.wrapping_sub(PREFETCH_DISTANCE)) {
                prefetch(&self.nodes[ahead as usize]);
                prefetch(&self.links[ahead as usize]);
            }
            if let Err(e) = self.propagate_step(slot, &mut x, stop_at_nan, pass) {
                outcome = Err(e);
                break;
            }
        }
        self.inputs = x;
        let processed = order.len();
        self.order = order;
        if outcome.is_err() {
            self.clear_unreached(root, pass);
        }
        (outcome, processed)
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
    /// its children.
    #[inline(always)]
    fn propagate_step(&mut self, slot: u32, x: &mut Vec<f64>, stop_at_nan: bool, pass: u32) -> Result<()> {
        let node = &self.nodes[slot as usize];
        let (op, g, out) = (node.op, node.grad, node.data);
        match self.links[slot as usize].children {
            Children::None => Ok(()),
            Children::One(a) => {
                let x = [self.nodes[a as usize].data];
                let da = op.local_grad(&x, out, 0) * g;
                if stop_at_nan && da.is_nan() {
                    Err(nan_gradient(op, &x, g))
                } else {
                    self.give(a, da, pass);
                    Ok(())
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
                    Ok(())
                }
            }
            Children::Many(list) => self.backward_many(slot, list, x, stop_at_nan, pass),
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
        x.extend(children.iter().map(|&c| self.nodes[c as usize].data));
        let recorded = match op {
            Op::Recorded => self.partials.get(&slot).cloned(),
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
}
