//! Scaled dot-product attention on the CPU: the twin of `shaders/attention.wgsl`, with the same
//! online softmax over the same views of q, k and v (the forward takes its keys a block at a
//! time; the backward keeps the GPU passes' order).

use super::qdot::dot_f32;
use super::{alloc, par_chunks_claimed, par_chunks_mut};
use crate::attention::{AttnDims, View};
use crate::error::Result;
use crate::op::math::exp_f32;

const OP: &str = "attention";

/// `Σ_d (a[d]·scale)·b[d]`, the score of one query row against one key row.
fn score(q: &[f32], k: &[f32], scale: f32) -> f32 {
    q.iter().zip(k).map(|(&a, &b)| (a * scale) * b).sum()
}

/// Keys scored at a time by the forward: a block's scores are vector dot products, and the
/// running maximum, and with it the output's rescale, moves once per block.
const KEY_BLOCK: usize = 64;

/// The output `[batch, tq, heads, dv]` and each query row's logsumexp `[batch, tq, heads]`.
///
/// The same online softmax as the shader, a block of keys at a time: the block's scores
/// `(q·scale)·k` (vector dot products), its largest, then each key's weight `exp(s − m)` into
/// the row's sum and output. Each (query row, head) is claimed apart, a few at a time, so a
/// causal prompt's long last rows do not leave one thread waiting on another, and a decode
/// step's few rows still use every thread.
pub(crate) fn attention(
    [q, k, v]: [&[f32]; 3],
    lens: Option<&[u32]>,
    a: &AttnDims,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let [qv, kv, vv] = a.views();
    let (h, d, dv) = (a.heads, a.d, a.dv);
    // Each (batch, query, head): its output, then its logsumexp. Heads are claimed apart, so a
    // decode step's few query rows still spread over the threads.
    let per = dv + 1;
    let units = a.batch * a.tq * h;
    let mut both: Vec<f32> = alloc(OP, units * per)?;
    let claim = (units / 8).clamp(1, 4);
    par_chunks_claimed(&mut both, per, claim, a.tk * (d + dv), &|r, out| {
        let (b, i, hh) = (r / (a.tq * h), (r / h) % a.tq, r % h);
        let (acc, lse) = out.split_at_mut(dv);
        let mut qs = vec![0f32; d];
        let mut s = [0f32; KEY_BLOCK];
        for (x, &y) in qs.iter_mut().zip(&q[qv.at(b, i, hh)..][..d]) {
            *x = y * a.scale;
        }
        acc.fill(0.0);
        let (mut m, mut l) = (f32::NEG_INFINITY, 0f32);
        let keys = match lens {
            Some(l) => a.keys_limited(i, l[b] as usize),
            None => a.keys(i),
        };
        if keys == 0 {
            // A query that sees no key: zeros, and a logsumexp of -inf.
            lse[0] = f32::NEG_INFINITY;
            return;
        }
        for j0 in (0..keys).step_by(KEY_BLOCK) {
            let s = &mut s[..KEY_BLOCK.min(keys - j0)];
            for (jj, x) in s.iter_mut().enumerate() {
                let ka = kv.at(b, j0 + jj, hh);
                *x = dot_f32(&qs, &k[ka..ka + d]);
            }
            let m2 = s.iter().fold(m, |m, &x| m.max(x));
            // As the shader: equal maxima weigh 1, not exp(-inf - -inf), so keys whose scores
            // are all -inf so far keep a placeholder weight that the first finite score wipes
            // out (a row left at -inf is NaN below); -inf against a finite maximum weighs 0.
            let weight = |x: f32| {
                if x == m2 {
                    1.0
                } else if x == f32::NEG_INFINITY {
                    0.0
                } else {
                    exp_f32(x - m2)
                }
            };
            let c = weight(m);
            l *= c;
            acc.iter_mut().for_each(|x| *x *= c);
            s.iter_mut().for_each(|x| *x = weight(*x));
            for (jj, &e) in s.iter().enumerate() {
                l += e;
                for (x, &y) in acc.iter_mut().zip(&v[vv.at(b, j0 + jj, hh)..][..dv]) {
                    *x += e * y;
                }
            }
            m = m2;
        }
        // The row is NaN, as softmax makes it, where a score is NaN, the largest is infinite,
        // or every score is -inf.
        let l = if m.is_finite() { l } else { f32::NAN };
        acc.iter_mut().for_each(|x| *x /= l);
        lse[0] = m + l.ln();
    });
    let (mut o, mut lse) = (alloc(OP, units * dv)?, alloc(OP, units)?);
    for (r, unit) in both.chunks_exact(per).enumerate() {
        o[r * dv..][..dv].copy_from_slice(&unit[..dv]);
        lse[r] = unit[dv];
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
