//! Binary ops: the registry table and the Rust formula of each op.

use super::registry::op_family;

op_family! {
    /// Elementwise functions of two tensors, with numpy broadcasting. `Maximum` and `Minimum`
    /// propagate NaN (like PyTorch, unlike IEEE `fmax`); comparisons give 1.0 or 0.0 and are false
    /// for NaN except `Ne`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum BinaryOp, prefix "BINARY" {
        /// `a + b`
        Add = 0, "add", onnx: "Add", wgsl: "x + y";
        /// `a - b`
        Sub = 1, "sub", onnx: "Sub", wgsl: "x - y";
        /// `a * b`
        Mul = 2, "mul", onnx: "Mul", wgsl: "x * y";
        /// `a / b` (IEEE: x/0 is ±Inf, 0/0 is NaN)
        Div = 3, "div", onnx: "Div", wgsl: "x / y";
        /// `max(a, b)`, NaN if either is NaN.
        Maximum = 4, "maximum", wgsl: "select(max(x, y), nan_f32(), any_nan(x, y))";
        /// `min(a, b)`, NaN if either is NaN.
        Minimum = 5, "minimum", wgsl: "select(min(x, y), nan_f32(), any_nan(x, y))";
        /// `a^b` (`powf` semantics).
        Pow = 6, "pow", onnx: "Pow",
            wgsl: "pow_signed(x, y)";
        /// `a == b` as 1.0 / 0.0.
        Eq = 7, "eq", onnx: "Equal", wgsl: "flag(!any_nan(x, y) && x == y)";
        /// `a != b` as 1.0 / 0.0.
        Ne = 8, "ne", wgsl: "flag(any_nan(x, y) || x != y)";
        /// `a < b` as 1.0 / 0.0.
        Lt = 9, "lt", onnx: "Less", wgsl: "flag(!any_nan(x, y) && x < y)";
        /// `a <= b` as 1.0 / 0.0.
        Le = 10, "le", onnx: "LessOrEqual", wgsl: "flag(!any_nan(x, y) && x <= y)";
        /// `a > b` as 1.0 / 0.0.
        Gt = 11, "gt", onnx: "Greater", wgsl: "flag(!any_nan(x, y) && x > y)";
        /// `a >= b` as 1.0 / 0.0.
        Ge = 12, "ge", onnx: "GreaterOrEqual", wgsl: "flag(!any_nan(x, y) && x >= y)";
    }
}

impl BinaryOp {
    /// Whether the op is a comparison (a 1.0/0.0 mask, with no gradient).
    pub fn is_comparison(self) -> bool {
        match self {
            BinaryOp::Eq
            | BinaryOp::Ne
            | BinaryOp::Lt
            | BinaryOp::Le
            | BinaryOp::Gt
            | BinaryOp::Ge => true,
            BinaryOp::Add
            | BinaryOp::Sub
            | BinaryOp::Mul
            | BinaryOp::Div
            | BinaryOp::Maximum
            | BinaryOp::Minimum
            | BinaryOp::Pow => false,
        }
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
