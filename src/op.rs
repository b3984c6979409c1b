//! The closed op set and the scalar formula of each op, shared by the CPU backend and mirrored in
//! WGSL (`shaders/`). The selector numbers here are the `OP` override constants of the shaders.

/// Elementwise functions of one tensor. Every one maps NaN to NaN (even `Powf(0.0)`, where C's
/// `pow` would give 1): the GPU kernels check the bit pattern, so drivers' finite-math
/// assumptions cannot change it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UnaryOp {
    /// `max(x, 0)`.
    Relu,
    /// `x` for `x >= 0`, `alpha * x` otherwise.
    LeakyRelu(f32),
    /// `x * Φ(x)` with the exact (erf) normal CDF.
    Gelu,
    /// The tanh approximation of GELU: `0.5 x (1 + tanh(√(2/π)(x + 0.044715 x³)))`.
    GeluTanh,
    /// `1 / (1 + e^-x)`, evaluated without overflow.
    Sigmoid,
    /// Hyperbolic tangent, evaluated without overflow.
    Tanh,
    /// `x * sigmoid(x)` (also called swish).
    Silu,
    /// `e^x`.
    Exp,
    /// Natural logarithm (`-inf` at 0, NaN below).
    Log,
    /// Square root (NaN below 0).
    Sqrt,
    /// `1 / sqrt(x)` (`+inf` at 0, NaN below).
    Rsqrt,
    /// `|x|`.
    Abs,
    /// `-x`.
    Neg,
    /// `1 / x`.
    Recip,
    /// `x * x`.
    Square,
    /// `x^p` for a scalar `p` (`powf`; NaN for a negative base and a non-integer `p`).
    Powf(f32),
    /// `min(max(x, lo), hi)`.
    Clamp(f32, f32),
    /// `ln(1 + e^x)`, evaluated without overflow.
    Softplus,
    /// `x` for `x > 0`, `alpha (e^x - 1)` otherwise.
    Elu(f32),
    /// `x + c`.
    AddScalar(f32),
    /// `x * c`.
    MulScalar(f32),
    /// `x / c`.
    DivScalar(f32),
}

impl UnaryOp {
    /// Every unary op, with a representative parameter where one is needed.
    pub const ALL: [UnaryOp; 22] = [
        UnaryOp::Relu,
        UnaryOp::LeakyRelu(0.01),
        UnaryOp::Gelu,
        UnaryOp::GeluTanh,
        UnaryOp::Sigmoid,
        UnaryOp::Tanh,
        UnaryOp::Silu,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Abs,
        UnaryOp::Neg,
        UnaryOp::Recip,
        UnaryOp::Square,
        UnaryOp::Powf(1.5),
        UnaryOp::Clamp(-1.0, 1.0),
        UnaryOp::Softplus,
        UnaryOp::Elu(1.0),
        UnaryOp::AddScalar(1.0),
        UnaryOp::MulScalar(2.0),
        UnaryOp::DivScalar(3.0),
    ];

