//! Unary, binary and fill loops, parallel over chunks.

use super::{PARALLEL_MIN, alloc};
use crate::error::Result;
use crate::op::{BinaryOp, UnaryOp};
use crate::shape::BroadcastLayout;
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

pub(crate) fn unary(x: &[f32], op: UnaryOp) -> Result<Vec<f32>> {
    let mut out = alloc(op.name(), x.len())?;
    let f = |(o, i): (&mut [f32], &[f32])| {
        for (o, &v) in o.iter_mut().zip(i) {
            *o = op.apply(v);
        }
    };
    if x.len() >= PARALLEL_MIN {
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(f);
    } else {
        f((&mut out, x));
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

pub(crate) fn binary(
    a: &[f32],
    b: &[f32],
    layout: &BroadcastLayout,
    n: usize,
    op: BinaryOp,
) -> Result<Vec<f32>> {
    let mut out = alloc(op.name(), n)?;
    let same = layout.dims.len() == 1 && layout.lhs[0] == 1 && layout.rhs[0] == 1;
    let f = |(c, o): (usize, &mut [f32])| {
        let start = c * CHUNK;
        if same {
            for (j, o) in o.iter_mut().enumerate() {
                *o = op.apply(a[start + j], b[start + j]);
            }
        } else {
            for (j, o) in o.iter_mut().enumerate() {
                let (ia, ib) = layout.offsets(start + j);
                *o = op.apply(a[ia], b[ib]);
            }
        }
    };
    if n >= PARALLEL_MIN {
        out.par_chunks_mut(CHUNK).enumerate().for_each(f);
    } else {
        out.chunks_mut(CHUNK).enumerate().for_each(f);
    }
    Ok(out)
}
