//! Order: the nodes' births (a node is always made after its children, so the order of making
//! lists parents before children), their compaction, and the depth-first walk of a graph.

use super::error::Result;
use std::collections::HashSet;

use super::node::{Link, NodeId, Slot};
use super::store::grow;
use super::Arena;

/// The entry in `births` of a node freed since.
pub(crate) const DEAD: u32 = u32::MAX;

impl Arena {
    /// Drops the entries of freed nodes from `births`, renumbering the living in the same order.
    pub(super) fn compact_births(&mut self) {
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

    /// The births a backward pass from `root` may reach: from the earliest-born node below it
    /// to its own.
    pub(super) fn birth_span(&self, root: u32) -> std::ops::Range<usize> {
        let Slot {
            birth,
            earliest_below,
            ..
        } = self.slots[root as usize];
        self.slots[earliest_below as usize].birth as usize..birth as usize + 1
    }

    /// The nodes reachable from `root`, children before parents (a post-order
    /// of an explicit-stack depth-first search; each node appears once).
    pub fn topological_order(&mut self, root: NodeId) -> Result<Vec<NodeId>> {
        self.check(root)?;
        let epoch = self.next_epoch();
        let mut order = Vec::new();
        let mut stack = std::mem::take(&mut self.stack);
        stack.clear();
        let mut graph = self.marked(epoch);
        let walked = start_walk(&mut graph, root.slot, &mut stack)
            .and_then(|()| walk_post_order(&mut graph, &mut order, &mut stack, usize::MAX));
        self.stack = stack;
        walked?;
        Ok(order.into_iter().map(|slot| self.id_of(slot)).collect())
    }

    /// Every node below `roots`, children before parents, each once (the first root's first);
    /// the nodes for which `opaque` holds are listed, what is below them is not. The arena is
    /// only read: the walk keeps its own set of the nodes it reached.
    pub(crate) fn post_order(
        &self,
        roots: &[NodeId],
        opaque: impl Fn(NodeId) -> bool,
    ) -> Result<Vec<NodeId>> {
        for &root in roots {
            self.check(root)?;
        }
        let roots = roots.iter().map(|root| root.slot);
        let order = self.post_order_of_slots(roots, |slot| opaque(self.id_of(slot)))?;
        Ok(order.into_iter().map(|slot| self.id_of(slot)).collect())
    }

    /// [`Arena::post_order`] over slots.
    pub(super) fn post_order_of_slots(
        &self,
        roots: impl IntoIterator<Item = u32>,
        opaque: impl Fn(u32) -> bool,
    ) -> Result<Vec<u32>> {
        let mut graph = Seen {
            arena: self,
            seen: HashSet::new(),
            opaque,
        };
        let (mut order, mut stack) = (Vec::new(), Vec::new());
        for root in roots {
            start_walk(&mut graph, root, &mut stack)?;
            walk_post_order(&mut graph, &mut order, &mut stack, usize::MAX)?;
        }
        Ok(order)
    }

    pub(super) fn next_epoch(&mut self) -> u32 {
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.links.iter_mut().for_each(|link| link.mark = 0);
            self.epoch = 1;
        }
        self.epoch
    }

    /// The graph as a walk marking the nodes it reaches with `epoch` in the arena's own links.
    pub(super) fn marked(&mut self, epoch: u32) -> Marked<'_> {
        Marked {
            links: &mut self.links,
            lists: &self.lists,
            epoch,
        }
    }
}

/// A graph as the one depth-first walk sees it. Every walk over the arena's graphs (a backward
/// pass ordering its nodes, `topological_order`, a program's recording, the repair after a
/// failed pass) is [`walk_post_order`] over one of the two kinds below.
pub(super) trait Graph {
    /// Child `i` of `node`, or `None` past its last (or when the walk must not go below it).
    fn child(&self, node: u32, i: usize) -> Option<u32>;
    /// Marks `node` as reached; false if it already was.
    fn reach(&mut self, node: u32) -> bool;
}

/// Marks kept in the arena's `links`, next to the children a walk reads: no allocation, and one
/// cache line for testing a child and going down into it (what a backward pass needs).
pub(super) struct Marked<'a> {
    links: &'a mut [Link],
    lists: &'a [Vec<u32>],
    epoch: u32,
}

