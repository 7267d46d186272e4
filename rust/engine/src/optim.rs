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
        let constants = self.constants(t);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU was just found to have AVX-512F, all `adam_avx512` asks of it.
            unsafe { adam_avx512(self, &constants, data, grad, m, v) };
            return;
        }
        adam_update(self, &constants, data, grad, m, v);
    }

    fn constants(&self, t: u64) -> AdamConstants {
        let t = i32::try_from(t.max(1)).unwrap_or(i32::MAX);
        AdamConstants {
            bias_correction2_sqrt: (1.0 - self.beta2.powi(t)).sqrt(),
            step_size: self.lr / (1.0 - self.beta1.powi(t)),
        }
    }
}

/// What an Adam step computes once for all parameters.
struct AdamConstants {
    bias_correction2_sqrt: f64,
    step_size: f64,
}

/// `adam_update` compiled for AVX-512: two divisions and a square root per parameter are most
/// of a step's time, and on CPUs whose dividers are as wide as AVX-512 (AMD's Zen 5) eight
/// lanes at once make the step about four times as fast. Every operation is IEEE-rounded the
/// same in every lane width and nothing is fused, so the numbers are those of the plain loop.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn adam_avx512(adam: &Adam, k: &AdamConstants, data: &mut [f64], grad: &[f64], m: &mut [f64], v: &mut [f64]) {
    adam_update(adam, k, data, grad, m, v);
}

#[inline(always)]
fn adam_update(adam: &Adam, k: &AdamConstants, data: &mut [f64], grad: &[f64], m: &mut [f64], v: &mut [f64]) {
    for (((p, &g), m), v) in data.iter_mut().zip(grad).zip(m.iter_mut()).zip(v.iter_mut()) {
        let mut g = g;
        if adam.decoupled {
            *p *= 1.0 - adam.lr * adam.weight_decay;
        } else {
            g += adam.weight_decay * *p;
        }
        *m += (1.0 - adam.beta1) * (g - *m);
        *v = *v * adam.beta2 + (1.0 - adam.beta2) * g * g;
        let denom = v.sqrt() / k.bias_correction2_sqrt + adam.eps;
        *p -= k.step_size * (*m / denom);
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
    fn adam_gives_the_plain_loops_numbers_at_any_lane_width() {
        // `step` may run the AVX-512 build of the loop; it must round exactly as the plain one.
        for decoupled in [false, true] {
            let adam = Adam {
                lr: 0.003,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.01,
                decoupled,
            };
            let n = 1003; // not a multiple of any lane count: the tail runs too
            let grad: Vec<f64> = (0..n).map(|i| ((i * 7919) % 1000) as f64 / 37.0 - 13.0).collect();
            let start: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
            let (mut p1, mut m1, mut v1) = (start.clone(), vec![0.0; n], vec![0.0; n]);
            let (mut p2, mut m2, mut v2) = (start, vec![0.0; n], vec![0.0; n]);
            for t in 1..=5u64 {
                adam.step(t, &mut p1, &grad, &mut m1, &mut v1);
                adam_update(&adam, &adam.constants(t), &mut p2, &grad, &mut m2, &mut v2);
            }
            let bits = |xs: &[f64]| xs.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&p1), bits(&p2));
            assert_eq!(bits(&m1), bits(&m2));
            assert_eq!(bits(&v1), bits(&v2));
        }
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
