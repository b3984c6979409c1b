//! The strided copy behind the layout ops, row by row: an odometer over the outer dimensions
//! and a tight loop (or a `copy_from_slice` where both sides are contiguous) over the last.

use crate::strided::StridedCopy;

/// Copies `plan`'s values of `src` into `dst`, row by row of the plan's last dimension (after
/// dropping unit dimensions and merging those both sides walk contiguously); a transpose (the
/// output's rows read down the input's columns) goes tile by tile, so both sides stay in cache.
pub(crate) fn strided_copy<T: Copy>(src: &[T], dst: &mut [T], plan: &StridedCopy) {
    let n = plan.numel();
    if n == 0 {
        return;
    }
    let plan = plan.simplified();
    let last = plan.dims.len() - 1;
    let (len, si, so) = (
        plan.dims[last],
        plan.in_strides[last],
        plan.out_strides[last],
    );
    // A dimension the input walks contiguously while the output's rows stride through it:
    // copy tiles of it and the last dimension.
    let across = (0..last).find(|&q| plan.in_strides[q] == 1 && plan.dims[q] >= 8);
    if let Some(q) = across.filter(|_| so == 1 && si != 1 && len >= 8) {
        let (rows, oq) = (plan.dims[q], plan.out_strides[q]);
        let mut outer = plan.clone();
        outer.dims[q] = 1;
        outer.dims[last] = 1;
        // A tile goes through a buffer: read as the input's contiguous runs (along `q`),
        // written as the output's (along the last dimension).
        let mut tile = [[src[plan.in_offset]; TILE]; TILE];
        each_start(&outer, |s, d| {
            for i0 in (0..rows).step_by(TILE) {
                let ni = TILE.min(rows - i0);
                for j0 in (0..len).step_by(TILE) {
                    let nj = TILE.min(len - j0);
                    for (j, t) in tile[..nj].iter_mut().enumerate() {
                        t[..ni].copy_from_slice(&src[s + i0 + (j0 + j) * si..][..ni]);
                    }
                    for i in 0..ni {
                        let out = &mut dst[d + (i0 + i) * oq + j0..][..nj];
                        for (o, t) in out.iter_mut().zip(&tile[..nj]) {
                            *o = t[i];
                        }
                    }
                }
            }
        });
        return;
    }
    let mut row = plan.clone();
    row.dims[last] = 1;
    each_start(&row, |s, d| {
        if si == 1 && so == 1 {
            dst[d..d + len].copy_from_slice(&src[s..s + len]);
        } else {
            for j in 0..len {
                dst[d + j * so] = src[s + j * si];
            }
        }
    });
}

/// Side of the square tiles a transposing copy moves at a time.
const TILE: usize = 32;

/// `f(source index, destination index)` at every position of `plan` (an odometer, the last
/// dimension fastest).
fn each_start(plan: &StridedCopy, mut f: impl FnMut(usize, usize)) {
    let rank = plan.dims.len();
    let mut idx = vec![0usize; rank];
    let (mut s, mut d) = (plan.in_offset, plan.out_offset);
    for _ in 0..plan.numel() {
        f(s, d);
        for k in (0..rank).rev() {
            idx[k] += 1;
            s += plan.in_strides[k];
            d += plan.out_strides[k];
            if idx[k] < plan.dims[k] {
                break;
            }
            s -= idx[k] * plan.in_strides[k];
            d -= idx[k] * plan.out_strides[k];
            idx[k] = 0;
        }
    }
}

/// `src` (contiguous, of `src_dims`) padded or cropped to `dims`, `before[d]` being the output
/// index minus the source index along d; the rest `value`. Row by row of the last dimension.
pub(crate) fn pad(
    src: &[f32],
    src_dims: &[usize],
    dims: &[usize],
    before: &[isize],
    value: f32,
) -> crate::error::Result<Vec<f32>> {
    let n: usize = dims.iter().product();
    let mut out = super::alloc("pad", n)?;
    let Some(&last) = dims.last() else {
        out.copy_from_slice(&src[..n]);
        return Ok(out);
    };
    let r = dims.len();
    let src_last = src_dims[r - 1];
    // The output columns that read the source: lo..hi.
    let shift = before[r - 1];
    let lo = shift.clamp(0, last as isize) as usize;
    let hi = (shift + src_last as isize).clamp(lo as isize, last as isize) as usize;
    for (row, dst) in out.chunks_mut(last.max(1)).enumerate() {
        // The source row, if every leading index lands inside the source.
        let (mut rem, mut at, mut stride, mut inside) = (row, 0usize, src_last, true);
        for d in (0..r - 1).rev() {
            let o = rem % dims[d];
            rem /= dims[d];
            let i = o as isize - before[d];
            inside &= i >= 0 && (i as usize) < src_dims[d];
            at += i.max(0) as usize * stride;
            stride *= src_dims[d];
        }
        if !inside || lo == hi {
            dst.fill(value);
            continue;
        }
        dst[..lo].fill(value);
        dst[hi..].fill(value);
        let from = at + (lo as isize - shift) as usize;
        dst[lo..hi].copy_from_slice(&src[from..from + hi - lo]);
    }
    Ok(out)
}
