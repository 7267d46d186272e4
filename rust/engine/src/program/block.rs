//! Replaying a tape over a chunk of rows at once, one instruction at a time across the rows.

use std::ops::Range;

use super::dense::{gemm, DenseLayer, Role, Strided};
use super::{product, try_vec, try_zeros, Program, Replay, ReplayError};
use crate::op::{dot_shape, Op};

/// Runs `body` with `op` bound to a constant for the ops a training loop runs over whole
/// columns (activations and a loss's arithmetic), so that `Op::forward` and `Op::local_grad`,
/// inlined, become a loop without a branch on the op at every row; other ops run the same body
/// with that branch inside. The rules stay `op.rs`'s: only where their `match` is taken moves.
macro_rules! with_op_known {
    ($op:expr, |$o:ident| $body:block) => {
        match $op {
            Op::Relu => {
                let $o = Op::Relu;
                $body
            }
            Op::Tanh => {
                let $o = Op::Tanh;
                $body
            }
            Op::Sigmoid => {
                let $o = Op::Sigmoid;
                $body
            }
            Op::Add => {
                let $o = Op::Add;
                $body
            }
            Op::Sub => {
                let $o = Op::Sub;
                $body
            }
            Op::Mul => {
                let $o = Op::Mul;
                $body
            }
            other => {
                let $o = other;
                $body
            }
        }
    };
}

/// Buffers a worker keeps from one chunk to the next, so that a batch allocates (and the kernel
/// maps in) a chunk's registers once per thread, not once per chunk.
#[derive(Default)]
pub(super) struct Scratch {
    registers: Vec<f64>,
    adjoint: Vec<f64>,
}

/// `buffer`'s first `len` numbers, growing it (with zeros) if it is shorter, or
/// [`ReplayError::OutOfMemory`] naming `what`. What it held before is left: callers write every
/// number before they read it.
fn first<'a>(buffer: &'a mut Vec<f64>, len: usize, what: &'static str) -> Replay<&'a mut [f64]> {
    if let Some(more) = len.checked_sub(buffer.len()).filter(|&more| more > 0) {
        buffer
            .try_reserve_exact(more)
            .map_err(|_| ReplayError::OutOfMemory {
                what,
                bytes: len.saturating_mul(8),
            })?;
        buffer.resize(len, 0.0);
    }
    Ok(&mut buffer[..len])
}

/// A chunk of rows evaluated together: every input and instruction register holds one number
/// per row, side by side, so each instruction runs as a tight loop over the rows instead of once
/// per row. Parameters are the same in every row and stay single numbers.
pub(super) struct Block<'p, 's> {
    program: &'p Program,
    layout: Layout,
    /// Row-major blocks of `rows` numbers: the inputs, then one per instruction.
    registers: &'s mut [f64],
    /// The registers' adjoints in a reverse sweep, laid out as they are.
    adjoint: &'s mut Vec<f64>,
    params: &'p [f64],
}

/// How a block lays out its registers.
#[derive(Clone, Copy)]
struct Layout {
    rows: usize,
    n_inputs: usize,
    n_params: usize,
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
    fn at(self, j: usize) -> f64 {
        match self {
            Column::Row(values) => values[j],
            Column::Param(value) => value,
        }
    }
}

impl Layout {
    fn place(self, reg: u32) -> Place {
        let (reg, ni, np) = (reg as usize, self.n_inputs, self.n_params);
        if reg < ni {
            Place::Row(reg * self.rows)
        } else if reg < ni + np {
            Place::Param(reg - ni)
        } else {
            Place::Row((reg - np) * self.rows)
        }
    }

