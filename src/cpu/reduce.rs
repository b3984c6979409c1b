//! Reductions and softmax along one axis of `[outer, len, inner]`, parallel over output rows.

use super::alloc;
use super::par_chunks_mut;
use crate::error::Result;
use crate::op::ReduceOp;
use crate::op::math::{exp_f32, has_nan, max_f32, sum_f32, sum_squares_f32};

pub(crate) fn reduce(
    x: &[f32],
    (outer, len, inner): (usize, usize, usize),
    op: ReduceOp,
) -> Result<Vec<f32>> {
    let mut out = alloc(op.name(), outer * inner)?;
    if inner == 0 {
        return Ok(out);
    }
    if inner > 1 && matches!(op, ReduceOp::Sum | ReduceOp::Mean) {
        // Rows of x added into the zeroed output row in order of j: contiguous, vectorised
        // loads, and for each output the same sum in the same order (0 + x0 + x1 + ...) as the
        // strided loop below and `shaders/reduce.wgsl`. The outputs go to the threads in
        // pieces of at most `PIECE` (a few long rows, or one, still spread), each piece cut
        // at the rows' ends.
        const PIECE: usize = 1 << 14;
        let piece = inner.min(PIECE);
        par_chunks_mut(&mut out, piece, len * piece, &|c, chunk| {
            let (mut at, mut rest) = (c * piece, chunk);
            while !rest.is_empty() {
                let (o, i0) = (at / inner, at % inner);
                let (seg, tail) = rest.split_at_mut((inner - i0).min(rest.len()));
                let base = o * len * inner + i0;
                for j in 0..len {
                    let src = &x[base + j * inner..][..seg.len()];
                    seg.iter_mut().zip(src).for_each(|(acc, &v)| *acc += v);
                }
                if op == ReduceOp::Mean {
                    let n = len as f32;
                    seg.iter_mut().for_each(|acc| *acc /= n);
                }
                at += seg.len();
                rest = tail;
            }
        });
        return Ok(out);
    }
    par_chunks_mut(&mut out, inner, len * inner, &|o, row| {
        let base = o * len * inner;
        for (i, y) in row.iter_mut().enumerate() {
            *y = op.apply(len, |j| x[base + j * inner + i]);
        }
    });
    Ok(out)
}

/// A contiguous row's (log-)softmax, each pass a loop that vectorises ([`super::widest`]).
struct SoftmaxRow<'a> {
    src: &'a [f32],
    block: &'a mut [f32],
    log: bool,
}

impl super::Wide for SoftmaxRow<'_> {
    type Out = ();

    #[inline(always)]
    fn run(self) {
        let SoftmaxRow { src, block, log } = self;
        if has_nan(src) {
            block.fill(f32::NAN);
            return;
        }
        let m = max_f32(src);
        // e^(v - m) written and summed in one pass, in LANES interleaved partial sums.
        const LANES: usize = 32;
        let mut acc = [0.0f32; LANES];
        let mut outs = block.chunks_exact_mut(LANES);
        let mut ins = src.chunks_exact(LANES);
        for (o, s) in (&mut outs).zip(&mut ins) {
            for ((o, &v), a) in o.iter_mut().zip(s).zip(&mut acc) {
                *o = exp_f32(v - m);
                *a += *o;
            }
        }
        let mut tail = 0.0;
        for (o, &v) in outs.into_remainder().iter_mut().zip(ins.remainder()) {
            *o = exp_f32(v - m);
            tail += *o;
        }
        let sum = acc.iter().sum::<f32>() + tail;
        if log {
            let log_sum = sum.ln();
            block
                .iter_mut()
                .zip(src)
                .for_each(|(o, &v)| *o = (v - m) - log_sum);
        } else {
            let inv = 1.0 / sum;
            block.iter_mut().for_each(|o| *o *= inv);
        }
    }
}

