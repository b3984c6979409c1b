//! The strided copy behind the layout ops, row by row: an odometer over the outer dimensions
//! and a tight loop (or a `copy_from_slice` where both sides are contiguous) over the last.

use crate::strided::StridedCopy;

pub(crate) fn strided_copy<T: Copy>(src: &[T], dst: &mut [T], plan: &StridedCopy) {
    let n = plan.numel();
    if n == 0 {
        return;
    }
    let rank = plan.dims.len();
    if rank == 0 {
        dst[plan.out_offset] = src[plan.in_offset];
        return;
    }
    let last = rank - 1;
    let (len, si, so) = (
        plan.dims[last],
        plan.in_strides[last],
        plan.out_strides[last],
    );
    let mut idx = vec![0usize; last];
    let (mut s, mut d) = (plan.in_offset, plan.out_offset);
    for _ in 0..n / len {
        if si == 1 && so == 1 {
            dst[d..d + len].copy_from_slice(&src[s..s + len]);
        } else {
            for j in 0..len {
                dst[d + j * so] = src[s + j * si];
            }
        }
        // Advance the odometer over the outer dimensions.
        for k in (0..last).rev() {
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
