//! The op table: every operation the engine knows, with its forward rule and its
//! local derivatives side by side.
//!
//! Adding an op means: a variant here, an arm in each `match` below (the compiler
//! points at every one, as none has a catch-all), one line in the Python binding
//! (`rust/bindings/value.rs`), one line in the type stub, and a test case.
//!
//! Floating point follows IEEE-754 the way PyTorch's float64 kernels do: results
//! overflow to `inf` or become `nan` rather than raising, and the special cases
//! PyTorch documents (the gradient of `x**0`, of `relu` at 0 and at nan) are
//! reproduced, because `shared/golden/pytorch_cases.json` is our oracle.

/// One operation. Ops that combine a node with a Python number keep the number
/// inside the op (`AddScalar(2.0)`), so `x + 2` is one node, not two.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Op {
    /// A value created by the user (a parameter or an input); it has no children.
    Leaf,
    Add,
    Sub,
    Mul,
    Div,
    /// `a ** b` with a node as exponent.
    Pow,
    Neg,
    /// `a + c`
    AddScalar(f64),
    /// `a * c`
    MulScalar(f64),
    /// `c - a`
    ScalarSub(f64),
    /// `a / c`
    DivScalar(f64),
    /// `c / a`
    ScalarDiv(f64),
    /// `a ** c`
    PowScalar(f64),
    /// `c ** a`
    ScalarPow(f64),
    Relu,
    Tanh,
    Exp,
    Log,
    Sigmoid,
    /// `log(1 + exp(a))`, or `a` itself above the threshold, as PyTorch's `softplus`
    /// (beta 1; its default threshold is 20, and an infinite one gives the exact value).
    Softplus(f64),
    /// The sum of any number of children, in order.
    Sum,
    /// `log(exp(x0) + exp(x1) + ...)` over any number of children, shifted by
    /// their largest value so that no `exp` overflows.
    LogSumExp,
    /// `bias + w0*x0 + w1*x1 + ...` over children `[w0.., x0.., bias?]`:
    /// the first half are weights, the second half inputs, and an odd
    /// child count means the last child is a bias added first, as micrograd's
    /// `sum((wi*xi for ...), self.b)` does.
    Dot,
    /// The result of a recorded program replayed as one step (`gradrs.compile`):
    /// its value and its partial derivatives with respect to each child were
    /// computed by the program, and the arena stores them with the node.
    CompiledCall,
}

/// How many children an op takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arity {
    Zero,
    One,
    Two,
    /// Any number (`Sum`, `LogSumExp`, `Dot`).
    Many,
}

impl Op {
    pub fn arity(&self) -> Arity {
        match self {
            Op::Leaf => Arity::Zero,
            Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Pow => Arity::Two,
            Op::Neg
            | Op::AddScalar(_)
            | Op::MulScalar(_)
            | Op::ScalarSub(_)
            | Op::DivScalar(_)
            | Op::ScalarDiv(_)
            | Op::PowScalar(_)
            | Op::ScalarPow(_)
            | Op::Relu
            | Op::Tanh
            | Op::Exp
            | Op::Log
            | Op::Sigmoid
            | Op::Softplus(_) => Arity::One,
            Op::Sum | Op::LogSumExp | Op::Dot | Op::CompiledCall => Arity::Many,
        }
    }

    /// Whether `n` children suit this op.
    pub fn accepts(&self, n: usize) -> bool {
        match self.arity() {
            Arity::Zero => n == 0,
            Arity::One => n == 1,
            Arity::Two => n == 2,
            Arity::Many => match self {
                Op::Dot => n >= 1,
                _ => true,
            },
        }
    }

