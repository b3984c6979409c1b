//! Unary ops: the registry table (Rust enum, selectors, WGSL formulas) and the Rust formula and
//! derivative of each op, which the CPU backend runs and the GPU's WGSL mirrors.

use super::math::{erf_f32, exp_f32, log_f32, sigmoid_f32, tanh_f32};
use super::registry::op_family;

op_family! {
    /// Elementwise functions of one tensor. Every one maps NaN to NaN (even `Powf(0.0)`, where C's
    /// `pow` would give 1): the GPU kernels check the bit pattern, so drivers' finite-math
    /// assumptions cannot change it.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub enum UnaryOp, prefix "UNARY" {
        /// `max(x, 0)`.
        Relu = 0, "relu", onnx: "Relu",
            wgsl: "select(v, 0.0, v < 0.0)",
            grad: "select(0.0, 1.0, v > 0.0)";
        /// `x` for `x >= 0`, `alpha * x` otherwise.
        LeakyRelu(alpha = 0.01) = 1, "leaky_relu", onnx: "LeakyRelu",
            wgsl: "select(v, alpha * v, v < 0.0)",
            grad: "select(alpha, 1.0, v > 0.0)";
        /// `x * Φ(x)` with the exact (erf) normal CDF.
        Gelu = 2, "gelu",
            wgsl: "0.5 * v * (1.0 + erf(v * 0.70710678118654752))",
            grad: "0.5 * (1.0 + erf(v * 0.70710678118654752)) + v * 0.3989422804014327 * exp(-0.5 * v * v)";
        /// The tanh approximation of GELU: `0.5 x (1 + tanh(√(2/π)(x + 0.044715 x³)))`.
        GeluTanh = 3, "gelu_tanh",
            wgsl: "0.5 * v * (1.0 + tanh_stable(0.7978845608028654 * (v + 0.044715 * v * v * v)))",
            grad: "gelu_tanh_grad(v)";
        /// `1 / (1 + e^-x)`, evaluated without overflow.
        Sigmoid = 4, "sigmoid", onnx: "Sigmoid",
            wgsl: "sigmoid(v)",
            grad: "sigmoid(v) * (1.0 - sigmoid(v))";
        /// Hyperbolic tangent, evaluated without overflow.
        Tanh = 5, "tanh", onnx: "Tanh",
            wgsl: "tanh_stable(v)",
            grad: "1.0 - tanh_stable(v) * tanh_stable(v)";
        /// `x * sigmoid(x)` (also called swish).
        Silu = 6, "silu",
            wgsl: "v * sigmoid(v)",
            grad: "sigmoid(v) * (1.0 + v * (1.0 - sigmoid(v)))";
        /// `e^x`.
        Exp = 7, "exp", onnx: "Exp",
            wgsl: "exp(v)",
            grad: "exp(v)";
        /// Natural logarithm (`-inf` at 0, NaN below).
        Log = 8, "log", onnx: "Log",
            wgsl: "log_f32(v)",
            grad: "1.0 / v";
        /// Square root (NaN below 0).
        Sqrt = 9, "sqrt", onnx: "Sqrt",
            wgsl: "sqrt(v)",
            grad: "0.5 / sqrt(v)";
        /// `1 / sqrt(x)` (`+inf` at 0, NaN below). WGSL's `inverseSqrt` is approximate.
        Rsqrt = 10, "rsqrt",
            wgsl: "1.0 / sqrt(v)",
            grad: "-0.5 / (v * sqrt(v))";
        /// `|x|`.
        Abs = 11, "abs", onnx: "Abs",
            wgsl: "abs(v)",
            grad: "select(select(0.0, -1.0, v < 0.0), 1.0, v > 0.0)";
        /// `-x`.
        Neg = 12, "neg", onnx: "Neg",
            wgsl: "-v",
            grad: "-1.0";
        /// `1 / x`.
        Recip = 13, "recip", onnx: "Reciprocal",
            wgsl: "1.0 / v",
            grad: "-1.0 / (v * v)";
        /// `x * x`.
        Square = 14, "square",
            wgsl: "v * v",
            grad: "2.0 * v";
        /// `x^p` for a scalar `p` (`powf`; NaN for a negative base and a non-integer `p`).
        Powf(p = 1.5) = 15, "powf",
            wgsl: "pow_signed(v, alpha)",
            grad: "select(alpha * pow_signed(v, alpha - 1.0), 0.0, alpha == 0.0)";
        /// `min(max(x, lo), hi)`.
        Clamp(lo = -1.0, hi = 1.0) = 16, "clamp",
            wgsl: "min(max(v, alpha), beta)",
            grad: "select(0.0, 1.0, v >= alpha && v <= beta)";
        /// `ln(1 + e^x)`, evaluated without overflow.
        Softplus = 17, "softplus", onnx: "Softplus",
            wgsl: "softplus(v)",
            grad: "sigmoid(v)";
        /// `x` for `x > 0`, `alpha (e^x - 1)` otherwise.
        Elu(alpha = 1.0) = 18, "elu", onnx: "Elu",
            wgsl: "select(alpha * (exp(v) - 1.0), v, v > 0.0)",
            grad: "select(alpha * exp(v), 1.0, v > 0.0)";
        /// `x + c`.
        AddScalar(c = 1.0) = 19, "add_scalar",
            wgsl: "v + alpha",
            grad: "1.0";
        /// `x * c`.
        MulScalar(c = 2.0) = 20, "mul_scalar",
            wgsl: "v * alpha",
            grad: "alpha";
        /// `x / c`.
        DivScalar(c = 3.0) = 21, "div_scalar",
            wgsl: "v / alpha",
            grad: "1.0 / alpha";
        /// The error function (the approximation `gelu` uses: absolute error below 1.5e-7).
        Erf = 22, "erf", onnx: "Erf",
            wgsl: "erf(v)",
            grad: "1.1283791670955126 * exp(-v * v)";
        /// Sine. On a GPU, kiln's own f32 sine (WGSL's `sin` promises 2^-11 absolute error
        /// on [-π, π] only): accurate for |x| up to about 1.2e4.
        Sin = 23, "sin", onnx: "Sin",
            wgsl: "sin_f32(v)",
            grad: "cos_f32(v)";
        /// Cosine (computed as `sin`).
        Cos = 24, "cos", onnx: "Cos",
            wgsl: "cos_f32(v)",
            grad: "-sin_f32(v)";
        /// The largest integer not above `x`.
        Floor = 25, "floor", onnx: "Floor",
            wgsl: "floor(v)",
            grad: "0.0";
        /// The smallest integer not below `x`.
        Ceil = 26, "ceil", onnx: "Ceil",
            wgsl: "ceil(v)",
            grad: "0.0";
        /// `-1`, `0` or `1` by the sign of `x` (0 for ±0).
        Sign = 27, "sign", onnx: "Sign",
            wgsl: "select(select(0.0, -1.0, v < 0.0), 1.0, v > 0.0)",
            grad: "0.0";
        /// The nearest integer, ties to even (ONNX's and numpy's `round`).
        Round = 28, "round", onnx: "Round",
            wgsl: "round(v)",
            grad: "0.0";
        /// `min(max(alpha x + beta, 0), 1)` (ONNX's defaults: alpha 0.2, beta 0.5).
        HardSigmoid(alpha = 0.2, beta = 0.5) = 29, "hard_sigmoid", onnx: "HardSigmoid",
            wgsl: "min(max(alpha * v + beta, 0.0), 1.0)",
            grad: "select(0.0, alpha, alpha * v + beta > 0.0 && alpha * v + beta < 1.0)";
        /// `x · min(max(x / 6 + 1/2, 0), 1)` (MobileNetV3's activation).
        HardSwish = 30, "hard_swish", onnx: "HardSwish",
            wgsl: "v * min(max(v * 0.16666667 + 0.5, 0.0), 1.0)",
            grad: "select(select(v * 0.33333334 + 0.5, 1.0, v >= 3.0), 0.0, v <= -3.0)";
    }
}

