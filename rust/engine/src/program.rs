//! A recorded program: a graph flattened once into a tape of instructions over
//! registers, then replayed with new inputs, forward and backward, without the
//! arena and without any per-node bookkeeping.
//!
//! Registers are laid out as `[inputs | parameters | one per instruction]`. Inputs
//! are the slots a caller fills at each replay; parameters are the leaves the graph
//! reads (a model's weights), fetched from the arena before each replay so that
//! training updates are seen.

use std::collections::HashMap;

use crate::arena::{Arena, EngineError, NodeId, Result};
use crate::op::Op;

#[derive(Clone, Debug)]
struct Instr {
    op: Op,
    /// Range into `Program::args`.
    start: u32,
    len: u32,
}

#[derive(Clone, Debug)]
pub struct Program {
    n_inputs: usize,
    params: Vec<NodeId>,
    instrs: Vec<Instr>,
    args: Vec<u32>,
    outputs: Vec<u32>,
}

/// How a batch's per-row outputs are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    Sum,
    Mean,
}

/// Rows per unit of work in a batch. Fixed, not derived from the thread count, so that a batch
/// adds its numbers in the same order however many threads run it.
pub const CHUNK_ROWS: usize = 32;

impl Program {
    /// Flattens the graph under `outputs`. Nodes in `inputs` become input slots (whatever is
    /// below them is not recorded); every other leaf becomes a parameter read from the arena at
    /// each replay; every other node becomes an instruction, recomputed from those at each replay
    /// (so interior nodes made before recording are recomputed from their leaves, not re-read).
    ///
    /// A compiled call's result (`Op::Recorded`) cannot be recomputed: the arena keeps its value
    /// and partials, not its program. One that does not depend on an input slot is treated as a
    /// parameter (its stored value is read at each replay, and gradients flow through its stored
    /// partials); one computed from an input slot is refused with
    /// [`EngineError::CompiledCallOnInputs`], since replaying it would silently reuse a value
    /// computed from the inputs seen when recording.
    pub fn record(arena: &Arena, outputs: &[NodeId], inputs: &[NodeId]) -> Result<Program> {
        for &id in outputs.iter().chain(inputs) {
            arena.view(id)?;
        }
        let mut register: HashMap<NodeId, u32> = HashMap::new();
        for (i, &id) in inputs.iter().enumerate() {
            register.entry(id).or_insert(i as u32);
        }
        let is_input = |id: NodeId| register.contains_key(&id);
        let opaque = |id: NodeId| Ok(is_input(id) || matches!(arena.op(id)?, Op::Recorded));
        let order = post_order(arena, outputs, opaque)?;
        let mut params = Vec::new();
        let mut interior = Vec::new();
        for &id in &order {
            if is_input(id) {
                continue;
            }
            match arena.op(id)? {
                Op::Leaf => params.push(id),
                Op::Recorded => {
                    if !inputs.is_empty()
                        && post_order(arena, &[id], |n| Ok(is_input(n)))?
                            .into_iter()
                            .any(is_input)
                    {
                        return Err(EngineError::CompiledCallOnInputs);
                    }
                    params.push(id);
                }
                _ => interior.push(id),
            }
        }
        let base = inputs.len();
        for (i, &id) in params.iter().enumerate() {
            register.insert(id, (base + i) as u32);
        }
        let base = base + params.len();
        let mut instrs = Vec::with_capacity(interior.len());
        let mut args = Vec::new();
        for (i, &id) in interior.iter().enumerate() {
            let start = args.len() as u32;
            for child in arena.children(id)? {
                args.push(register[&child]);
            }
            instrs.push(Instr {
                op: *arena.op(id)?,
                start,
                len: args.len() as u32 - start,
            });
            register.insert(id, (base + i) as u32);
        }
        let outputs = outputs.iter().map(|id| register[id]).collect();
        Ok(Program {
            n_inputs: inputs.len(),
            params,
            instrs,
            args,
            outputs,
        })
    }