    /// The op's value given its children's values `x`.
    #[inline(always)]
    pub fn forward(&self, x: &[f64]) -> f64 {
        match self {
            Op::Leaf => f64::NAN,
            Op::Add => x[0] + x[1],
            Op::Sub => x[0] - x[1],
            Op::Mul => x[0] * x[1],
            Op::Div => x[0] / x[1],
            Op::Pow => x[0].powf(x[1]),
            Op::Neg => -x[0],
            Op::AddScalar(c) => x[0] + c,
            Op::MulScalar(c) => x[0] * c,
            Op::ScalarSub(c) => c - x[0],
            Op::DivScalar(c) => x[0] / c,
            Op::ScalarDiv(c) => c / x[0],
            Op::PowScalar(e) => powf(x[0], *e),
            Op::ScalarPow(c) => c.powf(x[0]),
            Op::Relu => relu(x[0]),
            Op::Tanh => x[0].tanh(),
            Op::Exp => x[0].exp(),
            Op::Log => x[0].ln(),
            Op::Sigmoid => sigmoid(x[0]),
            Op::Softplus(t) => softplus(x[0], *t),
            Op::Sum => x.iter().fold(0.0, |acc, v| acc + v),
            Op::LogSumExp => logsumexp(x),
            Op::Dot => {
                let (w, xs, bias) = split_dot(x);
                w.iter().zip(xs).fold(bias, |acc, (w, x)| acc + w * x)
            }
            // Not computable from the children alone: the arena is given the value.
            Op::CompiledCall => f64::NAN,
        }
    }

    /// The local derivative ∂out/∂x[i], given the children's values `x` and the
    /// op's own value `out` (reused where the math allows, as for tanh and exp).
    #[inline(always)]
    pub fn local_grad(&self, x: &[f64], out: f64, i: usize) -> f64 {
        match self {
            Op::Leaf => 0.0,
            Op::Add => 1.0,
            Op::Sub => [1.0, -1.0][i],
            Op::Mul => x[1 - i],
            // -x/y² taken as -(x/y)/y, PyTorch's `div_tensor_other_backward`: x/y² in
            // either order can overflow or underflow where the derivative is finite.
            Op::Div => match i {
                0 => 1.0 / x[1],
                _ => -out / x[1],
            },
            Op::Pow => match i {
                0 => pow_base_grad(x[0], x[1]),
                _ => pow_exponent_grad(x[0], x[1], out),
            },
            Op::Neg => -1.0,
            Op::AddScalar(_) => 1.0,
            Op::MulScalar(c) => *c,
            Op::ScalarSub(_) => -1.0,
            Op::DivScalar(c) => 1.0 / c,
            // -c/a² as -(c/a)/a, as for `Div`'s divisor.
            Op::ScalarDiv(_) => -out / x[0],
            Op::PowScalar(e) => pow_base_grad(x[0], *e),
            Op::ScalarPow(c) => pow_exponent_grad(*c, x[0], out),
            // nan passes the gradient through, as PyTorch's threshold_backward does.
            Op::Relu => {
                if out <= 0.0 {
                    0.0
                } else {
                    1.0
                }
            }
            Op::Tanh => 1.0 - out * out,
            Op::Exp => out,
            Op::Log => 1.0 / x[0],
            Op::Sigmoid => out * (1.0 - out),
            Op::Softplus(t) => softplus_grad(x[0], *t),
            Op::Sum => 1.0,
            // The softmax, exp(x_i - out): out >= every x_i, so it never overflows.
            Op::LogSumExp => (x[i] - out).exp(),
            Op::Dot => {
                let n = x.len() / 2;
                if i == 2 * n {
                    1.0 // the bias
                } else if i < n {
                    x[n + i]
                } else {
                    x[i - n]
                }
            }
            // Stored with the node by the arena, which uses those instead.
            Op::CompiledCall => f64::NAN,
        }
    }

    /// The op string micrograd's `Value._op` gives. micrograd builds `-`, `/` and
    /// negation from `+`, `*` and `**`, so those report the op at their top.
    pub fn symbol(&self) -> String {
        match self {
            Op::Leaf => String::new(),
            // A neuron's `sum((wi*xi ...), b)` ends with an addition in micrograd.
            Op::Add | Op::AddScalar(_) | Op::Sub | Op::ScalarSub(_) | Op::Sum | Op::Dot => "+".into(),
            Op::Mul | Op::MulScalar(_) | Op::Div | Op::DivScalar(_) | Op::ScalarDiv(_) | Op::Neg => {
                "*".into()
            }
            Op::CompiledCall => "compiled".into(),
            Op::Pow | Op::ScalarPow(_) => "**".into(),
            Op::PowScalar(e) => format!("**{}", format_number(*e)),
            Op::Relu => "ReLU".into(),
            Op::Tanh => "tanh".into(),
            Op::Exp => "exp".into(),
            Op::Log => "log".into(),
            Op::Sigmoid => "sigmoid".into(),
            Op::Softplus(_) => "softplus".into(),
            Op::LogSumExp => "logsumexp".into(),
        }
    }

