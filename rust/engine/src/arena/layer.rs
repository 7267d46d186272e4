//! A whole layer of neurons in one call: `act_j(w_j · x + b_j)` for every neuron `j`.
//!
//! Each neuron is the same `Dot` node (and activation node) that `apply` would make one at a
//! time; the inputs every neuron shares are checked, read, and placed in birth order once for
//! the layer instead of once per neuron.

use super::error::{out_of_memory, EngineError, Result};
use super::node::{Children, Kind, NodeId};
use super::{Arena, Recording};
use crate::op::Op;

impl Arena {
    /// Pushes onto `out`, for each neuron `j`, the node `Dot(weights[j*nin..(j+1)*nin], inputs,
    /// biases[j])`, or `activations[j]` of it when that is `Some`, made as `how` asks. Everything
    /// is checked before any node is made; on failure the nodes made so far are released and
    /// `out` is as it was.
    pub fn layer(
        &mut self,
        how: Recording,
        weights: &[NodeId],
        biases: &[NodeId],
        inputs: &[NodeId],
        activations: &[Option<Op>],
        out: &mut Vec<NodeId>,
    ) -> Result<()> {
        let (nin, nout) = (inputs.len(), biases.len());
        for (expected, got) in [(nin * nout, weights.len()), (nout, activations.len())] {
            if expected != got {
                return Err(EngineError::LengthMismatch { expected, got });
            }
        }
        for &id in inputs.iter().chain(weights).chain(biases) {
            self.check(id)?;
        }
        if how != Recording::PLAIN {
            return self.layer_op_by_op(how, weights, biases, inputs, activations, out);
        }
        // The operands of neuron j are [w_j.., inputs.., b_j]: the inputs' part is shared.
        let mut x = std::mem::take(&mut self.inputs);
        x.clear();
        let mut children = Vec::new();
        if x.try_reserve(2 * nin + 1).is_err() || children.try_reserve_exact(2 * nin + 1).is_err() {
            self.inputs = x;
            return Err(out_of_memory("the operand buffer", 2 * nin + 1));
        }
        x.resize(2 * nin + 1, 0.0);
        children.resize(2 * nin + 1, NodeId { slot: 0, gen: 0 });
        for (i, id) in inputs.iter().enumerate() {
            x[nin + i] = self.nodes[id.slot as usize].data;
            children[nin + i] = *id;
        }
        let input_slots: Vec<u32> = inputs.iter().map(|id| id.slot).collect();
        let inputs_earliest = self.earliest_below_all(&input_slots);
        let start = out.len();
        let mut made = Ok(());
        for j in 0..nout {
            let row = &weights[j * nin..(j + 1) * nin];
            children[..nin].copy_from_slice(row);
            children[2 * nin] = biases[j];
            for (i, w) in row.iter().enumerate() {
                x[i] = self.nodes[w.slot as usize].data;
            }
            x[2 * nin] = self.nodes[biases[j].slot as usize].data;
            match self.neuron(&x, &children, nin, inputs_earliest, activations[j]) {
                Ok(id) => out.push(id),
                Err(err) => {
                    made = Err(err);
                    break;
                }
            }
        }
        self.inputs = x;
        if made.is_err() {
            for id in out.drain(start..) {
                self.release(id);
            }
        }
        made
    }

