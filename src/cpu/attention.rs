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
    // dq, one (batch, query) row of every head per piece.
    let mut dq: Vec<f32> = alloc(OP, a.batch * a.tq * h * d)?;
    par_chunks_mut(&mut dq, h * d, a.tk * h * (d + dv), &|r, out| {
        let (b, i) = (r / a.tq, r % a.tq);
        for hh in 0..h {
            let (qi, gi) = (&q[qv.at(b, i, hh)..][..d], grad_row(b, i, hh));
            let (li, di) = (lse[stat(b, i, hh)], delta[stat(b, i, hh)]);
            let acc = &mut out[hh * d..][..d];
            for j in 0..a.keys(i) {
                let kj = &k[kv.at(b, j, hh)..][..d];
                let vj = &v[vv.at(b, j, hh)..][..dv];
                let p = (score(qi, kj, scale) - li).exp();
                let dp: f32 = gi.iter().zip(vj).map(|(&x, &y)| x * y).sum();
                let ds = p * (dp - di);
                for (x, &y) in acc.iter_mut().zip(kj) {
                    *x += ds * y;
                }
            }
            acc.iter_mut().for_each(|x| *x *= scale);
        }
    });
    // dk and dv, one (batch, key) row of every head per piece: dk's heads, then dv's.
    let per = h * (d + dv);
    let mut dkv: Vec<f32> = alloc(OP, a.batch * a.tk * per)?;
    par_chunks_mut(&mut dkv, per, a.tq * h * (d + dv), &|r, out| {
        let (b, j) = (r / a.tk, r % a.tk);
        let (dk, dvv) = out.split_at_mut(h * d);
        for hh in 0..h {
            let kj = &k[kv.at(b, j, hh)..][..d];
            let vj = &v[vv.at(b, j, hh)..][..dv];
            let (dk, dvv) = (&mut dk[hh * d..][..d], &mut dvv[hh * dv..][..dv]);
            for i in a.first_query(j)..a.tq {
                let qi = &q[qv.at(b, i, hh)..][..d];
                let gi = grad_row(b, i, hh);
                let p = (score(qi, kj, scale) - lse[stat(b, i, hh)]).exp();
                let mut dp = 0.0f32;
                for ((x, &gv), &y) in dvv.iter_mut().zip(gi).zip(vj) {
                    dp += gv * y;
                    *x += p * gv;
                }
                let ds = p * (dp - delta[stat(b, i, hh)]);
                for (x, &y) in dk.iter_mut().zip(qi) {
                    *x += ds * y;
                }
            }
            dk.iter_mut().for_each(|x| *x *= scale);
        }
    });
    // Into the inputs' layouts.
    let place = |out: &mut [f32], to: View, from: &[f32], w: usize, t: usize, stride: usize| {
        for b in 0..a.batch {
            for tt in 0..t {
                for hh in 0..h {
                    let src = (b * t + tt) * stride + hh * w;
                    out[to.at(b, tt, hh)..][..w].copy_from_slice(&from[src..src + w]);
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
            0 => place(out, view, &dq, d, a.tq, h * d),
            1 => place(out, view, &dkv, d, a.tk, per),
            _ => place(out, view, &dkv[h * d..], dv, a.tk, per),
        }
    }
    Ok(outs)
}
