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

mod backward;
mod error;
mod group;
mod layer;
mod node;
mod order;
mod recording;
mod store;

use std::collections::BTreeMap;

use crate::op::{Arity, Op};
pub use backward::{BackwardPass, Traversal};
use error::{out_of_memory, wrong_arity};
pub use error::{EngineError, Result};
pub use group::HeldGroup;
use node::{Children, Link, Node, Slot};
pub use node::{Kind, NodeId, NodeView};
pub use recording::Recording;
use store::KEEP_SLOTS;

#[derive(Debug)]
pub struct Arena {
    nodes: Vec<Node>,
    links: Vec<Link>,
    slots: Vec<Slot>,
    /// The slot of each node in the order the nodes were made; a freed node's entry is `DEAD`
    /// until the next compaction. Sweeping it backwards visits parents before children.
    births: Vec<u32>,
    /// Whether the last backward pass found sweeping its birth range cheap (see `backward_checked`).
    sweep_is_cheap: bool,
    traversal: Traversal,
    free: Vec<u32>,
    /// The children of n-ary nodes (`Children::Many`), and the indices free for reuse.
    lists: Vec<Vec<u32>>,
    free_lists: Vec<u32>,
    live: usize,
    epoch: u32,
    labels: BTreeMap<u32, String>,
    /// The partial derivatives of `Kind::CompiledCall` nodes, by slot.
    partials: BTreeMap<u32, Box<[f64]>>,
    /// Reused buffers, so that the hot paths do not allocate.
    inputs: Vec<f64>,
    worklist: Vec<u32>,
    order: Vec<u32>,
    stack: Vec<(u32, u32)>,
    /// The generation a slot made anew starts at: above every generation any discarded slot
    /// ever handed out, so a handle from before a cut never matches a node made after it.
    fresh_gen: u32,
    /// Bumped whenever `births` is renumbered or the slot arrays are cut back, which moves
    /// what a paused backward pass remembers its place by.
    layout: u32,
    /// A release leaving at most this many live nodes considers cutting the arrays back (see `cut_back`).
    cut_back_below: usize,
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
            sweep_is_cheap: true,
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
            cut_back_below: usize::MAX,
            keep_slots: KEEP_SLOTS,
            floor: 0,
            cut_from: 0,
            max_nodes: usize::MAX,
        }
    }
}

impl Arena {
    /// A new leaf holding `data`, with one reference owned by the caller.
    pub fn leaf(&mut self, data: f64) -> Result<NodeId> {
        self.reserve_node(false)?;
        Ok(self.alloc(data, Kind::Leaf, Children::None))
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
        Ok(self.alloc(data, Kind::Op(op), links))
    }

    /// `op(a)` without allocating for the child list.
    #[inline]
    pub fn apply1(&mut self, op: Op, a: NodeId) -> Result<NodeId> {
        let x = self.check(a)?.data;
        if op.arity() != Arity::One {
            return Err(wrong_arity(&op, 1));
        }
        let data = op.forward(&[x]);
        self.reserve_node(false)?;
        self.slots[a.slot as usize].refs += 1;
        Ok(self.alloc(data, Kind::Op(op), Children::One(a.slot)))
    }

