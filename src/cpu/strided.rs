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