    /// Name as in the public API.
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Relu => "relu",
            UnaryOp::LeakyRelu(_) => "leaky_relu",
            UnaryOp::Gelu => "gelu",
            UnaryOp::GeluTanh => "gelu_tanh",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Silu => "silu",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Rsqrt => "rsqrt",
            UnaryOp::Abs => "abs",
            UnaryOp::Neg => "neg",
            UnaryOp::Recip => "recip",
            UnaryOp::Square => "square",
            UnaryOp::Powf(_) => "powf",
            UnaryOp::Clamp(..) => "clamp",
            UnaryOp::Softplus => "softplus",
            UnaryOp::Elu(_) => "elu",
            UnaryOp::AddScalar(_) => "add_scalar",
            UnaryOp::MulScalar(_) => "mul_scalar",
            UnaryOp::DivScalar(_) => "div_scalar",
        }
    }

    /// The selector of `activate` in `shaders/activation.wgsl`.
    pub(crate) fn shader_id(self) -> u32 {
        match self {
            UnaryOp::Relu => 0,
            UnaryOp::LeakyRelu(_) => 1,
            UnaryOp::Gelu => 2,
            UnaryOp::GeluTanh => 3,
            UnaryOp::Sigmoid => 4,
            UnaryOp::Tanh => 5,
            UnaryOp::Silu => 6,
            UnaryOp::Exp => 7,
            UnaryOp::Log => 8,
            UnaryOp::Sqrt => 9,
            UnaryOp::Rsqrt => 10,
            UnaryOp::Abs => 11,
            UnaryOp::Neg => 12,
            UnaryOp::Recip => 13,
            UnaryOp::Square => 14,
            UnaryOp::Powf(_) => 15,
            UnaryOp::Clamp(..) => 16,
            UnaryOp::Softplus => 17,
            UnaryOp::Elu(_) => 18,
            UnaryOp::AddScalar(_) => 19,
            UnaryOp::MulScalar(_) => 20,
            UnaryOp::DivScalar(_) => 21,
        }
    }

    /// The scalar parameters passed to the shader (`alpha`, `beta`); unused ones are 0.
    pub(crate) fn params(self) -> (f32, f32) {
        match self {
            UnaryOp::LeakyRelu(a)
            | UnaryOp::Powf(a)
            | UnaryOp::Elu(a)
            | UnaryOp::AddScalar(a)
            | UnaryOp::MulScalar(a)
            | UnaryOp::DivScalar(a) => (a, 0.0),
            UnaryOp::Clamp(lo, hi) => (lo, hi),
            _ => (0.0, 0.0),
        }
    }

    /// The op on every value of `xs`, in place: the same results as [`UnaryOp::apply`], with
    /// the cheap ops as branch-free loops the compiler vectorises (a call of `apply` per value
    /// cost a fused `linear`'s epilogue more than its bias).
    pub(crate) fn apply_slice(self, xs: &mut [f32]) {
        // NaN stays NaN in each arm: `x < 0.0` is false for it, and NaN + s, NaN * s, ... are NaN.
        match self {
            UnaryOp::Relu => xs.iter_mut().for_each(|x| {
                *x = if *x < 0.0 { 0.0 } else { *x };
            }),
            UnaryOp::LeakyRelu(alpha) => xs.iter_mut().for_each(|x| {
                *x = if *x < 0.0 { alpha * *x } else { *x };
            }),
            UnaryOp::AddScalar(s) => xs.iter_mut().for_each(|x| *x += s),
            UnaryOp::MulScalar(s) => xs.iter_mut().for_each(|x| *x *= s),
            _ => xs.iter_mut().for_each(|x| *x = self.apply(*x)),
        }
    }

    /// The op on one f32 value, exactly as the CPU backend computes it.
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        if x.is_nan() {
            return x;
        }
        match self {
            UnaryOp::Relu => {
                if x < 0.0 {
                    0.0
                } else {
                    x
                }
            }
            UnaryOp::LeakyRelu(alpha) => {
                if x < 0.0 {
                    alpha * x
                } else {
                    x
                }
            }
            UnaryOp::Gelu => 0.5 * x * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2)),
            UnaryOp::GeluTanh => {
                const K: f32 = 0.797_884_6; // sqrt(2/pi)
                0.5 * x * (1.0 + tanh_f32(K * (x + 0.044715 * x * x * x)))
            }
            UnaryOp::Sigmoid => sigmoid_f32(x),
            UnaryOp::Tanh => tanh_f32(x),
            UnaryOp::Silu => x * sigmoid_f32(x),
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Rsqrt => 1.0 / x.sqrt(),
            UnaryOp::Abs => x.abs(),
            UnaryOp::Neg => -x,
            UnaryOp::Recip => 1.0 / x,
            UnaryOp::Square => x * x,
            UnaryOp::Powf(p) => x.powf(p),
            UnaryOp::Clamp(lo, hi) => x.max(lo).min(hi),
            // ln(1 + e^x) = max(x, 0) + ln(1 + e^-|x|)
            UnaryOp::Softplus => x.max(0.0) + (-x.abs()).exp().ln_1p(),
            UnaryOp::Elu(alpha) => {
                if x > 0.0 {
                    x
                } else {
                    alpha * x.exp_m1()
                }
            }
            UnaryOp::AddScalar(c) => x + c,
            UnaryOp::MulScalar(c) => x * c,
            UnaryOp::DivScalar(c) => x / c,
        }
    }
}

