//! Unary, binary and fill loops, parallel over chunks.

use super::{PARALLEL_MIN, alloc, reserve};
use crate::error::Result;
use crate::op::{BinaryOp, UnaryOp};
use crate::shape::BroadcastLayout;
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

pub(crate) fn unary(x: &[f32], op: UnaryOp) -> Result<Vec<f32>> {
    let mut out = reserve(op.name(), x.len())?;
    out.extend_from_slice(x);
    if x.len() >= PARALLEL_MIN {
        out.par_chunks_mut(CHUNK).for_each(|c| op.apply_slice(c));
    } else {
        op.apply_slice(&mut out);
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
        let at = (ia, ib, sa, sb);
        // The arithmetic ops get loops of their own, which the compiler vectorises; the rest
        // call `apply` per value. Both give `apply`'s results.
        match op {
            BinaryOp::Add => binary_row(|x, y| x + y, o, a, b, at),
            BinaryOp::Sub => binary_row(|x, y| x - y, o, a, b, at),
            BinaryOp::Mul => binary_row(|x, y| x * y, o, a, b, at),
            BinaryOp::Div => binary_row(|x, y| x / y, o, a, b, at),
            _ => binary_row(|x, y| op.apply(x, y), o, a, b, at),
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

/// One row `o` of a broadcast binary op: `o[j] = f(a[ia + j·sa], b[ib + j·sb])`, with the
/// contiguous and broadcast strides as plain loops.
#[inline(always)]
fn binary_row<F: Fn(f32, f32) -> f32>(
    f: F,
    o: &mut [f32],
    a: &[f32],
    b: &[f32],
    (ia, ib, sa, sb): (usize, usize, usize, usize),
) {
    let inner = o.len();
    match (sa, sb) {
        (1, 1) => o
            .iter_mut()
            .zip(&a[ia..ia + inner])
            .zip(&b[ib..ib + inner])
            .for_each(|((o, &x), &y)| *o = f(x, y)),
        (1, 0) => {
            let y = b[ib];
            o.iter_mut()
                .zip(&a[ia..ia + inner])
                .for_each(|(o, &x)| *o = f(x, y));
        }
        (0, 1) => {
            let x = a[ia];
            o.iter_mut()
                .zip(&b[ib..ib + inner])
                .for_each(|(o, &y)| *o = f(x, y));
        }
        _ => o
            .iter_mut()
            .enumerate()
            .for_each(|(j, o)| *o = f(a[ia + j * sa], b[ib + j * sb])),
    }
}