impl Graph for Marked<'_> {
    #[inline(always)]
    fn child(&self, node: u32, i: usize) -> Option<u32> {
        self.links[node as usize].children.nth(i, self.lists)
    }

    #[inline(always)]
    fn reach(&mut self, node: u32) -> bool {
        let mark = &mut self.links[node as usize].mark;
        if *mark == self.epoch {
            return false;
        }
        *mark = self.epoch;
        true
    }
}

/// Marks kept in a set of the walk's own, for walks that only read the arena and may stop at
/// nodes for which `opaque` holds.
struct Seen<'a, F> {
    arena: &'a Arena,
    seen: HashSet<u32>,
    opaque: F,
}

impl<F: Fn(u32) -> bool> Graph for Seen<'_, F> {
    fn child(&self, node: u32, i: usize) -> Option<u32> {
        if (self.opaque)(node) {
            return None;
        }
        self.arena.links[node as usize].children.nth(i, &self.arena.lists)
    }

    fn reach(&mut self, node: u32) -> bool {
        self.seen.insert(node)
    }
}

/// Starts a walk at `root` on `stack`, unless an earlier root's walk reached it.
pub(super) fn start_walk<G: Graph>(graph: &mut G, root: u32, stack: &mut Vec<(u32, u32)>) -> Result<()> {
    if graph.reach(root) {
        grow(stack, "the backward pass's walk stack")?;
        stack.push((root, 0));
    }
    Ok(())
}

/// Continues a depth-first walk, appending to `order` in post-order, for about `budget` steps
/// (one per node and one per edge); `Ok(true)` once the walk is complete. The stack holds each
/// node on the path with the index of its next child, so a walk can pause and resume, and a
/// chain of a million nodes is a loop, not a recursion. The buffers are the caller's, kept
/// between calls, so a training loop's backward does not allocate.
#[inline]
pub(super) fn walk_post_order<G: Graph>(
    graph: &mut G,
    order: &mut Vec<u32>,
    stack: &mut Vec<(u32, u32)>,
    budget: usize,
) -> Result<bool> {
    let mut spent = 0usize;
    while let Some(top) = stack.last_mut() {
        if spent >= budget {
            return Ok(false);
        }
        spent += 1;
        let (slot, next) = *top;
        match graph.child(slot, next as usize) {
            Some(child) => {
                top.1 += 1;
                if graph.reach(child) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arena::EngineError;
    use crate::op::Op;

    #[test]
    pub(super) fn births_are_compacted_and_a_sweep_across_other_graphs_gives_way_to_a_walk() {
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
            // Over a node that is not a leaf: a node over leaves alone needs no sweep at all.
            let square = arena.apply2(Op::Mul, w, w).unwrap();
            let y = arena.apply1(Op::AddScalar(0.0), square).unwrap();
            arena.release(square);
            arena.backward(y).unwrap();
            assert_eq!(arena.grad(w).unwrap(), 4.0 * step as f64);
            // Sweeping from y down to w crosses the whole chain to reach two nodes: not again.
            assert!(!arena.sweep_is_cheap);
            arena.release(y);
        }
        assert!(arena.births.len() <= 2 * arena.live_nodes() + 4096);
        arena.backward(chain).unwrap(); // a pass that walks, and finds sweeping would pay
        assert!(arena.sweep_is_cheap);
        arena.backward(chain).unwrap();
        assert_eq!(arena.grad(chain).unwrap(), 1.0);
    }

    #[test]
    fn every_walk_lists_children_first_once_and_stops_at_opaque_nodes() {
        let mut arena = Arena::new();
        let (a, b) = (arena.leaf(1.0).unwrap(), arena.leaf(2.0).unwrap());
        let ab = arena.apply2(Op::Mul, a, b).unwrap();
        let c = arena.apply(Op::Sum, &[ab, a, ab]).unwrap();
        let d = arena.apply2(Op::Add, c, b).unwrap();
        let expected = vec![a, b, ab, c, d];
        assert_eq!(arena.topological_order(d).unwrap(), expected);
        assert_eq!(arena.post_order(&[d], |_| false).unwrap(), expected);
        // Two roots share what is below them; an opaque node is listed, not walked below.
        assert_eq!(arena.post_order(&[ab, d], |_| false).unwrap(), expected);
        assert_eq!(arena.post_order(&[d], |id| id == c).unwrap(), vec![c, b, d]);
        arena.release(d);
        assert_eq!(
            arena.post_order(&[d], |_| false),
            Err(EngineError::StaleHandle(d))
        );
    }
}