impl UnaryOp {
    /// The derivative of the op at `x`, as backward uses it (`shaders/activation.wgsl`'s
    /// `derivative` is the GPU twin). At kinks it takes PyTorch's one-sided values: relu'(0) =
    /// 0, abs'(0) = 0, clamp' = 1 on the closed interval. NaN in, NaN out.
    #[inline]
    pub fn derivative(self, x: f32) -> f32 {
        if x.is_nan() {
            return x;
        }
        const K: f32 = 0.797_884_6; // sqrt(2/pi)
        let step = |on: bool, a: f32, b: f32| if on { a } else { b };
        match self {
            UnaryOp::Relu => step(x > 0.0, 1.0, 0.0),
            UnaryOp::LeakyRelu(alpha) => step(x > 0.0, 1.0, alpha),
            UnaryOp::Gelu => {
                0.5 * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2))
                    + x * 0.398_942_3 * (-0.5 * x * x).exp()
            }
            UnaryOp::GeluTanh => {
                let t = tanh_f32(K * (x + 0.044715 * x * x * x));
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * K * (1.0 + 0.134145 * x * x)
            }
            UnaryOp::Sigmoid => {
                let s = sigmoid_f32(x);
                s * (1.0 - s)
            }
            UnaryOp::Tanh => {
                let t = tanh_f32(x);
                1.0 - t * t
            }
            UnaryOp::Silu => {
                let s = sigmoid_f32(x);
                s * (1.0 + x * (1.0 - s))
            }
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => 1.0 / x,
            UnaryOp::Sqrt => 0.5 / x.sqrt(),
            UnaryOp::Rsqrt => -0.5 / (x * x.sqrt()),
            UnaryOp::Abs => step(x > 0.0, 1.0, step(x < 0.0, -1.0, 0.0)),
            UnaryOp::Neg => -1.0,
            UnaryOp::Recip => -1.0 / (x * x),
            UnaryOp::Square => 2.0 * x,
            UnaryOp::Powf(p) => step(p == 0.0, 0.0, p * x.powf(p - 1.0)),
            UnaryOp::Clamp(lo, hi) => step(x >= lo && x <= hi, 1.0, 0.0),
            UnaryOp::Softplus => sigmoid_f32(x),
            UnaryOp::Elu(alpha) => step(x > 0.0, 1.0, alpha * x.exp()),
            UnaryOp::AddScalar(_) => 1.0,
            UnaryOp::MulScalar(c) => c,
            UnaryOp::DivScalar(c) => 1.0 / c,
        }
    }
}

fn sigmoid_f32(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

fn tanh_f32(x: f32) -> f32 {
    x.tanh()
}

/// erf with absolute error below 1.5e-7 (Abramowitz & Stegun 7.1.26); the same formula as the
/// `erf` function in `shaders/unary.wgsl`, since WGSL has no erf builtin.
fn erf_f32(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * (-x * x).exp();
    if x < 0.0 { -y } else { y }
}

/// Elementwise functions of two tensors, with numpy broadcasting. `Maximum` and `Minimum`
/// propagate NaN (like PyTorch, unlike IEEE `fmax`); comparisons give 1.0 or 0.0 and are false
/// for NaN except `Ne`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a * b`
    Mul,
    /// `a / b` (IEEE: x/0 is ±Inf, 0/0 is NaN)
    Div,
    /// `max(a, b)`, NaN if either is NaN.
    Maximum,
    /// `min(a, b)`, NaN if either is NaN.
    Minimum,
    /// `a^b` (`powf` semantics).
    Pow,
    /// `a == b` as 1.0 / 0.0.
    Eq,
    /// `a != b` as 1.0 / 0.0.
    Ne,
    /// `a < b` as 1.0 / 0.0.
    Lt,
    /// `a <= b` as 1.0 / 0.0.
    Le,
    /// `a > b` as 1.0 / 0.0.
    Gt,
    /// `a >= b` as 1.0 / 0.0.
    Ge,
}

