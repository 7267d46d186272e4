//! Back-propagation: the sweep over births, the walk from the root, a pass advanced in chunks,
//! and the lecture's single step.

use super::error::{nan_gradient, out_of_memory, Result};
use super::node::{Children, Kind, Node, NodeId};
use super::order::{start_walk, walk_post_order, DEAD};
use super::{Arena, EngineError};
use crate::op::{dot_backward, Op};

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
    /// How many births a sweep from the root reads, to judge the next pass's strategy; `None`
    /// when only the root had a gradient to pass on, which says nothing about other graphs.
    span: Option<usize>,
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

impl Arena {
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
        let mut span = self.birth_span(root.slot);
        let over_leaves = self.has_only_leaves_below(root.slot);
        if over_leaves {
            // Only the root has a gradient to pass on (a compiled batch's result over a model's
            // parameters is such a node): sweeping its birth alone is the whole pass, however
            // many nodes were born between it and its earliest leaf.
            span = span.end - 1..span.end;
        }
        let by_birth = match self.traversal {
            Traversal::Auto => self.sweep_is_cheap || over_leaves,
            Traversal::Births => true,
            Traversal::Walk => false,
        };
        let epoch = self.next_epoch();
        let stage = if by_birth {
            self.add_to_grad(root.slot, 1.0, epoch);
            Stage::Sweep {
                next: span.end,
                low: span.start,
                processed: 0,
            }
        } else {
            let mut order = std::mem::take(&mut self.order);
            let mut stack = std::mem::take(&mut self.stack);
            order.clear();
            stack.clear();
            start_walk(&mut self.marked(epoch), root.slot, &mut stack)?;
            Stage::Order { order, stack }
        };
        Ok(BackwardPass {
            root,
            stop_at_nan,
            epoch,
            layout: self.layout,
            span: (!over_leaves).then_some(span.len()),
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
        if self.epoch != pass.epoch || self.layout != pass.layout || !self.is_live(pass.root) {
            pass.stage = Stage::Done;
            return Err(EngineError::BackwardInterrupted);
        }
        let (root, stop_at_nan, epoch) = (pass.root.slot, pass.stop_at_nan, pass.epoch);
        let outcome = match &mut pass.stage {
            Stage::Sweep { next, low, processed } => {
                let outcome = self.sweep_births(next, *low, budget, stop_at_nan, epoch, processed);
                outcome.map(|()| (*next == *low).then_some(*processed))
            }
            Stage::Order { order, stack } => {
                match walk_post_order(&mut self.marked(epoch), order, stack, budget) {
                    Ok(false) => return Ok(false),
                    Ok(true) => {
                        let order = std::mem::take(order);
                        pass.epoch = self.next_epoch();
                        self.add_to_grad(root, 1.0, pass.epoch);
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
                }
            }
            Stage::Walk { order, next } => {
                let outcome = self.propagate_along(order, next, budget, stop_at_nan, epoch);
                outcome.map(|()| (*next == 0).then_some(order.len()))
            }
            Stage::Done => Ok(None),
        };
        match outcome {
            Ok(None) => Ok(false),
            Ok(Some(processed)) => {
                // Sweeping the births from the root's down to the earliest node below it reads every node made in
                // between, reached or not: far cheaper than discovering the graph by walking it,
                // unless the span is mostly other graphs still alive. Judge by this pass for the
                // next one.
                if let Some(span) = pass.span {
                    self.sweep_is_cheap = span <= 8 * processed + 4096;
                }
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

    /// Whether every child of `slot` is a leaf (nodes without children included).
    fn has_only_leaves_below(&self, slot: u32) -> bool {
        let is_leaf = |c: &u32| matches!(self.nodes[*c as usize].kind, Kind::Leaf);
        match self.links[slot as usize].children {
            Children::None => true,
            Children::One(a) => is_leaf(&a),
            Children::Two(a, b) => is_leaf(&a) && is_leaf(&b),
            Children::Many(list) => self.lists[list as usize].iter().all(is_leaf),
        }
    }

    /// Chooses how backward passes order the graph (for comparing and testing the two ways;
    /// both give the same gradients up to the order in which a node's shares are added).
    pub fn set_traversal(&mut self, traversal: Traversal) {
        self.traversal = traversal;
    }

    /// Backward over the births from `*next` down to `low`, latest first, until about `budget`
    /// units of work are done (see [`Arena::propagate_in_order`]). Each node comes after every
    /// node made from it, and the order is read sequentially instead of discovered. Counts the
    /// nodes it goes through into `processed`.
    pub(super) fn sweep_births(
        &mut self,
        next: &mut usize,
        low: usize,
        budget: usize,
        stop_at_nan: bool,
        pass: u32,
        processed: &mut usize,
    ) -> Result<()> {
        let birth = |arena: &Self, at: usize| arena.births[at];
        *processed += self.propagate_in_order(birth, low, next, budget, stop_at_nan, pass)?;
        Ok(())
    }

    /// Backward along `order` (a post-order walk from the root) from `*next` down to its start,
    /// last node first, until about `budget` units of work are done (as `sweep_births`).
    pub(super) fn propagate_along(
        &mut self,
        order: &[u32],
        next: &mut usize,
        budget: usize,
        stop_at_nan: bool,
        pass: u32,
    ) -> Result<()> {
        let walked = |_: &Self, at: usize| order[at];
        self.propagate_in_order(walked, 0, next, budget, stop_at_nan, pass)
            .map(drop)
    }

    /// Back-propagates through the nodes `slot_at` names at `low..*next`, last first (a copy of
    /// this loop for each order, as a sweep's inner loop should be), skipping dead entries
    /// and nodes this pass gave no gradient (not below the root), until about `budget` units of
    /// work are done: a node, plus its children when it has many. Leaves `*next` where to
    /// resume and returns how many nodes it went through.
    fn propagate_in_order(
        &mut self,
        slot_at: impl Fn(&Self, usize) -> u32,
        low: usize,
        next: &mut usize,
        budget: usize,
        stop_at_nan: bool,
        pass: u32,
    ) -> Result<usize> {
        let stop = next.saturating_sub(budget).max(low);
        let mut x = std::mem::take(&mut self.inputs);
        let mut outcome = Ok(());
        let mut resume = stop;
        let mut extra = 0usize;
        let mut reached = 0usize;
        for at in (stop..*next).rev() {
            if let Some(ahead) = at.checked_sub(PREFETCH_DISTANCE).filter(|&a| a >= low) {
                let slot = slot_at(self, ahead) as usize;
                if slot != DEAD as usize {
                    prefetch(&self.links[slot]);
                    prefetch(&self.nodes[slot]);
                }
            }
            let slot = slot_at(self, at);
            if slot == DEAD || self.links[slot as usize].mark != pass {
                continue;
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
        self.inputs = x;
        outcome.map(|()| reached)
    }

    /// After a pass stopped early: the interior nodes below the root that it had not reached
    /// hold an earlier pass's gradients, which must not pass for this one's.
    #[cold]
    #[inline(never)]
    pub(super) fn clear_unreached(&mut self, root: u32, pass: u32) {
        // The pass has failed with an error already; should even this walk find no memory, the
        // unreached gradients stay as the last pass left them.
        let Ok(below) = self.post_order_of_slots([root], |_| false) else {
            return;
        };
        for slot in below {
            let at = slot as usize;
            if self.links[at].mark != pass && !matches!(self.nodes[at].kind, Kind::Leaf) {
                self.nodes[at].grad = 0.0;
            }
        }
    }

    /// One node's share of a backward pass: its gradient times each local derivative, given to
    /// its children. Returns the work beyond one unit it took: the children of an n-ary node,
    /// so that a chunk of a pass is bounded in time and not only in nodes.
    #[inline(always)]
    pub(super) fn propagate_step(
        &mut self,
        slot: u32,
        x: &mut Vec<f64>,
        stop_at_nan: bool,
        pass: u32,
    ) -> Result<usize> {
        let node = &self.nodes[slot as usize];
        let (kind, g, out) = (node.kind, node.grad, node.data);
        let children = self.links[slot as usize].children;
        // Only an op has one or two children: leaves have none, compiled calls a list.
        let (Kind::Op(op), Children::One(_) | Children::Two(..)) = (kind, children) else {
            return match children {
                Children::Many(list) => {
                    self.backward_many(slot, list, x, stop_at_nan, pass)?;
                    Ok(x.len())
                }
                _ => Ok(0),
            };
        };
        match children {
            Children::One(a) => {
                let x = [self.nodes[a as usize].data];
                let da = op.local_grad(&x, out, 0) * g;
                if stop_at_nan && da.is_nan() {
                    Err(nan_gradient(kind, &x, g))
                } else {
                    self.add_to_grad(a, da, pass);
                    Ok(0)
                }
            }
            Children::Two(a, b) => {
                let x = [self.nodes[a as usize].data, self.nodes[b as usize].data];
                let da = op.local_grad(&x, out, 0) * g;
                let db = op.local_grad(&x, out, 1) * g;
                if stop_at_nan && (da.is_nan() || db.is_nan()) {
                    Err(nan_gradient(kind, &x, g))
                } else {
                    self.add_to_grad(a, da, pass);
                    self.add_to_grad(b, db, pass);
                    Ok(0)
                }
            }
            Children::None | Children::Many(_) => Ok(0),
        }
    }

    /// One step of the chain rule from `id`, as micrograd's `Value._backward`: adds the node's
    /// gradient times each local derivative to its children's gradients, and nothing else (no
    /// reset, no walk), so that the lecture's back-propagation by hand can be followed step by step.
    pub fn propagate(&mut self, id: NodeId) -> Result<()> {
        let Node {
            data: out,
            grad: g,
            kind,
        } = *self.check(id)?;
        let children = self.child_slots(self.links[id.slot as usize].children);
        let x: Vec<f64> = children.iter().map(|&c| self.nodes[c as usize].data).collect();
        let mut locals = vec![f64::NAN; children.len()];
        match kind {
            Kind::Op(Op::Dot) => dot_backward(children.len(), |i| x[i], 1.0, |i, d| locals[i] = d),
            Kind::Op(op) => {
                for (i, local) in locals.iter_mut().enumerate() {
                    *local = op.local_grad(&x, out, i);
                }
            }
            Kind::CompiledCall => {
                if let Some(partials) = self.partials.get(&id.slot) {
                    locals.copy_from_slice(partials);
                }
            }
            Kind::Leaf => {}
        }
        for (&child, local) in children.iter().zip(locals) {
            self.nodes[child as usize].grad += local * g;
        }
        Ok(())
    }

    /// Adds `amount` to a node's gradient in backward pass `pass`. An interior node's first
    /// amount in a pass replaces what an earlier pass left there; a leaf accumulates across
    /// passes. (Resetting interior nodes here rather than while ordering them keeps the
    /// ordering walk from touching the nodes themselves.)
    #[inline(always)]
    pub(super) fn add_to_grad(&mut self, slot: u32, amount: f64, pass: u32) {
        let at = slot as usize;
        let node = &mut self.nodes[at];
        let link = &mut self.links[at];
        if link.mark != pass {
            link.mark = pass;
            if !matches!(node.kind, Kind::Leaf) {
                node.grad = 0.0;
            }
        }
        node.grad += amount;
    }

    /// The backward step of an n-ary node (`Sum`, `Dot`).
    pub(super) fn backward_many(
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
            kind,
        } = self.nodes[slot as usize];
        let children = std::mem::take(&mut self.lists[list as usize]);
        if let (Kind::CompiledCall, false) = (kind, stop_at_nan) {
            // A compiled call's shares are its stored partials: with no anomaly check to name
            // the children's values, they need not be read (a model's every parameter).
            if let Some(partials) = self.partials.get_mut(&slot).map(std::mem::take) {
                for (&child, &local) in children.iter().zip(partials.iter()) {
                    self.add_to_grad(child, local * g, pass);
                }
                self.lists[list as usize] = children;
                if let Some(entry) = self.partials.get_mut(&slot) {
                    *entry = partials;
                }
                return Ok(());
            }
        }
        x.clear();
        if x.try_reserve(children.len()).is_err() {
            let count = children.len();
            self.lists[list as usize] = children;
            return Err(out_of_memory("the backward pass's operand buffer", count));
        }
        x.extend(children.iter().map(|&c| self.nodes[c as usize].data));
        // Borrowed out of the map for the loop (an empty box takes its place), not copied.
        let stored = match kind {
            Kind::CompiledCall => self.partials.get_mut(&slot).map(std::mem::take),
            _ => None,
        };
        if let (Kind::Op(Op::Dot), false) = (kind, stop_at_nan) {
            // The common n-ary node, a neuron: no per-child check to make.
            dot_backward(
                children.len(),
                |i| x[i],
                g,
                |i, amount| self.add_to_grad(children[i], amount, pass),
            );
            self.lists[list as usize] = children;
            return Ok(());
        }
        let mut result = Ok(());
        let mut give = |arena: &mut Self, i: usize, amount: f64| {
            if result.is_err() {
                return;
            }
            if stop_at_nan && amount.is_nan() {
                result = Err(nan_gradient(kind, x, g));
                return;
            }
            arena.add_to_grad(children[i], amount, pass);
        };
        match (kind, &stored) {
            (Kind::Op(Op::Dot), _) => {
                dot_backward(children.len(), |i| x[i], g, |i, amount| give(self, i, amount))
            }
            (Kind::Op(op), _) => {
                for i in 0..children.len() {
                    give(self, i, op.local_grad(x, out, i) * g);
                }
            }
            (_, Some(partials)) => {
                for (i, &local) in partials.iter().enumerate() {
                    give(self, i, local * g);
                }
            }
            // A compiled call keeps its partials from its making to its freeing, so this is never
            // reached; were it, nan (which anomaly detection names) beats a silent zero.
            _ => {
                for i in 0..children.len() {
                    give(self, i, f64::NAN);
                }
            }
        }
        self.lists[list as usize] = children;
        if let (Some(partials), Some(entry)) = (stored, self.partials.get_mut(&slot)) {
            *entry = partials;
        }
        result
    }
}

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

#[cfg(test)]
mod tests {
    use super::super::tests::chain;
    use super::*;

    #[test]
    fn a_node_over_leaves_alone_passes_its_gradient_without_a_sweep() {
        let mut arena = Arena::new();
        let leaves: Vec<NodeId> = (0..5).map(|i| arena.leaf(i as f64).unwrap()).collect();
        // Many nodes born, and kept, between the leaves and the node over them.
        let start = arena.leaf(0.0).unwrap();
        let far = chain(&mut arena, start, 50_000);
        let partials = vec![1.0, -2.0, 0.5, 0.0, 3.0];
        let call = arena.compiled_call(7.0, &leaves, partials.clone()).unwrap();
        let sum = arena.apply(Op::Sum, &[leaves[0], leaves[4], leaves[4]]).unwrap();
        arena.sweep_is_cheap = false;
        for (root, expected) in [(call, partials), (sum, vec![2.0, -2.0, 0.5, 0.0, 5.0])] {
            // One unit of work, where a sweep would read the 50,000 births in between.
            let mut pass = arena.begin_backward(root, false).unwrap();
            assert!(arena.backward_step(&mut pass, 1).unwrap());
            let grads: Vec<f64> = leaves.iter().map(|&l| arena.grad(l).unwrap()).collect();
            assert_eq!(grads, expected);
            assert!(
                !arena.sweep_is_cheap,
                "the judgment of sweeping is the last real sweep's"
            );
        }
        arena.release(far);
    }

    #[test]
    pub(super) fn backward_accumulates_through_shared_nodes() {
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
    pub(super) fn a_child_reached_again_through_a_sibling_waits_for_it() {
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
    pub(super) fn second_backward_adds_exactly_the_same_to_leaves() {
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
    pub(super) fn propagating_by_hand_equals_backward() {
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
    pub(super) fn nan_gradients_are_reported_when_asked() {
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

    /// Runs a backward pass `budget` nodes at a time.
    pub(super) fn backward_in_chunks(
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
    pub(super) fn a_backward_in_chunks_equals_one_in_one_go() {
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
    pub(super) fn a_paused_backward_refuses_to_resume_on_a_changed_arena() {
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
    pub(super) fn nan_gradients_are_reported_in_chunks_too() {
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

    #[test]
    fn a_pass_stopped_by_a_nan_leaves_no_gradient_of_an_earlier_pass_below() {
        for traversal in [Traversal::Births, Traversal::Walk] {
            let mut arena = Arena::new();
            arena.set_traversal(traversal);
            let x = arena.leaf(5.0).unwrap();
            let a = arena.apply1(Op::MulScalar(0.0), x).unwrap(); // interior, value 0
            let b = arena.apply1(Op::PowScalar(0.5), a).unwrap(); // d/da = inf at 0
            let c = arena.apply1(Op::MulScalar(0.0), b).unwrap(); // 0 * inf = nan at b
            let d = chain(&mut arena, c, 20);
            arena.backward(d).unwrap();
            assert!(arena.grad(a).unwrap().is_nan(), "{traversal:?}");
            let err = arena.backward_checked(d, true).unwrap_err();
            assert!(matches!(err, EngineError::NanGradient { .. }), "{err}");
            assert_eq!(
                arena.grad(a).unwrap(),
                0.0,
                "{traversal:?}: not reached, so cleared"
            );
            assert!(arena.grad(x).unwrap().is_nan(), "a leaf keeps what it was given");
        }
    }
}