/// The selector of "no activation" (a matmul without an epilogue activation): `activate` passes
/// the value through and `derivative` gives 1.
pub(crate) const NO_ACTIVATION: u32 = 255;

impl UnaryOp {
    /// The scalar parameters passed to the shader (`alpha`, `beta`); unused ones are 0.
    pub(crate) fn params(self) -> (f32, f32) {
        match self {
            UnaryOp::LeakyRelu(a)
            | UnaryOp::Powf(a)
            | UnaryOp::Elu(a)
            | UnaryOp::AddScalar(a)
            | UnaryOp::MulScalar(a)
            | UnaryOp::DivScalar(a) => (a, 0.0),
            UnaryOp::Clamp(lo, hi) | UnaryOp::HardSigmoid(lo, hi) => (lo, hi),
            UnaryOp::Relu
            | UnaryOp::Gelu
            | UnaryOp::GeluTanh
            | UnaryOp::Sigmoid
            | UnaryOp::Tanh
            | UnaryOp::Silu
            | UnaryOp::Exp
            | UnaryOp::Log
            | UnaryOp::Sqrt
            | UnaryOp::Rsqrt
            | UnaryOp::Abs
            | UnaryOp::Neg
            | UnaryOp::Recip
            | UnaryOp::Square
            | UnaryOp::Softplus
            | UnaryOp::Erf
            | UnaryOp::Sin
            | UnaryOp::Cos
            | UnaryOp::Floor
            | UnaryOp::Ceil
            | UnaryOp::Sign
            | UnaryOp::Round
            | UnaryOp::HardSwish => (0.0, 0.0),
        }
    }

