//! Times the engine alone (no Python) on the eager benchmark's graph: chains of mul, tanh, relu,
//! add, scale, exp and square over 256 leaves, summed. Each round builds a fresh graph in the
//! slots the last one freed and back-propagates it, alternately with the caches warm and after
//! overwriting 64 MiB (as a Python program's own allocations do between building and backward).
//! Prints the best of 20 rounds of each. `cargo run --release --example backward_speed`, or with
//! `-- walk` (or `-- births`) to time one way of ordering the graph instead of the automatic choice.
use std::time::Instant;

use gradrs_engine::{Arena, NodeId, Op, Traversal};

fn build(arena: &mut Arena, leaves: &[NodeId]) -> (NodeId, usize) {
    let mut total: Option<NodeId> = None;
    let n_chains = 100_000 / 71;
    for c in 0..n_chains {
        let mut acc = leaves[c % 256];
        arena.retain(acc).unwrap();
        for s in 0..10 {
            let a = leaves[(7 * c + 3 * s) % 256];
            let step = |arena: &mut Arena, acc: NodeId, op: Op, b: Option<NodeId>| {
                let n = match b {
                    Some(b) => arena.apply2(op, acc, b).unwrap(),
                    None => arena.apply1(op, acc).unwrap(),
                };
                arena.release(acc);
                n
            };
            acc = step(arena, acc, Op::Mul, Some(a));
            acc = step(arena, acc, Op::Tanh, None);
            acc = step(arena, acc, Op::Relu, None);
            acc = step(arena, acc, Op::Add, Some(a));
            acc = step(arena, acc, Op::MulScalar(0.5), None);
            acc = step(arena, acc, Op::Exp, None);
            acc = step(arena, acc, Op::PowScalar(2.0), None);
        }
        total = Some(match total {
            None => acc,
            Some(t) => {
                let n = arena.apply2(Op::Add, t, acc).unwrap();
                arena.release(t);
                arena.release(acc);
                n
            }
        });
    }
    (total.unwrap(), n_chains * 71)
}
fn main() {
    let mut arena = Arena::new();
    match std::env::args().nth(1).as_deref() {
        Some("walk") => arena.set_traversal(Traversal::Walk),
        Some("births") => arena.set_traversal(Traversal::Births),
        _ => {}
    }
    let leaves: Vec<_> = (0..256)
        .map(|i| arena.leaf((i as f64 / 256.0) - 0.5).unwrap())
        .collect();
    let mut junk: Vec<u64> = vec![0; 8 << 20];
    let (mut warm, mut cold, mut build_best) = (f64::MAX, f64::MAX, f64::MAX);
    for r in 0..40 {
        let t0 = Instant::now();
        let (root, n) = build(&mut arena, &leaves);
        let built = t0.elapsed().as_nanos() as f64 / n as f64;
        let flush = r % 2 == 1;
        if flush {
            for (i, j) in junk.iter_mut().enumerate() {
                *j = j.wrapping_add(i as u64);
            }
        }
        let t1 = Instant::now();
        arena.backward(root).unwrap();
        let b = t1.elapsed().as_nanos() as f64 / n as f64;
        if flush {
            cold = cold.min(b)
        } else {
            warm = warm.min(b)
        }
        build_best = build_best.min(built);
        arena.release(root);
    }
    println!(
        "min over 20: build {build_best:.1} ns/op, backward warm {warm:.1} cold {cold:.1} ns/node ({})",
        junk[12345]
    );
}
