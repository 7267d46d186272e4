//! Layers found in a tape: `Dot` instructions that read the same input registers, each with
//! its own parameters as weights (a layer of neurons, fused or written as micrograd's
//! `sum(wi*xi ...)` and recorded as one `Dot`). Over a block of rows such a layer is a matrix
//! product, `out = W X + b`, and its backward two more, `dX = Wᵀ G` and `dW = G Xᵀ`, which a GEMM
//! kernel computes many times faster than the same sums taken one scalar instruction at a time.

use std::collections::HashMap;

use super::{Instr, Program};
use crate::op::{dot_shape, Op};

/// `first + j * step` for neuron `j`: where a layer keeps the same part of each of its neurons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Progression {
    pub(super) first: usize,
    pub(super) step: usize,
}

impl Progression {
    /// The progression `items` follow, if they follow one with a step of at least `min_step`.
    fn of(items: impl IntoIterator<Item = usize>, min_step: usize) -> Option<Progression> {
        let mut items = items.into_iter();
        let first = items.next()?;
        let Some(second) = items.next() else {
            return Some(Progression {
                first,
                step: min_step,
            });
        };
        let step = second.checked_sub(first).filter(|&step| step >= min_step)?;
        let mut last = second;
        for item in items {
            if item.checked_sub(last) != Some(step) {
                return None;
            }
            last = item;
        }
        Some(Progression { first, step })
    }
}

/// One layer: `n_out` neurons over `n_in` shared inputs, every part of it evenly spaced so that
/// matrix products read and write it where it is, without copies.
#[derive(Clone, Debug)]
pub(super) struct DenseLayer {
    pub(super) n_out: usize,
    pub(super) n_in: usize,
    /// The neurons' `Dot` instructions, in tape order.
    pub(super) dots: Progression,
    /// The registers each of them reads as inputs (all inputs, or all instructions).
    pub(super) inputs: Progression,
    /// Parameter indices: neuron j's w_i is parameter `weights.first + j * weights.step + i`.
    pub(super) weights: Progression,
    /// Neuron j's bias is parameter `first + j * step`; `None` for layers without biases.
    pub(super) biases: Option<Progression>,
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
/// over a block of rows then costs more to set up than it saves.
const MIN_SIDE: usize = 4;

/// The layers of `instrs` (over `n_inputs` inputs and `n_params` parameters), and each
/// instruction's role in them. `Dot`s that read the same inputs are a layer when their
/// instructions, their inputs' registers, and their weights and biases (row by row) are evenly
/// spaced, as `Program::record` lays out a layer of `nn` neurons; any others stay scalar.
pub(super) fn find_layers(
    instrs: &[Instr],
    args: &[u32],
    n_inputs: usize,
    n_params: usize,
) -> (Vec<DenseLayer>, Vec<Role>) {
    let is_param = |reg: u32| (n_inputs..n_inputs + n_params).contains(&(reg as usize));
    let args_of = |k: usize| &args[instrs[k].start as usize..(instrs[k].start + instrs[k].len) as usize];
    let mut by_inputs: HashMap<(&[u32], bool), Vec<usize>> = HashMap::new();
    for (k, instr) in instrs.iter().enumerate() {
        if instr.op != Op::Dot {
            continue;
        }
        let args = args_of(k);
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
    let param = |reg: u32| reg as usize - n_inputs;
    let mut layers: Vec<DenseLayer> = by_inputs
        .into_iter()
        .filter(|(_, dots)| dots.len() >= MIN_SIDE)
        .filter_map(|((inputs, bias), dots)| {
            let n_in = inputs.len();
            // All inputs on one side of the parameters, so that evenly spaced registers are
            // evenly spaced rows of a block too.
            if !(inputs.iter().all(|&x| (x as usize) < n_inputs)
                || inputs.iter().all(|&x| x as usize >= n_inputs))
            {
                return None;
            }
            let weights = Progression::of(dots.iter().map(|&k| param(args_of(k)[0])), n_in)?;
            let rows_in_place = dots.iter().enumerate().all(|(j, &k)| {
                let row = &args_of(k)[..n_in];
                row.iter()
                    .enumerate()
                    .all(|(i, &w)| param(w) == weights.first + j * weights.step + i)
            });
            if !rows_in_place {
                return None;
            }
            Some(DenseLayer {
                n_out: dots.len(),
                n_in,
                dots: Progression::of(dots.iter().copied(), 1)?,
                inputs: Progression::of(inputs.iter().map(|&x| x as usize), 1)?,
                weights,
                biases: match bias {
                    true => Some(Progression::of(
                        dots.iter().map(|&k| param(args_of(k)[2 * n_in])),
                        1,
                    )?),
                    false => None,
                },
            })
        })
        .collect();
    // In tape order, so that the same program always finds the same layers in the same order.
    layers.sort_by_key(|layer| layer.dots.first);
    let mut roles = vec![Role::Alone; instrs.len()];
    for (l, layer) in layers.iter().enumerate() {
        for j in 1..layer.n_out {
            roles[layer.dots.first + j * layer.dots.step] = Role::InLayer;
        }
        roles[layer.dots.first] = Role::FirstOf(l);
    }
    (layers, roles)
}

/// A matrix of `rows × cols` numbers inside a slice: element (i, j) is at
/// `offset + i * row_step + j * col_step`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Strided {
    pub(super) offset: usize,
    pub(super) row_step: usize,
    pub(super) col_step: usize,
}

impl Strided {
    /// The transpose: the same numbers, read column by column.
    pub(super) fn t(self) -> Strided {
        Strided {
            row_step: self.col_step,
            col_step: self.row_step,
            ..self
        }
    }

