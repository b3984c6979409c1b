//! Reductions along one axis: the registry table and the Rust reference of each.

use super::registry::op_family;

op_family! {
    /// Reductions along one axis.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum ReduceOp, prefix "REDUCE" {
        /// Sum (0 over an empty axis).
        Sum = 0, "sum";
        /// Arithmetic mean (NaN over an empty axis).
        Mean = 1, "mean";
        /// Maximum; NaN if any element is NaN; an error over an empty axis.
        Max = 2, "max";
        /// Minimum; NaN if any element is NaN; an error over an empty axis.
        Min = 3, "min";
        /// Unbiased variance (divides by n - 1, as PyTorch's default; NaN for n = 1).
        Var = 4, "var";
    }
}

impl ReduceOp {
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
