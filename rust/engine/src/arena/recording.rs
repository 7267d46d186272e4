//! What the caller's context asks of each new node, written once for every way of making one (an
//! op, a layer, a compiled call's results): PyTorch's `no_grad` (no node to go backward through,
//! only the value) and `detect_anomaly` (a nan made from inputs that held none is an error).

use super::error::{EngineError, Result};
use super::node::NodeId;
use super::{Arena, HeldGroup};
use crate::op::{Arity, Op};

/// How new nodes are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recording {
    /// Record nodes that backward goes through; without, each result is a new leaf holding its value.
    pub grads: bool,
    /// Refuse a nan made from inputs that held none ([`EngineError::NanForward`]).
    pub check_nan: bool,
}

impl Recording {
    /// Nodes recorded, nothing checked: the common case, which the fast paths take.
    pub const PLAIN: Recording = Recording {
        grads: true,
        check_nan: false,
    };
}

impl Arena {
    /// `op` applied to `children` as `how` asks: a node (see [`Arena::apply`]) or, without
    /// grads, a leaf holding its value. With `check_nan`, a nan result from inputs that held
    /// none is refused and nothing is made.
    #[inline]
    pub fn apply_as(&mut self, how: Recording, op: Op, children: &[NodeId]) -> Result<NodeId> {
        let id = if how.grads {
            match (op.arity(), children) {
                (Arity::One, &[a]) => self.apply1(op, a),
                (Arity::Two, &[a, b]) => self.apply2(op, a, b),
                _ => self.apply(op, children),
            }?
        } else {
            let data = self.evaluate(&op, children)?;
            self.leaf(data)?
        };
        if how.check_nan {
            self.refuse_new_nan(&op, id, children)?;
        }
        Ok(id)
    }

    /// A compiled call's output as `how` asks: the node of [`Arena::compiled_call_over`] (over
    /// the program's parameters, then `others`) or, without grads, a leaf holding `value`.
    pub fn compiled_call_as(
        &mut self,
        how: Recording,
        value: f64,
        params: &HeldGroup,
        others: &[NodeId],
        partials: Vec<f64>,
    ) -> Result<NodeId> {
        if how.grads {
            self.compiled_call_over(value, params, others, partials)
        } else {
            self.leaf(value)
        }
    }

    /// Releases `id` and fails when it holds a nan that none of `children` held.
    #[cold]
    fn refuse_new_nan(&mut self, op: &Op, id: NodeId, children: &[NodeId]) -> Result<()> {
        let data = self.check(id)?.data;
        let inputs: Vec<f64> = children
            .iter()
            .filter_map(|&c| self.check(c).ok().map(|n| n.data))
            .collect();
        if data.is_nan() && !inputs.iter().any(|x| x.is_nan()) {
            self.release(id);
            return Err(EngineError::NanForward {
                op: op.describe(),
                inputs,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arena::Kind;

    #[test]
    fn without_grads_an_op_gives_a_leaf_with_its_value() {
        let mut arena = Arena::new();
        let a = arena.leaf(2.0).unwrap();
        let how = Recording {
            grads: false,
            check_nan: false,
        };
        let y = arena.apply_as(how, Op::Mul, &[a, a]).unwrap();
        assert_eq!(arena.data(y).unwrap(), 4.0);
        assert_eq!(*arena.kind(y).unwrap(), Kind::Leaf);
        arena.backward(y).unwrap();
        assert_eq!(arena.grad(a).unwrap(), 0.0);
        let z = arena
            .compiled_call_as(how, 7.0, &HeldGroup::default(), &[a], vec![1.0])
            .unwrap();
        assert_eq!(
            (arena.data(z).unwrap(), *arena.kind(z).unwrap()),
            (7.0, Kind::Leaf)
        );
    }

    #[test]
    fn checking_refuses_a_new_nan_and_keeps_nothing() {
        let mut arena = Arena::new();
        let a = arena.leaf(-1.0).unwrap();
        let live = arena.live_nodes();
        for grads in [true, false] {
            let how = Recording {
                grads,
                check_nan: true,
            };
            let err = arena.apply_as(how, Op::Log, &[a]).unwrap_err();
            assert!(matches!(err, EngineError::NanForward { .. }), "{err}");
            assert!(err.to_string().contains("'log' produced nan"), "{err}");
            assert_eq!(arena.live_nodes(), live);
        }
        // A nan carried in from an input is not new: it is let through.
        let nan = arena.leaf(f64::NAN).unwrap();
        let how = Recording {
            grads: true,
            check_nan: true,
        };
        let y = arena.apply_as(how, Op::Add, &[nan, a]).unwrap();
        assert!(arena.data(y).unwrap().is_nan());
    }
}
