//! Reductions and softmax along one axis of `[outer, len, inner]`, parallel over output rows.

use super::alloc;
use crate::error::Result;
use crate::op::ReduceOp;
use rayon::prelude::*;

pub(crate) fn reduce(
    x: &[f32],
    (outer, len, inner): (usize, usize, usize),
    op: ReduceOp,
) -> Result<Vec<f32>> {
    let mut out = alloc(op.name(), outer * inner)?;
    if inner == 0 {
        return Ok(out);
    }
    out.par_chunks_mut(inner).enumerate().for_each(|(o, row)| {
        let base = o * len * inner;
        for (i, y) in row.iter_mut().enumerate() {
            *y = op.apply(len, |j| x[base + j * inner + i]);
        }
    });
    Ok(out)
}

pub(crate) fn softmax(
    x: &[f32],
    (outer, len, inner): (usize, usize, usize),
    log: bool,
) -> Result<Vec<f32>> {
    let mut out = alloc(
        if log { "log_softmax" } else { "softmax" },
        outer * len * inner,
    )?;
    if len == 0 || inner == 0 {
        return Ok(out);
    }
    out.par_chunks_mut(len * inner)
        .enumerate()
        .for_each(|(o, block)| {
            let src = &x[o * len * inner..(o + 1) * len * inner];
            for i in 0..inner {
                let at = |j: usize| j * inner + i;
                if (0..len).any(|j| src[at(j)].is_nan()) {
                    (0..len).for_each(|j| block[at(j)] = f32::NAN);
                    continue;
                }
                let m = (0..len)
                    .map(|j| src[at(j)])
                    .fold(f32::NEG_INFINITY, f32::max);
                let sum: f32 = (0..len).map(|j| (src[at(j)] - m).exp()).sum();
                let log_sum = sum.ln();
                for j in 0..len {
                    let d = src[at(j)] - m;
                    block[at(j)] = if log { d - log_sum } else { d.exp() / sum };
                }
            }
        });
    Ok(out)
}