    /// A fuller description for pictures and error messages, naming the real
    /// operation and any constant it holds (`- 2`, `/`, `dot`).
    pub fn describe(&self) -> String {
        match self {
            Op::Leaf => "leaf".into(),
            Op::Add => "+".into(),
            Op::Sub => "-".into(),
            Op::Mul => "*".into(),
            Op::Div => "/".into(),
            Op::Pow => "**".into(),
            Op::Neg => "neg".into(),
            Op::AddScalar(c) => format!("+ {}", format_number(*c)),
            Op::MulScalar(c) => format!("* {}", format_number(*c)),
            Op::ScalarSub(c) => format!("{} -", format_number(*c)),
            Op::DivScalar(c) => format!("/ {}", format_number(*c)),
            Op::ScalarDiv(c) => format!("{} /", format_number(*c)),
            Op::PowScalar(e) => format!("**{}", format_number(*e)),
            Op::ScalarPow(c) => format!("{} **", format_number(*c)),
            Op::Relu => "ReLU".into(),
            Op::Tanh => "tanh".into(),
            Op::Exp => "exp".into(),
            Op::Log => "log".into(),
            Op::Sigmoid => "sigmoid".into(),
            Op::Softplus(t) if *t == SOFTPLUS_THRESHOLD => "softplus".into(),
            Op::Softplus(t) => format!("softplus threshold={}", format_number(*t)),
            Op::Sum => "sum".into(),
            Op::LogSumExp => "logsumexp".into(),
            Op::Dot => "dot".into(),
            Op::CompiledCall => "compiled".into(),
        }
    }
}

/// `relu` that lets nan through (`f64::max` would turn nan into 0) and keeps -0.0.
fn relu(a: f64) -> f64 {
    if a < 0.0 {
        0.0
    } else {
        a
    }
}

/// A sigmoid that never computes `exp` of a large positive number, so both tails
/// are exact (0 and 1) and their gradients 0, not nan.
fn sigmoid(a: f64) -> f64 {
    if a >= 0.0 {
        1.0 / (1.0 + (-a).exp())
    } else {
        let e = a.exp();
        e / (1.0 + e)
    }
}

/// PyTorch's default `softplus` threshold, above which it returns its input.
pub const SOFTPLUS_THRESHOLD: f64 = 20.0;

/// `log(1 + exp(a))`, or `a` above `threshold` (where, past 20, the two differ by less
/// than 2.1e-9). Up to 20 it is PyTorch's `log1p(exp(a))`, where exp cannot overflow;
/// past 20 (only with a higher threshold) `a + log1p(exp(-a))`, which cannot either.
// Kept out of line: inlined into `forward`/`local_grad`, which are inlined into every
// op's hot path, it would make the common ops a little slower.
#[inline(never)]
fn softplus(a: f64, threshold: f64) -> f64 {
    if a > threshold {
        a
    } else if a <= SOFTPLUS_THRESHOLD {
        a.exp().ln_1p()
    } else {
        a + (-a).exp().ln_1p()
    }
}

/// The sigmoid, 1 above the threshold. Up to 20 it is `z/(z+1)` with `z = exp(a)`, as
/// PyTorch's `softplus_backward`; past 20, `1/(1+exp(-a))`, as `z` could overflow.
#[inline(never)]
fn softplus_grad(a: f64, threshold: f64) -> f64 {
    if a > threshold {
        1.0
    } else if a <= SOFTPLUS_THRESHOLD {
        let z = a.exp();
        z / (z + 1.0)
    } else {
        1.0 / (1.0 + (-a).exp())
    }
}

