//! Rotary position embedding on the CPU: the twin of `shaders/rope.wgsl`.

use super::{alloc, par_chunks_mut};
use crate::error::Result;
use crate::rope::RopeDims;

/// RoPE of `x` with the tables `cos` and `sin` (`[t, half]`), a row of `d` values at a time
/// (see `shaders/rope.wgsl`).
pub(crate) fn rope([x, cos, sin]: [&[f32]; 3], r: &RopeDims) -> Result<Vec<f32>> {
    let mut out: Vec<f32> = alloc("rope", r.total)?;
    let rows_per = (4096 / r.d.max(1)).max(1);
    par_chunks_mut(&mut out, rows_per * r.d, rows_per * r.d, &|chunk, y| {
        for (i, row) in y.chunks_exact_mut(r.d).enumerate() {
            let at = (chunk * rows_per + i) * r.d;
            let src = &x[at..at + r.d];
            let pos = (chunk * rows_per + i) / r.heads % r.t;
            let (c, s) = (
                &cos[pos * r.half..][..r.half],
                &sin[pos * r.half..][..r.half],
            );
            for (j, v) in row.iter_mut().enumerate() {
                if j >= 2 * r.half {
                    *v = src[j];
                    continue;
                }
                let (p, first, partner) = r.pair(j);
                let (a, b) = (src[j], src[partner]);
                *v = match first {
                    true => a * c[p] - b * s[p],
                    false => a * c[p] + b * s[p],
                };
            }
        }
    });
    Ok(out)
}