pub(crate) fn softmax(
    x: &[f32],
    (outer, len, inner): (usize, usize, usize),
    log: bool,
) -> Result<Vec<f32>> {
    let mut out = alloc(
        if log { "log_softmax" } else { "softmax" },
        outer * len * inner,
    )?;
    if len == 0 || inner == 0 {
        return Ok(out);
    }
    if inner == 1 {
        par_chunks_mut(&mut out, len, 4 * len, &|o, block| {
            let src = &x[o * len..(o + 1) * len];
            super::widest(SoftmaxRow { src, block, log });
        });
        return Ok(out);
    }
    // Along a strided axis: tiles of up to COLUMNS columns (one per `inner` position) of one
    // outer block, the threads taking every width-th tile.
    let tiles = inner.div_ceil(COLUMNS);
    let (tasks, dst) = (outer * tiles, super::Shared(out.as_mut_ptr()));
    let threads = if tasks * len * COLUMNS >= 1 << 16 {
        super::spin_pool::width().min(tasks)
    } else {
        1
    };
    super::spin_pool::run(threads, &|t| {
        for task in (t..tasks).step_by(threads) {
            let (o, i0) = (task / tiles, (task % tiles) * COLUMNS);
            super::widest(SoftmaxColumns {
                src: &x[o * len * inner..(o + 1) * len * inner],
                dst,
                base: o * len * inner,
                dims: (len, inner),
                cols: i0..(i0 + COLUMNS).min(inner),
                log,
            });
        }
    });
    Ok(out)
}

/// Columns of one task of a softmax along a strided axis.
const COLUMNS: usize = 256;

/// The (log-)softmax of columns `cols` (positions along the `inner` axis) of one outer block
/// `src` (`len × inner`), written at `base` of `dst`: each pass over the block's rows a
/// contiguous loop over the columns, each column's max, exponentials and sum taken in the
/// row order as one column at a time would.
struct SoftmaxColumns<'a> {
    src: &'a [f32],
    dst: super::Shared<f32>,
    base: usize,
    dims: (usize, usize),
    cols: std::ops::Range<usize>,
    log: bool,
}

impl super::Wide for SoftmaxColumns<'_> {
    type Out = ();

    #[inline(always)]
    fn run(self) {
        let SoftmaxColumns {
            src,
            dst,
            base,
            dims: (len, inner),
            cols,
            log,
        } = self;
        let w = cols.len();
        let (mut m, mut sum, mut nan) = (
            [f32::NEG_INFINITY; COLUMNS],
            [0f32; COLUMNS],
            [false; COLUMNS],
        );
        let (m, sum, nan) = (&mut m[..w], &mut sum[..w], &mut nan[..w]);
        let row = |j: usize| &src[j * inner + cols.start..j * inner + cols.end];
        // SAFETY: this task alone writes columns `cols` of this outer block (tiles are
        // disjoint), and `dst` holds `base + len * inner` values.
        let out = |j: usize| unsafe {
            std::slice::from_raw_parts_mut(dst.ptr().add(base + j * inner + cols.start), w)
        };
        for j in 0..len {
            for ((m, n), &v) in m.iter_mut().zip(nan.iter_mut()).zip(row(j)) {
                *m = m.max(v);
                *n |= v.is_nan();
            }
        }
        // One exponential per value: kept in the output, then divided by their sum.
        for j in 0..len {
            for ((o, s), (&v, &m)) in out(j)
                .iter_mut()
                .zip(sum.iter_mut())
                .zip(row(j).iter().zip(&*m))
            {
                let e = exp_f32(v - m);
                *o = e;
                *s += e;
            }
        }
        if log {
            sum.iter_mut().for_each(|s| *s = s.ln());
        }
        for j in 0..len {
            let o = out(j);
            if log {
                for (((o, &v), &m), &log_sum) in o.iter_mut().zip(row(j)).zip(&*m).zip(&*sum) {
                    *o = (v - m) - log_sum;
                }
            } else {
                o.iter_mut().zip(&*sum).for_each(|(o, &s)| *o /= s);
            }
            o.iter_mut()
                .zip(&*nan)
                .filter(|(_, n)| **n)
                .for_each(|(o, _)| *o = f32::NAN);
        }
    }
}