/// `log(sum(exp(x_i - m))) + m` with `m` the largest `x_i`, as `torch.logsumexp`: an
/// infinite `m` shifts by 0 instead (so all `-inf` give `-inf` and any `inf` gives `inf`,
/// not nan), a nan anywhere gives nan, and no children give `log(0) = -inf`.
#[inline(never)]
fn logsumexp(x: &[f64]) -> f64 {
    let m = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let shift = if m.is_infinite() { 0.0 } else { m };
    x.iter().fold(0.0, |acc, v| acc + (v - shift).exp()).ln() + shift
}

/// ∂(a^e)/∂a. PyTorch defines it as 0 when the exponent is 0 (the naive
/// `0 * a^-1` would be nan at a = 0).
fn pow_base_grad(a: f64, e: f64) -> f64 {
    if e == 0.0 {
        0.0
    } else {
        e * powf(a, e - 1.0)
    }
}

/// `a^e`, with the squares and plain copies that dominate neural nets done
/// directly (`powf` is correctly rounded there too, so the result is the same).
fn powf(a: f64, e: f64) -> f64 {
    if e == 2.0 {
        a * a
    } else if e == 1.0 {
        a
    } else {
        a.powf(e)
    }
}

/// ∂(a^e)/∂e = a^e·ln a. PyTorch masks it to 0 where a = 0 and e >= 0.
fn pow_exponent_grad(a: f64, e: f64, out: f64) -> f64 {
    if a == 0.0 && e >= 0.0 {
        0.0
    } else {
        out * a.ln()
    }
}

/// Splits a `Dot` node's inputs into weights, inputs and the bias (0 if none).
fn split_dot(x: &[f64]) -> (&[f64], &[f64], f64) {
    let n = x.len() / 2;
    let bias = if x.len() % 2 == 1 { x[2 * n] } else { 0.0 };
    (&x[..n], &x[n..2 * n], bias)
}

