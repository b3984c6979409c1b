//! Shape checking and batch layout for matmul, shared by both backends.

use crate::error::{Error, Result};
use crate::shape::Shape;

/// A validated `[.., m, k] x [.., k, n]` product with its batch dimensions broadcast.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MatmulPlan {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    /// Element offsets of each batch's A and B matrices, in output batch order.
    pub offsets: Vec<(usize, usize)>,
    /// (row stride, column stride) of A's matrices.
    pub a_strides: (usize, usize),
    /// (row stride, column stride) of B's matrices.
    pub b_strides: (usize, usize),
    /// Shape of the result: broadcast batch dims, then m, n.
    pub out_shape: Shape,
}

impl MatmulPlan {
    pub(crate) fn new(a: &Shape, b: &Shape) -> Result<Self> {
        let mismatch = || Error::ShapeMismatch {
            op: "matmul",
            lhs: a.dims().to_vec(),
            rhs: b.dims().to_vec(),
        };
        if a.rank() < 2 || b.rank() < 2 {
            return Err(Error::InvalidShape {
                op: "matmul",
                reason: format!(
                    "operands need at least 2 dimensions ([.., m, k] x [.., k, n]), got {a} and {b}"
                ),
            });
        }
        let (ad, bd) = (a.dims(), b.dims());
        let (m, k) = (ad[ad.len() - 2], ad[ad.len() - 1]);
        let (k2, n) = (bd[bd.len() - 2], bd[bd.len() - 1]);
        if k != k2 {
            return Err(mismatch());
        }
        let a_batch = Shape::new(&ad[..ad.len() - 2])?;
        let b_batch = Shape::new(&bd[..bd.len() - 2])?;
        let batch = a_batch
            .broadcast(&b_batch, "matmul")
            .map_err(|_| mismatch())?;
        let a_bs = a_batch.broadcast_strides(&batch);
        let b_bs = b_batch.broadcast_strides(&batch);
        let dims = batch.dims();
        let offsets = (0..batch.numel())
            .map(|mut i| {
                let (mut oa, mut ob) = (0, 0);
                for d in (0..dims.len()).rev() {
                    let idx = i % dims[d];
                    i /= dims[d];
                    oa += idx * a_bs[d] * m * k;
                    ob += idx * b_bs[d] * k * n;
                }
                (oa, ob)
            })
            .collect();
        let mut out = dims.to_vec();
        out.extend([m, n]);
        Ok(MatmulPlan {
            m,
            k,
            n,
            offsets,
            a_strides: (k, 1),
            b_strides: (n, 1),
            out_shape: Shape::new(&out)?,
        })
    }

    /// `op(a) x op(b)` where `op` transposes the last two dimensions when asked, read through
    /// strides (nothing is materialised).
    pub(crate) fn transposed(a: &Shape, b: &Shape, ta: bool, tb: bool) -> Result<Self> {
        let swap = |s: &Shape, t: bool| -> Result<Shape> {
            let mut d = s.dims().to_vec();
            let r = d.len();
            if t && r >= 2 {
                d.swap(r - 2, r - 1);
            }
            Shape::new(&d)
        };
        let mut plan = Self::new(&swap(a, ta)?, &swap(b, tb)?).map_err(|e| match e {
            Error::ShapeMismatch { op, .. } => Error::ShapeMismatch {
                op,
                lhs: a.dims().to_vec(),
                rhs: b.dims().to_vec(),
            },
            other => other,
        })?;
        if ta {
            // A is stored [.., k, m]: element (i, p) at p*m + i.
            plan.a_strides = (1, plan.m);
        }
        if tb {
            // B is stored [.., n, k]: element (p, j) at j*k + p.
            plan.b_strides = (1, plan.k);
        }
        Ok(plan)
    }

    /// `a x wᵀ` for `w` of shape `[n, k]` (a linear layer's weight), read through strides: the
    /// transpose is never materialised.
    pub(crate) fn with_transposed_rhs(a: &Shape, w: &Shape) -> Result<Self> {
        if w.rank() != 2 {
            return Err(Error::InvalidShape {
                op: "linear",
                reason: format!("the weight must be [out_features, in_features], got {w}"),
            });
        }
        let (n, k) = (w.dims()[0], w.dims()[1]);
        let wt = Shape::new(&[k, n])?;
        let mut plan = Self::new(a, &wt).map_err(|e| match e {
            Error::ShapeMismatch { .. } => Error::ShapeMismatch {
                op: "linear",
                lhs: a.dims().to_vec(),
                rhs: w.dims().to_vec(),
            },
            Error::InvalidShape { reason, .. } => Error::InvalidShape {
                op: "linear",
                reason,
            },
            other => other,
        })?;
        plan.b_strides = (1, k);
        Ok(plan)
    }

    pub(crate) fn out_numel(&self) -> usize {
        self.out_shape.numel()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_dims_broadcast() {
        let a = Shape::new(&[2, 1, 3, 4]).unwrap();
        let b = Shape::new(&[5, 4, 6]).unwrap();
        let p = MatmulPlan::new(&a, &b).unwrap();
        assert_eq!(p.out_shape.dims(), &[2, 5, 3, 6]);
        assert_eq!(p.offsets.len(), 10);
        assert_eq!(p.offsets[1], (0, 24));
        assert_eq!(p.offsets[5], (12, 0));
    }

    #[test]
    fn inner_dims_must_agree() {
        let a = Shape::new(&[3, 4]).unwrap();
        let b = Shape::new(&[5, 6]).unwrap();
        assert!(matches!(
            MatmulPlan::new(&a, &b),
            Err(Error::ShapeMismatch { op: "matmul", .. })
        ));
    }
}
