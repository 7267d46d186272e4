//! A recorded program: a graph flattened once into a tape of instructions over
//! registers, then replayed with new inputs, forward and backward, without the
//! arena and without any per-node bookkeeping.
//!
//! Registers are laid out as `[inputs | parameters | one per instruction]`. Inputs
//! are the slots a caller fills at each replay; parameters are the leaves the graph
//! reads (a model's weights), fetched from the arena before each replay so that
//! training updates are seen.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

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

/// How often, at most, a long replay asks its caller whether to stop: often enough that Ctrl-C
/// is answered within a fraction of a second, rarely enough to cost nothing.
pub const POLL_EVERY: Duration = Duration::from_millis(50);

/// Chunks computed ahead of the next one to be added in, per thread: enough slack that a thread
/// rarely waits on a slower one, few enough that memory does not grow with the rows.
const WINDOW_PER_THREAD: usize = 4;

/// At most this many bytes of chunk results wait to be added in at any time (at least one
/// chunk per thread, however large a chunk's results are).
const WINDOW_BYTES: usize = 64 << 20;

/// Asked now and then during a long replay, on the calling thread: true means stop.
pub type Poll<'a> = &'a mut dyn FnMut() -> bool;

/// What a replay gives, or why it gave nothing.
pub type Replay<T> = std::result::Result<T, ReplayError>;

/// Why a replay stopped.
#[derive(Clone, Debug, PartialEq)]
pub enum ReplayError {
    /// Arguments that do not fit the program.
    Engine(EngineError),
    /// A buffer sized by the caller's arguments (rows, outputs, parameters) could not be had.
    OutOfMemory { what: &'static str, bytes: usize },
    /// The caller's `poll` asked to stop.
    Interrupted,
}

impl From<EngineError> for ReplayError {
    fn from(err: EngineError) -> Self {
        ReplayError::Engine(err)
    }
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplayError::Engine(err) => err.fmt(f),
            ReplayError::OutOfMemory { what, bytes } => {
                write!(f, "not enough memory for {what} ({bytes} bytes)")
            }
            ReplayError::Interrupted => write!(f, "the replay was interrupted"),
        }
    }
}

impl std::error::Error for ReplayError {}