    pub fn n_inputs(&self) -> usize {
        self.n_inputs
    }

    pub fn n_outputs(&self) -> usize {
        self.outputs.len()
    }

    pub fn n_instructions(&self) -> usize {
        self.instrs.len()
    }

    /// The leaves the program reads, in register order.
    pub fn params(&self) -> &[NodeId] {
        &self.params
    }

    pub fn n_registers(&self) -> usize {
        self.n_inputs + self.params.len() + self.instrs.len()
    }

    /// Evaluates every register from `inputs` and `params`.
    pub fn forward(&self, inputs: &[f64], params: &[f64], registers: &mut Vec<f64>, scratch: &mut Vec<f64>) {
        registers.clear();
        registers.extend_from_slice(inputs);
        registers.extend_from_slice(params);
        self.run_instructions(registers, scratch);
    }

    /// Appends the instructions' results to `registers`, which hold the inputs and parameters.
    fn run_instructions(&self, registers: &mut Vec<f64>, scratch: &mut Vec<f64>) {
        for instr in &self.instrs {
            let args = self.arg_slice(instr);
            let value = match (instr.op, args) {
                (Op::Dot, _) => dot_forward(args, registers),
                (op, &[a]) => op.forward(&[registers[a as usize]]),
                (op, &[a, b]) => op.forward(&[registers[a as usize], registers[b as usize]]),
                (op, _) => {
                    scratch.clear();
                    scratch.extend(args.iter().map(|&r| registers[r as usize]));
                    op.forward(scratch)
                }
            };
            registers.push(value);
        }
    }

    pub fn output(&self, registers: &[f64], k: usize) -> f64 {
        registers[self.outputs[k] as usize]
    }

    /// d(output k)/d(every register), by a reverse sweep over the tape.
    pub fn gradient(&self, registers: &[f64], k: usize, adjoint: &mut Vec<f64>, scratch: &mut Vec<f64>) {
        adjoint.clear();
        adjoint.resize(registers.len(), 0.0);
        self.sweep(registers, k, adjoint, scratch);
    }

    /// Adds d(output k)/d(register) to every `adjoint` entry; the instructions' and inputs'
    /// entries must be zero on entry, while the parameters' may hold earlier rows' sums.
    fn sweep(&self, registers: &[f64], k: usize, adjoint: &mut [f64], scratch: &mut Vec<f64>) {
        adjoint[self.outputs[k] as usize] += 1.0;
        let base = self.n_inputs + self.params.len();
        for (i, instr) in self.instrs.iter().enumerate().rev() {
            let g = adjoint[base + i];
            let out = registers[base + i];
            let args = self.arg_slice(instr);
            match (instr.op, args) {
                (Op::Dot, _) => dot_backward(args, registers, adjoint, g),
                (op, &[a]) => {
                    adjoint[a as usize] += op.local_grad(&[registers[a as usize]], out, 0) * g;
                }
                (op, &[a, b]) => {
                    let x = [registers[a as usize], registers[b as usize]];
                    adjoint[a as usize] += op.local_grad(&x, out, 0) * g;
                    adjoint[b as usize] += op.local_grad(&x, out, 1) * g;
                }
                (op, _) => {
                    scratch.clear();
                    scratch.extend(args.iter().map(|&r| registers[r as usize]));
                    for (j, &r) in args.iter().enumerate() {
                        adjoint[r as usize] += op.local_grad(scratch, out, j) * g;
                    }
                }
            }
        }
    }

    fn arg_slice(&self, instr: &Instr) -> &[u32] {
        &self.args[instr.start as usize..(instr.start + instr.len) as usize]
    }

