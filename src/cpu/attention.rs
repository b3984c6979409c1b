//! Scaled dot-product attention on the CPU: the twin of `shaders/attention.wgsl`, with the same
//! online softmax over the same views of q, k and v (the forward takes its keys a block at a
//! time; the backward keeps the GPU passes' order).

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

/// Query rows of one head taken together, so that each key and value row is read once for all
/// of them (a decode step's grouped query heads, or a prompt's neighbouring rows).
const ROWS: usize = 4;

/// From this many query rows (a prompt), when the key and value width is one of [`Piece`]'s
/// fixed ones, the keys are first laid out transposed, each head's `[d, tk]`, so that a block's
/// scores are multiply-adds along the keys in registers (no sum across a vector per score) and
/// each row's output stays in registers over the block's values; fewer rows (a decode step)
/// score each key row as it is.
const TRANSPOSED_FROM: usize = 32;

/// The fewest keys in one split of a row's keys (see [`attention`]).
const MIN_SPLIT: usize = 128;

/// The output `[batch, tq, heads, dv]` and each query row's logsumexp `[batch, tq, heads]`.
///
/// The same online softmax as the shader, a block of keys at a time: the block's scores
/// `(q·scale)·k` (vector dot products), its largest, then each key's weight `exp(s − m)` into
/// the row's sum and output. A piece of work is up to [`ROWS`] query rows of one head (each
/// key and value row loaded once for all of them) over a span of keys. When there are fewer
/// pieces than threads to keep busy (a decode step: a few rows over a long cache), the keys are
/// split into spans whose partial softmaxes are merged at the end, as the GPU's split
/// attention (flash-decoding) does.
pub(crate) fn attention(
    [q, k, v]: [&[f32]; 3],
    lens: Option<&[u32]>,
    a: &AttnDims,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let [qv, kv, vv] = a.views();
    let (h, d, dv) = (a.heads, a.d, a.dv);
    let keys_of = |b: usize, i: usize| match lens {
        Some(l) => a.keys_limited(i, l[b] as usize),
        None => a.keys(i),
    };
    let longest = match lens {
        Some(l) => l.iter().map(|&n| (n as usize).min(a.tk)).max().unwrap_or(0),
        None => a.tk,
    };
    let groups = a.tq.div_ceil(ROWS);
    let units = a.batch * h * groups;
    let want = 2 * super::spin_pool::width();
    let splits = match units {
        0 => 1,
        u if u >= want => 1,
        u => want.div_ceil(u).min(longest / MIN_SPLIT).max(1),
    };
    let span = longest
        .div_ceil(splits)
        .next_multiple_of(KEY_BLOCK)
        .max(KEY_BLOCK);
    let splits = longest.div_ceil(span).max(1);
    // Each piece: its rows' partial outputs, then their running maxima, then their sums.
    let per = ROWS * (dv + 2);
    let kt = if a.tq >= TRANSPOSED_FROM && d == dv && matches!(d, 64 | 128) {
        let tk = a.tk;
        let mut kt: Vec<f32> = alloc(OP, a.batch * h * d * tk)?;
        par_chunks_mut(&mut kt, d * tk, d * tk, &|bh, out| {
            let (b, hh) = (bh / h, bh % h);
            for j in 0..tk {
                for (dd, &x) in k[kv.at(b, j, hh)..][..d].iter().enumerate() {
                    out[dd * tk + j] = x;
                }
            }
        });
        Some(kt)
    } else {
        None
    };
    let mut parts: Vec<f32> = alloc(OP, units * splits * per)?;
    let pieces = units * splits;
    let claim = (pieces / 8).clamp(1, 4);
    par_chunks_claimed(&mut parts, per, claim, span * ROWS * (d + dv), &|p, out| {
        let (u, s) = (p / splits, p % splits);
        let (b, hh, g) = (u / (h * groups), (u / groups) % h, u % groups);
        let first = g * ROWS;
        let n = ROWS.min(a.tq - first);
        let (lo, hi) = (s * span, ((s + 1) * span).min(a.tk));
        let mut qs = vec![0f32; n * d];
        let mut limit = [0usize; ROWS];
        for r in 0..n {
            let row = &q[qv.at(b, first + r, hh)..][..d];
            for (x, &y) in qs[r * d..][..d].iter_mut().zip(row) {
                *x = y * a.scale;
            }
            limit[r] = keys_of(b, first + r).min(hi);
        }
        let piece = Piece {
            k,
            kt: kt
                .as_deref()
                .map(|t| &t[(b * h + hh) * d * a.tk..][..d * a.tk]),
            v,
            qs: &qs,
            kv: (kv, vv),
            b,
            hh,
            d,
            dv,
            limit: &limit[..n],
        };
        piece.run(lo, out);
    });
    // Each row's pieces merged, as the GPU's split attention merges its chunks.
    let rows = a.batch * a.tq * h;
    let (mut o, mut lse) = (alloc(OP, rows * dv)?, alloc(OP, rows)?);
    for (r, (out, lse)) in o.chunks_exact_mut(dv).zip(lse.iter_mut()).enumerate() {
        let (b, i, hh) = (r / (a.tq * h), (r / h) % a.tq, r % h);
        if keys_of(b, i) == 0 {
            // A query that sees no key: zeros, and a logsumexp of -inf.
            *lse = f32::NEG_INFINITY;
            continue;
        }
        let (u, row) = ((b * h + hh) * groups + i / ROWS, i % ROWS);
        let piece = |s: usize| &parts[(u * splits + s) * per..][..per];
        let max = |s: usize| piece(s)[ROWS * dv + row];
        let m = (0..splits).map(max).fold(f32::NEG_INFINITY, f32::max);
        let mut l = 0f32;
        for s in 0..splits {
            let c = weight(max(s), m);
            l += c * piece(s)[ROWS * dv + ROWS + row];
            for (x, &y) in out.iter_mut().zip(&piece(s)[row * dv..][..dv]) {
                *x += c * y;
            }
        }
        // The row is NaN, as softmax makes it, where a score is NaN, the largest is infinite,
        // or every score is -inf.
        let l = if m.is_finite() { l } else { f32::NAN };
        out.iter_mut().for_each(|x| *x /= l);
        *lse = m + l.ln();
    }
    Ok((o, lse))
}

