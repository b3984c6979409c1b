//! Index-driven loops: index_select, index_copy, gather (for any element type), `where`, and the grouping
//! of indices by row that index_select's backward uses on every device.

use super::{alloc, par_chunks_mut};
use crate::backend::Around;
use crate::error::Result;

/// Writes `src` (`[outer, idx.len(), inner]`) into the slices `idx` (checked) of the middle
/// axis of `dst` (`[outer, len, inner]`).
pub(crate) fn index_copy<T: Copy>(
    dst: &mut [T],
    src: &[T],
    idx: &[u32],
    (outer, len, inner): Around,
) {
    let count = idx.len();
    for o in 0..outer {
        for (j, &at) in idx.iter().enumerate() {
            let to = (o * len + at as usize) * inner;
            let from = (o * count + j) * inner;
            dst[to..to + inner].copy_from_slice(&src[from..from + inner]);
        }
    }
}

/// index_select along the middle axis of `[outer, len, inner]` with checked indices.
pub(crate) fn index_select<T: Copy + Default>(
    x: &[T],
    idx: &[u32],
    (outer, len, inner): (usize, usize, usize),
) -> Result<Vec<T>> {
    let count = idx.len();
    let mut out = alloc("index_select", outer * count * inner)?;
    if count == 0 || inner == 0 {
        return Ok(out);
    }
    // Block by block: each picked slice of `inner` values is one copy (no division per value).
    for (o, block) in out.chunks_exact_mut(count * inner).enumerate() {
        let src = &x[o * len * inner..(o + 1) * len * inner];
        if inner == 1 {
            block
                .iter_mut()
                .zip(idx)
                .for_each(|(y, &j)| *y = src[j as usize]);
        } else {
            for (dst, &j) in block.chunks_exact_mut(inner).zip(idx) {
                let s = j as usize * inner;
                dst.copy_from_slice(&src[s..s + inner]);
            }
        }
    }
    Ok(out)
}

/// PyTorch's gather along `axis`: `out[m] = x[m with m[axis] = idx[m]]` over the index's shape
/// `dims`, for a source with strides `x_strides` (indices checked by the caller).
pub(crate) fn gather<T: Copy + Default>(
    x: &[T],
    idx: &[u32],
    dims: &[usize],
    x_strides: &[usize],
    axis: usize,
) -> Result<Vec<T>> {
    let mut out = alloc("gather", idx.len())?;
    for (i, o) in out.iter_mut().enumerate() {
        let (mut rem, mut src) = (i, 0);
        for d in (0..dims.len()).rev() {
            let mut at = rem % dims[d];
            rem /= dims[d];
            if d == axis {
                at = idx[i] as usize;
            }
            src += at * x_strides[d];
        }
        *o = x[src];
    }
    Ok(out)
}

/// `a` where the mask is non-zero (NaN counts as non-zero), else `b`, over the output
/// dimensions `dims`, each operand read through its broadcast `strides` (the twin of
/// `shaders/where.wgsl`).
pub(crate) fn where_(
    [m, a, b]: [&[f32]; 3],
    dims: &[usize],
    [sm, sa, sb]: [&[usize]; 3],
) -> Result<Vec<f32>> {
    let n = dims.iter().product();
    let mut v = alloc("where", n)?;
    // Rows of the last axis in parallel: each row's offsets once, then strided walks.
    let outer = dims.len().saturating_sub(1);
    let inner = dims.last().copied().unwrap_or(1);
    let step = |s: &[usize]| s.get(outer).copied().unwrap_or(0);
    let (tm, ta, tb) = (step(sm), step(sa), step(sb));
    par_chunks_mut(&mut v, inner, inner, &|row, out| {
        let (mut rem, mut im, mut ia, mut ib) = (row, 0, 0, 0);
        for d in (0..outer).rev() {
            let idx = rem % dims[d];
            rem /= dims[d];
            im += idx * sm[d];
            ia += idx * sa[d];
            ib += idx * sb[d];
        }
        for (j, o) in out.iter_mut().enumerate() {
            *o = if m[im + j * tm].to_bits() & 0x7fff_ffff != 0 {
                a[ia + j * ta]
            } else {
                b[ib + j * tb]
            };
        }
    });
    Ok(v)
}

/// The positions `j` of `idx` grouped by the row `idx[j]` (< `len`) they pick, by a stable
/// counting sort: `order[starts[r]..starts[r + 1]]` are the `j` with `idx[j] == r`, in order.
/// Both backends' index_select backward read this, so each does O(rows + picks) work.
pub(crate) fn group_by_row(idx: &[u32], len: usize) -> (Vec<u32>, Vec<u32>) {
    let mut starts = vec![0u32; len + 1];
    for &r in idx {
        starts[r as usize + 1] += 1;
    }
    for r in 0..len {
        starts[r + 1] += starts[r];
    }
    let mut next = starts.clone();
    let mut order = vec![0u32; idx.len()];
    for (j, &r) in idx.iter().enumerate() {
        order[next[r as usize] as usize] = j as u32;
        next[r as usize] += 1;
    }
    (starts, order)
}
