//! Unary, binary and fill loops, parallel over chunks.

use super::{alloc, assume_init, fill_spare, reserve};
use crate::error::Result;
use crate::op::{BinaryOp, UnaryOp};
use crate::shape::BroadcastLayout;
use std::mem::MaybeUninit;

/// Values converted per step of a unary loop: copied, then transformed while in L1.
const BLOCK: usize = 2048;

pub(crate) fn unary(x: &[f32], op: UnaryOp) -> Result<Vec<f32>> {
    let mut out = reserve(op.name(), x.len())?;
    let write_piece = |start: usize, piece: &mut [MaybeUninit<f32>]| {
        let src = &x[start..start + piece.len()];
        super::widest(UnaryPiece { src, piece, op });
    };
    // SAFETY: `write_piece` writes every value of its piece.
    unsafe { fill_spare(&mut out, x.len(), &write_piece) };
    Ok(out)
}

/// `op` of `src` into `piece` (as long), a block at a time: copied, then transformed while
/// in L1, on the CPU's widest vectors.
struct UnaryPiece<'a> {
    src: &'a [f32],
    piece: &'a mut [MaybeUninit<f32>],
    op: UnaryOp,
}

impl super::Wide for UnaryPiece<'_> {
    type Out = ();

    #[inline(always)]
    fn run(self) {
        for (s, d) in self.src.chunks(BLOCK).zip(self.piece.chunks_mut(BLOCK)) {
            d.iter_mut().zip(s).for_each(|(d, &v)| {
                d.write(v);
            });
            // SAFETY: every value of `d` was just written.
            self.op.apply_slice(unsafe { assume_init(d) });
        }
    }
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
    let write_piece = |start: usize, piece: &mut [MaybeUninit<f32>]| {
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
    };
    // SAFETY: `write_piece` writes every value of its piece.
    unsafe { fill_spare(&mut out, n, &write_piece) };
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
