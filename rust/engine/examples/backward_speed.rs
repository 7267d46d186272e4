//! Times the engine alone (no Python): building and back-propagating a graph of
//! the op mix the eager benchmark uses, after one warm-up round so that memory
//! is already mapped. `cargo run --release --example backward_speed`
use std::time::Instant;

use gradrs_engine::{Arena, NodeId, Op};

fn round(arena: &mut Arena, leaves: &[NodeId], n: usize) -> (f64, f64) {
    let start = Instant::now();
    let mut acc = leaves[0];
    arena.retain(acc).unwrap();
    for i in 0..n / 6 {
        let a = leaves[i % leaves.len()];
        for step in 0..6 {
            let next = match step {
                0 => arena.apply2(Op::Mul, acc, a),
                1 => arena.apply1(Op::Tanh, acc),
                2 => arena.apply1(Op::Relu, acc),
                3 => arena.apply2(Op::Add, acc, a),
                4 => arena.apply1(Op::Exp, acc),
                _ => arena.apply1(Op::PowScalar(2.0), acc),
            }
            .unwrap();
            arena.release(acc);
            acc = next;
        }
    }
    let built = start.elapsed().as_nanos() as f64 / n as f64;
    let start = Instant::now();
    arena.backward(acc).unwrap();
    let back = start.elapsed().as_nanos() as f64 / n as f64;
    arena.release(acc);
    (built, back)
}

fn main() {
    let n: usize = std::env::args().nth(1).map_or(100_000, |a| a.parse().unwrap());
    let mut arena = Arena::new();
    let leaves: Vec<_> = (0..256)
        .map(|i| arena.leaf((i as f64 / 256.0) - 0.5).unwrap())
        .collect();
    round(&mut arena, &leaves, n);
    let (built, back) = round(&mut arena, &leaves, n);
    println!("build {built:.1} ns/op, backward {back:.1} ns/node");
}
