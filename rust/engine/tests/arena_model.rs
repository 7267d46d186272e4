//! Drives the arena with random sequences of create / op / retain / drop / set-data / backward,
//! and checks it against a plain model kept here: which nodes are alive, that freed handles are
//! detected as stale (never read), and that gradients equal a reference back-propagation. Runs
//! differ in how long the arena's arrays may get before freeing cuts them back, so that handles
//! are also checked across cuts (a slot made anew must never answer to an old handle).
//!
//! `PROPTEST_CASES=100000 cargo test --release -p gradrs-engine --test arena_model` for a long run.

use std::collections::BTreeSet;

use gradrs_engine::{Arena, EngineError, NodeId, Op, Traversal};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Action {
    Leaf(f64),
    Unary(u8, usize),
    Binary(u8, usize, usize),
    Nary(bool, Vec<usize>),
    Retain(usize),
    Drop(usize),
    /// Releases a handle whose node was freed already: must be ignored.
    DropStale(usize),
    /// Makes and frees thousands of leaves, so that the arena compacts its list of births.
    Churn,
    /// Switches how backward orders the graph: 0 automatic, 1 by birth, 2 by walking.
    Traverse(u8),
    SetData(usize, f64),
    Backward(usize),
    /// A backward pass run a few nodes at a time.
    BackwardInChunks(usize, usize),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (-2.0..2.0f64).prop_map(Action::Leaf),
        3 => (0u8..UNARY.len() as u8, any::<usize>()).prop_map(|(k, a)| Action::Unary(k, a)),
        3 => (0u8..BINARY.len() as u8, any::<usize>(), any::<usize>()).prop_map(|(k, a, b)| Action::Binary(k, a, b)),
        1 => (any::<bool>(), prop::collection::vec(any::<usize>(), 1..7)).prop_map(|(d, v)| Action::Nary(d, v)),
        1 => any::<usize>().prop_map(Action::Retain),
        3 => any::<usize>().prop_map(Action::Drop),
        1 => any::<usize>().prop_map(Action::DropStale),
        1 => Just(Action::Churn),
        1 => (0u8..3).prop_map(Action::Traverse),
        1 => (any::<usize>(), -2.0..2.0f64).prop_map(|(i, x)| Action::SetData(i, x)),
        2 => any::<usize>().prop_map(Action::Backward),
        1 => (any::<usize>(), 1..5usize).prop_map(|(i, budget)| Action::BackwardInChunks(i, budget)),
    ]
}

const UNARY: [Op; 15] = [
    Op::Neg,
    Op::Tanh,
    Op::Relu,
    Op::Sigmoid,
    Op::Exp,
    Op::Log,
    Op::AddScalar(0.5),
    Op::MulScalar(-1.5),
    Op::ScalarSub(1.0),
    Op::DivScalar(4.0),
    Op::ScalarDiv(2.0),
    Op::PowScalar(2.0),
    Op::PowScalar(-1.0),
    Op::PowScalar(0.5),
    Op::ScalarPow(2.0),
];

const BINARY: [Op; 5] = [Op::Add, Op::Sub, Op::Mul, Op::Div, Op::Pow];

fn unary(k: u8) -> Op {
    UNARY[k as usize]
}

fn binary(k: u8) -> Op {
    BINARY[k as usize]
}

/// The model of one node: created in order, so reverse creation order is topological.
struct ModelNode {
    id: NodeId,
    /// None for a leaf.
    op: Option<Op>,
    children: Vec<usize>,
    data: f64,
    grad: f64,
}

struct Model {
    nodes: Vec<ModelNode>,
    handles: Vec<usize>,
}

impl Model {
    fn reachable(&self, roots: impl Iterator<Item = usize>) -> BTreeSet<usize> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<usize> = roots.collect();
        while let Some(n) = stack.pop() {
            if seen.insert(n) {
                stack.extend(&self.nodes[n].children);
            }
        }
        seen
    }

    fn backward(&mut self, root: usize) {
        let reach = self.reachable(std::iter::once(root));
        for &n in &reach {
            if self.nodes[n].op.is_some() {
                self.nodes[n].grad = 0.0;
            }
        }
        self.nodes[root].grad += 1.0;
        for &n in reach.iter().rev() {
            let node = &self.nodes[n];
            let Some(op) = node.op else {
                continue; // a leaf
            };
            let x: Vec<f64> = node.children.iter().map(|&c| self.nodes[c].data).collect();
            let amounts: Vec<(usize, f64)> = node
                .children
                .iter()
                .enumerate()
                .map(|(i, &c)| (c, op.local_grad(&x, node.data, i) * node.grad))
                .collect();
            for (c, amount) in amounts {
                self.nodes[c].grad += amount;
            }
        }
    }
}

fn same(a: f64, b: f64, scale: f64) -> bool {
    // Once a sum meets inf or nan, which of the two it gives can depend on the order of its
    // terms (1e308 + 1e308 - inf), and the model adds in another order than the engine.
    if !a.is_finite() || !b.is_finite() {
        return !a.is_finite() && !b.is_finite();
    }
    (a - b).abs() <= 1e-9 * scale.max(a.abs()).max(b.abs()).max(1.0)
}

