//! The closed op set and the scalar formula of each op, shared by the CPU backend and mirrored in
//! WGSL (`shaders/`). The selector numbers here are the `OP` override constants of the shaders.

/// Elementwise functions of one tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UnaryOp {
    /// `max(x, 0)`; NaN stays NaN.
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
}

impl UnaryOp {
    /// Every unary op, with a representative parameter where one is needed.
    pub const ALL: [UnaryOp; 7] = [
        UnaryOp::Relu,
        UnaryOp::LeakyRelu(0.01),
        UnaryOp::Gelu,
        UnaryOp::GeluTanh,
        UnaryOp::Sigmoid,
        UnaryOp::Tanh,
        UnaryOp::Silu,
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
        }
    }

    /// The value of the `OP` override constant in `shaders/unary.wgsl`.
    pub(crate) fn shader_id(self) -> u32 {
        match self {
            UnaryOp::Relu => 0,
            UnaryOp::LeakyRelu(_) => 1,
            UnaryOp::Gelu => 2,
            UnaryOp::GeluTanh => 3,
            UnaryOp::Sigmoid => 4,
            UnaryOp::Tanh => 5,
            UnaryOp::Silu => 6,
        }
    }

    /// The scalar parameter passed to the shader (alpha for leaky_relu, unused otherwise).
    pub(crate) fn param(self) -> f32 {
        match self {
            UnaryOp::LeakyRelu(alpha) => alpha,
            _ => 0.0,
        }
    }

    /// The op on one f32 value, exactly as the CPU backend computes it.
    pub fn apply(self, x: f32) -> f32 {
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

/// Elementwise functions of two tensors, with numpy broadcasting.
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
}

impl BinaryOp {
    /// Every binary op.
    pub const ALL: [BinaryOp; 4] = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div];

    /// Name as in the public API.
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
        }
    }

    /// The value of the `OP` override constant in `shaders/binary.wgsl`.
    pub(crate) fn shader_id(self) -> u32 {
        match self {
            BinaryOp::Add => 0,
            BinaryOp::Sub => 1,
            BinaryOp::Mul => 2,
            BinaryOp::Div => 3,
        }
    }

    /// The op on one pair of f32 values.
    pub fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
        }
    }
}
