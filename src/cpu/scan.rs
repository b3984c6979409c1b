//! Walks along one axis, the twins of `shaders/scan.wgsl`: cumsum and topk.

use super::alloc;
use crate::error::Result;
use std::cmp::Ordering;

/// Running sums along the middle axis of `[outer, len, inner]` (see the shader), in f32 and
/// in the shader's order.
pub(crate) fn cumsum(
    x: &[f32],
    (outer, len, inner): (usize, usize, usize),
    exclusive: bool,
    reverse: bool,
) -> Result<Vec<f32>> {
    let mut out = alloc("cumsum", x.len())?;
    for o in 0..outer * inner {
        let base = (o / inner) * len * inner + o % inner;
        let mut acc = 0.0f32;
        for t in 0..len {
            let j = if reverse { len - 1 - t } else { t };
            let at = base + j * inner;
            if exclusive {
                out[at] = acc;
                acc += x[at];
            } else {
                acc += x[at];
                out[at] = acc;
            }
        }
    }
    Ok(out)
}

/// topk's order between two values: larger first with `largest`, else smaller first; NaN
/// counts as the largest value, and equal values (NaN with NaN) keep their index order.
fn topk_order(a: f32, b: f32, largest: bool) -> Ordering {
    let by_value = a
        .partial_cmp(&b)
        .unwrap_or_else(|| a.is_nan().cmp(&b.is_nan()));
    if largest {
        by_value.reverse()
    } else {
        by_value
    }
}

/// The `k` first values along the middle axis of `[outer, len, inner]` in [`topk_order`] (ties
/// by the lower index) and their indices, each `[outer, k, inner]`.
pub(crate) fn topk(
    x: &[f32],
    (outer, len, inner): (usize, usize, usize),
    k: usize,
    largest: bool,
) -> Result<(Vec<f32>, Vec<u32>)> {
    let n = outer * k * inner;
    let (mut values, mut indices) = (alloc("topk", n)?, vec![0u32; n]);
    let mut order: Vec<usize> = Vec::with_capacity(len);
    for o in 0..outer * inner {
        let (b, i) = (o / inner, o % inner);
        let at = |j: usize| x[(b * len + j) * inner + i];
        order.clear();
        order.extend(0..len);
        // A stable sort: ties keep the lower index first.
        order.sort_by(|&p, &q| topk_order(at(p), at(q), largest));
        for (r, &j) in order.iter().take(k).enumerate() {
            values[(b * k + r) * inner + i] = at(j);
            indices[(b * k + r) * inner + i] = j as u32;
        }
    }
    Ok((values, indices))
}