/// Formats a number as Python prints it: integral values as an int (`**2`, as micrograd
/// prints the usual int exponent), others as `repr(float)` does (`0.5`, `1e-05`, `1e+20`).
pub fn format_number(v: f64) -> String {
    if !v.is_finite() {
        return match v {
            f64::INFINITY => "inf".into(),
            f64::NEG_INFINITY => "-inf".into(),
            _ => "nan".into(),
        };
    }
    if v == v.trunc() && v.abs() < 1e16 {
        return format!("{}", v as i64);
    }
    // Rust's `{:e}` gives the same shortest digits as Python's repr; Python switches to
    // scientific notation below 1e-4 and from 1e16, with a signed exponent of two digits or more.
    let scientific = format!("{v:e}");
    let (digits, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if (-4..16).contains(&exponent) {
        format!("{v}")
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{digits}e{sign}{:02}", exponent.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every op with a sample of inputs inside its smooth domain.
    fn smooth_cases() -> Vec<(Op, Vec<f64>)> {
        vec![
            (Op::Add, vec![0.7, -1.3]),
            (Op::Sub, vec![0.7, -1.3]),
            (Op::Mul, vec![0.7, -1.3]),
            (Op::Div, vec![0.7, -1.3]),
            (Op::Pow, vec![1.7, 1.3]),
            (Op::Neg, vec![0.4]),
            (Op::AddScalar(2.5), vec![0.4]),
            (Op::MulScalar(-3.0), vec![0.4]),
            (Op::ScalarSub(1.0), vec![0.4]),
            (Op::DivScalar(4.0), vec![0.4]),
            (Op::ScalarDiv(2.0), vec![0.4]),
            (Op::PowScalar(3.0), vec![0.4]),
            (Op::PowScalar(-1.5), vec![0.8]),
            (Op::ScalarPow(2.0), vec![0.4]),
            (Op::Relu, vec![0.4]),
            (Op::Relu, vec![-0.4]),
            (Op::Tanh, vec![0.4]),
            (Op::Exp, vec![0.4]),
            (Op::Log, vec![0.4]),
            (Op::Sigmoid, vec![0.4]),
            (Op::Sigmoid, vec![-2.4]),
            (Op::Softplus(20.0), vec![0.4]),
            (Op::Softplus(20.0), vec![-3.1]),
            (Op::Softplus(20.0), vec![19.0]),
            (Op::Softplus(f64::INFINITY), vec![25.0]),
            (Op::Softplus(f64::INFINITY), vec![-0.4]),
            (Op::LogSumExp, vec![0.4, -1.0, 2.0, 0.5]),
            (Op::LogSumExp, vec![700.0, 699.0]),
            (Op::LogSumExp, vec![0.3]),
            (Op::Sum, vec![0.4, -1.0, 2.0, 0.5]),
            (Op::Dot, vec![0.4, -1.0, 2.0, 0.5]),
            (Op::Dot, vec![0.4, -1.0, 2.0, 0.5, 0.25]),
        ]
    }

    #[test]
    fn local_grads_match_central_differences() {
        let h = 1e-6;
        for (op, x) in smooth_cases() {
            assert!(op.accepts(x.len()), "{op:?} does not take {} inputs", x.len());
            let out = op.forward(&x);
            for i in 0..x.len() {
                let mut up = x.clone();
                let mut down = x.clone();
                up[i] += h;
                down[i] -= h;
                let numeric = (op.forward(&up) - op.forward(&down)) / (2.0 * h);
                let analytic = op.local_grad(&x, out, i);
                let err = (numeric - analytic).abs() / analytic.abs().max(1.0);
                assert!(
                    err < 1e-6,
                    "{op:?} input {i}: numeric {numeric}, analytic {analytic}"
                );
            }
        }
    }

    #[test]
    fn ieee_edge_cases_follow_pytorch() {
        assert_eq!(Op::PowScalar(-1.0).forward(&[0.0]), f64::INFINITY);
        assert_eq!(Op::PowScalar(0.0).local_grad(&[0.0], 1.0, 0), 0.0);
        assert_eq!(Op::Tanh.forward(&[1000.0]), 1.0);
        assert_eq!(Op::Tanh.local_grad(&[1000.0], 1.0, 0), 0.0);
        assert!(Op::Relu.forward(&[f64::NAN]).is_nan());
        assert_eq!(Op::Relu.local_grad(&[f64::NAN], f64::NAN, 0), 1.0);
        assert_eq!(Op::Relu.local_grad(&[0.0], 0.0, 0), 0.0);
        assert_eq!(Op::Sigmoid.forward(&[-800.0]), 0.0);
        assert_eq!(Op::Sigmoid.forward(&[800.0]), 1.0);
        assert_eq!(Op::Sigmoid.local_grad(&[-800.0], 0.0, 0), 0.0);
        assert_eq!(Op::Log.forward(&[0.0]), f64::NEG_INFINITY);
        assert_eq!(Op::Log.local_grad(&[0.0], f64::NEG_INFINITY, 0), f64::INFINITY);
        assert!(Op::PowScalar(0.5).forward(&[-1.0]).is_nan());
        assert_eq!(Op::Exp.forward(&[710.0]), f64::INFINITY);
    }

    #[test]
    fn divisor_gradients_do_not_overflow_needlessly() {
        // -x/y² = -1e100, though y² underflows to 0.
        let x = [1e-300, 1e-200];
        assert_eq!(Op::Div.local_grad(&x, Op::Div.forward(&x), 1), -1e100);
        let c = Op::ScalarDiv(1e-300);
        assert_eq!(c.local_grad(&[1e-200], c.forward(&[1e-200]), 0), -1e100);
        // and x/y² = -1e-100 though y² overflows.
        let x = [1e200, 1e200];
        assert_eq!(Op::Div.local_grad(&x, Op::Div.forward(&x), 1), -1e-200);
    }

    #[test]
    fn softplus_follows_pytorchs_threshold() {
        let sp = Op::Softplus(SOFTPLUS_THRESHOLD);
        assert_eq!(sp.forward(&[20.5]), 20.5);
        assert_eq!(sp.local_grad(&[20.5], 20.5, 0), 1.0);
        assert_eq!(sp.forward(&[20.0]), 20.0f64.exp().ln_1p());
        assert!(sp.local_grad(&[20.0], 20.0, 0) < 1.0);
        assert_eq!(sp.forward(&[800.0]), 800.0);
        assert_eq!(sp.forward(&[-800.0]), 0.0);
        assert_eq!(sp.local_grad(&[-800.0], 0.0, 0), 0.0);
        assert_eq!(sp.forward(&[f64::INFINITY]), f64::INFINITY);
        assert_eq!(sp.forward(&[f64::NEG_INFINITY]), 0.0);
        assert!(sp.forward(&[f64::NAN]).is_nan());
        assert!(sp.local_grad(&[f64::NAN], f64::NAN, 0).is_nan());
        // Without the threshold: the exact value, finite for any finite input.
        let exact = Op::Softplus(f64::INFINITY);
        assert_eq!(exact.forward(&[30.0]), 30.0 + (-30.0f64).exp());
        assert_eq!(exact.local_grad(&[30.0], 30.0, 0), 1.0 / (1.0 + (-30.0f64).exp()));
        assert_eq!(exact.forward(&[800.0]), 800.0);
        assert_eq!(exact.local_grad(&[800.0], 800.0, 0), 1.0);
        assert_eq!(exact.forward(&[f64::INFINITY]), f64::INFINITY);
        assert_eq!(exact.describe(), "softplus threshold=inf");
    }

    #[test]
    fn logsumexp_handles_infinities_and_nan_as_torch() {
        let lse = Op::LogSumExp;
        assert_eq!(lse.forward(&[1000.0, 0.0]), 1000.0);
        assert_eq!(lse.local_grad(&[1000.0, 0.0], 1000.0, 0), 1.0);
        assert_eq!(lse.local_grad(&[1000.0, 0.0], 1000.0, 1), 0.0);
        let both = -1000.0 + 2f64.ln();
        assert_eq!(lse.forward(&[-1000.0, -1000.0]), both);
        assert!((lse.local_grad(&[-1000.0, -1000.0], both, 0) - 0.5).abs() < 1e-13);
        let ninf = f64::NEG_INFINITY;
        assert_eq!(lse.forward(&[ninf, ninf]), ninf);
        assert!(lse.local_grad(&[ninf, ninf], ninf, 0).is_nan());
        assert_eq!(lse.forward(&[f64::INFINITY, 1.0]), f64::INFINITY);
        assert_eq!(lse.forward(&[f64::INFINITY, ninf]), f64::INFINITY);
        assert!(lse.forward(&[f64::NAN, 1.0]).is_nan());
        assert!(lse.forward(&[f64::INFINITY, f64::NAN]).is_nan());
        assert_eq!(lse.forward(&[]), ninf);
        assert!(lse.accepts(0));
    }

    #[test]
    fn dot_sums_in_micrograds_order() {
        // bias first, then each product in turn: ((b + w0x0) + w1x1)
        let x = [0.1, 0.2, 0.3, 0.4, 0.5];
        assert_eq!(Op::Dot.forward(&x), (0.5 + 0.1 * 0.3) + 0.2 * 0.4);
    }

    #[test]
    fn symbols_are_micrograds() {
        assert_eq!(Op::Add.symbol(), "+");
        assert_eq!(Op::MulScalar(2.0).symbol(), "*");
        assert_eq!(Op::PowScalar(2.0).symbol(), "**2");
        assert_eq!(Op::PowScalar(-1.0).symbol(), "**-1");
        assert_eq!(Op::PowScalar(0.5).symbol(), "**0.5");
        assert_eq!(Op::Relu.symbol(), "ReLU");
        assert_eq!(Op::Leaf.symbol(), "");
        assert_eq!(Op::Dot.symbol(), "+");
        assert_eq!(Op::Softplus(20.0).symbol(), "softplus");
        assert_eq!(Op::Softplus(20.0).describe(), "softplus");
        assert_eq!(Op::LogSumExp.describe(), "logsumexp");
    }

    #[test]
    fn numbers_print_as_python_prints_them() {
        let cases = [
            (2.0, "2"),
            (-1.0, "-1"),
            (0.5, "0.5"),
            (0.1, "0.1"),
            (1e-4, "0.0001"),
            (1e-5, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e16, "1e+16"),
            (1e20, "1e+20"),
            (-2.5e300, "-2.5e+300"),
            (123456.789, "123456.789"),
            (f64::INFINITY, "inf"),
            (f64::NAN, "nan"),
        ];
        for (v, text) in cases {
            assert_eq!(format_number(v), text, "{v}");
        }
    }
}