    /// [`Arena::layer`] one op at a time, each as `how` asks (under `no_grad` or anomaly checks).
    fn layer_op_by_op(
        &mut self,
        how: Recording,
        weights: &[NodeId],
        biases: &[NodeId],
        inputs: &[NodeId],
        activations: &[Option<Op>],
        out: &mut Vec<NodeId>,
    ) -> Result<()> {
        let nin = inputs.len();
        let start = out.len();
        let mut children = Vec::with_capacity(2 * nin + 1);
        for (j, activation) in activations.iter().enumerate() {
            children.clear();
            children.extend_from_slice(&weights[j * nin..(j + 1) * nin]);
            children.extend_from_slice(inputs);
            children.push(biases[j]);
            let made = self
                .apply_as(how, Op::Dot, &children)
                .and_then(|pre| match *activation {
                    None => Ok(pre),
                    Some(op) => {
                        let act = self.apply_as(how, op, &[pre]);
                        self.release(pre); // the activation's node holds it now
                        act
                    }
                });
            match made {
                Ok(id) => out.push(id),
                Err(err) => {
                    for id in out.drain(start..) {
                        self.release(id);
                    }
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    /// One neuron of [`Arena::layer`] over checked `children` whose values are `x`.
    fn neuron(
        &mut self,
        x: &[f64],
        children: &[NodeId],
        nin: usize,
        inputs_earliest: Option<u32>,
        activation: Option<Op>,
    ) -> Result<NodeId> {
        let data = Op::Dot.forward(x);
        self.reserve_node(true)?;
        let list = self.list_of(children, &[])?;
        for c in children {
            self.slots[c.slot as usize].refs += 1;
        }
        // The earliest node below the neuron: below its own weights and bias, or below the inputs.
        let own = (0..nin)
            .chain([2 * nin])
            .map(|i| self.slots[children[i].slot as usize].earliest_below)
            .reduce(|a, b| self.earlier(a, b));
        let earliest = match (own, inputs_earliest) {
            (Some(a), Some(b)) => Some(self.earlier(a, b)),
            (a, b) => a.or(b),
        };
        let pre = self.place(data, Kind::Op(Op::Dot), Children::Many(list), earliest);
        let Some(op) = activation else {
            return Ok(pre);
        };
        let out = self.apply1(op, pre);
        self.release(pre); // the activation's node holds it now (or, on failure, nothing does)
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_makes_the_nodes_apply_would_make() {
        let mut arena = Arena::new();
        let inputs: Vec<_> = [0.5, -1.5, 2.0].iter().map(|&v| arena.leaf(v).unwrap()).collect();
        let weights: Vec<_> = (0..6)
            .map(|i| arena.leaf(0.25 * i as f64 - 0.6).unwrap())
            .collect();
        let biases: Vec<_> = [0.1, -0.2].iter().map(|&v| arena.leaf(v).unwrap()).collect();
        let mut out = Vec::new();
        arena
            .layer(
                Recording::PLAIN,
                &weights,
                &biases,
                &inputs,
                &[Some(Op::Tanh), None],
                &mut out,
            )
            .unwrap();
        for (j, &node) in out.iter().enumerate() {
            let mut children = weights[3 * j..3 * j + 3].to_vec();
            children.extend_from_slice(&inputs);
            children.push(biases[j]);
            let dot = arena.apply(Op::Dot, &children).unwrap();
            let expected = if j == 0 {
                let act = arena.apply1(Op::Tanh, dot).unwrap();
                arena.release(dot);
                act
            } else {
                dot
            };
            assert_eq!(arena.data(node).unwrap(), arena.data(expected).unwrap());
            for &leaf in inputs.iter().chain(&weights).chain(&biases) {
                arena.set_grad(leaf, 0.0).unwrap();
            }
            arena.backward(node).unwrap();
            let got: Vec<f64> = inputs.iter().map(|&i| arena.grad(i).unwrap()).collect();
            for &leaf in &inputs {
                arena.set_grad(leaf, 0.0).unwrap();
            }
            arena.backward(expected).unwrap();
            let want: Vec<f64> = inputs.iter().map(|&i| arena.grad(i).unwrap()).collect();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn a_failed_layer_keeps_no_nodes() {
        let mut arena = Arena::new();
        let x = arena.leaf(1.0).unwrap();
        let w = arena.leaf(2.0).unwrap();
        let b = arena.leaf(0.0).unwrap();
        let live = arena.live_nodes();
        let mut out = Vec::new();
        arena.set_max_nodes(Some(live + 2));
        // The first neuron and the second one's Dot fit; the second activation does not.
        let err = arena.layer(
            Recording::PLAIN,
            &[w, w],
            &[b, b],
            &[x],
            &[Some(Op::Relu), Some(Op::Relu)],
            &mut out,
        );
        assert!(matches!(err, Err(EngineError::NodeLimit { .. })));
        assert!(out.is_empty());
        assert_eq!(arena.live_nodes(), live);
        let stale = NodeId { slot: 99, gen: 0 };
        assert!(arena
            .layer(Recording::PLAIN, &[stale], &[b], &[x], &[None], &mut out)
            .is_err());
        assert_eq!(arena.live_nodes(), live);
    }

    #[test]
    fn under_no_grad_or_checks_a_layer_is_its_ops_one_by_one() {
        let mut arena = Arena::new();
        let x = arena.leaf(-1.0).unwrap();
        let w = arena.leaf(2.0).unwrap();
        let b = arena.leaf(0.5).unwrap();
        let live = arena.live_nodes();
        let mut out = Vec::new();
        let no_grad = Recording {
            grads: false,
            check_nan: false,
        };
        arena
            .layer(no_grad, &[w, w], &[b, b], &[x], &[Some(Op::Tanh), None], &mut out)
            .unwrap();
        assert_eq!(arena.data(out[0]).unwrap(), (-1.5f64).tanh());
        assert_eq!(arena.data(out[1]).unwrap(), -1.5);
        assert!(out.iter().all(|&id| *arena.kind(id).unwrap() == Kind::Leaf));
        for id in out.drain(..) {
            arena.release(id);
        }
        // Checked: log of a negative number is a new nan, refused with nothing kept.
        let checked = Recording {
            grads: true,
            check_nan: true,
        };
        let err = arena
            .layer(checked, &[w, w], &[b, b], &[x], &[None, Some(Op::Log)], &mut out)
            .unwrap_err();
        assert!(matches!(err, EngineError::NanForward { .. }), "{err}");
        assert!(out.is_empty());
        assert_eq!(arena.live_nodes(), live);
    }
}