impl BinaryOp {
    /// Every binary op.
    pub const ALL: [BinaryOp; 13] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Maximum,
        BinaryOp::Minimum,
        BinaryOp::Pow,
        BinaryOp::Eq,
        BinaryOp::Ne,
        BinaryOp::Lt,
        BinaryOp::Le,
        BinaryOp::Gt,
        BinaryOp::Ge,
    ];

    /// Whether the op is a comparison (a 1.0/0.0 mask, with no gradient).
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinaryOp::Eq | BinaryOp::Ne | BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge
        )
    }

    /// Name as in the public API.
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Maximum => "maximum",
            BinaryOp::Minimum => "minimum",
            BinaryOp::Pow => "pow",
            BinaryOp::Eq => "eq",
            BinaryOp::Ne => "ne",
            BinaryOp::Lt => "lt",
            BinaryOp::Le => "le",
            BinaryOp::Gt => "gt",
            BinaryOp::Ge => "ge",
        }
    }

    /// The value of the `OP` override constant in `shaders/binary.wgsl`.
    pub(crate) fn shader_id(self) -> u32 {
        self as u32
    }

    /// The op on one pair of f32 values.
    pub fn apply(self, a: f32, b: f32) -> f32 {
        let flag = |c: bool| if c { 1.0 } else { 0.0 };
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
            BinaryOp::Maximum if a.is_nan() || b.is_nan() => f32::NAN,
            BinaryOp::Maximum => a.max(b),
            BinaryOp::Minimum if a.is_nan() || b.is_nan() => f32::NAN,
            BinaryOp::Minimum => a.min(b),
            BinaryOp::Pow => a.powf(b),
            BinaryOp::Eq => flag(a == b),
            BinaryOp::Ne => flag(a != b),
            BinaryOp::Lt => flag(a < b),
            BinaryOp::Le => flag(a <= b),
            BinaryOp::Gt => flag(a > b),
            BinaryOp::Ge => flag(a >= b),
        }
    }
}

/// Reductions along one axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// Sum (0 over an empty axis).
    Sum,
    /// Arithmetic mean (NaN over an empty axis).
    Mean,
    /// Maximum; NaN if any element is NaN; an error over an empty axis.
    Max,
    /// Minimum; NaN if any element is NaN; an error over an empty axis.
    Min,
    /// Unbiased variance (divides by n - 1, as PyTorch's default; NaN for n = 1).
    Var,
}

impl ReduceOp {
    /// Every reduction.
    pub const ALL: [ReduceOp; 5] = [
        ReduceOp::Sum,
        ReduceOp::Mean,
        ReduceOp::Max,
        ReduceOp::Min,
        ReduceOp::Var,
    ];

    /// Name as in the public API.
    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Mean => "mean",
            ReduceOp::Max => "max",
            ReduceOp::Min => "min",
            ReduceOp::Var => "var",
        }
    }

    /// The value of the `OP` override constant of `reduce` in `shaders/reduce.wgsl`.
    pub(crate) fn shader_id(self) -> u32 {
        self as u32
    }

    /// The reduction of `len` values read by `get(j)`, as the CPU backend computes it.
    pub(crate) fn apply(self, len: usize, get: impl Fn(usize) -> f32) -> f32 {
        match self {
            ReduceOp::Sum => (0..len).map(&get).sum(),
            ReduceOp::Mean => (0..len).map(&get).sum::<f32>() / len as f32,
            ReduceOp::Max | ReduceOp::Min => {
                let mut acc = get(0);
                for j in 0..len {
                    let v = get(j);
                    if v.is_nan() {
                        return f32::NAN;
                    }
                    acc = if self == ReduceOp::Max {
                        acc.max(v)
                    } else {
                        acc.min(v)
                    };
                }
                acc
            }
            ReduceOp::Var if len == 0 => f32::NAN,
            ReduceOp::Var => {
                let mean = (0..len).map(&get).sum::<f32>() / len as f32;
                (0..len).map(|j| (get(j) - mean).powi(2)).sum::<f32>() / (len as f32 - 1.0)
            }
        }
    }
}
