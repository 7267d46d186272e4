//! Times a recorded program alone (no Python): a 4-16-16-1 tanh network's squared error, one
//! sample per `call` (with and without gradients, as a compiled function called from Python) and
//! 4096 rows per `batch` on one thread. Prints the best of 20 rounds of each.
//! `cargo run --release --example program_speed`
use std::time::Instant;

use gradrs_engine::program::{Program, Reduce};
use gradrs_engine::{Arena, NodeId, Op};

/// A layer of `n_out` tanh neurons over `xs`, each `tanh(w · x + b)`.
fn layer(arena: &mut Arena, xs: &[NodeId], n_out: usize, seed: &mut f64) -> Vec<NodeId> {
    let mut weight = |arena: &mut Arena| {
        *seed = (*seed * 9301.0 + 49297.0) % 233280.0;
        arena.leaf(*seed / 233280.0 - 0.5).unwrap()
    };
    let mut neurons = Vec::new();
    for _ in 0..n_out {
        let mut args: Vec<NodeId> = xs.iter().map(|_| weight(arena)).collect();
        args.extend_from_slice(xs);
        args.push(weight(arena));
        let pre = arena.apply(Op::Dot, &args).unwrap();
        neurons.push(arena.apply1(Op::Tanh, pre).unwrap());
    }
    neurons
}

fn best_of<T>(rounds: usize, mut work: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::MAX;
    let mut last = None;
    for _ in 0..rounds {
        let t = Instant::now();
        last = Some(work());
        best = best.min(t.elapsed().as_secs_f64());
    }
    (best, last.unwrap())
}

fn main() {
    let mut arena = Arena::new();
    let inputs: Vec<NodeId> = (0..5).map(|i| arena.leaf(i as f64 * 0.1).unwrap()).collect();
    let mut seed = 1.0;
    let h1 = layer(&mut arena, &inputs[..4], 16, &mut seed);
    let h2 = layer(&mut arena, &h1, 16, &mut seed);
    let out = layer(&mut arena, &h2, 1, &mut seed)[0];
    let err = arena.apply2(Op::Sub, out, inputs[4]).unwrap();
    let loss = arena.apply1(Op::PowScalar(2.0), err).unwrap();
    let program = Program::record(&arena, &[loss], &inputs).unwrap();
    let params = arena.data_of(program.params()).unwrap();
    let n_rows = 4096;
    let rows: Vec<f64> = (0..n_rows * 5)
        .map(|i| ((i * 37) % 101) as f64 / 50.0 - 1.0)
        .collect();
    let calls = 1000;
    let call = |grads: bool| {
        best_of(20, || {
            let mut total = 0.0;
            for r in 0..calls {
                let out = program
                    .call(&rows[r * 5..r * 5 + 5], &params, &[0], grads)
                    .unwrap();
                total += out[0].value + out[0].partials.iter().sum::<f64>();
            }
            total
        })
    };
    let (with_grads, a) = call(true);
    if std::env::args().nth(1).as_deref() == Some("call") {
        println!(
            "call with gradients {:.2} us [{a}]",
            with_grads / calls as f64 * 1e6
        );
        return;
    }
    let (values_only, b) = call(false);
    let (batch, c) = best_of(20, || {
        let mut go_on = || false;
        let batch = program
            .batch(&rows, n_rows, &params, Reduce::Mean, 1, &mut go_on)
            .unwrap();
        batch.values[0] + batch.grads[0].iter().sum::<f64>()
    });
    println!(
        "best of 20: call with gradients {:.2} us, without {:.2} us; batch of {n_rows} rows {:.2} ms \
         ({:.0} ns/row) [{a} {b} {c}]",
        with_grads / calls as f64 * 1e6,
        values_only / calls as f64 * 1e6,
        batch * 1e3,
        batch / n_rows as f64 * 1e9,
    );
}
