//! Recording: a graph flattened into a tape of instructions over registers.

use std::collections::{HashMap, HashSet};

use super::dense::find_layers;
use super::{Instr, Program};
use crate::arena::{Arena, EngineError, Kind, NodeId, Result};
use crate::op::Op;

impl Program {
    /// Flattens the graph under `outputs`. Nodes in `inputs` become input slots (whatever is
    /// below them is not recorded); every other leaf becomes a parameter read from the arena at
    /// each replay; every other node becomes an instruction, recomputed from those at each replay
    /// (so interior nodes made before recording are recomputed from their leaves, not re-read).
    ///
    /// A compiled call's result (`Kind::CompiledCall`) cannot be recomputed: the arena keeps its value
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
        let opaque = |id: NodeId| is_input(id) || matches!(arena.kind(id), Ok(Kind::CompiledCall));
        let order = arena.post_order(outputs, opaque)?;
        let mut leaves = Vec::new();
        let mut interior = Vec::new();
        let mut calls = Vec::new();
        for &id in &order {
            if is_input(id) {
                continue;
            }
            match *arena.kind(id)? {
                Kind::Leaf => leaves.push(id),
                Kind::CompiledCall => {
                    calls.push(id);
                    leaves.push(id);
                }
                Kind::Op(op) => interior.push((id, op)),
            }
        }
        if !inputs.is_empty() && any_computed_from(arena, &calls, is_input)? {
            return Err(EngineError::CompiledCallOnInputs);
        }
        let params = in_order_read(arena, &interior, leaves)?;
        let base = inputs.len();
        for (i, &id) in params.iter().enumerate() {
            register.insert(id, register_index(base + i)?);
        }
        let base = base + params.len();
        let mut instrs = Vec::with_capacity(interior.len());
        let mut args = Vec::new();
        for (i, &(id, op)) in interior.iter().enumerate() {
            let start = register_index(args.len())?;
            for child in arena.children(id)? {
                args.push(register[&child]);
            }
            instrs.push(Instr {
                op,
                start,
                len: register_index(args.len())? - start,
            });
            register.insert(id, register_index(base + i)?);
        }
        let outputs = outputs.iter().map(|id| register[id]).collect();
        let (layers, roles) = find_layers(&instrs, &args, inputs.len(), params.len());
        Ok(Program {
            n_inputs: inputs.len(),
            params,
            instrs,
            args,
            outputs,
            layers,
            roles,
        })
    }
}

/// `leaves` in the order the tape first reads them (then any no instruction reads, such as an
/// output that is a leaf, in walk order). A layer's parameters then lie in its neurons' order,
/// each neuron's weights and bias side by side, as `dense` needs to read them as a matrix in
/// place; the walk's own order puts the first neuron of every layer below the first before the
/// layers it reads.
fn in_order_read(arena: &Arena, interior: &[(NodeId, Op)], leaves: Vec<NodeId>) -> Result<Vec<NodeId>> {
    let mut unread: HashSet<NodeId> = leaves.iter().copied().collect();
    let mut params = Vec::with_capacity(leaves.len());
    for &(id, _) in interior {
        for child in arena.children(id)? {
            if unread.remove(&child) {
                params.push(child);
            }
        }
    }
    params.extend(leaves.into_iter().filter(|id| unread.contains(id)));
    Ok(params)
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
    use crate::op::Op;

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
        let call = arena.compiled_call(4.0, &[w], vec![2.0]).unwrap();
        let out = arena.apply2(Op::Mul, call, x).unwrap();
        let program = Program::record(&arena, &[out], &[x]).unwrap();
        assert_eq!((program.params(), program.n_instructions()), (&[call][..], 1));
        // One computed from the input slot x: its stored value would be stale at replay.
        let on_x = arena.compiled_call(1.0, &[w, x], vec![0.5, 2.0]).unwrap();
        let y = arena.apply1(Op::Tanh, on_x).unwrap();
        let deeper = arena.compiled_call(0.7, &[y], vec![1.0]).unwrap();
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
                h = arena.compiled_call(0.1, &[w, h], vec![0.5, 0.5]).unwrap();
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
