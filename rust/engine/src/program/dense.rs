//! Layers found in a tape: `Dot` instructions that read the same input registers, each with
//! its own parameters as weights (a layer of neurons, fused or written as micrograd's
//! `sum(wi*xi ...)` and recorded as one `Dot`). Over a block of rows such a layer is a matrix
//! product, `out = W X + b`, and its backward two more, `dX = Wᵀ G` and `dW = G Xᵀ`, which a GEMM
//! kernel computes many times faster than the same sums taken one scalar instruction at a time.

use std::collections::HashMap;

use super::{Instr, Program};
use crate::op::{dot_shape, Op};

/// One layer: `dots.len()` neurons over `inputs.len()` shared inputs.
#[derive(Clone, Debug)]
pub(super) struct DenseLayer {
    /// The layer's `Dot` instructions, in tape order.
    pub(super) dots: Vec<usize>,
    /// The registers every one of them reads as its inputs (rows: inputs or instructions).
    pub(super) inputs: Vec<u32>,
    /// Parameter indices, neuron by neuron: `weights[j * inputs.len() + i]` is neuron j's w_i.
    pub(super) weights: Vec<usize>,
    /// Each neuron's bias, a parameter index; `None` for layers without biases.
    pub(super) biases: Option<Vec<usize>>,
}

/// Where an instruction stands in the layers: not in one, or the `Dot` of a layer whose whole
/// product is computed at the layer's first `Dot` (the others then have nothing left to do).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    Alone,
    FirstOf(usize),
    InLayer,
}

/// Fewer neurons or inputs than this, and a layer stays scalar instructions: a matrix product
/// over a 32-row block then costs more to set up than it saves.
const MIN_SIDE: usize = 4;

/// The layers of `instrs` (over `n_inputs` inputs and `n_params` parameters), and each
/// instruction's role in them.
pub(super) fn find_layers(
    instrs: &[Instr],
    args: &[u32],
    n_inputs: usize,
    n_params: usize,
) -> (Vec<DenseLayer>, Vec<Role>) {
    let is_param = |reg: u32| (n_inputs..n_inputs + n_params).contains(&(reg as usize));
    let mut by_inputs: HashMap<(&[u32], bool), Vec<usize>> = HashMap::new();
    for (k, instr) in instrs.iter().enumerate() {
        if instr.op != Op::Dot {
            continue;
        }
        let args = &args[instr.start as usize..(instr.start + instr.len) as usize];
        let (n, bias) = dot_shape(args.len());
        let (weights, inputs) = (&args[..n], &args[n..2 * n]);
        if n < MIN_SIDE
            || !weights.iter().all(|&w| is_param(w))
            || inputs.iter().any(|&x| is_param(x))
            || (bias && !is_param(args[2 * n]))
        {
            continue;
        }
        by_inputs.entry((inputs, bias)).or_default().push(k);
    }
    let mut layers: Vec<DenseLayer> = by_inputs
        .into_iter()
        .filter(|(_, dots)| dots.len() >= MIN_SIDE)
        .map(|((inputs, bias), dots)| {
            let param = |reg: u32| reg as usize - n_inputs;
            let args_of =
                |k: usize| &args[instrs[k].start as usize..(instrs[k].start + instrs[k].len) as usize];
            let n = inputs.len();
            DenseLayer {
                weights: dots
                    .iter()
                    .flat_map(|&k| args_of(k)[..n].iter().map(|&w| param(w)))
                    .collect(),
                biases: bias.then(|| dots.iter().map(|&k| param(args_of(k)[2 * n])).collect()),
                inputs: inputs.to_vec(),
                dots,
            }
        })
        .collect();
    // In tape order, so that the same program always finds the same layers in the same order.
    layers.sort_by_key(|layer| layer.dots[0]);
    let mut roles = vec![Role::Alone; instrs.len()];
    for (l, layer) in layers.iter().enumerate() {
        for &k in &layer.dots {
            roles[k] = Role::InLayer;
        }
        roles[layer.dots[0]] = Role::FirstOf(l);
    }
    (layers, roles)
}

