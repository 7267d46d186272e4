//! Replaying a tape for one call: registers forward, adjoints backward.

use super::{ensure_room, product, try_vec, Output, Program, Replay};
use crate::arena::EngineError;
use crate::op::{self, Op};

impl Program {
    /// Evaluates every register from `inputs` and `params`.
    pub(super) fn forward(
        &self,
        inputs: &[f64],
        params: &[f64],
        registers: &mut Vec<f64>,
        scratch: &mut Vec<f64>,
    ) {
        registers.clear();
        registers.extend_from_slice(inputs);
        registers.extend_from_slice(params);
        self.run_instructions(registers, scratch);
    }

    /// Appends the instructions' results to `registers`, which hold the inputs and parameters.
    pub(super) fn run_instructions(&self, registers: &mut Vec<f64>, scratch: &mut Vec<f64>) {
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

    pub(super) fn output(&self, registers: &[f64], k: usize) -> f64 {
        registers[self.outputs[k] as usize]
    }

    /// d(output k)/d(every register), by a reverse sweep over the tape.
    pub(super) fn gradient(
        &self,
        registers: &[f64],
        k: usize,
        adjoint: &mut Vec<f64>,
        scratch: &mut Vec<f64>,
    ) {
        adjoint.clear();
        adjoint.resize(registers.len(), 0.0);
        self.sweep(registers, k, adjoint, scratch);
    }

    /// Adds d(output k)/d(register) to every `adjoint` entry; the instructions' and inputs'
    /// entries must be zero on entry, while the parameters' may hold earlier rows' sums.
    pub(super) fn sweep(&self, registers: &[f64], k: usize, adjoint: &mut [f64], scratch: &mut Vec<f64>) {
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
}

/// `Op::Dot`'s forward rule read straight from the registers: neurons are most of a network's
/// tape, and this skips gathering their inputs.
fn dot_forward(args: &[u32], registers: &[f64]) -> f64 {
    op::dot_forward(args.len(), |i| registers[args[i] as usize])
}

/// `Op::Dot`'s local derivatives times `g`, added straight into the registers' adjoints.
fn dot_backward(args: &[u32], registers: &[f64], adjoint: &mut [f64], g: f64) {
    op::dot_backward(
        args.len(),
        |i| registers[args[i] as usize],
        g,
        |i, amount| adjoint[args[i] as usize] += amount,
    );
}

#[cfg(test)]
mod tests {
    use super::super::tests::{go_on, neuron};
    use super::super::{Reduce, ReplayError};
    use super::*;
    use crate::arena::Arena;
    use crate::op::Op;

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
    fn a_call_and_a_batch_of_its_one_row_agree_bit_for_bit() {
        // Two interpreters run one tape (this one per call, the blocked one per chunk of rows):
        // they must give the same numbers, not merely close ones.
        let mut arena = Arena::new();
        let (x, w, b, _, _) = neuron(&mut arena);
        // Two outputs sharing a subexpression, one of them a parameter itself, and an n-ary op.
        let sq = arena.apply2(Op::Mul, x, w).unwrap();
        let total = arena.apply(Op::Sum, &[sq, x, b, sq]).unwrap();
        let lse = arena.apply(Op::LogSumExp, &[total, sq, w]).unwrap();
        let program = Program::record(&arena, &[lse, w, total], &[x]).unwrap();
        let params = arena.data_of(program.params()).unwrap();
        for row in [0.5, -3.0, 1e-3] {
            let called = program.call(&[row], &params, &[], true).unwrap();
            let batch = program
                .batch(&[row], 1, &params, Reduce::Sum, 1, &mut go_on())
                .unwrap();
            for (k, output) in called.iter().enumerate() {
                assert_eq!(output.value.to_bits(), batch.values[k].to_bits());
                let bits = |v: &[f64]| v.iter().map(|g| g.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&output.partials), bits(&batch.grads[k]));
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
}