    /// The op on every value of `xs`, in place: the same results as [`UnaryOp::apply`], with
    /// the cheap ops as branch-free loops the compiler vectorises (a call of `apply` per value
    /// cost a fused `linear`'s epilogue more than its bias).
    #[inline(always)]
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
            // `clamp` keeps a NaN.
            UnaryOp::HardSwish => xs.iter_mut().for_each(|x| {
                *x *= (*x * (1.0 / 6.0) + 0.5).clamp(0.0, 1.0);
            }),
            UnaryOp::HardSigmoid(alpha, beta) => xs.iter_mut().for_each(|x| {
                *x = (alpha * *x + beta).clamp(0.0, 1.0);
            }),
            // The transcendental ones as their own loops, so that `exp_f32` vectorises.
            UnaryOp::Exp => xs.iter_mut().for_each(|x| *x = exp_f32(*x)),
            UnaryOp::Sigmoid => xs.iter_mut().for_each(|x| *x = sigmoid_f32(*x)),
            UnaryOp::Tanh => xs.iter_mut().for_each(|x| *x = tanh_f32(*x)),
            UnaryOp::Log => xs.iter_mut().for_each(|x| *x = log_f32(*x)),
            UnaryOp::Silu => xs.iter_mut().for_each(|x| *x *= sigmoid_f32(*x)),
            UnaryOp::Erf => xs.iter_mut().for_each(|x| *x = erf_f32(*x)),
            UnaryOp::Gelu => xs.iter_mut().for_each(|x| *x = gelu(*x)),
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
            UnaryOp::Gelu => gelu(x),
            UnaryOp::GeluTanh => {
                const K: f32 = 0.797_884_6; // sqrt(2/pi)
                0.5 * x * (1.0 + tanh_f32(K * (x + 0.044715 * x * x * x)))
            }
            UnaryOp::Sigmoid => sigmoid_f32(x),
            UnaryOp::Tanh => tanh_f32(x),
            UnaryOp::Silu => x * sigmoid_f32(x),
            UnaryOp::Exp => exp_f32(x),
            UnaryOp::Log => log_f32(x),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Rsqrt => 1.0 / x.sqrt(),
            UnaryOp::Abs => x.abs(),
            UnaryOp::Neg => -x,
            UnaryOp::Recip => 1.0 / x,
            UnaryOp::Square => x * x,
            UnaryOp::Powf(p) => x.powf(p),
            UnaryOp::Clamp(lo, hi) => x.max(lo).min(hi),
            // ln(1 + e^x) = max(x, 0) + ln(1 + e^-|x|)
            UnaryOp::Softplus => x.max(0.0) + exp_f32(-x.abs()).ln_1p(),
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
            UnaryOp::Erf => erf_f32(x),
            UnaryOp::Sin => x.sin(),
            UnaryOp::Cos => x.cos(),
            UnaryOp::Floor => x.floor(),
            UnaryOp::Ceil => x.ceil(),
            UnaryOp::Sign => {
                if x > 0.0 {
                    1.0
                } else if x < 0.0 {
                    -1.0
                } else {
                    0.0
                }
            }
            UnaryOp::Round => x.round_ties_even(),
            UnaryOp::HardSigmoid(alpha, beta) => (alpha * x + beta).clamp(0.0, 1.0),
            UnaryOp::HardSwish => x * (x * (1.0 / 6.0) + 0.5).clamp(0.0, 1.0),
        }
    }
}

impl UnaryOp {
    /// The derivative of the op at `x`, as backward uses it (the registry's `grad` formulas
    /// are the GPU twin). At kinks it takes PyTorch's one-sided values: relu'(0) =
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
            UnaryOp::Gelu => gelu_derivative(x),
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
            UnaryOp::Exp => exp_f32(x),
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
            UnaryOp::Elu(alpha) => step(x > 0.0, 1.0, alpha * exp_f32(x)),
            UnaryOp::AddScalar(_) => 1.0,
            UnaryOp::MulScalar(c) => c,
            UnaryOp::DivScalar(c) => 1.0 / c,
            UnaryOp::Erf => std::f32::consts::FRAC_2_SQRT_PI * exp_f32(-x * x),
            UnaryOp::Sin => x.cos(),
            UnaryOp::Cos => -x.sin(),
            UnaryOp::Floor | UnaryOp::Ceil | UnaryOp::Sign | UnaryOp::Round => 0.0,
            UnaryOp::HardSigmoid(alpha, beta) => {
                let y = alpha * x + beta;
                step(y > 0.0 && y < 1.0, alpha, 0.0)
            }
            // PyTorch's: 0 up to -3, 1 from 3, x/3 + 1/2 between.
            UnaryOp::HardSwish => step(x <= -3.0, 0.0, step(x >= 3.0, 1.0, x * (1.0 / 3.0) + 0.5)),
        }
    }
}

/// x·Φ(x) through erf (exact GELU, PyTorch's default).
#[inline(always)]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// d/dx of gelu (erf form): Φ(x) + x·φ(x); NaN for NaN.
#[inline(always)]
pub(crate) fn gelu_derivative(x: f32) -> f32 {
    0.5 * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2))
        + x * 0.398_942_3 * exp_f32(-0.5 * x * x)
}
