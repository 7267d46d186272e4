//! Order: the nodes' births (a node is always made after its children, so the order of making
//! lists parents before children), their compaction, and the depth-first walk of a graph.

use super::error::Result;
use super::node::{NodeId, Slot};
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
        let Slot { birth, low, .. } = self.slots[root as usize];
        self.slots[low as usize].birth as usize..birth as usize + 1
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

    pub(super) fn next_epoch(&mut self) -> u32 {
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.links.iter_mut().for_each(|link| link.mark = 0);
            self.epoch = 1;
        }
        self.epoch
    }

    pub(super) fn start_walk(&mut self, root: u32, stack: &mut Vec<(u32, u32)>, epoch: u32) -> Result<()> {
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
    pub(super) fn walk_post_order(
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
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
