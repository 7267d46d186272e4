//! Replaying a tape over a chunk of rows at once, one instruction at a time across the rows.

use std::ops::Range;

use super::dense::{gemm, DenseLayer, Matrix, Role};
use super::{product, try_vec, try_zeros, Program, Replay, ReplayError};
use crate::op::{dot_shape, Op};

/// A chunk of rows evaluated together: every input and instruction register holds one number
/// per row, side by side, so each instruction runs as a tight loop over the rows instead of once
/// per row. Parameters are the same in every row and stay single numbers.
pub(super) struct Block<'p> {
    program: &'p Program,
    rows: usize,
    /// Row-major blocks of `rows` numbers: the inputs, then one per instruction.
    registers: Vec<f64>,
    params: &'p [f64],
    /// Each layer's inputs across the rows and its weights, gathered once by the forward pass
    /// for the backward sweeps (one per output) to reuse.
    gathered: Vec<Gathered>,
}

/// A layer's `X` (inputs × rows) and `W` (neurons × inputs), as matrix products read them.
#[derive(Clone, Default)]
struct Gathered {
    x: Vec<f64>,
    w: Vec<f64>,
}

/// Where a register's numbers are in a block.
#[derive(Clone, Copy)]
enum Place {
    /// A block row: its numbers start at this offset.
    Row(usize),
    /// A parameter: one number for every row.
    Param(usize),
}

/// A register's numbers across a block's rows, read once per instruction rather than per row.
#[derive(Clone, Copy)]
enum Column<'a> {
    Row(&'a [f64]),
    Param(f64),
}

impl Column<'_> {
    #[inline]
    pub(super) fn at(self, j: usize) -> f64 {
        match self {
            Column::Row(values) => values[j],
            Column::Param(value) => value,
        }
    }
}

/// Adds `amount` to register `place`'s adjoint in row `j` (a parameter's is one sum for all rows).
#[inline]
fn accumulate(place: Place, j: usize, amount: f64, adjoint: &mut [f64], of_params: &mut [f64]) {
    match place {
        Place::Row(at) => adjoint[at + j] += amount,
        Place::Param(p) => of_params[p] += amount,
    }
}

impl<'p> Block<'p> {
    pub(super) fn new(
        program: &'p Program,
        data: &[f64],
        params: &'p [f64],
        range: Range<usize>,
    ) -> Replay<Self> {
        let rows = range.len();
        let ni = program.n_inputs;
        let mut registers = try_zeros(product(ni + program.instrs.len(), rows)?, "a chunk's registers")?;
        for (j, row) in range.enumerate() {
            for (i, &x) in program.row(data, row).iter().enumerate() {
                registers[i * rows + j] = x;
            }
        }
        let mut block = Block {
            program,
            rows,
            registers,
            params,
            gathered: vec![Gathered::default(); program.layers.len()],
        };
        block.forward();
        Ok(block)
    }

    fn place(&self, reg: u32) -> Place {
        let (reg, ni, np) = (reg as usize, self.program.n_inputs, self.params.len());
        if reg < ni {
            Place::Row(reg * self.rows)
        } else if reg < ni + np {
            Place::Param(reg - ni)
        } else {
            Place::Row((reg - np) * self.rows)
        }
    }

