//! Parameter updates, written over plain slices so that they can run on a whole
//! parameter group in one call. The formulas follow `torch.optim` step for step
//! (including where it uses `lerp`), so gradrs and PyTorch trajectories agree.

/// Settings of stochastic gradient descent, as in `torch.optim.SGD` with no dampening.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sgd {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
}

impl Sgd {
    /// One step. `velocity` starts at zeros, which makes the first step's buffer
    /// equal the gradient, as PyTorch's lazily created buffer is.
    pub fn step(&self, data: &mut [f64], grad: &[f64], velocity: &mut [f64]) {
        for ((p, &g), b) in data.iter_mut().zip(grad).zip(velocity.iter_mut()) {
            let mut g = g + self.weight_decay * *p;
            if self.momentum != 0.0 {
                *b = self.momentum * *b + g;
                g = if self.nesterov { g + self.momentum * *b } else { *b };
            }
            *p -= self.lr * g;
        }
    }
}

/// Settings of Adam (`decoupled = false`, L2 added to the gradient) or AdamW
/// (`decoupled = true`, the weights shrink by `lr * weight_decay` each step).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Adam {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub decoupled: bool,
}

impl Adam {
    /// Step number `t` (1 for the first step) with moment estimates `m` and `v`.
    pub fn step(&self, t: u64, data: &mut [f64], grad: &[f64], m: &mut [f64], v: &mut [f64]) {
        let t = i32::try_from(t.max(1)).unwrap_or(i32::MAX);
        let bias_correction1 = 1.0 - self.beta1.powi(t);
        let bias_correction2_sqrt = (1.0 - self.beta2.powi(t)).sqrt();
        let step_size = self.lr / bias_correction1;
        for (((p, &g), m), v) in data.iter_mut().zip(grad).zip(m.iter_mut()).zip(v.iter_mut()) {
            let mut g = g;
            if self.decoupled {
                *p *= 1.0 - self.lr * self.weight_decay;
            } else {
                g += self.weight_decay * *p;
            }
            *m += (1.0 - self.beta1) * (g - *m);
            *v = *v * self.beta2 + (1.0 - self.beta2) * g * g;
            let denom = v.sqrt() / bias_correction2_sqrt + self.eps;
            *p -= step_size * (*m / denom);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgd_with_momentum_matches_the_recurrence() {
        let sgd = Sgd {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.0,
            nesterov: false,
        };
        let (mut p, mut b) = (vec![1.0], vec![0.0]);
        sgd.step(&mut p, &[0.5], &mut b);
        assert_eq!((p[0], b[0]), (1.0 - 0.1 * 0.5, 0.5));
        sgd.step(&mut p, &[0.5], &mut b);
        assert_eq!(b[0], 0.9 * 0.5 + 0.5);
    }

    #[test]
    fn adam_first_step_moves_by_lr() {
        // With bias correction the first update is lr * g / (|g| + eps) ≈ lr * sign(g).
        let adam = Adam {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
        };
        let (mut p, mut m, mut v) = (vec![1.0, 1.0], vec![0.0; 2], vec![0.0; 2]);
        adam.step(1, &mut p, &[3.0, -0.2], &mut m, &mut v);
        assert!((p[0] - 0.99).abs() < 1e-8 && (p[1] - 1.01).abs() < 1e-8);
    }
}
