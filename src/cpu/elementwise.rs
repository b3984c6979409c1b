//! Unary, binary and fill loops, parallel over chunks.

use super::{PARALLEL_MIN, alloc};
use crate::error::{Error, Result};
use crate::op::{BinaryOp, UnaryOp};
use crate::shape::BroadcastLayout;
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

/// An empty vector with room for `n` values, or `OutOfMemory` instead of an abort. Filling it
/// from an iterator avoids zeroing memory that is about to be overwritten.
fn reserve(op: &'static str, n: usize) -> Result<Vec<f32>> {
    let mut v: Vec<f32> = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|e| Error::OutOfMemory(format!("{op}: {n} f32 values on the CPU: {e}")))?;
    Ok(v)
}

pub(crate) fn unary(x: &[f32], op: UnaryOp) -> Result<Vec<f32>> {
    let mut out = reserve(op.name(), x.len())?;
    if x.len() >= PARALLEL_MIN {
        x.par_iter()
            .with_min_len(CHUNK)
            .map(|&v| op.apply(v))
            .collect_into_vec(&mut out);
    } else {
        out.extend(x.iter().map(|&v| op.apply(v)));
    }
    Ok(out)
}

pub(crate) fn fill(n: usize, value: f32) -> Result<Vec<f32>> {
    let mut out = alloc("fill", n)?;
    if value != 0.0 {
        out.fill(value);
    }
    Ok(out)
}

/// `c = op(a, b)` under a broadcast layout. The innermost (coalesced) dimension is a plain loop
/// with fixed strides (1 or 0 in the common cases); the outer dimensions are resolved once per row.
pub(crate) fn binary(
    a: &[f32],
    b: &[f32],
    layout: &BroadcastLayout,
    n: usize,
    op: BinaryOp,
) -> Result<Vec<f32>> {
    let mut out = alloc(op.name(), n)?;
    if n == 0 {
        return Ok(out);
    }
    let last = layout.dims.len() - 1;
    let inner = layout.dims[last];
    let (sa, sb) = (layout.lhs[last], layout.rhs[last]);
    let row = |(r, o): (usize, &mut [f32])| {
        let (ia, ib) = layout.offsets(r * inner);
        match (sa, sb) {
            (1, 1) => o
                .iter_mut()
                .zip(&a[ia..ia + inner])
                .zip(&b[ib..ib + inner])
                .for_each(|((o, &x), &y)| *o = op.apply(x, y)),
            (1, 0) => o
                .iter_mut()
                .zip(&a[ia..ia + inner])
                .for_each(|(o, &x)| *o = op.apply(x, b[ib])),
            (0, 1) => o
                .iter_mut()
                .zip(&b[ib..ib + inner])
                .for_each(|(o, &y)| *o = op.apply(a[ia], y)),
            _ => o
                .iter_mut()
                .enumerate()
                .for_each(|(j, o)| *o = op.apply(a[ia + j * sa], b[ib + j * sb])),
        }
    };
    if n >= PARALLEL_MIN {
        let rows_per_task = CHUNK.div_ceil(inner).max(1);
        out.par_chunks_mut(inner)
            .enumerate()
            .with_min_len(rows_per_task)
            .for_each(row);
    } else {
        out.chunks_mut(inner).enumerate().for_each(row);
    }
    Ok(out)
}