/// The weight of a score `x` under a running maximum `m`: `exp(x − m)`, except that equal
/// maxima weigh 1, not `exp(-inf − -inf)`, so keys whose scores are all -inf so far keep a
/// placeholder weight that the first finite score wipes out (a row left at -inf is NaN), and
/// -inf against a finite maximum weighs 0. As the shader.
#[inline(always)]
fn weight(x: f32, m: f32) -> f32 {
    if x == m {
        1.0
    } else if x == f32::NEG_INFINITY {
        0.0
    } else {
        exp_f32(x - m)
    }
}

/// Up to [`ROWS`] query rows of head `hh` in batch element `b` (scaled, `qs`), row `r` seeing
/// keys below `limit[r]`, over a span of keys.
struct Piece<'a> {
    k: &'a [f32],
    /// The keys of this piece's head transposed (`[d, tk]`), where the call made them (then
    /// `d` is `dv` and 64 or 128).
    kt: Option<&'a [f32]>,
    v: &'a [f32],
    qs: &'a [f32],
    kv: (View, View),
    b: usize,
    hh: usize,
    d: usize,
    dv: usize,
    limit: &'a [usize],
}

impl Piece<'_> {
    /// The rows' partial softmax over keys `lo..` into `out` (see [`attention`]'s layout), on
    /// the widest vectors the CPU has.
    fn run(&self, lo: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            let fma = std::arch::is_x86_feature_detected!("fma");
            if fma && std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F and FMA, checked just above.
                return unsafe { self.run_avx512(lo, out) };
            }
            if fma && std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2 and FMA, checked just above.
                return unsafe { self.run_avx2(lo, out) };
            }
        }
        self.walk_any::<false>(lo, out);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,fma")]
    fn run_avx512(&self, lo: usize, out: &mut [f32]) {
        self.walk_any::<true>(lo, out);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn run_avx2(&self, lo: usize, out: &mut [f32]) {
        self.walk_any::<true>(lo, out);
    }

    /// [`Piece::walk_fixed`] where the keys were transposed, else [`Piece::walk`].
    #[inline(always)]
    fn walk_any<const FMA: bool>(&self, lo: usize, out: &mut [f32]) {
        match (self.kt.is_some(), self.d) {
            (true, 64) => self.walk_fixed::<FMA, 64>(lo, out),
            (true, 128) => self.walk_fixed::<FMA, 128>(lo, out),
            _ => self.walk::<FMA>(lo, out),
        }
    }

    /// [`Piece::walk`] for a prompt's rows with the keys transposed and `d = dv = D`: a row's
    /// scores of a block, and its output over the block's values, are arrays of fixed length
    /// that stay in registers.
    #[inline(always)]
    fn walk_fixed<const FMA: bool, const D: usize>(&self, lo: usize, out: &mut [f32]) {
        let n = self.limit.len();
        let (acc, stats) = out.split_at_mut(ROWS * D);
        let (ms, ls) = stats.split_at_mut(ROWS);
        acc.fill(0.0);
        ms.fill(f32::NEG_INFINITY);
        ls.fill(0.0);
        let kt = self.kt.unwrap_or_default();
        let tk = kt.len() / D;
        let end = self.limit.iter().copied().max().unwrap_or(0);
        let mut s = [[0f32; KEY_BLOCK]; ROWS];
        for j0 in (lo..end).step_by(KEY_BLOCK) {
            let nb = KEY_BLOCK.min(end - j0);
            for r in 0..n {
                let count = self.limit[r].saturating_sub(j0).min(nb);
                if count == 0 {
                    continue;
                }
                let q = &self.qs[r * D..][..D];
                let s = &mut s[r];
                if j0 + KEY_BLOCK <= tk {
                    let mut sc = [0f32; KEY_BLOCK];
                    for (dd, &x) in q.iter().enumerate() {
                        let keys: &[f32; KEY_BLOCK] = kt[dd * tk + j0..][..KEY_BLOCK]
                            .try_into()
                            .unwrap_or(&[0.0; KEY_BLOCK]);
                        for (y, &kk) in sc.iter_mut().zip(keys) {
                            *y = madd::<FMA>(x, kk, *y);
                        }
                    }
                    s[..count].copy_from_slice(&sc[..count]);
                } else {
                    let s = &mut s[..count];
                    s.fill(0.0);
                    for (dd, &x) in q.iter().enumerate() {
                        for (y, &kk) in s.iter_mut().zip(&kt[dd * tk + j0..]) {
                            *y = madd::<FMA>(x, kk, *y);
                        }
                    }
                }
                let s = &mut s[..count];
                let c = soften(s, &mut ms[r], &mut ls[r]);
                let mut a = [0f32; D];
                for (x, &y) in a.iter_mut().zip(&acc[r * D..][..D]) {
                    *x = y * c;
                }
                for (jj, &e) in s.iter().enumerate() {
                    let value = &self.v[self.kv.1.at(self.b, j0 + jj, self.hh)..][..D];
                    for (x, &y) in a.iter_mut().zip(value) {
                        *x = madd::<FMA>(e, y, *x);
                    }
                }
                acc[r * D..][..D].copy_from_slice(&a);
            }
        }
    }

    /// The online softmax, a block of keys at a time: every row's scores against each key row
    /// (loaded once), each row's new maximum and rescale, then each value row (loaded once)
    /// into every row's output.
    // `jj` indexes a key (and value) row and every query row's score of it at once.
    #[allow(clippy::needless_range_loop)]
    #[inline(always)]
    fn walk<const FMA: bool>(&self, lo: usize, out: &mut [f32]) {
        let (d, dv, n) = (self.d, self.dv, self.limit.len());
        let (acc, stats) = out.split_at_mut(ROWS * dv);
        let (ms, ls) = stats.split_at_mut(ROWS);
        acc.fill(0.0);
        ms.fill(f32::NEG_INFINITY);
        ls.fill(0.0);
        let end = self.limit.iter().copied().max().unwrap_or(0);
        let mut s = [[0f32; KEY_BLOCK]; ROWS];
        for j0 in (lo..end).step_by(KEY_BLOCK) {
            let nb = KEY_BLOCK.min(end - j0);
            let mut count = [0usize; ROWS];
            for (c, &l) in count.iter_mut().zip(self.limit) {
                *c = l.saturating_sub(j0).min(nb);
            }
            for jj in 0..nb {
                // The value row this block will need, and the key row a few ahead: the rows
                // of one head are strided (the cache's other heads between them), and asking
                // early keeps several loads from memory in flight.
                prefetch(self.v, self.kv.1.at(self.b, j0 + jj, self.hh), dv);
                if jj + AHEAD < nb {
                    prefetch(self.k, self.kv.0.at(self.b, j0 + jj + AHEAD, self.hh), d);
                } else if j0 + KEY_BLOCK + jj + AHEAD - nb < end {
                    prefetch(
                        self.k,
                        self.kv
                            .0
                            .at(self.b, j0 + KEY_BLOCK + jj + AHEAD - nb, self.hh),
                        d,
                    );
                }
                let key = &self.k[self.kv.0.at(self.b, j0 + jj, self.hh)..][..d];
                for r in (0..n).filter(|&r| jj < count[r]) {
                    s[r][jj] = dot::<FMA>(&self.qs[r * d..][..d], key);
                }
            }
            for r in 0..n {
                let s = &mut s[r][..count[r]];
                if s.is_empty() {
                    continue;
                }
                let c = soften(s, &mut ms[r], &mut ls[r]);
                acc[r * dv..][..dv].iter_mut().for_each(|x| *x *= c);
            }
            for jj in 0..nb {
                let value = &self.v[self.kv.1.at(self.b, j0 + jj, self.hh)..][..dv];
                for r in (0..n).filter(|&r| jj < count[r]) {
                    let e = s[r][jj];
                    for (x, &y) in acc[r * dv..][..dv].iter_mut().zip(value) {
                        *x = madd::<FMA>(e, y, *x);
                    }
                }
            }
        }
    }
}

