//! Scaled dot-product attention on the CPU: the twin of `shaders/attention.wgsl`, with the same
//! online softmax (the first key starts the running maximum) and the same operations in the
//! same order, over the same views of q, k and v.

use super::{alloc, par_chunks_mut};
use crate::attention::{AttnDims, View};
use crate::error::Result;

const OP: &str = "attention";

/// `Σ_d (a[d]·scale)·b[d]`, the score of one query row against one key row.
fn score(q: &[f32], k: &[f32], scale: f32) -> f32 {
    q.iter().zip(k).map(|(&a, &b)| (a * scale) * b).sum()
}

/// The output `[batch, tq, heads, dv]` and each query row's logsumexp `[batch, tq, heads]`.
pub(crate) fn attention([q, k, v]: [&[f32]; 3], a: &AttnDims) -> Result<(Vec<f32>, Vec<f32>)> {
    let [qv, kv, vv] = a.views();
    let (h, d, dv) = (a.heads, a.d, a.dv);
    // Each (batch, query) row: every head's output, then every head's logsumexp.
    let per = h * (dv + 1);
    let mut both: Vec<f32> = alloc(OP, a.batch * a.tq * per)?;
    par_chunks_mut(&mut both, per, a.tk * h * (d + dv), &|r, out| {
        let (b, i) = (r / a.tq, r % a.tq);
        let (o, lse) = out.split_at_mut(h * dv);
        for hh in 0..h {
            let qi = &q[qv.at(b, i, hh)..][..d];
            let acc = &mut o[hh * dv..][..dv];
            let row = |j: usize| {
                let (ka, va) = (kv.at(b, j, hh), vv.at(b, j, hh));
                (score(qi, &k[ka..ka + d], a.scale), &v[va..va + dv])
            };
            let (mut m, v0) = row(0);
            acc.copy_from_slice(v0);
            let mut l = 1.0f32;
            for j in 1..a.keys(i) {
                let (s, vj) = row(j);
                let m2 = m.max(s);
                let (c, e) = ((m - m2).exp(), (s - m2).exp());
                l = l * c + e;
                for (x, &y) in acc.iter_mut().zip(vj) {
                    *x = *x * c + e * y;
                }
                m = m2;
            }
            // The row is NaN, as softmax makes it, where the largest score is NaN or infinite
            // (or every score -inf), whatever key came first.
            let l = if m.is_finite() { l } else { f32::NAN };
            acc.iter_mut().for_each(|x| *x /= l);
            lse[hh] = m + l.ln();
        }
    });
    let (mut o, mut lse) = (alloc(OP, a.batch * a.tq * h * dv)?, alloc(OP, a.rows())?);
    for (r, row) in both.chunks_exact(per.max(1)).enumerate() {
        o[r * h * dv..][..h * dv].copy_from_slice(&row[..h * dv]);
        lse[r * h..][..h].copy_from_slice(&row[h * dv..]);
    }
    Ok((o, lse))
}

/// The gradients of q, k and v from the output `o`, its gradient `g` and the forward's `lse`:
/// one buffer in the packed layout, or three dense ones.
pub(crate) fn attention_backward(
    [q, k, v]: [&[f32]; 3],
    o: &[f32],
    g: &[f32],
    lse: &[f32],
    a: &AttnDims,
) -> Result<Vec<Vec<f32>>> {
    let [qv, kv, vv] = a.views();
    let (h, d, dv, scale) = (a.heads, a.d, a.dv, a.scale);
    // δ_i = Σ_e g_ie·o_ie per query row, as the first GPU pass writes it.
    let mut delta: Vec<f32> = alloc(OP, a.rows())?;
    for (r, x) in delta.iter_mut().enumerate() {
        let row = r * dv;
        *x = g[row..row + dv]
            .iter()
            .zip(&o[row..row + dv])
            .map(|(&p, &q)| p * q)
            .sum();
    }
    let stat = |b: usize, i: usize, hh: usize| (b * a.tq + i) * h + hh;
    let grad_row = |b: usize, i: usize, hh: usize| &g[stat(b, i, hh) * dv..][..dv];
    // One (batch, head) per piece: its dq [tq, d], dk [tk, d] and dv [tk, dv], from each
    // score computed once. Each sum runs in the GPU passes' order (dq over keys, dk and dv
    // over queries, ascending).
    let per = a.tq * d + a.tk * (d + dv);
    let mut parts: Vec<f32> = alloc(OP, a.batch * h * per)?;
    par_chunks_mut(&mut parts, per, a.tq * a.tk * 2 * (d + dv), &|r, out| {
        let (b, hh) = (r / h, r % h);
        let (dq, rest) = out.split_at_mut(a.tq * d);
        let (dk, dvv) = rest.split_at_mut(a.tk * d);
        for i in 0..a.tq {
            let (qi, gi) = (&q[qv.at(b, i, hh)..][..d], grad_row(b, i, hh));
            let (li, di) = (lse[stat(b, i, hh)], delta[stat(b, i, hh)]);
            let dqi = &mut dq[i * d..][..d];
            for j in 0..a.keys(i) {
                let kj = &k[kv.at(b, j, hh)..][..d];
                let vj = &v[vv.at(b, j, hh)..][..dv];
                let p = (score(qi, kj, scale) - li).exp();
                let mut dp = 0.0f32;
                for ((x, &gv), &y) in dvv[j * dv..][..dv].iter_mut().zip(gi).zip(vj) {
                    dp += gv * y;
                    *x += p * gv;
                }
                let ds = p * (dp - di);
                for (x, &y) in dqi.iter_mut().zip(kj) {
                    *x += ds * y;
                }
                for (x, &y) in dk[j * d..][..d].iter_mut().zip(qi) {
                    *x += ds * y;
                }
            }
        }
        dq.iter_mut().chain(dk.iter_mut()).for_each(|x| *x *= scale);
    });
    // Into the inputs' layouts.
    let place = |out: &mut [f32], to: View, at: usize, w: usize, t: usize| {
        for b in 0..a.batch {
            for hh in 0..h {
                let block = &parts[(b * h + hh) * per + at..];
                for tt in 0..t {
                    out[to.at(b, tt, hh)..][..w].copy_from_slice(&block[tt * w..][..w]);
                }
            }
        }
    };
    let sizes = a.sizes();
    let mut outs: Vec<Vec<f32>> = Vec::new();
    for (part, view) in [qv, kv, vv].into_iter().enumerate() {
        if !a.packed || part == 0 {
            outs.push(alloc(OP, sizes[part])?);
        }
        let out = outs.last_mut().expect("pushed above");
        match part {
            0 => place(out, view, 0, d, a.tq),
            1 => place(out, view, a.tq * d, d, a.tk),
            _ => place(out, view, a.tq * d + a.tk * d, dv, a.tk),
        }
    }
    Ok(outs)
}