/// layer_norm (`rms` false) or rms_norm over rows of `len` values; see `shaders/norm.wgsl`.
pub(crate) fn norm(
    x: &[f32],
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    len: usize,
    eps: f32,
    rms: bool,
) -> Result<Vec<f32>> {
    let mut out = alloc(if rms { "rms_norm" } else { "layer_norm" }, x.len())?;
    if len == 0 {
        return Ok(out);
    }
    par_chunks_mut(&mut out, len, 4 * len, &|r, y| {
        let row = &x[r * len..(r + 1) * len];
        let n = len as f32;
        let mean = if rms { 0.0 } else { sum_f32(row) / n };
        // The centred values go to the output first; their squares are summed from there.
        y.iter_mut().zip(row).for_each(|(o, &v)| *o = v - mean);
        let ss = sum_squares_f32(y);
        let inv = 1.0 / (ss / n + eps).sqrt();
        match (weight, bias) {
            (Some(w), Some(b)) => y
                .iter_mut()
                .zip(w.iter().zip(b))
                .for_each(|(o, (w, b))| *o = *o * inv * w + b),
            (Some(w), None) => y.iter_mut().zip(w).for_each(|(o, w)| *o = *o * inv * w),
            (None, Some(b)) => y.iter_mut().zip(b).for_each(|(o, b)| *o = *o * inv + b),
            (None, None) => y.iter_mut().for_each(|o| *o *= inv),
        }
    });
    Ok(out)
}

/// The input gradient of layer_norm (rms_norm with `rms`) over rows of `len` values, the twin
/// of `shaders/norm.wgsl`'s `backward`: (dx, each row's mean, each row's r).
pub(crate) fn norm_backward(
    x: &[f32],
    weight: Option<&[f32]>,
    g: &[f32],
    len: usize,
    eps: f32,
    rms: bool,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    const OP: &str = "layer_norm backward";
    let rows = x.len().checked_div(len).unwrap_or(0);
    let (mut mean, mut r) = (alloc(OP, rows)?, alloc(OP, rows)?);
    let n = len as f32;
    for (i, row) in x.chunks_exact(len.max(1)).enumerate().take(rows) {
        let m = if rms {
            0.0
        } else {
            row.iter().sum::<f32>() / n
        };
        let ss: f32 = row.iter().map(|&v| (v - m) * (v - m)).sum();
        mean[i] = m;
        r[i] = 1.0 / (ss / n + eps).sqrt();
    }
    let mut dx = alloc(OP, x.len())?;
    if len == 0 {
        return Ok((dx, mean, r));
    }
    let d = |row: usize, j: usize| g[row * len + j] * weight.map_or(1.0, |w| w[j]);
    par_chunks_mut(&mut dx, len, 4 * len, &|i, out| {
        let (m, ri) = (mean[i], r[i]);
        let xs = &x[i * len..(i + 1) * len];
        let (mut sum_d, mut sum_dx) = (0.0f32, 0.0f32);
        for (j, &v) in xs.iter().enumerate() {
            sum_d += d(i, j);
            sum_dx += d(i, j) * (v - m) * ri;
        }
        let mean_d = if rms { 0.0 } else { sum_d / n };
        let proj = sum_dx / n;
        for (j, (o, &v)) in out.iter_mut().zip(xs).enumerate() {
            *o = (d(i, j) - mean_d - (v - m) * ri * proj) * ri;
        }
    });
    Ok((dx, mean, r))
}

/// The weight's and bias's gradients of a norm over rows of `len` values: `(Σ_rows g·x̂,
/// Σ_rows g)` with `x̂ = (x - mean)·r` from each row's statistics, summed in row order as
/// `norm.wgsl`'s `param_grads` does.
pub(crate) fn norm_param_grads(
    x: &[f32],
    g: &[f32],
    mean: &[f32],
    r: &[f32],
    len: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    const OP: &str = "layer_norm backward";
    let (mut dw, mut db): (Vec<f32>, Vec<f32>) = (alloc(OP, len)?, alloc(OP, len)?);
    for (i, (xs, gs)) in x
        .chunks_exact(len.max(1))
        .zip(g.chunks_exact(len.max(1)))
        .enumerate()
    {
        for (j, (&xv, &gv)) in xs.iter().zip(gs).enumerate() {
            dw[j] += gv * ((xv - mean[i]) * r[i]);
            db[j] += gv;
        }
    }
    Ok((dw, db))
}

/// Lanes of [`argmax_row`]; shorter rows take the strided walk.
const ARGMAX_LANES: usize = 8;

