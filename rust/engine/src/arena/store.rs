//! Storage: the slot arrays, reference counts, the free list, generations, fallible growth, and
//! cutting the arrays back when most of the arena is free.

use super::error::{out_of_memory, Result};
use super::node::{Children, Kind, Link, Node, NodeId, Slot};
use super::order::DEAD;
use super::{Arena, EngineError};

/// Slot arrays up to this long are never cut back, so a training loop whose graph fits rebuilds
/// it in the same memory every step; beyond it, freeing most of the arena returns the storage to
/// the allocator, so one huge graph does not pin its memory forever.
pub(super) const KEEP_SLOTS: usize = 1 << 20;

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

    /// Makes room for one more node (and with `list`, one more list of children), so that making
    /// it cannot fail halfway: every push `alloc` and `list_of` make fits afterwards, and so does
    /// every push a later release makes (a release runs in destructors and cannot fail).
    #[inline(always)]
    pub(super) fn reserve_node(&mut self, list: bool) -> Result<()> {
        // The common cases, a free slot or room for a new one (a graph growing without frees,
        // as a first forward pass does), and room everywhere, decided in a few compares.
        let slot = !self.free.is_empty() || self.room_for_a_new_slot();
        let roomy = slot
            && self.births.len() < self.births.capacity()
            && self.births.len() < 2 * self.live + 4096
            && self.live < self.max_nodes;
        if roomy && !list {
            return Ok(());
        }
        self.reserve_node_slowly(list)
    }

    /// Whether a new slot fits as it is: room in the three per-slot arrays, room on the free
    /// list for every slot once it is freed, and a slot number below `u32::MAX`.
    #[inline(always)]
    fn room_for_a_new_slot(&self) -> bool {
        let slots = self.nodes.len() + 1;
        self.nodes.len() < self.nodes.capacity()
            && self.links.len() < self.links.capacity()
            && self.slots.len() < self.slots.capacity()
            && self.free.capacity() >= slots
            && slots < u32::MAX as usize
    }

    #[inline(never)]
    pub(super) fn reserve_node_slowly(&mut self, list: bool) -> Result<()> {
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
    pub(super) fn alloc(&mut self, data: f64, kind: Kind, children: Children) -> NodeId {
        let earliest_below = match children {
            Children::None => None,
            Children::One(a) => Some(self.slots[a as usize].earliest_below),
            Children::Two(a, b) => Some(self.earlier(
                self.slots[a as usize].earliest_below,
                self.slots[b as usize].earliest_below,
            )),
            Children::Many(list) => self.earliest_below_all(&self.lists[list as usize]),
        };
        self.place(data, kind, children, earliest_below)
    }

    /// Of two slots, the one whose node was born first.
    pub(super) fn earlier(&self, a: u32, b: u32) -> u32 {
        if self.slots[a as usize].birth <= self.slots[b as usize].birth {
            a
        } else {
            b
        }
    }

    /// The earliest-born node below any of `children` (`None` for no children).
    pub(super) fn earliest_below_all(&self, children: &[u32]) -> Option<u32> {
        // Compared by birth directly (rather than by `earlier`, which reads both births again at
        // each step): a compiled call's node has a model's every parameter for children.
        children
            .iter()
            .map(|&c| {
                let below = self.slots[c as usize].earliest_below;
                (self.slots[below as usize].birth, below)
            })
            .reduce(|a, b| if b.0 < a.0 { b } else { a })
            .map(|(_, below)| below)
    }

    /// Makes a node whose earliest-born node below is `earliest_below` (itself when `None`), in
    /// room `reserve_node` made.
    pub(super) fn place(
        &mut self,
        data: f64,
        kind: Kind,
        children: Children,
        earliest_below: Option<u32>,
    ) -> NodeId {
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
                self.cut_back_below = usize::MAX;
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
        self.births.push(slot);
        let at = slot as usize;
        self.nodes[at] = Node {
            data,
            grad: 0.0,
            kind,
        };
        self.links[at].children = children;
        let bookkeeping = &mut self.slots[at];
        bookkeeping.refs = 1;
        bookkeeping.birth = birth;
        bookkeeping.earliest_below = earliest_below.unwrap_or(slot);
        self.live += 1;
        NodeId {
            slot,
            gen: bookkeeping.gen,
        }
    }

    /// Whether `id` names a live node: the one living in its slot now, not one freed since.
    pub fn is_live(&self, id: NodeId) -> bool {
        matches!(self.slots.get(id.slot as usize), Some(s) if s.refs > 0 && s.gen == id.gen)
    }

    pub(super) fn check(&self, id: NodeId) -> Result<&Node> {
        match self.is_live(id) {
            true => Ok(&self.nodes[id.slot as usize]),
            false => Err(EngineError::StaleHandle(id)),
        }
    }

    pub(super) fn check_mut(&mut self, id: NodeId) -> Result<&mut Node> {
        match self.is_live(id) {
            true => Ok(&mut self.nodes[id.slot as usize]),
            false => Err(EngineError::StaleHandle(id)),
        }
    }

    /// Adds a reference (a new handle to the same node).
    pub fn retain(&mut self, id: NodeId) -> Result<()> {
        if !self.is_live(id) {
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
        self.drop_last_reference(id.slot);
    }

    /// Drops the last reference to the node in `slot`, freeing it and whatever only it kept.
    #[inline(never)]
    pub(super) fn drop_last_reference(&mut self, slot: u32) {
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
            if self.nodes[at].kind == Kind::CompiledCall {
                self.partials.remove(&slot);
            }
            self.nodes[at].kind = Kind::Leaf;
            if !self.labels.is_empty() {
                self.labels.remove(&slot);
            }
            self.free.push(slot); // within capacity: see `reserve_node`
            self.live -= 1;
        }
        self.worklist = work;
        if self.live <= self.cut_back_below
            && self.nodes.len() > self.keep_slots
            && self.live < self.nodes.len() / 4
        {
            self.cut_back();
        }
    }

    /// Cuts the slot arrays back to just past the highest live slot (but not below `floor`)
    /// and returns the memory, when that frees at least half of them (the common case: a model
    /// made first, then a big graph over it, now dropped). Called only once most of the arena is
    /// free, and not again until the live count halves or the arrays grow; and once a graph is
    /// rebuilt after a cut, its size is kept, so a loop that builds and drops a big graph each
    /// step pays for one cut, not one per step.
    #[cold]
    pub(super) fn cut_back(&mut self) {
        self.cut_back_below = self.live / 2;
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
}

/// glibc serves allocations below its (self-raising) mmap threshold, up to 32 MiB, from the heap,
/// and gives the heap's free pages back only when the free space at its top is large: the arrays
/// `cut_back` just freed could stay resident. Asking explicitly returns them.
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
pub(crate) fn grow<T>(items: &mut Vec<T>, what: &'static str) -> Result<()> {
    if items.len() == items.capacity() {
        let needed = items.len() + 1;
        items.try_reserve(1).map_err(|_| out_of_memory(what, needed))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::chain;
    use super::*;
    use crate::op::Op;

    #[test]
    pub(super) fn nodes_are_freed_when_unreferenced_and_slots_reused() {
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
    pub(super) fn million_node_chain_backward_and_drop_without_recursion() {
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
    pub(super) fn a_handle_from_before_the_arrays_were_cut_back_stays_stale() {
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
    pub(super) fn dropping_a_big_graph_made_after_a_model_returns_its_memory() {
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
    pub(super) fn a_loop_rebuilding_a_big_graph_is_cut_back_once_not_every_step() {
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
    pub(super) fn arrays_are_not_cut_while_their_top_is_alive() {
        let mut arena = Arena::new();
        arena.set_keep_slots(1000);
        let x = arena.leaf(1.0).unwrap();
        let y = chain(&mut arena, x, 10_000);
        let top = arena.leaf(2.0).unwrap(); // made last: holds the top slot
        arena.release(y);
        assert_eq!(arena.live_nodes(), 2);
        assert_eq!(arena.capacity(), 10_002);
        // Releases below half the live count at the last attempt try again; nothing else does.
        assert_eq!(arena.cut_back_below, 1);
        arena.release(top);
        assert_eq!(arena.capacity(), 1);
        arena.release(x);
    }

    #[test]
    pub(super) fn a_node_limit_fails_cleanly() {
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
        assert!(arena.compiled_call(1.0, &[a], vec![1.0]).is_err());
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
}
