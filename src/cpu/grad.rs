//! Backward loops: unary derivatives, scatter-add, and the convolution and pooling gradients.
//! Each mirrors its WGSL kernel (same formulas, same summation order).

use super::alloc;
use super::par_chunks_mut;
use crate::conv::Window;
use crate::error::Result;
use crate::op::UnaryOp;
use crate::op::gelu_derivative;
use std::mem::MaybeUninit;

/// `dx = g · op'(x)`.
pub(crate) fn unary_grad(x: &[f32], g: &[f32], op: UnaryOp) -> Result<Vec<f32>> {
    let mut out = super::reserve("unary backward", x.len())?;
    let write_piece = |start: usize, piece: &mut [MaybeUninit<f32>]| {
        let (x, g) = (&x[start..], &g[start..]);
        // gelu's derivative (a transformer's costliest) gets a loop of its own, which
        // vectorises; the same formula as `UnaryOp::derivative`.
        match op {
            UnaryOp::Gelu => times_derivative(piece, x, g, gelu_derivative),
            _ => times_derivative(piece, x, g, |v| op.derivative(v)),
        }
    };
    // SAFETY: `write_piece` writes every value of its piece.
    unsafe { super::fill_spare(&mut out, x.len(), &write_piece) };
    Ok(out)
}

/// `piece[i] = g[i] · f(x[i])`.
#[inline(always)]
fn times_derivative(piece: &mut [MaybeUninit<f32>], x: &[f32], g: &[f32], f: impl Fn(f32) -> f32) {
    for ((o, &v), &d) in piece.iter_mut().zip(x).zip(g) {
        o.write(d * f(v));
    }
}

/// `out[c] = Σ_j [idx(c, j) == c[axis]] · g[c with c[axis] = j]` over the source shape
/// `out_dims` (see `shaders/scatter_add.wgsl`).
pub(crate) fn scatter_add(
    g: &[f32],
    idx: &[u32],
    out_dims: &[usize],
    g_dims: &[usize],
    axis: usize,
) -> Result<Vec<f32>> {
    let n: usize = out_dims.iter().product();
    let mut out = alloc("scatter_add", n)?;
    let mut g_strides = vec![1; g_dims.len()];
    for d in (0..g_dims.len().saturating_sub(1)).rev() {
        g_strides[d] = g_strides[d + 1] * g_dims[d + 1];
    }
    let count = g_dims[axis];
    for (i, o) in out.iter_mut().enumerate() {
        let (mut rem, mut base, mut want, mut inside) = (i, 0, 0, true);
        for d in (0..out_dims.len()).rev() {
            let at = rem % out_dims[d];
            rem /= out_dims[d];
            if d == axis {
                want = at;
            } else {
                inside &= at < g_dims[d];
                base += at * g_strides[d];
            }
        }
        if !inside {
            continue;
        }
        let mut acc = 0.0;
        for j in 0..count {
            let at = base + j * g_strides[axis];
            if idx[at] as usize == want {
                acc += g[at];
            }
        }
        *o = acc;
    }
    Ok(out)
}

/// index_select's backward from a row-grouped index (see `shaders/scatter_add.wgsl`, `rows`).
pub(crate) fn index_select_grad(
    g: &[f32],
    starts: &[u32],
    order: &[u32],
    (outer, len, inner): (usize, usize, usize),
    count: usize,
) -> Result<Vec<f32>> {
    let mut out = alloc("index_select backward", outer * len * inner)?;
    for (e, o) in out.iter_mut().enumerate() {
        let (i, r, b) = (e % inner, (e / inner) % len, e / (inner * len));
        let picked = &order[starts[r] as usize..starts[r + 1] as usize];
        *o = picked
            .iter()
            .map(|&j| g[(b * count + j as usize) * inner + i])
            .sum();
    }
    Ok(out)
}

/// The output position along one axis that tap `k` of input position `i` feeds, if any.
fn out_pos(
    i: usize,
    k: usize,
    pad: usize,
    dil: usize,
    stride: usize,
    extent: usize,
) -> Option<usize> {
    let t = (i + pad).checked_sub(k * dil)?;
    (t % stride == 0 && t / stride < extent).then_some(t / stride)
}

/// Gradient of conv2d's input from the output gradient `g` and the weight.
pub(crate) fn conv2d_grad_input(g: &[f32], wt: &[f32], w: &Window) -> Result<Vec<f32>> {
    if super::conv_gemm::worthwhile(w) {
        return super::conv_gemm::grad_input(g, wt, w);
    }
    grad_input_direct(g, wt, w)
}

/// [`conv2d_grad_input`] by direct loops: each input gathers the taps that read it.
pub(super) fn grad_input_direct(g: &[f32], wt: &[f32], w: &Window) -> Result<Vec<f32>> {
    let plane = w.h * w.w;
    let mut out = alloc("conv2d backward", w.n * w.c_in * plane)?;
    if plane == 0 {
        return Ok(out);
    }
    let (sh, sw) = w.opts.stride;
    let (ph, pw) = w.opts.padding;
    let (dh, dw) = w.opts.dilation;
    let cig = w.c_in_group();
    let cog = w.c_out / w.opts.groups;
    let work = plane * cog * w.kh * w.kw;
    par_chunks_mut(&mut out, plane, work, &|bc, dx| {
        let (b, ci) = (bc / w.c_in, bc % w.c_in);
        let (group, cl) = (ci / cig, ci % cig);
        for iy in 0..w.h {
            for ix in 0..w.w {
                let mut acc = 0.0;
                for co in group * cog..(group + 1) * cog {
                    let gp = (b * w.c_out + co) * w.oh * w.ow;
                    let wp = (co * cig + cl) * w.kh * w.kw;
                    for ky in 0..w.kh {
                        let Some(oy) = out_pos(iy, ky, ph, dh, sh, w.oh) else {
                            continue;
                        };
                        for kx in 0..w.kw {
                            let Some(ox) = out_pos(ix, kx, pw, dw, sw, w.ow) else {
                                continue;
                            };
                            acc += g[gp + oy * w.ow + ox] * wt[wp + ky * w.kw + kx];
                        }
                    }
                }
                dx[iy * w.w + ix] = acc;
            }
        }
    });
    Ok(out)
}