    fn column(&self, reg: u32) -> Column<'_> {
        match self.place(reg) {
            Place::Row(at) => Column::Row(&self.registers[at..at + self.rows]),
            Place::Param(p) => Column::Param(self.params[p]),
        }
    }

    fn forward(&mut self) {
        let (r, program) = (self.rows, self.program);
        let ni = program.n_inputs;
        let mut x = Vec::new();
        let mut out = vec![0.0; r];
        for (k, instr) in program.instrs.iter().enumerate() {
            match program.role(k) {
                Role::Alone => {}
                Role::FirstOf(l) => {
                    self.layer_forward(l);
                    continue;
                }
                Role::InLayer => continue, // computed with its layer's first Dot
            }
            let args = program.arg_slice(instr);
            match (instr.op, args) {
                // `op::dot_forward` laid over the rows, a column of products at a time, in its
                // order (the bias first), so each row's sum is the one a single call makes.
                (Op::Dot, _) => {
                    let (n, bias) = dot_shape(args.len());
                    match bias {
                        true => {
                            let bias = self.column(args[2 * n]);
                            out.iter_mut().enumerate().for_each(|(j, o)| *o = bias.at(j));
                        }
                        false => out.fill(0.0),
                    }
                    for i in 0..n {
                        match (self.column(args[i]), self.column(args[n + i])) {
                            (Column::Param(w), Column::Row(xs)) => {
                                for (o, x) in out.iter_mut().zip(xs) {
                                    *o += w * x;
                                }
                            }
                            (w, xs) => out
                                .iter_mut()
                                .enumerate()
                                .for_each(|(j, o)| *o += w.at(j) * xs.at(j)),
                        }
                    }
                }
                (op, &[a]) => match self.column(a) {
                    Column::Row(xs) => {
                        for (o, &x) in out.iter_mut().zip(xs) {
                            *o = op.forward(&[x]);
                        }
                    }
                    Column::Param(x) => out.fill(op.forward(&[x])),
                },
                (op, &[a, b]) => {
                    let (xa, xb) = (self.column(a), self.column(b));
                    for (j, o) in out.iter_mut().enumerate() {
                        *o = op.forward(&[xa.at(j), xb.at(j)]);
                    }
                }
                (op, _) => {
                    let columns: Vec<Column> = args.iter().map(|&a| self.column(a)).collect();
                    for (j, o) in out.iter_mut().enumerate() {
                        x.clear();
                        x.extend(columns.iter().map(|c| c.at(j)));
                        *o = op.forward(&x);
                    }
                }
            }
            let at = (ni + k) * r;
            self.registers[at..at + r].copy_from_slice(&out);
        }
    }

    fn output(&self, k: usize) -> impl Iterator<Item = f64> + '_ {
        let column = self.column(self.program.outputs[k]);
        (0..self.rows).map(move |j| column.at(j))
    }

    /// Every row's outputs, row by row.
    pub(super) fn outputs_by_row(&self) -> Replay<Vec<f64>> {
        let n_out = self.program.outputs.len();
        let mut out = try_zeros(product(self.rows, n_out)?, "a chunk's outputs")?;
        for k in 0..n_out {
            for (j, v) in self.output(k).enumerate() {
                out[j * n_out + k] = v;
            }
        }
        Ok(out)
    }

    /// Each output summed over the rows.
    pub(super) fn sums(&self) -> Replay<Vec<f64>> {
        let n_out = self.program.outputs.len();
        let mut sums = try_vec(n_out, "a chunk's sums")?;
        sums.extend((0..n_out).map(|k| self.output(k).sum::<f64>()));
        Ok(sums)
    }

    /// The outputs summed over the rows, then each one's gradient over the parameters, summed.
    pub(super) fn batch(&self) -> Replay<Vec<f64>> {
        let (n_out, n_params) = (self.program.outputs.len(), self.params.len());
        let mut part = self.sums()?;
        part.try_reserve_exact(product(n_out, n_params)?)
            .map_err(|_| ReplayError::OutOfMemory {
                what: "a chunk's gradients",
                bytes: n_out.saturating_mul(n_params).saturating_mul(8),
            })?;
        part.resize(n_out + n_out * n_params, 0.0);
        let mut adjoint = try_zeros(self.registers.len(), "a chunk's adjoints")?;
        for k in 0..n_out {
            adjoint.fill(0.0);
            let at = n_out + k * n_params;
            self.sweep(k, &mut adjoint, &mut part[at..at + n_params]);
        }
        Ok(part)
    }

    /// Adds d(output k)/d(register) into `adjoint` (block rows) and `of_params` (summed over
    /// the rows, since a parameter is one number for all of them).
    fn sweep(&self, k: usize, adjoint: &mut [f64], of_params: &mut [f64]) {
        let (r, program) = (self.rows, self.program);
        let ni = program.n_inputs;
        match self.place(program.outputs[k]) {
            Place::Row(at) => adjoint[at..at + r].fill(1.0),
            Place::Param(p) => of_params[p] += r as f64,
        }
        let mut g = vec![0.0; r];
        let mut x = Vec::new();
        for (k, instr) in program.instrs.iter().enumerate().rev() {
            match program.role(k) {
                Role::Alone => {}
                // Reached last of its layer in reverse, when every neuron's adjoint is complete.
                Role::FirstOf(l) => {
                    self.layer_backward(l, adjoint, of_params);
                    continue;
                }
                Role::InLayer => continue,
            }
            let at = (ni + k) * r;
            g.copy_from_slice(&adjoint[at..at + r]);
            let out = &self.registers[at..at + r];
            let args = program.arg_slice(instr);
            match (instr.op, args) {
                // `op::dot_backward` laid over the rows, in its order: for each product, w_i's
                // share (d/dw_i = x_i), then x_i's (d/dx_i = w_i); then the bias's.
                (Op::Dot, _) => {
                    let (n, bias) = dot_shape(args.len());
                    for i in 0..n {
                        match (self.place(args[i]), self.place(args[n + i])) {
                            (Place::Param(p), Place::Row(xa)) => {
                                let x = &self.registers[xa..xa + r];
                                of_params[p] += dot_of(x, &g);
                                let w = self.params[p];
                                for (a, g) in adjoint[xa..xa + r].iter_mut().zip(&g) {
                                    *a += w * g;
                                }
                            }
                            (wp, xp) => {
                                let (w, xs) = (self.column(args[i]), self.column(args[n + i]));
                                for (j, &gj) in g.iter().enumerate() {
                                    accumulate(wp, j, xs.at(j) * gj, adjoint, of_params);
                                    accumulate(xp, j, w.at(j) * gj, adjoint, of_params);
                                }
                            }
                        }
                    }
                    if bias {
                        match self.place(args[2 * n]) {
                            Place::Param(p) => of_params[p] += sum_of(&g),
                            Place::Row(to) => {
                                for (a, gj) in adjoint[to..to + r].iter_mut().zip(&g) {
                                    *a += gj;
                                }
                            }
                        }
                    }
                }
                (op, &[a]) => {
                    let xa = self.column(a);
                    match self.place(a) {
                        Place::Row(to) => {
                            for j in 0..r {
                                adjoint[to + j] += op.local_grad(&[xa.at(j)], out[j], 0) * g[j];
                            }
                        }
                        Place::Param(p) => {
                            for j in 0..r {
                                of_params[p] += op.local_grad(&[xa.at(j)], out[j], 0) * g[j];
                            }
                        }
                    }
                }
                (op, &[a, b]) => {
                    let (xa, xb) = (self.column(a), self.column(b));
                    let (pa, pb) = (self.place(a), self.place(b));
                    for j in 0..r {
                        let x = [xa.at(j), xb.at(j)];
                        let da = op.local_grad(&x, out[j], 0) * g[j];
                        let db = op.local_grad(&x, out[j], 1) * g[j];
                        accumulate(pa, j, da, adjoint, of_params);
                        accumulate(pb, j, db, adjoint, of_params);
                    }
                }
                (op, _) => {
                    let places: Vec<Place> = args.iter().map(|&a| self.place(a)).collect();
                    let columns: Vec<Column> = args.iter().map(|&a| self.column(a)).collect();
                    for j in 0..r {
                        x.clear();
                        x.extend(columns.iter().map(|c| c.at(j)));
                        for (i, &place) in places.iter().enumerate() {
                            let amount = op.local_grad(&x, out[j], i) * g[j];
                            accumulate(place, j, amount, adjoint, of_params);
                        }
                    }
                }
            }
        }
    }
}