    /// Forward only over `rows` (each `n_inputs` long): every row's outputs, row by row.
    pub fn map(&self, rows: &[f64], params: &[f64], threads: usize) -> Result<Vec<f64>> {
        let n_rows = self.rows_in(rows)?;
        let chunks = run_chunks(n_rows, threads, |range| {
            Block::new(self, rows, params, range).outputs_by_row()
        });
        Ok(chunks.concat())
    }

    /// The outputs over all `rows`, reduced, and for each output its gradient with respect to
    /// the parameters, reduced the same way.
    pub fn batch(&self, rows: &[f64], params: &[f64], reduce: Reduce, threads: usize) -> Result<Batch> {
        let n_rows = self.rows_in(rows)?;
        let (n_out, n_params) = (self.outputs.len(), self.params.len());
        let chunks = run_chunks(n_rows, threads, |range| {
            Block::new(self, rows, params, range).batch()
        });
        let mut total = Batch {
            values: vec![0.0; n_out],
            grads: vec![vec![0.0; n_params]; n_out],
        };
        for part in chunks {
            for k in 0..n_out {
                total.values[k] += part.values[k];
                for (t, g) in total.grads[k].iter_mut().zip(&part.grads[k]) {
                    *t += g;
                }
            }
        }
        if reduce == Reduce::Mean && n_rows > 0 {
            let scale = 1.0 / n_rows as f64;
            for k in 0..n_out {
                total.values[k] *= scale;
                total.grads[k].iter_mut().for_each(|g| *g *= scale);
            }
        }
        Ok(total)
    }

    /// [`Program::batch`]'s reduced outputs alone (no reverse sweeps), bit-identical to its
    /// `values`: the same chunks, summed in the same order.
    pub fn batch_values(
        &self,
        rows: &[f64],
        params: &[f64],
        reduce: Reduce,
        threads: usize,
    ) -> Result<Vec<f64>> {
        let n_rows = self.rows_in(rows)?;
        let n_out = self.outputs.len();
        let chunks = run_chunks(n_rows, threads, |range| {
            let block = Block::new(self, rows, params, range);
            (0..n_out)
                .map(|k| block.output(k).iter().sum::<f64>())
                .collect::<Vec<_>>()
        });
        let mut total = vec![0.0; n_out];
        for part in chunks {
            for (t, v) in total.iter_mut().zip(part) {
                *t += v;
            }
        }
        if reduce == Reduce::Mean && n_rows > 0 {
            let scale = 1.0 / n_rows as f64;
            total.iter_mut().for_each(|v| *v *= scale);
        }
        Ok(total)
    }

    fn rows_in(&self, rows: &[f64]) -> Result<usize> {
        if self.n_inputs == 0 || rows.len() % self.n_inputs != 0 {
            return Err(EngineError::LengthMismatch {
                expected: self.n_inputs,
                got: rows.len(),
            });
        }
        Ok(rows.len() / self.n_inputs)
    }

    fn row<'a>(&self, rows: &'a [f64], row: usize) -> &'a [f64] {
        &rows[row * self.n_inputs..(row + 1) * self.n_inputs]
    }
}

/// `Op::Dot`'s forward rule (bias first, then each product, as in `op.rs`) read straight from
/// the registers: neurons are most of a network's tape, and this skips gathering their inputs.
fn dot_forward(args: &[u32], registers: &[f64]) -> f64 {
    let n = args.len() / 2;
    let bias = if args.len() % 2 == 1 {
        registers[args[2 * n] as usize]
    } else {
        0.0
    };
    (0..n).fold(bias, |acc, i| {
        acc + registers[args[i] as usize] * registers[args[n + i] as usize]
    })
}

/// `Op::Dot`'s local derivatives (d/dw_i = x_i, d/dx_i = w_i, d/dbias = 1) times `g`.
fn dot_backward(args: &[u32], registers: &[f64], adjoint: &mut [f64], g: f64) {
    let n = args.len() / 2;
    for i in 0..n {
        let (w, x) = (args[i] as usize, args[n + i] as usize);
        adjoint[w] += registers[x] * g;
        adjoint[x] += registers[w] * g;
    }
    if args.len() % 2 == 1 {
        adjoint[args[2 * n] as usize] += g;
    }
}