/// Gradient of conv2d's weight from the output gradient `g` and the input `x`.
pub(crate) fn conv2d_grad_weight(g: &[f32], x: &[f32], w: &Window) -> Result<Vec<f32>> {
    if super::conv_gemm::worthwhile(w) {
        return super::conv_gemm::grad_weight(g, x, w);
    }
    grad_weight_direct(g, x, w)
}

/// [`conv2d_grad_weight`] by direct loops: one weight per task, summed over the outputs.
pub(super) fn grad_weight_direct(g: &[f32], x: &[f32], w: &Window) -> Result<Vec<f32>> {
    let taps = w.kh * w.kw;
    let cig = w.c_in_group();
    let cog = w.c_out / w.opts.groups;
    let mut out = alloc("conv2d backward", w.c_out * cig * taps)?;
    if taps == 0 {
        return Ok(out);
    }
    let (sh, sw) = w.opts.stride;
    let (ph, pw) = w.opts.padding;
    let (dh, dw) = w.opts.dilation;
    let work = taps * w.n * w.oh * w.ow;
    par_chunks_mut(&mut out, taps, work, &|oc, dwt| {
        let (co, cl) = (oc / cig, oc % cig);
        let ci = (co / cog) * cig + cl;
        for ky in 0..w.kh {
            for kx in 0..w.kw {
                let mut acc = 0.0;
                // The padding's zeros times a non-finite gradient: NaN (see conv2d).
                let mut pad_nan = false;
                for b in 0..w.n {
                    let gp = (b * w.c_out + co) * w.oh * w.ow;
                    let xp = (b * w.c_in + ci) * w.h * w.w;
                    for oy in 0..w.oh {
                        let iy = (oy * sh + ky * dh) as isize - ph as isize;
                        let grow = &g[gp + oy * w.ow..][..w.ow];
                        if iy < 0 || iy >= w.h as isize {
                            pad_nan |= grow.iter().any(|v| !v.is_finite());
                            continue;
                        }
                        for (ox, &gv) in grow.iter().enumerate() {
                            let ix = (ox * sw + kx * dw) as isize - pw as isize;
                            if ix < 0 || ix >= w.w as isize {
                                pad_nan |= !gv.is_finite();
                                continue;
                            }
                            acc += gv * x[xp + iy as usize * w.w + ix as usize];
                        }
                    }
                }
                dwt[ky * w.kw + kx] = if pad_nan { f32::NAN } else { acc };
            }
        }
    });
    Ok(out)
}

/// In-plane position of the maximum of window (oy, ox): the first maximum, or the first NaN.
fn window_argmax(x: &[f32], w: &Window, oy: usize, ox: usize) -> Option<usize> {
    let (sh, sw) = w.opts.stride;
    let (ph, pw) = w.opts.padding;
    let mut best: Option<(usize, f32)> = None;
    for ky in 0..w.kh {
        let iy = (oy * sh + ky) as isize - ph as isize;
        if iy < 0 || iy >= w.h as isize {
            continue;
        }
        for kx in 0..w.kw {
            let ix = (ox * sw + kx) as isize - pw as isize;
            if ix < 0 || ix >= w.w as isize {
                continue;
            }
            let pos = iy as usize * w.w + ix as usize;
            let v = x[pos];
            if v.is_nan() {
                return Some(pos);
            }
            if best.is_none_or(|(_, b)| v > b) {
                best = Some((pos, v));
            }
        }
    }
    best.map(|(pos, _)| pos)
}

/// Gradient of max or average pooling's input from the output gradient `g`.
pub(crate) fn pool2d_grad(x: &[f32], g: &[f32], w: &Window, max: bool) -> Result<Vec<f32>> {
    let plane = w.h * w.w;
    let mut out = alloc("pool2d backward", w.n * w.c_out * plane)?;
    if plane == 0 || w.oh * w.ow == 0 {
        return Ok(out);
    }
    let (sh, sw) = w.opts.stride;
    let (ph, pw) = w.opts.padding;
    let area = (w.kh * w.kw) as f32;
    par_chunks_mut(&mut out, plane, w.oh * w.ow * w.kh * w.kw, &|p, dx| {
        let xs = &x[p * plane..(p + 1) * plane];
        let gs = &g[p * w.oh * w.ow..(p + 1) * w.oh * w.ow];
        // Scatter from each window: the same sums as the per-input GPU kernel, which adds the
        // windows covering an input in (oy, ox) order, as this loop does.
        for oy in 0..w.oh {
            for ox in 0..w.ow {
                let go = gs[oy * w.ow + ox];
                if max {
                    if let Some(pos) = window_argmax(xs, w, oy, ox) {
                        dx[pos] += go;
                    }
                    continue;
                }
                for ky in 0..w.kh {
                    let iy = (oy * sh + ky) as isize - ph as isize;
                    if iy < 0 || iy >= w.h as isize {
                        continue;
                    }
                    for kx in 0..w.kw {
                        let ix = (ox * sw + kx) as isize - pw as isize;
                        if ix >= 0 && ix < w.w as isize {
                            dx[iy as usize * w.w + ix as usize] += go;
                        }
                    }
                }
            }
        }
        if !max {
            dx.iter_mut().for_each(|v| *v /= area);
        }
    });
    Ok(out)
}