    /// Register `reg`'s numbers, from `registers` (every row before the one being written) and
    /// `params`.
    fn column<'a>(self, registers: &'a [f64], params: &[f64], reg: u32) -> Column<'a> {
        match self.place(reg) {
            Place::Row(at) => Column::Row(&registers[at..at + self.rows]),
            Place::Param(p) => Column::Param(params[p]),
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

impl<'p, 's> Block<'p, 's> {
    pub(super) fn new(
        program: &'p Program,
        data: &[f64],
        params: &'p [f64],
        range: Range<usize>,
        scratch: &'s mut Scratch,
    ) -> Replay<Self> {
        let rows = range.len();
        let ni = program.n_inputs;
        let len = product(ni + program.instrs.len(), rows)?;
        let registers = first(&mut scratch.registers, len, "a chunk's registers")?;
        for (j, row) in range.enumerate() {
            for (i, &x) in program.row(data, row).iter().enumerate() {
                registers[i * rows + j] = x;
            }
        }
        let layout = Layout {
            rows,
            n_inputs: ni,
            n_params: params.len(),
        };
        let mut block = Block {
            program,
            layout,
            registers,
            adjoint: &mut scratch.adjoint,
            params,
        };
        block.forward();
        Ok(block)
    }

    fn column(&self, reg: u32) -> Column<'_> {
        self.layout.column(self.registers, self.params, reg)
    }

    fn forward(&mut self) {
        let (layout, program, params) = (self.layout, self.program, self.params);
        let r = layout.rows;
        let mut x = Vec::new();
        for (k, instr) in program.instrs.iter().enumerate() {
            match program.role(k) {
                Role::Alone => {}
                Role::FirstOf(l) => {
                    self.layer_forward(l);
                    continue;
                }
                Role::InLayer => continue, // computed with its layer's first Dot
            }
            // An instruction reads only registers before its own.
            let at = (layout.n_inputs + k) * r;
            let (before, from_here) = self.registers.split_at_mut(at);
            let out = &mut from_here[..r];
            let column = |reg| layout.column(before, params, reg);
            let args = program.arg_slice(instr);
            match (instr.op, args) {
                // `op::dot_forward` laid over the rows, a column of products at a time, in its
                // order (the bias first), so each row's sum is the one a single call makes.
                (Op::Dot, _) => {
                    let (n, bias) = dot_shape(args.len());
                    match bias {
                        true => {
                            let bias = column(args[2 * n]);
                            out.iter_mut().enumerate().for_each(|(j, o)| *o = bias.at(j));
                        }
                        false => out.fill(0.0),
                    }
                    for i in 0..n {
                        match (column(args[i]), column(args[n + i])) {
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
                (op, &[a]) => match column(a) {
                    Column::Row(xs) => with_op_known!(op, |op| {
                        for (o, &x) in out.iter_mut().zip(xs) {
                            *o = op.forward(&[x]);
                        }
                    }),
                    Column::Param(x) => out.fill(op.forward(&[x])),
                },
                (op, &[a, b]) => match (column(a), column(b)) {
                    (Column::Row(xa), Column::Row(xb)) => with_op_known!(op, |op| {
                        for ((o, &x), &y) in out.iter_mut().zip(xa).zip(xb) {
                            *o = op.forward(&[x, y]);
                        }
                    }),
                    (xa, xb) => {
                        for (j, o) in out.iter_mut().enumerate() {
                            *o = op.forward(&[xa.at(j), xb.at(j)]);
                        }
                    }
                },
                (op, _) => {
                    let columns: Vec<Column> = args.iter().map(|&a| column(a)).collect();
                    for (j, o) in out.iter_mut().enumerate() {
                        x.clear();
                        x.extend(columns.iter().map(|c| c.at(j)));
                        *o = op.forward(&x);
                    }
                }
            }
        }
    }

    fn output(&self, k: usize) -> impl Iterator<Item = f64> + '_ {
        let column = self.column(self.program.outputs[k]);
        (0..self.layout.rows).map(move |j| column.at(j))
    }

    /// Every row's outputs, row by row.
    pub(super) fn outputs_by_row(&self) -> Replay<Vec<f64>> {
        let n_out = self.program.outputs.len();
        let mut out = try_zeros(product(self.layout.rows, n_out)?, "a chunk's outputs")?;
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
    pub(super) fn batch(self) -> Replay<Vec<f64>> {
        let (n_out, n_params) = (self.program.outputs.len(), self.params.len());
        let mut part = self.sums()?;
        part.try_reserve_exact(product(n_out, n_params)?)
            .map_err(|_| ReplayError::OutOfMemory {
                what: "a chunk's gradients",
                bytes: n_out.saturating_mul(n_params).saturating_mul(8),
            })?;
        part.resize(n_out + n_out * n_params, 0.0);
        let mut adjoint = std::mem::take(self.adjoint);
        let len = self.registers.len();
        let swept = first(&mut adjoint, len, "a chunk's adjoints").map(|adjoint| {
            for k in 0..n_out {
                adjoint.fill(0.0);
                let at = n_out + k * n_params;
                self.sweep(k, adjoint, &mut part[at..at + n_params]);
            }
        });
        *self.adjoint = adjoint;
        swept.map(|()| part)
    }

    /// Adds d(output k)/d(register) into `adjoint` (block rows) and `of_params` (summed over
    /// the rows, since a parameter is one number for all of them).
    fn sweep(&self, k: usize, adjoint: &mut [f64], of_params: &mut [f64]) {
        let (layout, program) = (self.layout, self.program);
        let r = layout.rows;
        match layout.place(program.outputs[k]) {
            Place::Row(at) => adjoint[at..at + r].fill(1.0),
            Place::Param(p) => of_params[p] += r as f64,
        }
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
            // An instruction's arguments are registers before its own: their adjoints lie before.
            let at = (layout.n_inputs + k) * r;
            let (adjoint, from_here) = adjoint.split_at_mut(at);
            let g = &from_here[..r];
            let out = &self.registers[at..at + r];
            let args = program.arg_slice(instr);
            match (instr.op, args) {
                // `op::dot_backward` laid over the rows, in its order: for each product, w_i's
                // share (d/dw_i = x_i), then x_i's (d/dx_i = w_i); then the bias's.
                (Op::Dot, _) => {
                    let (n, bias) = dot_shape(args.len());
                    for i in 0..n {
                        match (layout.place(args[i]), layout.place(args[n + i])) {
                            (Place::Param(p), Place::Row(xa)) => {
                                let x = &self.registers[xa..xa + r];
                                of_params[p] += dot_of(x, g);
                                let w = self.params[p];
                                for (a, g) in adjoint[xa..xa + r].iter_mut().zip(g) {
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
                        match layout.place(args[2 * n]) {
                            Place::Param(p) => of_params[p] += sum_of(g),
                            Place::Row(to) => {
                                for (a, gj) in adjoint[to..to + r].iter_mut().zip(g) {
                                    *a += gj;
                                }
                            }
                        }
                    }
                }
                (op, &[a]) => {
                    let xa = self.column(a);
                    match (layout.place(a), xa) {
                        (Place::Row(to), Column::Row(xs)) => with_op_known!(op, |op| {
                            let rows = adjoint[to..to + r].iter_mut().zip(xs);
                            for ((d, &x), (&o, &g)) in rows.zip(out.iter().zip(g)) {
                                *d += op.local_grad(&[x], o, 0) * g;
                            }
                        }),
                        (Place::Row(to), _) => {
                            for j in 0..r {
                                adjoint[to + j] += op.local_grad(&[xa.at(j)], out[j], 0) * g[j];
                            }
                        }
                        (Place::Param(p), _) => {
                            for j in 0..r {
                                of_params[p] += op.local_grad(&[xa.at(j)], out[j], 0) * g[j];
                            }
                        }
                    }
                }
                (op, &[a, b]) => {
                    let (xa, xb) = (self.column(a), self.column(b));
                    let (pa, pb) = (layout.place(a), layout.place(b));
                    if let (Place::Row(ta), Place::Row(tb)) = (pa, pb) {
                        with_op_known!(op, |op| {
                            for j in 0..r {
                                let x = [xa.at(j), xb.at(j)];
                                adjoint[ta + j] += op.local_grad(&x, out[j], 0) * g[j];
                                adjoint[tb + j] += op.local_grad(&x, out[j], 1) * g[j];
                            }
                        });
                        continue;
                    }
                    for j in 0..r {
                        let x = [xa.at(j), xb.at(j)];
                        let da = op.local_grad(&x, out[j], 0) * g[j];
                        let db = op.local_grad(&x, out[j], 1) * g[j];
                        accumulate(pa, j, da, adjoint, of_params);
                        accumulate(pb, j, db, adjoint, of_params);
                    }
                }
                (op, _) => {
                    let places: Vec<Place> = args.iter().map(|&a| layout.place(a)).collect();
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

impl Block<'_, '_> {
    /// Where a layer's matrices lie: `X` (inputs × rows) in the registers, `G` or the neurons'
    /// outputs (neurons × rows) in the registers or adjoints, `W` (neurons × inputs) among the
    /// parameters.
    fn layer_matrices(&self, layer: &DenseLayer) -> (Strided, Strided, Strided) {
        let r = self.layout.rows;
        let row_of = |reg: usize| match self.layout.place(reg as u32) {
            Place::Row(at) => at,
            Place::Param(_) => unreachable!("find_layers keeps parameters out of a layer's rows"),
        };
        let ni = self.program.n_inputs;
        let x = Strided {
            offset: row_of(layer.inputs.first),
            row_step: layer.inputs.step * r,
            col_step: 1,
        };
        let neurons = Strided {
            offset: (ni + layer.dots.first) * r,
            row_step: layer.dots.step * r,
            col_step: 1,
        };
        let w = Strided {
            offset: layer.weights.first,
            row_step: layer.weights.step,
            col_step: 1,
        };
        (x, neurons, w)
    }

    /// Every neuron of layer `l` over the block's rows, `W X + b`, into the neurons' registers.
    fn layer_forward(&mut self, l: usize) {
        let layer = &self.program.layers[l];
        let (x, neurons, w) = self.layer_matrices(layer);
        // The inputs are registers before the neurons': split there to read one and write the other.
        let (before, from_neurons) = self.registers.split_at_mut(neurons.offset);
        let neurons = Strided { offset: 0, ..neurons };
        let shape = (layer.n_out, layer.n_in, self.layout.rows);
        gemm(shape, (self.params, w), (before, x), 0.0, (from_neurons, neurons));
        if let Some(biases) = layer.biases {
            for j in 0..layer.n_out {
                let bias = self.params[biases.first + j * biases.step];
                let at = j * neurons.row_step;
                for v in &mut from_neurons[at..at + self.layout.rows] {
                    *v += bias;
                }
            }
        }
    }

    /// The layer's backward over the block's rows: `Wᵀ G` into the inputs' adjoints, `G Xᵀ`
    /// and each neuron's row sum of `G` into the weights' and biases' gradients.
    fn layer_backward(&self, l: usize, adjoint: &mut [f64], of_params: &mut [f64]) {
        let layer = &self.program.layers[l];
        let (x, g, w) = self.layer_matrices(layer);
        let (r, n_out, n_in) = (self.layout.rows, layer.n_out, layer.n_in);
        let (before, from_neurons) = adjoint.split_at_mut(g.offset);
        let g = Strided { offset: 0, ..g };
        gemm(
            (n_out, r, n_in),
            (from_neurons, g),
            (&*self.registers, x.t()),
            1.0,
            (of_params, w),
        );
        if let Some(biases) = layer.biases {
            for j in 0..n_out {
                let at = j * g.row_step;
                of_params[biases.first + j * biases.step] += sum_of(&from_neurons[at..at + r]);
            }
        }
        // A program's inputs have no use for their adjoints (a replay gives the parameters'
        // gradients), so the first layer skips a third of its backward.
        if layer.inputs.first >= self.program.n_inputs {
            gemm(
                (n_in, n_out, r),
                (self.params, w.t()),
                (from_neurons, g),
                1.0,
                (before, x),
            );
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