    /// `op(a, b)` without allocating for the child list.
    #[inline]
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
        Ok(self.alloc(data, Kind::Op(op), Children::Two(a.slot, b.slot)))
    }

    /// A node whose value and partial derivatives (one per child) were computed
    /// elsewhere, by a compiled call (`Kind::CompiledCall`: a recorded program replayed as one step).
    pub fn compiled_call(&mut self, value: f64, children: &[NodeId], partials: Vec<f64>) -> Result<NodeId> {
        self.compiled_call_over(value, &HeldGroup::default(), children, partials)
    }

    /// [`Arena::compiled_call`] with the nodes of `params` and then `others` for children: a
    /// program's parameters, which it holds, and the Values attached to its inputs. The held
    /// nodes need no check, and the group knows the earliest birth below them, so only `others`
    /// are looked at one by one (a model's 9,000 parameters were a fifth of a small batch's step).
    pub fn compiled_call_over(
        &mut self,
        value: f64,
        params: &HeldGroup,
        others: &[NodeId],
        partials: Vec<f64>,
    ) -> Result<NodeId> {
        let n_children = params.len() + others.len();
        if partials.len() != n_children {
            return Err(EngineError::LengthMismatch {
                expected: n_children,
                got: partials.len(),
            });
        }
        for &c in others {
            self.check(c)?;
        }
        self.reserve_node(true)?;
        let list = self.list_of(params.ids(), others)?;
        for c in params.ids().iter().chain(others) {
            self.slots[c.slot as usize].refs += 1;
        }
        let others_below = self.earliest_below_all(&self.lists[list as usize][params.len()..]);
        let earliest_below = match (params.earliest_below(), others_below) {
            (Some(a), Some(b)) => Some(self.earlier(a, b)),
            (one, None) | (None, one) => one,
        };
        let id = self.place(value, Kind::CompiledCall, Children::Many(list), earliest_below);
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
            _ => Children::Many(self.list_of(ids, &[])?),
        })
    }

    /// The slots of `first` and then of `then` as a new list of children.
    fn list_of(&mut self, first: &[NodeId], then: &[NodeId]) -> Result<u32> {
        let len = first.len() + then.len();
        let mut list = Vec::new();
        list.try_reserve_exact(len)
            .map_err(|_| out_of_memory("a list of children", len))?;
        list.extend(first.iter().chain(then).map(|c| c.slot));
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

    /// The handle of the node living in `slot`.
    fn id_of(&self, slot: u32) -> NodeId {
        NodeId {
            slot,
            gen: self.slots[slot as usize].gen,
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

    pub fn view(&self, id: NodeId) -> Result<NodeView<'_>> {
        let node = self.check(id)?;
        Ok(NodeView {
            data: node.data,
            grad: node.grad,
            kind: &node.kind,
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
        self.read_all(ids, |node| node.data)
    }

    /// The gradients of many nodes, in order.
    pub fn grad_of(&self, ids: &[NodeId]) -> Result<Vec<f64>> {
        self.read_all(ids, |node| node.grad)
    }

    /// `read` of every node in `ids`, in order, or the first stale handle's error.
    fn read_all(&self, ids: &[NodeId], read: impl Fn(&Node) -> f64) -> Result<Vec<f64>> {
        self.check_all(ids, ids.len())?;
        self.read_live(ids, read)
    }

    /// Sets the data of many nodes; nothing changes unless every handle is live.
    pub fn set_data_of(&mut self, ids: &[NodeId], values: &[f64]) -> Result<()> {
        self.check_all(ids, values.len())?;
        self.write_live(ids, values, |node, v| node.data = v);
        Ok(())
    }

    /// Sets the gradients of many nodes; nothing changes unless every handle is live.
    pub fn set_grad_of(&mut self, ids: &[NodeId], values: &[f64]) -> Result<()> {
        self.check_all(ids, values.len())?;
        self.write_live(ids, values, |node, v| node.grad = v);
        Ok(())
    }

    /// Sets every gradient in `ids` to 0 (all are checked first: on an error none is changed).
    pub fn zero_grad_of(&mut self, ids: &[NodeId]) -> Result<()> {
        self.check_all(ids, ids.len())?;
        for &id in ids {
            self.nodes[id.slot as usize].grad = 0.0;
        }
        Ok(())
    }

    pub(super) fn check_all(&self, ids: &[NodeId], len: usize) -> Result<()> {
        if ids.len() != len {
            return Err(EngineError::LengthMismatch {
                expected: ids.len(),
                got: len,
            });
        }
        ids.iter().try_for_each(|&id| self.check(id).map(|_| ()))
    }

    /// What made the node: nothing (a leaf), an op, or a compiled call.
    pub fn kind(&self, id: NodeId) -> Result<&Kind> {
        Ok(&self.check(id)?.kind)
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
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

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
    fn compiled_calls_back_propagate_their_stored_partials() {
        let mut arena = Arena::new();
        let w = arena.leaf(2.0).unwrap();
        let x = arena.leaf(5.0).unwrap();
        // out = w * x computed elsewhere, with d/dw = x and d/dx = w
        let out = arena.compiled_call(10.0, &[w, x], vec![5.0, 2.0]).unwrap();
        let y = arena.apply1(Op::MulScalar(3.0), out).unwrap();
        arena.backward(y).unwrap();
        assert_eq!((arena.grad(w).unwrap(), arena.grad(x).unwrap()), (15.0, 6.0));
        assert_eq!(arena.kind(out).unwrap().symbol(), "compiled");
        assert!(arena.compiled_call(1.0, &[w], vec![]).is_err());
        arena.release(y);
        arena.release(out);
        arena.release(w);
        arena.release(x);
        assert_eq!(arena.live_nodes(), 0);
    }

    /// A chain of `n` nodes over `x` (`x + 1 + 1 ...`), its end held by the caller.
    pub(crate) fn chain(arena: &mut Arena, x: NodeId, n: usize) -> NodeId {
        arena.retain(x).unwrap();
        let mut y = x;
        for _ in 0..n {
            let next = arena.apply1(Op::AddScalar(1.0), y).unwrap();
            arena.release(y);
            y = next;
        }
        y
    }
}