    /// Panics unless every element of a `rows × cols` matrix lies inside `len` numbers.
    fn check(self, rows: usize, cols: usize, len: usize) {
        let last = (rows - 1) * self.row_step + (cols - 1) * self.col_step;
        assert!(self.offset + last < len, "a matrix outside its numbers");
    }
}

/// `C = A B + beta C` for `a` (m × k), `b` (k × n) and `c` (m × n), each a strided matrix in its
/// slice; `beta` 0 ignores what `c` held, 1 adds to it.
pub(super) fn gemm(
    (m, k, n): (usize, usize, usize),
    a: (&[f64], Strided),
    b: (&[f64], Strided),
    beta: f64,
    c: (&mut [f64], Strided),
) {
    if m == 0 || n == 0 {
        return;
    }
    let ((a, sa), (b, sb), (c, sc)) = (a, b, c);
    if k > 0 {
        sa.check(m, k, a.len());
        sb.check(k, n, b.len());
    }
    sc.check(m, n, c.len());
    // No C element may be written twice: C's rows and columns must not land on one another.
    assert!(
        (sc.col_step >= 1 && sc.row_step >= n * sc.col_step)
            || (sc.row_step >= 1 && sc.col_step >= m * sc.row_step)
            || (m == 1 && n == 1),
        "a product written over itself"
    );
    let step = |s: usize| s as isize;
    // SAFETY: the checks above keep every element the strides reach inside its slice (offset +
    // (rows-1)*row_step + (cols-1)*col_step < len), and C's elements are distinct; `c` is
    // borrowed mutably, so it overlaps neither `a` nor `b`. With k = 0 nothing of A or B is read.
    unsafe {
        matrixmultiply::dgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr().wrapping_add(sa.offset),
            step(sa.row_step),
            step(sa.col_step),
            b.as_ptr().wrapping_add(sb.offset),
            step(sb.row_step),
            step(sb.col_step),
            beta,
            c.as_mut_ptr().add(sc.offset),
            step(sc.row_step),
            step(sc.col_step),
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
    use super::super::{Reduce, CHUNK_ROWS};
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
        assert_eq!((program.layers[0].n_out, program.layers[0].n_in), (nout, nin));
        assert_batch_matches_calls(&arena, &program, nin);
    }

    /// A batch's sums against the rows called one at a time, to 1e-12.
    fn assert_batch_matches_calls(arena: &Arena, program: &Program, nin: usize) {
        let params = arena.data_of(program.params()).unwrap();
        let n_rows = 2 * CHUNK_ROWS + 5; // two whole chunks and a part
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

    /// `sum(tanh(W2 relu(W1 x + b1) + b2))`, recorded, with W2 tied to its first row when `tied`.
    fn two_layers(arena: &mut Arena, nin: usize, hidden: usize, tied: bool) -> Program {
        let x: Vec<NodeId> = (0..nin).map(|i| arena.leaf(i as f64 * 0.1).unwrap()).collect();
        let layer = |arena: &mut Arena, inputs: &[NodeId], nout: usize, act: Op, tied: bool| {
            let n = inputs.len();
            let first: Vec<NodeId> = (0..n)
                .map(|i| arena.leaf(0.3 - 0.07 * i as f64).unwrap())
                .collect();
            (0..nout)
                .map(|j| {
                    let mut children: Vec<NodeId> = match tied {
                        true => first.clone(),
                        false => (0..n)
                            .map(|i| arena.leaf(((i * 5 + j * 3) % 7) as f64 / 7.0 - 0.4).unwrap())
                            .collect(),
                    };
                    children.extend_from_slice(inputs);
                    children.push(arena.leaf(0.05 * j as f64 - 0.1).unwrap());
                    let dot = arena.apply(Op::Dot, &children).unwrap();
                    arena.apply1(act, dot).unwrap()
                })
                .collect::<Vec<NodeId>>()
        };
        let h = layer(arena, &x, hidden, Op::Relu, false);
        let out = layer(arena, &h, 5, Op::Tanh, tied);
        let sum = arena.apply(Op::Sum, &out).unwrap();
        Program::record(arena, &[sum], &x).unwrap()
    }

    #[test]
    fn stacked_layers_are_read_in_place_and_match_the_rows_called_one_by_one() {
        let mut arena = Arena::new();
        let program = two_layers(&mut arena, 6, 7, false);
        assert_eq!(program.layers.len(), 2);
        // The second layer reads the first's activations: every other instruction register.
        assert_eq!(program.layers[1].inputs.step, 2);
        assert_batch_matches_calls(&arena, &program, 6);
    }

    #[test]
    fn a_layer_whose_neurons_share_their_weights_stays_scalar_and_right() {
        let mut arena = Arena::new();
        let program = two_layers(&mut arena, 6, 7, true);
        assert_eq!(program.layers.len(), 1);
        assert_batch_matches_calls(&arena, &program, 6);
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
    fn gemm_multiplies_strided_matrices_and_adds_when_asked() {
        let plain = |cols| Strided {
            offset: 0,
            row_step: cols,
            col_step: 1,
        };
        // A = [[1, 2, 3], [4, 5, 6]], B = [[1, 0], [0, 1], [1, 1]]
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let b = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let mut c = [0.0; 4];
        gemm((2, 3, 2), (&a, plain(3)), (&b, plain(2)), 0.0, (&mut c, plain(2)));
        assert_eq!(c, [4.0, 5.0, 10.0, 11.0]);
        // Aᵀ A, 3 × 3, from A's numbers read transposed.
        let mut ata = [0.0; 9];
        gemm(
            (3, 2, 3),
            (&a, plain(3).t()),
            (&a, plain(3)),
            0.0,
            (&mut ata, plain(3)),
        );
        assert_eq!(ata, [17.0, 22.0, 27.0, 22.0, 29.0, 36.0, 27.0, 36.0, 45.0]);
        // A Aᵀ added onto what C holds, written into every other number of a longer slice
        // from offset 1, as a layer's neurons lie in a block of registers.
        let mut spread = [1.0; 9];
        let at = Strided {
            offset: 1,
            row_step: 4,
            col_step: 2,
        };
        gemm(
            (2, 3, 2),
            (&a, plain(3)),
            (&a, plain(3).t()),
            1.0,
            (&mut spread, at),
        );
        assert_eq!(spread, [1.0, 15.0, 1.0, 33.0, 1.0, 33.0, 1.0, 78.0, 1.0]);
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn gemm_refuses_a_matrix_that_runs_past_its_numbers() {
        let plain = |cols| Strided {
            offset: 0,
            row_step: cols,
            col_step: 1,
        };
        let a = [1.0; 6];
        let mut c = [0.0; 4];
        gemm(
            (2, 3, 2),
            (&a, plain(3)),
            (&a[..5], plain(2)),
            0.0,
            (&mut c, plain(2)),
        );
    }

    #[test]
    fn progressions_are_evenly_spaced_and_at_least_their_least_step_apart() {
        let p = |first, step| Some(Progression { first, step });
        assert_eq!(Progression::of([3, 5, 7, 9], 1), p(3, 2));
        assert_eq!(Progression::of([3, 5, 8], 1), None);
        assert_eq!(Progression::of([0, 65, 130], 64), p(0, 65));
        assert_eq!(Progression::of([0, 63, 126], 64), None); // rows of 64 weights would overlap
        assert_eq!(Progression::of([4, 4, 4], 1), None);
        assert_eq!(Progression::of([9, 7], 1), None);
    }
}