impl Block<'_> {
    /// The layer's inputs across the block's rows, one row of the returned matrix per input.
    fn layer_inputs(&self, layer: &DenseLayer) -> Vec<f64> {
        let r = self.rows;
        let mut x = Vec::with_capacity(layer.inputs.len() * r);
        for &reg in &layer.inputs {
            match self.column(reg) {
                Column::Row(values) => x.extend_from_slice(values),
                Column::Param(value) => x.extend(std::iter::repeat_n(value, r)), // not found by find_layers
            }
        }
        x
    }

    fn layer_weights(&self, layer: &DenseLayer) -> Vec<f64> {
        layer.weights.iter().map(|&p| self.params[p]).collect()
    }

    /// Every neuron of layer `l` over the block's rows, `W X + b`, into the neurons' registers.
    fn layer_forward(&mut self, l: usize) {
        let (r, ni) = (self.rows, self.program.n_inputs);
        let layer = &self.program.layers[l];
        let (nout, nin) = (layer.dots.len(), layer.inputs.len());
        let x = self.layer_inputs(layer);
        let w = self.layer_weights(layer);
        let mut out = vec![0.0; nout * r];
        gemm(nout, nin, r, Matrix::AsStored(&w), Matrix::AsStored(&x), &mut out);
        for (j, &k) in layer.dots.iter().enumerate() {
            let bias = layer.biases.as_ref().map_or(0.0, |b| self.params[b[j]]);
            let at = (ni + k) * r;
            for (to, &sum) in self.registers[at..at + r]
                .iter_mut()
                .zip(&out[j * r..(j + 1) * r])
            {
                *to = bias + sum;
            }
        }
        self.gathered[l] = Gathered { x, w };
    }

    /// The layer's backward over the block's rows: `Wᵀ G` into the inputs' adjoints, `G Xᵀ`
    /// and each neuron's row sum of `G` into the weights' and biases' gradients.
    fn layer_backward(&self, l: usize, adjoint: &mut [f64], of_params: &mut [f64]) {
        let layer = &self.program.layers[l];
        let (r, ni) = (self.rows, self.program.n_inputs);
        let (nout, nin) = (layer.dots.len(), layer.inputs.len());
        let mut g = Vec::with_capacity(nout * r);
        for &k in &layer.dots {
            let at = (ni + k) * r;
            g.extend_from_slice(&adjoint[at..at + r]);
        }
        let Gathered { x, w } = &self.gathered[l];
        let mut dx = vec![0.0; nin * r];
        gemm(nin, nout, r, Matrix::Transposed(w), Matrix::AsStored(&g), &mut dx);
        for (i, &reg) in layer.inputs.iter().enumerate() {
            if let Place::Row(at) = self.place(reg) {
                for (a, d) in adjoint[at..at + r].iter_mut().zip(&dx[i * r..(i + 1) * r]) {
                    *a += d;
                }
            }
        }
        let mut dw = vec![0.0; nout * nin];
        gemm(nout, r, nin, Matrix::AsStored(&g), Matrix::Transposed(x), &mut dw);
        for (&p, d) in layer.weights.iter().zip(&dw) {
            of_params[p] += d;
        }
        if let Some(biases) = &layer.biases {
            for (j, &p) in biases.iter().enumerate() {
                of_params[p] += sum_of(&g[j * r..(j + 1) * r]);
            }
        }
    }
}

/// `a · b`, summed in four interleaved partial sums: a single running sum would wait on each
/// addition in turn, and this is the innermost loop of a compiled backward pass. The order is
/// fixed, so results do not depend on anything but `a` and `b`.
fn dot_of(a: &[f64], b: &[f64]) -> f64 {
    let mut lanes = [0.0; 4];
    let whole = a.len() - a.len() % 4;
    for (qa, qb) in a[..whole].chunks_exact(4).zip(b[..whole].chunks_exact(4)) {
        for i in 0..4 {
            lanes[i] += qa[i] * qb[i];
        }
    }
    let tail: f64 = a[whole..].iter().zip(&b[whole..]).map(|(x, y)| x * y).sum();
    (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]) + tail
}

/// The sum of `a` in [`dot_of`]'s four interleaved lanes (a parameter's gradient summed over a
/// block's rows would otherwise wait on each addition in turn).
fn sum_of(a: &[f64]) -> f64 {
    let mut lanes = [0.0; 4];
    let whole = a.len() - a.len() % 4;
    for quad in a[..whole].chunks_exact(4) {
        for i in 0..4 {
            lanes[i] += quad[i];
        }
    }
    let tail: f64 = a[whole..].iter().sum();
    (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]) + tail
}
