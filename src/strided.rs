//! Strided copies, the one primitive behind the layout ops (permute, transpose, narrow, concat),
//! described once for both backends.

use crate::error::{Error, Result};
use crate::shape::Shape;

/// Copy every element of a `dims`-shaped view: source element at
/// `in_offset + Σ idx·in_strides`, destination at `out_offset + Σ idx·out_strides`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StridedCopy {
    pub dims: Vec<usize>,
    pub in_strides: Vec<usize>,
    pub in_offset: usize,
    pub out_strides: Vec<usize>,
    pub out_offset: usize,
}

/// Largest rank the GPU copy kernel takes.
pub(crate) const MAX_COPY_RANK: usize = 8;

impl StridedCopy {
    /// All of a dense `part`, placed into a dense whole of strides `out_strides` at position
    /// `at` along `axis` (a part of a `cat`, a gradient inside zeros).
    pub(crate) fn place(part: &Shape, out_strides: &[usize], axis: usize, at: usize) -> Self {
        StridedCopy {
            dims: part.dims().to_vec(),
            in_strides: part.strides(),
            in_offset: 0,
            out_strides: out_strides.to_vec(),
            out_offset: at * out_strides[axis],
        }
    }

    /// This copy with dimensions of extent 1 dropped and each dimension merged into the one outside
    /// it where both sides step across the pair as across one (at least one dimension is left).
    pub(crate) fn simplified(&self) -> StridedCopy {
        let plan = self;
        let mut out = StridedCopy {
            dims: Vec::with_capacity(plan.dims.len()),
            in_strides: Vec::with_capacity(plan.dims.len()),
            in_offset: plan.in_offset,
            out_strides: Vec::with_capacity(plan.dims.len()),
            out_offset: plan.out_offset,
        };
        for d in (0..plan.dims.len()).filter(|&d| plan.dims[d] != 1) {
            let (e, si, so) = (plan.dims[d], plan.in_strides[d], plan.out_strides[d]);
            match (
                out.dims.last_mut(),
                out.in_strides.last_mut(),
                out.out_strides.last_mut(),
            ) {
                (Some(pe), Some(pi), Some(po)) if *pi == si * e && *po == so * e => {
                    *pe *= e;
                    *pi = si;
                    *po = so;
                }
                _ => {
                    out.dims.push(e);
                    out.in_strides.push(si);
                    out.out_strides.push(so);
                }
            }
        }
        if out.dims.is_empty() {
            out.dims.push(1);
            out.in_strides.push(0);
            out.out_strides.push(0);
        }
        out
    }

    pub(crate) fn numel(&self) -> usize {
        self.dims.iter().product()
    }

    /// The same copy with unit dimensions dropped (they never move an index) and at least one
    /// dimension; `Unsupported` past `MAX_COPY_RANK` (the GPU copy kernel's cap).
    pub(crate) fn squeezed(&self, op: &'static str) -> Result<StridedCopy> {
        let keep: Vec<usize> = (0..self.dims.len())
            .filter(|&d| self.dims[d] != 1)
            .collect();
        if keep.len() > MAX_COPY_RANK {
            return Err(Error::Unsupported {
                op,
                reason: format!(
                    "{} dimensions of extent > 1; the copy kernel handles {MAX_COPY_RANK}",
                    keep.len()
                ),
            });
        }
        let pick = |v: &[usize]| -> Vec<usize> {
            let p: Vec<usize> = keep.iter().map(|&d| v[d]).collect();
            if p.is_empty() { vec![0] } else { p }
        };
        Ok(StridedCopy {
            dims: if keep.is_empty() {
                vec![1]
            } else {
                keep.iter().map(|&d| self.dims[d]).collect()
            },
            in_strides: pick(&self.in_strides),
            in_offset: self.in_offset,
            out_strides: pick(&self.out_strides),
            out_offset: self.out_offset,
        })
    }
}