/// A chunk of rows evaluated together: every input and instruction register holds one number
/// per row, side by side, so each instruction runs as a tight loop over the rows instead of once
/// per row. Parameters are the same in every row and stay single numbers.
struct Block<'p> {
    program: &'p Program,
    rows: usize,
    /// Row-major blocks of `rows` numbers: the inputs, then one per instruction.
    registers: Vec<f64>,
    params: &'p [f64],
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

/// Adds `amount` to register `place`'s adjoint in row `j` (a parameter's is one sum for all rows).
#[inline]
fn accumulate(place: Place, j: usize, amount: f64, adjoint: &mut [f64], of_params: &mut [f64]) {
    match place {
        Place::Row(at) => adjoint[at + j] += amount,
        Place::Param(p) => of_params[p] += amount,
    }
}

impl<'p> Block<'p> {
    fn new(program: &'p Program, data: &[f64], params: &'p [f64], range: std::ops::Range<usize>) -> Self {
        let rows = range.len();
        let ni = program.n_inputs;
        let mut registers = vec![0.0; (ni + program.instrs.len()) * rows];
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
        };
        block.forward();
        block
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
            let args = program.arg_slice(instr);
            match (instr.op, args) {
                (Op::Dot, _) => {
                    let n = args.len() / 2;
                    match args.len() % 2 {
                        1 => {
                            let bias = self.column(args[2 * n]);
                            out.iter_mut().enumerate().for_each(|(j, o)| *o = bias.at(j));
                        }
                        _ => out.fill(0.0),
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

    fn output(&self, k: usize) -> Vec<f64> {
        let column = self.column(self.program.outputs[k]);
        (0..self.rows).map(|j| column.at(j)).collect()
    }

    /// Every row's outputs, row by row.
    fn outputs_by_row(&self) -> Vec<f64> {
        let n_out = self.program.outputs.len();
        let mut out = vec![0.0; self.rows * n_out];
        for k in 0..n_out {
            for (j, v) in self.output(k).into_iter().enumerate() {
                out[j * n_out + k] = v;
            }
        }
        out
    }

    /// The outputs summed over the rows, and each one's gradient over the parameters, summed.
    fn batch(&self) -> Batch {
        let n_out = self.program.outputs.len();
        let mut part = Batch {
            values: (0..n_out).map(|k| self.output(k).iter().sum()).collect(),
            grads: Vec::with_capacity(n_out),
        };
        let mut adjoint = vec![0.0; self.registers.len()];
        for k in 0..n_out {
            adjoint.fill(0.0);
            let mut of_params = vec![0.0; self.params.len()];
            self.sweep(k, &mut adjoint, &mut of_params);
            part.grads.push(of_params);
        }
        part
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
            let at = (ni + k) * r;
            g.copy_from_slice(&adjoint[at..at + r]);
            let out = &self.registers[at..at + r];
            let args = program.arg_slice(instr);
            match (instr.op, args) {
                (Op::Dot, _) => {
                    let n = args.len() / 2;
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
                    if args.len() % 2 == 1 {
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

/// A batch's reduced outputs and, per output, its reduced gradient over the parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub values: Vec<f64>,
    pub grads: Vec<Vec<f64>>,
}

/// Runs `work` over fixed-size chunks of `0..n_rows` on up to `threads` threads and returns the
/// chunks' results in chunk order.
fn run_chunks<T: Send>(
    n_rows: usize,
    threads: usize,
    work: impl Fn(std::ops::Range<usize>) -> T + Sync,
) -> Vec<T> {
    let ranges: Vec<_> = (0..n_rows)
        .step_by(CHUNK_ROWS)
        .map(|start| start..(start + CHUNK_ROWS).min(n_rows))
        .collect();
    // Starting a thread costs tens of microseconds: give each at least four chunks of work.
    let threads = threads.clamp(1, (ranges.len() / 4).max(1));
    if threads == 1 {
        return ranges.into_iter().map(&work).collect();
    }
    let mut results: Vec<Option<T>> = (0..ranges.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        let work = &work;
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let mine: Vec<(usize, std::ops::Range<usize>)> = ranges
                    .iter()
                    .cloned()
                    .enumerate()
                    .skip(t)
                    .step_by(threads)
                    .collect();
                scope.spawn(move || mine.into_iter().map(|(i, r)| (i, work(r))).collect::<Vec<_>>())
            })
            .collect();
        for handle in handles {
            // A panic in a worker is a bug in the engine; re-raise it on this thread.
            for (i, result) in handle.join().unwrap_or_else(|e| std::panic::resume_unwind(e)) {
                results[i] = Some(result);
            }
        }
    });
    results.into_iter().flatten().collect()
}

/// Post-order over every node under `roots` (children first, each node once), not walking
/// below the nodes for which `opaque` is true (they are listed, their children are not).
fn post_order(
    arena: &Arena,
    roots: &[NodeId],
    opaque: impl Fn(NodeId) -> Result<bool>,
) -> Result<Vec<NodeId>> {
    let below = |id: NodeId| -> Result<Vec<NodeId>> {
        if opaque(id)? {
            Ok(Vec::new())
        } else {
            arena.children(id)
        }
    };
    let mut seen = std::collections::HashSet::new();
    let mut order = Vec::new();
    for &root in roots {
        if !seen.insert(root) {
            continue;
        }
        let mut stack = vec![(root, below(root)?, 0usize)];
        while let Some((id, children, next)) = stack.last_mut() {
            if let Some(&child) = children.get(*next) {
                *next += 1;
                if seen.insert(child) {
                    let grandchildren = below(child)?;
                    stack.push((child, grandchildren, 0));
                }
            } else {
                order.push(*id);
                stack.pop();
            }
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// out = tanh(w * x + b) for input x and parameters w, b.
    fn neuron(arena: &mut Arena) -> (NodeId, NodeId, NodeId, NodeId, Program) {
        let x = arena.leaf(0.5).unwrap();
        let w = arena.leaf(-1.5).unwrap();
        let b = arena.leaf(0.25).unwrap();
        let wx = arena.apply2(Op::Mul, w, x).unwrap();
        let pre = arena.apply2(Op::Add, wx, b).unwrap();
        let out = arena.apply1(Op::Tanh, pre).unwrap();
        let program = Program::record(arena, &[out], &[x]).unwrap();
        (x, w, b, out, program)
    }

    #[test]
    fn replay_equals_eager() {
        let mut arena = Arena::new();
        let (x, w, b, out, program) = neuron(&mut arena);
        assert_eq!(
            (program.n_inputs(), program.params(), program.n_instructions()),
            (1, &[w, b][..], 3)
        );
        arena.backward(out).unwrap();
        let (mut regs, mut adj, mut scratch) = (Vec::new(), Vec::new(), Vec::new());
        let params = [arena.data(w).unwrap(), arena.data(b).unwrap()];
        program.forward(&[0.5], &params, &mut regs, &mut scratch);
        assert_eq!(program.output(&regs, 0), arena.data(out).unwrap());
        program.gradient(&regs, 0, &mut adj, &mut scratch);
        assert_eq!(adj[0], arena.grad(x).unwrap());
        assert_eq!(&adj[1..3], &[arena.grad(w).unwrap(), arena.grad(b).unwrap()]);
    }

    #[test]
    fn parallel_batches_equal_serial_ones_bit_for_bit() {
        let mut arena = Arena::new();
        let (_, _, _, _, program) = neuron(&mut arena);
        let rows: Vec<f64> = (0..1000).map(|i| (i as f64 * 0.37).sin()).collect();
        let params = [-1.5, 0.25];
        let serial = program.batch(&rows, &params, Reduce::Mean, 1).unwrap();
        for threads in [2, 3, 8] {
            assert_eq!(
                program.batch(&rows, &params, Reduce::Mean, threads).unwrap(),
                serial
            );
        }
        let mapped = program.map(&rows, &params, 4).unwrap();
        let mean = mapped.iter().sum::<f64>() / 1000.0;
        assert!((mean - serial.values[0]).abs() < 1e-12);
        assert!(program.batch(&rows[..3], &params, Reduce::Sum, 1).is_ok());
    }

    #[test]
    fn batch_values_equal_the_values_of_a_full_batch() {
        let mut arena = Arena::new();
        let (_, _, _, _, program) = neuron(&mut arena);
        let rows: Vec<f64> = (0..333).map(|i| (i as f64 * 0.71).cos()).collect();
        let params = [-1.5, 0.25];
        for reduce in [Reduce::Sum, Reduce::Mean] {
            for threads in [1, 3] {
                assert_eq!(
                    program.batch_values(&rows, &params, reduce, threads).unwrap(),
                    program.batch(&rows, &params, reduce, 1).unwrap().values
                );
            }
        }
    }

    #[test]
    fn nothing_below_an_input_slot_is_recorded() {
        let mut arena = Arena::new();
        let a = arena.leaf(2.0).unwrap();
        let b = arena.leaf(3.0).unwrap();
        let slot = arena.apply2(Op::Mul, a, b).unwrap();
        let out = arena.apply1(Op::Tanh, slot).unwrap();
        let program = Program::record(&arena, &[out], &[slot]).unwrap();
        assert_eq!((program.params(), program.n_instructions()), (&[][..], 1));
    }

    #[test]
    fn a_compiled_call_is_a_parameter_unless_it_was_computed_from_an_input() {
        let mut arena = Arena::new();
        let w = arena.leaf(2.0).unwrap();
        let x = arena.leaf(0.5).unwrap();
        // A compiled call over w alone: read at each replay like a leaf, its partials kept.
        let call = arena.recorded(4.0, &[w], vec![2.0]).unwrap();
        let out = arena.apply2(Op::Mul, call, x).unwrap();
        let program = Program::record(&arena, &[out], &[x]).unwrap();
        assert_eq!((program.params(), program.n_instructions()), (&[call][..], 1));
        // One computed from the input slot x: its stored value would be stale at replay.
        let on_x = arena.recorded(1.0, &[w, x], vec![0.5, 2.0]).unwrap();
        let y = arena.apply1(Op::Tanh, on_x).unwrap();
        let deeper = arena.recorded(0.7, &[y], vec![1.0]).unwrap();
        let out = arena.apply2(Op::Add, deeper, w).unwrap();
        assert_eq!(
            Program::record(&arena, &[out], &[x]).unwrap_err(),
            EngineError::CompiledCallOnInputs
        );
        assert!(Program::record(&arena, &[out], &[]).is_ok());
    }

    #[test]
    fn shared_subexpressions_are_recorded_once() {
        let mut arena = Arena::new();
        let x = arena.leaf(3.0).unwrap();
        let sq = arena.apply2(Op::Mul, x, x).unwrap();
        let out = arena.apply2(Op::Add, sq, sq).unwrap();
        let program = Program::record(&arena, &[out, sq], &[x]).unwrap();
        assert_eq!(program.n_instructions(), 2);
        let (mut regs, mut adj, mut scratch) = (Vec::new(), Vec::new(), Vec::new());
        program.forward(&[3.0], &[], &mut regs, &mut scratch);
        program.gradient(&regs, 0, &mut adj, &mut scratch);
        assert_eq!(
            (program.output(&regs, 0), program.output(&regs, 1), adj[0]),
            (18.0, 9.0, 12.0)
        );
    }
}
