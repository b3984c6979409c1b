//! Direct convolution and pooling, parallel over output planes; the choice among the
//! convolution kernels.

use super::alloc;
use super::par_chunks_mut;
use crate::conv::Window;
use crate::error::Result;
use crate::op::UnaryOp;

/// Convolution, then `act` on every output: through im2col and the SGEMM (`conv_gemm.rs`)
/// where that pays, directly otherwise. Each kernel applies the activation to an output plane
/// (or row of planes) as soon as it is written, while it is in the thread's cache. All treat
/// the padding as zeros that multiply like any input (ONNX's and PyTorch's definition): a
/// non-finite weight over the padding gives NaN (`inf · 0`).
pub(crate) fn conv2d(
    x: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    g: &Window,
    act: Option<UnaryOp>,
) -> Result<Vec<f32>> {
    if super::depthwise3::applies(g) {
        return super::depthwise3::conv2d(x, wt, bias, g, act);
    }
    if super::depthwise::applies(g) {
        return super::depthwise::conv2d(x, wt, bias, g, act);
    }
    if super::conv_gemm::worthwhile(g) {
        return super::conv_gemm::forward(x, wt, bias, g, act);
    }
    conv2d_direct(x, wt, bias, g, act)
}

/// `act` on a finished output plane.
pub(super) fn activate(act: Option<UnaryOp>, plane: &mut [f32]) {
    if let Some(op) = act {
        op.apply_slice(plane);
    }
}

/// The output columns `ox` whose input column `ox·stride + k·dil - pad` lies in `0..w`, as a
/// range `lo..hi`.
pub(super) fn valid_columns(
    ow: usize,
    w: usize,
    stride: usize,
    k: usize,
    dil: usize,
    pad: usize,
) -> (usize, usize) {
    let off = (k * dil) as isize - pad as isize;
    // ox·stride + off >= 0  and  ox·stride + off < w
    let lo = if off >= 0 { 0 } else { (-off) as usize };
    let lo = lo.div_ceil(stride);
    let hi = if (w as isize) <= off {
        0
    } else {
        ((w as isize - off) as usize).div_ceil(stride)
    };
    (lo.min(ow), hi.min(ow).max(lo.min(ow)))
}

/// One output plane per task; each kernel tap is an AXPY over the valid span of every output
/// row (contiguous reads when the stride is 1), so the loops vectorise. Every output still sums
/// bias, then channels, then taps in the same order as a loop per output would. The padding's
/// zeros add nothing unless the weight is not finite: then they add its `w · 0` (NaN).
pub(super) fn conv2d_direct(
    x: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    g: &Window,
    act: Option<UnaryOp>,
) -> Result<Vec<f32>> {
    let plane = g.oh * g.ow;
    let mut out = alloc("conv2d", g.n * g.c_out * plane)?;
    if plane == 0 {
        return Ok(out);
    }
    let (sh, sw) = g.opts.stride;
    let (ph, pw) = g.opts.padding;
    let (dh, dw) = g.opts.dilation;
    let cig = g.c_in_group();
    let cog = g.c_out / g.opts.groups;
    let cols: Vec<(usize, usize)> = (0..g.kw)
        .map(|kx| valid_columns(g.ow, g.w, sw, kx, dw, pw))
        .collect();
    let work = plane * cig * g.kh * g.kw;
    par_chunks_mut(&mut out, plane, work, &|bc, y| {
        let (b, co) = (bc / g.c_out, bc % g.c_out);
        let first = (co / cog) * cig;
        y.fill(bias.map_or(0.0, |v| v[co]));
        for cl in 0..cig {
            let xp = (b * g.c_in + first + cl) * g.h * g.w;
            let wp = (co * cig + cl) * g.kh * g.kw;
            for ky in 0..g.kh {
                for oy in 0..g.oh {
                    let iy = (oy * sh + ky * dh) as isize - ph as isize;
                    let row = &mut y[oy * g.ow..(oy + 1) * g.ow];
                    if iy < 0 || iy >= g.h as isize {
                        for kx in 0..g.kw {
                            pad_product(row, 0, 0, wt[wp + ky * g.kw + kx]);
                        }
                        continue;
                    }
                    let src = &x[xp + iy as usize * g.w..][..g.w];
                    for (kx, &(lo, hi)) in cols.iter().enumerate() {
                        let wv = wt[wp + ky * g.kw + kx];
                        pad_product(row, lo, hi, wv);
                        if lo >= hi {
                            continue;
                        }
                        let start = (lo * sw + kx * dw) - pw;
                        if sw == 1 {
                            for (o, &v) in row[lo..hi].iter_mut().zip(&src[start..start + hi - lo])
                            {
                                *o += v * wv;
                            }
                        } else {
                            for (o, &v) in
                                row[lo..hi].iter_mut().zip(src[start..].iter().step_by(sw))
                            {
                                *o += v * wv;
                            }
                        }
                    }
                }
            }
        }
        activate(act, y);
    });
    Ok(out)
}

/// Adds the padding's products `wv · 0` to the outputs of `row` outside `lo..hi` (the ones
/// whose tap falls in the padding): nothing unless `wv` is not finite, NaN then.
fn pad_product(row: &mut [f32], lo: usize, hi: usize, wv: f32) {
    if !wv.is_finite() {
        let (lo, hi) = (lo.min(row.len()), hi.min(row.len()).max(lo.min(row.len())));
        let (head, rest) = row.split_at_mut(lo);
        for o in head.iter_mut().chain(&mut rest[hi - lo..]) {
            *o += wv * 0.0;
        }
    }
}

/// Max (NaN-propagating, padding ignored) or average (padding counted as zeros) pooling.
pub(crate) fn pool2d(x: &[f32], g: &Window, max: bool) -> Result<Vec<f32>> {
    let plane = g.oh * g.ow;
    let mut out = alloc(
        if max { "max_pool2d" } else { "avg_pool2d" },
        g.n * g.c_out * plane,
    )?;
    if plane == 0 {
        return Ok(out);
    }
    let (sh, sw) = g.opts.stride;
    let (ph, pw) = g.opts.padding;
    par_chunks_mut(&mut out, plane, plane * g.kh * g.kw, &|p, y| {
        let xp = p * g.h * g.w;
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let mut acc = if max { f32::NEG_INFINITY } else { 0.0 };
                let mut nan = false;
                for ky in 0..g.kh {
                    let iy = (oy * sh + ky) as isize - ph as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    for kx in 0..g.kw {
                        let ix = (ox * sw + kx) as isize - pw as isize;
                        if ix < 0 || ix >= g.w as isize {
                            continue;
                        }
                        let v = x[xp + iy as usize * g.w + ix as usize];
                        nan |= v.is_nan();
                        acc = if max { acc.max(v) } else { acc + v };
                    }
                }
                y[oy * g.ow + ox] = if max && nan {
                    f32::NAN
                } else if max {
                    acc
                } else {
                    acc / (g.kh * g.kw) as f32
                };
            }
        }
    });
    Ok(out)
}