/// One row's online-softmax step over a block's scores `s`: the running maximum `m` and sum
/// `l` move to the block's, the scores become their weights, and the factor the row's output
/// must be rescaled by is returned.
#[inline(always)]
fn soften(s: &mut [f32], m: &mut f32, l: &mut f32) -> f32 {
    let m2 = s.iter().fold(*m, |m, &x| m.max(x));
    let c = weight(*m, m2);
    *l *= c;
    // Every weight computed, then chosen (no branch), so the loop runs on vectors.
    s.iter_mut().for_each(|x| {
        let e = exp_f32(*x - m2);
        let e = if *x == f32::NEG_INFINITY { 0.0 } else { e };
        *x = if *x == m2 { 1.0 } else { e };
    });
    *l += s.iter().sum::<f32>();
    *m = m2;
    c
}

/// Key rows ahead of the one being scored that [`Piece::walk`] asks the memory for.
const AHEAD: usize = 8;

/// Asks for the cache lines of `x[at..at + n]` (a hint: nothing happens off x86-64).
#[inline(always)]
fn prefetch(x: &[f32], at: usize, n: usize) {
    #[cfg(target_arch = "x86_64")]
    if at + n <= x.len() {
        for line in (0..n).step_by(16) {
            // SAFETY: a prefetch of an address inside `x` reads nothing and cannot fault.
            unsafe {
                std::arch::x86_64::_mm_prefetch(
                    x.as_ptr().add(at + line) as *const i8,
                    std::arch::x86_64::_MM_HINT_T0,
                )
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (x, at, n);
}

/// `a·b + c`, fused where the caller is compiled with FMA.
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// `Σ a[i]·b[i]` in 16 running sums (one or two vector registers).
#[inline(always)]
fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0f32; 16];
    let (ac, at) = a.as_chunks::<16>();
    let (bc, bt) = b.as_chunks::<16>();
    for (x, y) in ac.iter().zip(bc) {
        for l in 0..16 {
            sums[l] = madd::<FMA>(x[l], y[l], sums[l]);
        }
    }
    let tail: f32 = at.iter().zip(bt).map(|(&x, &y)| x * y).sum();
    sums.iter().sum::<f32>() + tail
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