/// A row-major matrix's numbers, read as stored or as the transpose of what is stored.
#[derive(Clone, Copy)]
pub(super) enum Matrix<'a> {
    AsStored(&'a [f64]),
    Transposed(&'a [f64]),
}

impl<'a> Matrix<'a> {
    /// The numbers, and the row and column strides of the `rows × cols` matrix read from them.
    fn layout(self, rows: usize, cols: usize) -> (&'a [f64], isize, isize) {
        match self {
            Matrix::AsStored(numbers) => (numbers, cols as isize, 1),
            // Stored as cols × rows: element (i, j) is stored at j * rows + i.
            Matrix::Transposed(numbers) => (numbers, 1, rows as isize),
        }
    }
}

/// `C = A B` for `a` (m × k), `b` (k × n) and row-major `c` (m × n).
pub(super) fn gemm(m: usize, k: usize, n: usize, a: Matrix<'_>, b: Matrix<'_>, c: &mut [f64]) {
    let (a, rsa, csa) = a.layout(m, k);
    let (b, rsb, csb) = b.layout(k, n);
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    // SAFETY: the assert above keeps every element the strides reach inside its slice (the
    // largest offsets are (m-1)*rsa + (k-1)*csa < m*k, (k-1)*rsb + (n-1)*csb < k*n and
    // (m-1)*n + n-1 < m*n); `c` is borrowed mutably, so it overlaps neither `a` nor `b`.
    unsafe {
        matrixmultiply::dgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa,
            csa,
            b.as_ptr(),
            rsb,
            csb,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

impl Program {
    /// Instruction `k`'s place in the program's layers.
    pub(super) fn role(&self, k: usize) -> Role {
        self.roles.get(k).copied().unwrap_or(Role::Alone)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::go_on;
    use super::super::Reduce;
    use super::*;
    use crate::arena::{Arena, NodeId};

    /// `sum_j relu(W_j · x + b_j)` for a layer of `nout` neurons over `nin` inputs, recorded.
    fn layer_program(arena: &mut Arena, nin: usize, nout: usize) -> Program {
        let x: Vec<NodeId> = (0..nin).map(|i| arena.leaf(i as f64 * 0.1).unwrap()).collect();
        let mut outs = Vec::new();
        for j in 0..nout {
            let mut children: Vec<NodeId> = (0..nin)
                .map(|i| arena.leaf(((i * 7 + j * 3) % 11) as f64 / 11.0 - 0.45).unwrap())
                .collect();
            children.extend_from_slice(&x);
            children.push(arena.leaf(0.1 * j as f64 - 0.2).unwrap());
            let dot = arena.apply(Op::Dot, &children).unwrap();
            outs.push(arena.apply1(Op::Relu, dot).unwrap());
        }
        let sum = arena.apply(Op::Sum, &outs).unwrap();
        Program::record(arena, &[sum], &x).unwrap()
    }

    #[test]
    fn a_layer_is_found_and_its_batch_matches_the_rows_called_one_by_one() {
        let mut arena = Arena::new();
        let (nin, nout) = (6, 5);
        let program = layer_program(&mut arena, nin, nout);
        assert_eq!(program.layers.len(), 1);
        assert_eq!(
            (program.layers[0].dots.len(), program.layers[0].inputs.len()),
            (nout, nin)
        );
        let params = arena.data_of(program.params()).unwrap();
        let n_rows = 37; // a chunk of 32 and one of 5
        let rows: Vec<f64> = (0..n_rows * nin)
            .map(|i| ((i * 13) % 17) as f64 / 8.0 - 1.0)
            .collect();
        let batch = program
            .batch(&rows, n_rows, &params, Reduce::Sum, 2, &mut go_on())
            .unwrap();
        let (mut value, mut grads) = (0.0, vec![0.0; params.len()]);
        for row in rows.chunks(nin) {
            let out = program.call(row, &params, &[], true).unwrap();
            value += out[0].value;
            for (g, p) in grads.iter_mut().zip(&out[0].partials) {
                *g += p;
            }
        }
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs().max(1.0);
        assert!(
            close(batch.values[0], value),
            "{} against {value}",
            batch.values[0]
        );
        for (a, b) in batch.grads[0].iter().zip(&grads) {
            assert!(close(*a, *b), "{a} against {b}");
        }
    }

    #[test]
    fn narrow_layers_and_dots_with_inputs_among_their_weights_stay_scalar() {
        let mut arena = Arena::new();
        let program = layer_program(&mut arena, 3, 5); // three inputs: below MIN_SIDE
        assert!(program.layers.is_empty());
        let program = layer_program(&mut arena, 6, 2); // two neurons: below MIN_SIDE
        assert!(program.layers.is_empty());
        // x · x: an input register where a weight should be.
        let x: Vec<NodeId> = (0..4).map(|i| arena.leaf(i as f64).unwrap()).collect();
        let squares: Vec<NodeId> = (0..4)
            .map(|_| {
                let mut children = x.clone();
                children.extend_from_slice(&x);
                arena.apply(Op::Dot, &children).unwrap()
            })
            .collect();
        let sum = arena.apply(Op::Sum, &squares).unwrap();
        assert!(Program::record(&arena, &[sum], &x).unwrap().layers.is_empty());
    }

    #[test]
    fn gemm_multiplies_with_either_side_transposed() {
        // A = [[1, 2, 3], [4, 5, 6]], B = [[1, 0], [0, 1], [1, 1]]
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let b = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let mut c = [0.0; 4];
        gemm(2, 3, 2, Matrix::AsStored(&a), Matrix::AsStored(&b), &mut c);
        assert_eq!(c, [4.0, 5.0, 10.0, 11.0]);
        // Aᵀ Aᵀᵀ: the 3 × 3 product Aᵀ A from A's storage read transposed.
        let mut ata = [0.0; 9];
        gemm(3, 2, 3, Matrix::Transposed(&a), Matrix::AsStored(&a), &mut ata);
        assert_eq!(ata, [17.0, 22.0, 27.0, 22.0, 29.0, 36.0, 27.0, 36.0, 45.0]);
        // A Aᵀ: 2 × 2.
        let mut aat = [0.0; 4];
        gemm(2, 3, 2, Matrix::AsStored(&a), Matrix::Transposed(&a), &mut aat);
        assert_eq!(aat, [14.0, 32.0, 32.0, 77.0]);
    }
}