/// One output of a call: its value and its partial derivatives (see [`Program::call`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub value: f64,
    pub partials: Vec<f64>,
}

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
            register.entry(id).or_insert(register_index(i)?);
        }
        let is_input = |id: NodeId| register.contains_key(&id);
        let opaque = |id: NodeId| is_input(id) || matches!(arena.op(id), Ok(Op::Recorded));
        let order = arena.post_order(outputs, opaque)?;
        let mut params = Vec::new();
        let mut interior = Vec::new();
        let mut calls = Vec::new();
        for &id in &order {
            if is_input(id) {
                continue;
            }
            match arena.op(id)? {
                Op::Leaf => params.push(id),
                Op::Recorded => {
                    calls.push(id);
                    params.push(id);
                }
                _ => interior.push(id),
            }
        }
        if !inputs.is_empty() && any_computed_from(arena, &calls, is_input)? {
            return Err(EngineError::CompiledCallOnInputs);
        }
        let base = inputs.len();
        for (i, &id) in params.iter().enumerate() {
            register.insert(id, register_index(base + i)?);
        }
        let base = base + params.len();
        let mut instrs = Vec::with_capacity(interior.len());
        let mut args = Vec::new();
        for (i, &id) in interior.iter().enumerate() {
            let start = register_index(args.len())?;
            for child in arena.children(id)? {
                args.push(register[&child]);
            }
            instrs.push(Instr {
                op: *arena.op(id)?,
                start,
                len: register_index(args.len())? - start,
            });
            register.insert(id, register_index(base + i)?);
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
    fn forward(&self, inputs: &[f64], params: &[f64], registers: &mut Vec<f64>, scratch: &mut Vec<f64>) {
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

    fn output(&self, registers: &[f64], k: usize) -> f64 {
        registers[self.outputs[k] as usize]
    }

    /// d(output k)/d(every register), by a reverse sweep over the tape.
    fn gradient(&self, registers: &[f64], k: usize, adjoint: &mut Vec<f64>, scratch: &mut Vec<f64>) {
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

    /// One call: each output's value and, when `grads`, its partial derivatives with respect to
    /// the parameters, followed by those with respect to the input slots listed in `slots`.
    pub fn call(&self, inputs: &[f64], params: &[f64], slots: &[usize], grads: bool) -> Replay<Vec<Output>> {
        self.check_call(inputs, params)?;
        if let Some(&slot) = slots.iter().find(|&&s| s >= self.n_inputs) {
            return Err(EngineError::LengthMismatch {
                expected: self.n_inputs,
                got: slot + 1,
            }
            .into());
        }
        let mut registers = try_vec(self.n_registers(), "a call's registers")?;
        let mut adjoint = if grads {
            try_vec(self.n_registers(), "a call's gradients")?
        } else {
            Vec::new()
        };
        let mut scratch = Vec::new();
        let n_partials = if grads { params.len() + slots.len() } else { 0 };
        ensure_room(
            product(self.outputs.len(), n_partials)?,
            "a call's partial derivatives",
        )?;
        self.forward(inputs, params, &mut registers, &mut scratch);
        let mut outputs = try_vec(self.outputs.len(), "a call's outputs")?;
        for k in 0..self.outputs.len() {
            let value = self.output(&registers, k);
            let mut partials = Vec::new();
            if grads {
                self.gradient(&registers, k, &mut adjoint, &mut scratch);
                partials = try_vec(n_partials, "a call's partial derivatives")?;
                partials.extend_from_slice(&adjoint[self.n_inputs..self.n_inputs + params.len()]);
                partials.extend(slots.iter().map(|&s| adjoint[s]));
            }
            outputs.push(Output { value, partials });
        }
        Ok(outputs)
    }

    /// Forward only over `n_rows` rows of `n_inputs` numbers each: every row's outputs, row by
    /// row. `poll` is asked now and then, from this thread, whether to stop (see [`Program::batch`]).
    pub fn map(
        &self,
        rows: &[f64],
        n_rows: usize,
        params: &[f64],
        threads: usize,
        poll: Poll<'_>,
    ) -> Replay<Vec<f64>> {
        self.check_rows(rows, n_rows, params)?;
        let n_out = self.outputs.len();
        let mut out = try_vec(product(n_rows, n_out)?, "map's outputs")?;
        let chunk = |range| Block::new(self, rows, params, range)?.outputs_by_row();
        let waiting = fitting(CHUNK_ROWS.saturating_mul(n_out));
        fold_chunks(
            n_rows,
            threads,
            waiting,
            chunk,
            |part| out.extend_from_slice(&part),
            poll,
        )?;
        Ok(out)
    }

    /// The outputs over `n_rows` rows, reduced, and for each output its gradient with respect
    /// to the parameters, reduced the same way.
    ///
    /// Rows are replayed in chunks of [`CHUNK_ROWS`] on up to `threads` threads, and each
    /// chunk's sums are added into the total in chunk order as soon as the chunks before it are
    /// in, so the result is the same bit for bit whatever the number of threads, and memory
    /// holds a few chunks' partial sums at a time, not one per chunk. Every [`POLL_EVERY`] or
    /// so, `poll` is called on the calling thread: when it returns true, the replay stops with
    /// [`ReplayError::Interrupted`].
    pub fn batch(
        &self,
        rows: &[f64],
        n_rows: usize,
        params: &[f64],
        reduce: Reduce,
        threads: usize,
        poll: Poll<'_>,
    ) -> Replay<Batch> {
        self.check_rows(rows, n_rows, params)?;
        let (n_out, n_params) = (self.outputs.len(), params.len());
        // One chunk's sums: the outputs' values, then each output's gradient.
        let width = product(n_out, n_params + 1)?;
        let mut total = try_zeros(width, "a batch's sums")?;
        let chunk = |range| Block::new(self, rows, params, range)?.batch();
        fold_chunks(
            n_rows,
            threads,
            fitting(width),
            chunk,
            |part| add_into(&mut total, &part),
            poll,
        )?;
        scale(&mut total, reduce, n_rows);
        let mut grads = try_vec(n_out, "a batch's gradients")?;
        for k in 0..n_out {
            let at = n_out + k * n_params;
            let mut grad = try_vec(n_params, "a batch's gradients")?;
            grad.extend_from_slice(&total[at..at + n_params]);
            grads.push(grad);
        }
        total.truncate(n_out);
        Ok(Batch { values: total, grads })
    }

    /// [`Program::batch`]'s reduced outputs alone (no reverse sweeps), bit-identical to its
    /// `values`: the same chunks, summed in the same order.
    pub fn batch_values(
        &self,
        rows: &[f64],
        n_rows: usize,
        params: &[f64],
        reduce: Reduce,
        threads: usize,
        poll: Poll<'_>,
    ) -> Replay<Vec<f64>> {
        self.check_rows(rows, n_rows, params)?;
        let mut total = try_zeros(self.outputs.len(), "a batch's sums")?;
        let chunk = |range| Block::new(self, rows, params, range)?.sums();
        let waiting = fitting(self.outputs.len());
        fold_chunks(
            n_rows,
            threads,
            waiting,
            chunk,
            |part| add_into(&mut total, &part),
            poll,
        )?;
        scale(&mut total, reduce, n_rows);
        Ok(total)
    }

    fn check_call(&self, inputs: &[f64], params: &[f64]) -> Result<()> {
        if inputs.len() != self.n_inputs {
            return Err(EngineError::LengthMismatch {
                expected: self.n_inputs,
                got: inputs.len(),
            });
        }
        self.check_params(params)
    }

    fn check_params(&self, params: &[f64]) -> Result<()> {
        if params.len() != self.params.len() {
            return Err(EngineError::LengthMismatch {
                expected: self.params.len(),
                got: params.len(),
            });
        }
        Ok(())
    }

    /// `rows` must hold `n_rows` rows of `n_inputs` numbers (a 0-input program still has rows:
    /// it gives the same outputs in each).
    fn check_rows(&self, rows: &[f64], n_rows: usize, params: &[f64]) -> Result<()> {
        let expected = n_rows
            .checked_mul(self.n_inputs)
            .ok_or(EngineError::LengthMismatch {
                expected: usize::MAX,
                got: rows.len(),
            })?;
        if rows.len() != expected {
            return Err(EngineError::LengthMismatch {
                expected,
                got: rows.len(),
            });
        }
        self.check_params(params)
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
    fn new(program: &'p Program, data: &[f64], params: &'p [f64], range: Range<usize>) -> Replay<Self> {
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

    fn output(&self, k: usize) -> impl Iterator<Item = f64> + '_ {
        let column = self.column(self.program.outputs[k]);
        (0..self.rows).map(move |j| column.at(j))
    }

    /// Every row's outputs, row by row.
    fn outputs_by_row(&self) -> Replay<Vec<f64>> {
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
    fn sums(&self) -> Replay<Vec<f64>> {
        let n_out = self.program.outputs.len();
        let mut sums = try_vec(n_out, "a chunk's sums")?;
        sums.extend((0..n_out).map(|k| self.output(k).sum::<f64>()));
        Ok(sums)
    }

    /// The outputs summed over the rows, then each one's gradient over the parameters, summed.
    fn batch(&self) -> Replay<Vec<f64>> {
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

/// A `Vec` with room for `len` items, or [`ReplayError::OutOfMemory`] naming `what`.
fn try_vec<T>(len: usize, what: &'static str) -> Replay<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| ReplayError::OutOfMemory {
        what,
        bytes: len.saturating_mul(std::mem::size_of::<T>()),
    })?;
    Ok(v)
}

/// Fails as [`try_vec`] would if `len` numbers, to be held in several buffers, could not be had
/// at once: the kernel refuses such a request up front, where filling the buffers one by one
/// would run the process out of memory.
fn ensure_room(len: usize, what: &'static str) -> Replay<()> {
    try_vec::<f64>(len, what).map(drop)
}

/// `len` zeros, or [`ReplayError::OutOfMemory`] naming `what`.
fn try_zeros(len: usize, what: &'static str) -> Replay<Vec<f64>> {
    let mut v = try_vec(len, what)?;
    v.resize(len, 0.0);
    Ok(v)
}

/// `a * b` items, or [`ReplayError::OutOfMemory`] when that many could never be held.
fn product(a: usize, b: usize) -> Replay<usize> {
    a.checked_mul(b).ok_or(ReplayError::OutOfMemory {
        what: "a buffer of more than usize::MAX items",
        bytes: usize::MAX,
    })
}

fn add_into(total: &mut [f64], part: &[f64]) {
    for (t, p) in total.iter_mut().zip(part) {
        *t += p;
    }
}

/// Turns sums over `n_rows` rows into means when asked to.
fn scale(total: &mut [f64], reduce: Reduce, n_rows: usize) {
    if reduce == Reduce::Mean && n_rows > 0 {
        let scale = 1.0 / n_rows as f64;
        total.iter_mut().for_each(|v| *v *= scale);
    }
}

/// How many chunk results of `width` numbers fit in [`WINDOW_BYTES`].
fn fitting(width: usize) -> usize {
    WINDOW_BYTES / 8 / width.max(1)
}

/// Runs `work` over the fixed-size chunks of `0..n_rows` on up to `threads` threads (the
/// calling thread and up to `threads - 1` more) and hands each chunk's result to `fold` on the
/// calling thread, in chunk order, as soon as the chunks before it have been folded. At most
/// `max_waiting` results (but at least one per thread) are held at a time. `poll` is called on
/// the calling thread about every [`POLL_EVERY`] (between chunks); when it returns true, the
/// other threads stop after their current chunk and this returns [`ReplayError::Interrupted`].
fn fold_chunks<T: Send>(
    n_rows: usize,
    threads: usize,
    max_waiting: usize,
    work: impl Fn(Range<usize>) -> Replay<T> + Sync,
    mut fold: impl FnMut(T),
    poll: Poll<'_>,
) -> Replay<()> {
    let n_chunks = n_rows.div_ceil(CHUNK_ROWS);
    let range = |i: usize| i * CHUNK_ROWS..((i + 1) * CHUNK_ROWS).min(n_rows);
    // Starting a thread costs tens of microseconds: give each at least four chunks of work.
    let threads = threads.clamp(1, (n_chunks / 4).max(1));
    let mut last_poll = Instant::now();
    if threads == 1 {
        for i in 0..n_chunks {
            fold(work(range(i))?);
            if last_poll.elapsed() >= POLL_EVERY {
                if poll() {
                    return Err(ReplayError::Interrupted);
                }
                last_poll = Instant::now();
            }
        }
        return Ok(());
    }
    let window = max_waiting.clamp(threads, WINDOW_PER_THREAD * threads);
    let queue = Mutex::new(Queue {
        next: 0,
        folded: 0,
        done: (0..window).map(|_| None).collect(),
        stop: None,
    });
    let (chunk_done, room_freed) = (Condvar::new(), Condvar::new());
    let lock = || queue.lock().unwrap_or_else(PoisonError::into_inner);
    // Runs chunk `i` without holding the queue, then hands its result back through `q`.
    let run = |i: usize| {
        // A panic is a bug in the engine: carry it to the calling thread, which would otherwise
        // wait forever for this chunk.
        let result = panic::catch_unwind(AssertUnwindSafe(|| work(range(i))));
        let mut q = lock();
        match result {
            Ok(Ok(part)) => q.done[i % window] = Some(part),
            Ok(Err(err)) => {
                q.stop.get_or_insert(Stop::Failed(err));
            }
            Err(payload) => {
                q.stop.get_or_insert(Stop::Panicked(payload));
            }
        }
        chunk_done.notify_one();
        if q.stop.is_some() {
            room_freed.notify_all();
        }
    };
    let stop = std::thread::scope(|scope| {
        for _ in 1..threads {
            scope.spawn(|| loop {
                let i = {
                    let mut q = lock();
                    while q.stop.is_none() && q.next < n_chunks && q.next >= q.folded + window {
                        q = room_freed.wait(q).unwrap_or_else(PoisonError::into_inner);
                    }
                    if q.stop.is_some() || q.next == n_chunks {
                        return;
                    }
                    q.next += 1;
                    q.next - 1
                };
                run(i);
            });
        }
        // The calling thread is a worker too; between its chunks it folds what is ready and
        // polls, so that no third thread competes for the cores.
        let mut q = lock();
        while q.stop.is_none() && q.folded < n_chunks {
            let at = q.folded % window;
            if last_poll.elapsed() >= POLL_EVERY {
                // Never hold the queue while the caller's poll runs: it may wait (for the GIL).
                drop(q);
                let interrupted = poll();
                last_poll = Instant::now();
                q = lock();
                if interrupted {
                    q.stop.get_or_insert(Stop::Failed(ReplayError::Interrupted));
                }
            } else if let Some(part) = q.done[at].take() {
                drop(q);
                fold(part);
                q = lock();
                q.folded += 1;
                room_freed.notify_all();
            } else if q.next < n_chunks && q.next < q.folded + window {
                q.next += 1;
                let i = q.next - 1;
                drop(q);
                run(i);
                q = lock();
            } else {
                let wait = POLL_EVERY.saturating_sub(last_poll.elapsed());
                q = chunk_done
                    .wait_timeout(q, wait)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
        // Wakes the workers waiting for room so that they see the end (or the stop) and return.
        let stop = q.stop.take();
        q.stop = Some(Stop::Finished);
        room_freed.notify_all();
        stop
    });
    match stop {
        None | Some(Stop::Finished) => Ok(()),
        Some(Stop::Failed(err)) => Err(err),
        Some(Stop::Panicked(payload)) => panic::resume_unwind(payload),
    }
}

/// The chunks a [`fold_chunks`] has handed out and got back.
struct Queue<T> {
    /// The first chunk no worker has taken.
    next: usize,
    /// The first chunk not yet folded.
    folded: usize,
    /// Results waiting to be folded: chunk `i` at `i % window`.
    done: Vec<Option<T>>,
    stop: Option<Stop>,
}

/// Why workers stop taking chunks.
enum Stop {
    Finished,
    Failed(ReplayError),
    Panicked(Box<dyn std::any::Any + Send>),
}

/// Whether any of `calls` (compiled calls' results) was computed from a node for which
/// `is_input` holds, looking below each node once (a chain of compiled calls, each over the
/// one before, costs one walk, not one walk per call).
fn any_computed_from(arena: &Arena, calls: &[NodeId], is_input: impl Fn(NodeId) -> bool) -> Result<bool> {
    if calls.is_empty() {
        return Ok(false);
    }
    let mut from_input = HashSet::new();
    for id in arena.post_order(calls, &is_input)? {
        if is_input(id) || arena.children(id)?.iter().any(|c| from_input.contains(c)) {
            from_input.insert(id);
        }
    }
    Ok(calls.iter().any(|c| from_input.contains(c)))
}

/// Register (or argument) number `i`, which a program stores in 32 bits.
fn register_index(i: usize) -> Result<u32> {
    u32::try_from(i).map_err(|_| EngineError::TooManyNodes)
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

    /// A poll that never asks to stop.
    fn go_on() -> impl FnMut() -> bool {
        || false
    }

    #[test]
    fn parallel_batches_equal_serial_ones_bit_for_bit() {
        let mut arena = Arena::new();
        let (_, _, _, _, program) = neuron(&mut arena);
        let rows: Vec<f64> = (0..1000).map(|i| (i as f64 * 0.37).sin()).collect();
        let params = [-1.5, 0.25];
        let batch = |rows: &[f64], reduce, threads| {
            program.batch(rows, rows.len(), &params, reduce, threads, &mut go_on())
        };
        let serial = batch(&rows, Reduce::Mean, 1).unwrap();
        for threads in [2, 3, 8] {
            assert_eq!(batch(&rows, Reduce::Mean, threads).unwrap(), serial);
        }
        let mapped = program.map(&rows, 1000, &params, 4, &mut go_on()).unwrap();
        assert_eq!(
            mapped,
            program.map(&rows, 1000, &params, 1, &mut go_on()).unwrap()
        );
        let mean = mapped.iter().sum::<f64>() / 1000.0;
        assert!((mean - serial.values[0]).abs() < 1e-12);
        assert!(batch(&rows[..3], Reduce::Sum, 1).is_ok());
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
                    program
                        .batch_values(&rows, 333, &params, reduce, threads, &mut go_on())
                        .unwrap(),
                    program
                        .batch(&rows, 333, &params, reduce, 1, &mut go_on())
                        .unwrap()
                        .values
                );
            }
        }
    }

    #[test]
    fn a_call_equals_eager_and_refuses_what_does_not_fit() {
        let mut arena = Arena::new();
        let (x, w, b, out, program) = neuron(&mut arena);
        arena.backward(out).unwrap();
        let params = [arena.data(w).unwrap(), arena.data(b).unwrap()];
        let got = program.call(&[0.5], &params, &[0], true).unwrap();
        let want = [
            arena.grad(w).unwrap(),
            arena.grad(b).unwrap(),
            arena.grad(x).unwrap(),
        ];
        assert_eq!(
            (got[0].value, &got[0].partials[..]),
            (arena.data(out).unwrap(), &want[..])
        );
        assert!(program.call(&[0.5], &params, &[], false).unwrap()[0]
            .partials
            .is_empty());
        let too_far = program.call(&[0.5], &params, &[1], true).unwrap_err();
        assert!(matches!(
            too_far,
            ReplayError::Engine(EngineError::LengthMismatch { .. })
        ));
        assert!(program.call(&[0.5, 1.0], &params, &[], true).is_err());
        assert!(program.call(&[0.5], &params[..1], &[], true).is_err());
        assert!(program
            .batch(&[0.5; 3], 2, &params, Reduce::Sum, 1, &mut go_on())
            .is_err());
    }

    #[test]
    fn a_program_without_inputs_gives_the_same_outputs_in_every_row() {
        let mut arena = Arena::new();
        let w = arena.leaf(3.0).unwrap();
        let sq = arena.apply2(Op::Mul, w, w).unwrap();
        let program = Program::record(&arena, &[sq], &[]).unwrap();
        let batch = program
            .batch(&[], 5, &[3.0], Reduce::Sum, 2, &mut go_on())
            .unwrap();
        assert_eq!((batch.values, batch.grads), (vec![45.0], vec![vec![30.0]]));
        assert_eq!(
            program.map(&[], 2, &[3.0], 1, &mut go_on()).unwrap(),
            vec![9.0, 9.0]
        );
    }

    /// Chunks that take a while, counting how many ran and how many results are held at once.
    struct Slow {
        ran: std::sync::atomic::AtomicUsize,
        alive: std::sync::atomic::AtomicUsize,
        most_alive: std::sync::atomic::AtomicUsize,
    }

    struct Held<'a>(&'a Slow, usize);

    impl Drop for Held<'_> {
        fn drop(&mut self) {
            self.0.alive.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    impl Slow {
        fn new() -> Self {
            Slow {
                ran: 0.into(),
                alive: 0.into(),
                most_alive: 0.into(),
            }
        }

        fn work(&self, range: Range<usize>, pause: Duration) -> Replay<Held<'_>> {
            use std::sync::atomic::Ordering::SeqCst;
            std::thread::sleep(pause);
            self.ran.fetch_add(1, SeqCst);
            let alive = self.alive.fetch_add(1, SeqCst) + 1;
            self.most_alive.fetch_max(alive, SeqCst);
            Ok(Held(self, range.start))
        }
    }

    #[test]
    fn chunks_are_folded_in_order_with_a_bounded_number_waiting() {
        for threads in [1, 2, 3] {
            let slow = Slow::new();
            let mut starts = Vec::new();
            let work = |r| slow.work(r, Duration::from_micros(200));
            fold_chunks(
                500 * CHUNK_ROWS + 7,
                threads,
                2,
                work,
                |h| starts.push(h.1),
                &mut go_on(),
            )
            .unwrap();
            let want: Vec<usize> = (0..501).map(|i| i * CHUNK_ROWS).collect();
            assert_eq!(starts, want);
            let most = slow.most_alive.load(std::sync::atomic::Ordering::SeqCst);
            assert!(
                most <= threads.max(2),
                "{most} results held at once on {threads} threads"
            );
        }
    }

    #[test]
    fn a_poll_that_asks_to_stop_stops_the_chunks() {
        for threads in [1, 2] {
            let slow = Slow::new();
            let mut polls = 0;
            let mut poll = || {
                polls += 1;
                true
            };
            let work = |r| slow.work(r, Duration::from_millis(2));
            let n_chunks = 10_000;
            let got = fold_chunks(n_chunks * CHUNK_ROWS, threads, 8, work, drop, &mut poll);
            assert_eq!(got.unwrap_err(), ReplayError::Interrupted);
            assert_eq!(polls, 1);
            let ran = slow.ran.load(std::sync::atomic::Ordering::SeqCst);
            assert!(ran < n_chunks / 10, "{ran} chunks ran after being asked to stop");
        }
    }

    #[test]
    fn a_failing_chunk_stops_the_others() {
        let failing = |r: Range<usize>| {
            if r.start == 40 * CHUNK_ROWS {
                Err(ReplayError::OutOfMemory {
                    what: "a test",
                    bytes: 1,
                })
            } else {
                Ok(r.start)
            }
        };
        for threads in [1, 2] {
            let mut folded = 0;
            let got = fold_chunks(
                100 * CHUNK_ROWS,
                threads,
                4,
                failing,
                |_| folded += 1,
                &mut go_on(),
            );
            assert_eq!(
                got.unwrap_err(),
                ReplayError::OutOfMemory {
                    what: "a test",
                    bytes: 1
                }
            );
            assert_eq!(folded, 40);
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
    fn a_long_chain_of_compiled_calls_is_checked_once() {
        let mut arena = Arena::new();
        let w = arena.leaf(0.5).unwrap();
        let x = arena.leaf(1.0).unwrap();
        let build = |arena: &mut Arena, first: NodeId| {
            let mut h = first;
            let mut states = Vec::new();
            for _ in 0..20_000 {
                h = arena.recorded(0.1, &[w, h], vec![0.5, 0.5]).unwrap();
                states.push(h);
            }
            let sum = arena.apply(Op::Sum, &states).unwrap();
            arena.apply2(Op::Mul, sum, x).unwrap()
        };
        let free = build(&mut arena, w);
        let program = Program::record(&arena, &[free], &[x]).unwrap();
        assert_eq!((program.params().len(), program.n_instructions()), (20_000, 2));
        let from_x = build(&mut arena, x);
        assert_eq!(
            Program::record(&arena, &[from_x], &[x]).unwrap_err(),
            EngineError::CompiledCallOnInputs
        );
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