fn run(actions: Vec<Action>, keep_slots: usize) -> Result<(), TestCaseError> {
    let mut arena = Arena::new();
    arena.set_keep_slots(keep_slots);
    let mut model = Model {
        nodes: Vec::new(),
        handles: Vec::new(),
    };
    let pick = |model: &Model, i: usize| model.handles.get(i % model.handles.len().max(1)).copied();
    for action in actions {
        match action {
            Action::Leaf(x) => {
                let id = arena.leaf(x).unwrap();
                model.nodes.push(ModelNode {
                    id,
                    op: None,
                    children: vec![],
                    data: x,
                    grad: 0.0,
                });
                model.handles.push(model.nodes.len() - 1);
            }
            Action::Unary(..) | Action::Binary(..) | Action::Nary(..) if model.handles.is_empty() => {}
            Action::Unary(k, a) => {
                let a = pick(&model, a).unwrap();
                push_op(&mut arena, &mut model, unary(k), vec![a])?;
            }
            Action::Binary(k, a, b) => {
                let (a, b) = (pick(&model, a).unwrap(), pick(&model, b).unwrap());
                push_op(&mut arena, &mut model, binary(k), vec![a, b])?;
            }
            Action::Nary(is_dot, picks) => {
                let mut children: Vec<usize> = picks.iter().map(|&i| pick(&model, i).unwrap()).collect();
                if is_dot {
                    let again = children.clone();
                    children.extend(again); // weights and inputs: x · x
                }
                push_op(
                    &mut arena,
                    &mut model,
                    if is_dot { Op::Dot } else { Op::Sum },
                    children,
                )?;
            }
            Action::Retain(i) => {
                if let Some(n) = pick(&model, i) {
                    arena.retain(model.nodes[n].id).unwrap();
                    model.handles.push(n);
                }
            }
            Action::Drop(i) => {
                if !model.handles.is_empty() {
                    let n = model.handles.remove(i % model.handles.len());
                    arena.release(model.nodes[n].id);
                }
            }
            Action::DropStale(i) => {
                let alive = model.reachable(model.handles.iter().copied());
                let freed: Vec<usize> = (0..model.nodes.len()).filter(|n| !alive.contains(n)).collect();
                if !freed.is_empty() {
                    arena.release(model.nodes[freed[i % freed.len()]].id);
                }
            }
            Action::Churn => {
                for _ in 0..5000 {
                    let id = arena.leaf(0.0).unwrap();
                    arena.release(id);
                }
            }
            Action::Traverse(k) => {
                arena.set_traversal([Traversal::Auto, Traversal::Births, Traversal::Walk][k as usize]);
            }
            Action::SetData(i, x) => {
                if let Some(n) = pick(&model, i) {
                    if model.nodes[n].op.is_none() {
                        arena.set_data(model.nodes[n].id, x).unwrap();
                        model.nodes[n].data = x;
                    }
                }
            }
            Action::Backward(i) => {
                if let Some(n) = pick(&model, i) {
                    arena.backward(model.nodes[n].id).unwrap();
                    model.backward(n);
                }
            }
            Action::BackwardInChunks(i, budget) => {
                if let Some(n) = pick(&model, i) {
                    let mut pass = arena.begin_backward(model.nodes[n].id, false).unwrap();
                    while !arena.backward_step(&mut pass, budget).unwrap() {}
                    model.backward(n);
                }
            }
        }
        check(&arena, &model)?;
    }
    for n in std::mem::take(&mut model.handles) {
        arena.release(model.nodes[n].id);
    }
    prop_assert_eq!(arena.live_nodes(), 0);
    Ok(())
}

fn push_op(arena: &mut Arena, model: &mut Model, op: Op, children: Vec<usize>) -> Result<(), TestCaseError> {
    let ids: Vec<NodeId> = children.iter().map(|&c| model.nodes[c].id).collect();
    let x: Vec<f64> = children.iter().map(|&c| model.nodes[c].data).collect();
    let id = arena.apply(op, &ids).unwrap();
    let data = op.forward(&x);
    prop_assert!(same(arena.data(id).unwrap(), data, 1.0));
    model.nodes.push(ModelNode {
        id,
        op: Some(op),
        children,
        data,
        grad: 0.0,
    });
    model.handles.push(model.nodes.len() - 1);
    Ok(())
}

fn check(arena: &Arena, model: &Model) -> Result<(), TestCaseError> {
    let alive = model.reachable(model.handles.iter().copied());
    prop_assert_eq!(arena.live_nodes(), alive.len());
    let scale = alive
        .iter()
        .map(|&n| model.nodes[n].grad.abs())
        .fold(1.0, f64::max);
    for (n, node) in model.nodes.iter().enumerate() {
        if alive.contains(&n) {
            prop_assert!(arena.is_live(node.id));
            prop_assert!(same(arena.data(node.id).unwrap(), node.data, 1.0));
            let grad = arena.grad(node.id).unwrap();
            prop_assert!(
                same(grad, node.grad, scale),
                "node {} grad {} != model {}",
                n,
                grad,
                node.grad
            );
        } else {
            prop_assert_eq!(arena.data(node.id), Err(EngineError::StaleHandle(node.id)));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
    ))]

    #[test]
    fn arena_matches_the_model(
        actions in prop::collection::vec(action(), 1..80),
        keep_slots in prop_oneof![Just(0usize), Just(8), Just(1 << 20)],
    ) {
        run(actions, keep_slots)?;
    }
}
