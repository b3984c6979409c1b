//! Unary, binary and fill loops, parallel over chunks.

use super::{alloc, reserve, spin_pool};
use crate::error::Result;
use crate::op::{BinaryOp, UnaryOp};
use crate::shape::BroadcastLayout;
use std::mem::MaybeUninit;

/// Outputs of at least this many values are split over kiln's worker pool (`spin_pool`); below
/// it (about 100 µs of work) waking a worker can cost more than it saves.
const PARALLEL_MIN: usize = 1 << 18;
/// Values converted per step of a unary loop: copied, then transformed while in L1.
const BLOCK: usize = 2048;

/// Fills the first `n` values of `out`'s spare capacity with `fill(start, piece)` (every value
/// of each piece), over the worker pool for large `n`, and sets its length.
fn fill_spare(
    out: &mut Vec<f32>,
    n: usize,
    fill: &(dyn Fn(usize, &mut [MaybeUninit<f32>]) + Sync),
) {
    let spare = &mut out.spare_capacity_mut()[..n];
    if n >= PARALLEL_MIN {
        let per = n.div_ceil(spin_pool::width());
        spin_pool::run_chunks(spare, per, &|t, piece| fill(t * per, piece));
    } else {
        fill(0, spare);
    }
    // SAFETY: every piece was filled completely (the contract of `fill`).
    unsafe { out.set_len(n) };
}

/// `&mut [f32]` over values that have all been written.
///
/// # Safety
/// Every value of `d` is initialised.
unsafe fn assume_init(d: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: per the contract; MaybeUninit<f32> has f32's layout.
    unsafe { &mut *(d as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

pub(crate) fn unary(x: &[f32], op: UnaryOp) -> Result<Vec<f32>> {
    let mut out = reserve(op.name(), x.len())?;
    fill_spare(&mut out, x.len(), &|start, piece| {
        let src = &x[start..start + piece.len()];
        for (s, d) in src.chunks(BLOCK).zip(piece.chunks_mut(BLOCK)) {
            d.iter_mut().zip(s).for_each(|(d, &v)| {
                d.write(v);
            });
            // SAFETY: every value of `d` was just written.
            op.apply_slice(unsafe { assume_init(d) });
        }
    });
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
    let mut out = reserve(op.name(), n)?;
    if n == 0 {
        return Ok(out);
    }
    let last = layout.dims.len() - 1;
    let inner = layout.dims[last];
    let (sa, sb) = (layout.lhs[last], layout.rhs[last]);
    fill_spare(&mut out, n, &|start, piece| {
        // The piece covers output values start..start + len: row by row (whole or partial).
        let mut at = start;
        let mut piece = piece;
        while !piece.is_empty() {
            let (r, c0) = (at / inner, at % inner);
            let len = (inner - c0).min(piece.len());
            let (o, rest) = piece.split_at_mut(len);
            let (ia, ib) = layout.offsets(r * inner);
            let at_ab = (ia + c0 * sa, ib + c0 * sb, sa, sb);
            // The arithmetic ops get loops of their own, which the compiler vectorises; the
            // rest call `apply` per value. Both give `apply`'s results.
            match op {
                BinaryOp::Add => binary_row(|x, y| x + y, o, a, b, at_ab),
                BinaryOp::Sub => binary_row(|x, y| x - y, o, a, b, at_ab),
                BinaryOp::Mul => binary_row(|x, y| x * y, o, a, b, at_ab),
                BinaryOp::Div => binary_row(|x, y| x / y, o, a, b, at_ab),
                _ => binary_row(|x, y| op.apply(x, y), o, a, b, at_ab),
            }
            piece = rest;
            at += len;
        }
    });
    Ok(out)
}

/// One row segment `o` of a broadcast binary op: `o[j] = f(a[ia + j·sa], b[ib + j·sb])`, with
/// the contiguous and broadcast strides as plain loops.
#[inline(always)]
fn binary_row<F: Fn(f32, f32) -> f32>(
    f: F,
    o: &mut [MaybeUninit<f32>],
    a: &[f32],
    b: &[f32],
    (ia, ib, sa, sb): (usize, usize, usize, usize),
) {
    let len = o.len();
    match (sa, sb) {
        (1, 1) => o
            .iter_mut()
            .zip(&a[ia..ia + len])
            .zip(&b[ib..ib + len])
            .for_each(|((o, &x), &y)| {
                o.write(f(x, y));
            }),
        (1, 0) => {
            let y = b[ib];
            o.iter_mut().zip(&a[ia..ia + len]).for_each(|(o, &x)| {
                o.write(f(x, y));
            });
        }
        (0, 1) => {
            let x = a[ia];
            o.iter_mut().zip(&b[ib..ib + len]).for_each(|(o, &y)| {
                o.write(f(x, y));
            });
        }
        _ => o.iter_mut().enumerate().for_each(|(j, o)| {
            o.write(f(a[ia + j * sa], b[ib + j * sb]));
        }),
    }
}
