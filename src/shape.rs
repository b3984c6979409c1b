//! Shapes, row-major strides and numpy broadcasting.

use crate::error::{Error, Result};
use std::fmt;

/// The dimensions of a tensor, outermost first (row-major). A shape of rank 0 is a scalar.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

impl Shape {
    /// A shape from its dimensions. Fails if the element count overflows `usize`.
    pub fn new(dims: &[usize]) -> Result<Self> {
        let shape = Shape(dims.to_vec());
        shape.checked_numel().ok_or_else(|| Error::InvalidShape {
            op: "shape",
            reason: format!("{dims:?} has more elements than usize can count"),
        })?;
        Ok(shape)
    }

    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    /// The last dimension's size (1 for a scalar).
    pub(crate) fn last_dim(&self) -> usize {
        self.0.last().copied().unwrap_or(1)
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// Number of elements (1 for a scalar, 0 if any dimension is 0).
    pub fn numel(&self) -> usize {
        self.0.iter().product()
    }

    fn checked_numel(&self) -> Option<usize> {
        self.0.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }

    /// Row-major (C-contiguous) strides, in elements.
    pub fn strides(&self) -> Vec<usize> {
        let mut strides = vec![1; self.rank()];
        for i in (0..self.rank().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * self.0[i + 1];
        }
        strides
    }

    /// The shape that `self` and `other` broadcast to under numpy's rules: dimensions are aligned
    /// from the right; each pair must be equal or contain a 1.
    pub fn broadcast(&self, other: &Shape, op: &'static str) -> Result<Shape> {
        let rank = self.rank().max(other.rank());
        let mut out = vec![0; rank];
        for (i, o) in out.iter_mut().enumerate() {
            let a = dim_from_right(&self.0, rank - 1 - i);
            let b = dim_from_right(&other.0, rank - 1 - i);
            *o = match (a, b) {
                (a, b) if a == b => a,
                (1, b) => b,
                (a, 1) => a,
                _ => {
                    return Err(Error::ShapeMismatch {
                        op,
                        lhs: self.0.clone(),
                        rhs: other.0.clone(),
                    });
                }
            };
        }
        Ok(Shape(out))
    }

    /// Strides (in elements) that read `self` as if it had the shape `out`, which must be a
    /// broadcast of `self`: broadcast dimensions get stride 0.
    pub fn broadcast_strides(&self, out: &Shape) -> Vec<usize> {
        let own = self.strides();
        let offset = out.rank() - self.rank();
        (0..out.rank())
            .map(|i| {
                if i < offset || self.0[i - offset] == 1 {
                    0
                } else {
                    own[i - offset]
                }
            })
            .collect()
    }
}

fn dim_from_right(dims: &[usize], from_right: usize) -> usize {
    if from_right < dims.len() {
        dims[dims.len() - 1 - from_right]
    } else {
        1
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// A broadcast binary operation over `out`, with operand strides coalesced: adjacent dimensions
/// that both operands read contiguously are merged, so the common no-broadcast case has rank 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BroadcastLayout {
    /// Coalesced output dimensions.
    pub dims: Vec<usize>,
    /// Strides of the left operand for `dims`.
    pub lhs: Vec<usize>,
    /// Strides of the right operand for `dims`.
    pub rhs: Vec<usize>,
}

impl BroadcastLayout {
    pub(crate) fn new(lhs: &Shape, rhs: &Shape, out: &Shape) -> Self {
        let ls = lhs.broadcast_strides(out);
        let rs = rhs.broadcast_strides(out);
        let mut dims: Vec<usize> = Vec::new();
        let mut lst: Vec<usize> = Vec::new();
        let mut rst: Vec<usize> = Vec::new();
        for i in 0..out.rank() {
            let d = out.dims()[i];
            if d == 1 {
                continue; // a unit dimension never moves the index
            }
            if let Some(last) = dims.len().checked_sub(1) {
                let contiguous = lst[last] == ls[i] * d && rst[last] == rs[i] * d;
                if contiguous {
                    dims[last] *= d;
                    lst[last] = ls[i];
                    rst[last] = rs[i];
                    continue;
                }
            }
            dims.push(d);
            lst.push(ls[i]);
            rst.push(rs[i]);
        }
        if dims.is_empty() {
            dims.push(1);
            lst.push(0);
            rst.push(0);
        }
        BroadcastLayout {
            dims,
            lhs: lst,
            rhs: rst,
        }
    }

    /// Element offsets of both operands for the output element at linear index `i`.
    pub(crate) fn offsets(&self, mut i: usize) -> (usize, usize) {
        let (mut a, mut b) = (0, 0);
        for d in (0..self.dims.len()).rev() {
            let idx = i % self.dims[d];
            i /= self.dims[d];
            a += idx * self.lhs[d];
            b += idx * self.rhs[d];
        }
        (a, b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(d: &[usize]) -> Shape {
        Shape::new(d).unwrap()
    }

    #[test]
    fn strides_are_row_major() {
        assert_eq!(s(&[2, 3, 4]).strides(), vec![12, 4, 1]);
        assert_eq!(s(&[]).strides(), Vec::<usize>::new());
    }

    #[test]
    fn broadcast_follows_numpy() {
        assert_eq!(
            s(&[2, 1, 4]).broadcast(&s(&[3, 1]), "t").unwrap(),
            s(&[2, 3, 4])
        );
        assert_eq!(s(&[0]).broadcast(&s(&[1]), "t").unwrap(), s(&[0]));
        assert!(matches!(
            s(&[2, 3]).broadcast(&s(&[4]), "add"),
            Err(Error::ShapeMismatch { op: "add", .. })
        ));
    }

    #[test]
    fn layout_coalesces_contiguous_dims() {
        let a = s(&[2, 3, 4]);
        let l = BroadcastLayout::new(&a, &a, &a);
        assert_eq!(l.dims, vec![24]);
        let b = s(&[4]);
        let l = BroadcastLayout::new(&a, &b, &a);
        assert_eq!(l.dims, vec![6, 4]);
        assert_eq!(l.rhs, vec![0, 1]);
        assert_eq!(l.offsets(5), (5, 1));
    }

    #[test]
    fn overflowing_shape_is_an_error() {
        assert!(Shape::new(&[usize::MAX, 2]).is_err());
    }
}