/// The index of a contiguous row's first maximum (of its first NaN if it has one), for rows of
/// at least [`ARGMAX_LANES`] values: lanes of running maxima the compiler vectorises, then the
/// lanes' first maximum.
fn argmax_row(row: &[f32]) -> u32 {
    const L: usize = ARGMAX_LANES;
    if has_nan(row) {
        return row.iter().position(|v| v.is_nan()).unwrap_or(0) as u32;
    }
    // Lane l holds the first maximum of the values at l, l + L, l + 2L, ...
    let mut best: [f32; L] = row[..L].try_into().expect("L values");
    let mut at: [u32; L] = std::array::from_fn(|l| l as u32);
    let chunks = row.chunks_exact(L);
    let tail = chunks.remainder();
    for (k, c) in chunks.enumerate().skip(1) {
        for l in 0..L {
            let (v, j) = (c[l], (k * L + l) as u32);
            let better = v > best[l];
            best[l] = if better { v } else { best[l] };
            at[l] = if better { j } else { at[l] };
        }
    }
    let (mut top, mut first) = (best[0], at[0]);
    for l in 1..L {
        if best[l] > top || (best[l] == top && at[l] < first) {
            (top, first) = (best[l], at[l]);
        }
    }
    let done = row.len() - tail.len();
    for (j, &v) in tail.iter().enumerate() {
        if v > top {
            (top, first) = (v, (done + j) as u32);
        }
    }
    first
}

/// argmax along the middle axis (first maximum; first NaN if any).
pub(crate) fn argmax(x: &[f32], (outer, len, inner): (usize, usize, usize)) -> Result<Vec<u32>> {
    let mut out = alloc("argmax", outer * inner)?;
    // Outputs in parallel, in blocks of about 4,096 values read.
    let per = (4096 / len.max(1)).max(1);
    par_chunks_mut(&mut out, per, per * len, &|c, ys| {
        for (i, y) in ys.iter_mut().enumerate() {
            let o = c * per + i;
            if inner == 1 && len >= ARGMAX_LANES {
                *y = argmax_row(&x[o * len..(o + 1) * len]);
                continue;
            }
            let base = (o / inner) * len * inner + o % inner;
            let (mut best, mut at) = (x[base], 0u32);
            for j in 0..len {
                let v = x[base + j * inner];
                if v.is_nan() {
                    at = j as u32;
                    break;
                }
                if v > best {
                    best = v;
                    at = j as u32;
                }
            }
            *y = at;
        }
    });
    Ok(out)
}

/// Per-row cross-entropy of `[rows, classes]` logits against `t`: (losses, logsumexp), the twin
/// of `shaders/xent.wgsl`'s `forward`. Rows run in parallel, each in vectorised passes.
pub(crate) fn cross_entropy_rows(
    x: &[f32],
    t: &[u32],
    classes: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let rows = t.len();
    let (mut loss, mut lse) = (alloc("cross_entropy", rows)?, alloc("cross_entropy", rows)?);
    par_chunks_mut(&mut lse, 1, 3 * classes, &|b, out| {
        out[0] = log_sum_exp(&x[b * classes..(b + 1) * classes]);
    });
    for (b, l) in loss.iter_mut().enumerate() {
        *l = lse[b] - x[b * classes + t[b] as usize];
    }
    Ok((loss, lse))
}

/// `max + ln Σ exp(v - max)` over a row: NaN if the row holds a NaN, if its largest value is
/// +inf, or if every value is -inf (`-inf - -inf` is NaN), as in `xent.wgsl`.
fn log_sum_exp(row: &[f32]) -> f32 {
    let m = max_f32(row);
    let mut buf = [0.0f32; 256];
    let mut sum = 0.0;
    for c in row.chunks(buf.len()) {
        let e = &mut buf[..c.len()];
        e.iter_mut().zip(c).for_each(|(o, &v)| *o = exp_f32(v - m));
        sum += sum_f32(e);
    }
    m + sum.ln()
}

/// The logits' gradient, `g[b] · (softmax - onehot)`: the twin of `xent.wgsl`'s `backward`.
pub(crate) fn cross_entropy_grad(
    x: &[f32],
    t: &[u32],
    lse: &[f32],
    g: &[f32],
    classes: usize,
) -> Result<Vec<f32>> {
    let mut dx = alloc("cross_entropy backward", x.len())?;
    par_chunks_mut(&mut dx, classes, 2 * classes, &|b, row| {
        let (src, target, l, gb) = (&x[b * classes..], t[b] as usize, lse[b], g[b]);
        for (c, (d, &v)) in row.iter_mut().zip(src).enumerate() {
            let hit = if c == target { 1.0 } else { 0.0 };
            *d = gb * (exp_f32(v - l) - hit);
        }
    });
    Ok(dx)
}
