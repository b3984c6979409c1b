//! Direct convolution and pooling, parallel over output planes.

use super::alloc;
use crate::conv::Window;
use crate::error::Result;
use rayon::prelude::*;

/// Input taps per output value at or above which a convolution runs as im2col and the SGEMM.
const GEMM_MIN_TAPS: usize = 16;
/// The most values one image's column matrix may hold (64 MiB); larger ones run directly.
const MAX_COLUMNS: usize = 16 << 20;

/// Convolution: through im2col and the SGEMM (`matmul`) when each output reads at least
/// `GEMM_MIN_TAPS` inputs (a 3×3 kernel over two or more channels per group), directly
/// otherwise (depthwise and tiny kernels, whose columns would cost more than their math). A
/// weight that is not finite also runs directly: there a tap in the padding contributes
/// nothing, where a column's zero times an infinite weight would be NaN.
pub(crate) fn conv2d(x: &[f32], wt: &[f32], bias: Option<&[f32]>, g: &Window) -> Result<Vec<f32>> {
    let taps = g.c_in_group() * g.kh * g.kw;
    if taps >= GEMM_MIN_TAPS
        && taps * g.oh * g.ow <= MAX_COLUMNS
        && g.oh * g.ow > 0
        && wt.iter().all(|v| v.is_finite())
    {
        return conv2d_gemm(x, wt, bias, g);
    }
    conv2d_direct(x, wt, bias, g)
}

/// Per image and group: the column matrix `[c_in/groups · kh · kw, oh · ow]` (zeros where a
/// tap falls in the padding), then `weight_group × columns` through the SGEMM, then the bias.
fn conv2d_gemm(x: &[f32], wt: &[f32], bias: Option<&[f32]>, g: &Window) -> Result<Vec<f32>> {
    use crate::matmul_plan::MatmulPlan;
    use crate::shape::Shape;
    let (cig, groups) = (g.c_in_group(), g.opts.groups);
    let cog = g.c_out / groups;
    let (taps, plane) = (cig * g.kh * g.kw, g.oh * g.ow);
    let (sh, sw) = g.opts.stride;
    let (ph, pw) = g.opts.padding;
    let (dh, dw) = g.opts.dilation;
    let plan = MatmulPlan::transposed(
        &Shape::new(&[cog, taps])?,
        &Shape::new(&[taps, plane])?,
        false,
        false,
    )?;
    let mut out = alloc("conv2d", g.n * g.c_out * plane)?;
    let mut cols = alloc("conv2d", taps * plane)?;
    for b in 0..g.n {
        for grp in 0..groups {
            cols.par_chunks_mut(plane).enumerate().for_each(|(t, row)| {
                let (cl, ky, kx) = (t / (g.kh * g.kw), (t / g.kw) % g.kh, t % g.kw);
                let xp = (b * g.c_in + grp * cig + cl) * g.h * g.w;
                for oy in 0..g.oh {
                    let iy = (oy * sh + ky * dh) as isize - ph as isize;
                    let dst = &mut row[oy * g.ow..(oy + 1) * g.ow];
                    if iy < 0 || iy >= g.h as isize {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = xp + iy as usize * g.w;
                    for (ox, d) in dst.iter_mut().enumerate() {
                        let ix = (ox * sw + kx * dw) as isize - pw as isize;
                        *d = if ix < 0 || ix >= g.w as isize {
                            0.0
                        } else {
                            x[src + ix as usize]
                        };
                    }
                }
            });
            let w0 = grp * cog * taps;
            let y = super::matmul(&wt[w0..w0 + cog * taps], &cols, &plan)?;
            let o0 = (b * g.c_out + grp * cog) * plane;
            out[o0..o0 + cog * plane].copy_from_slice(&y);
        }
    }
    if let Some(bias) = bias {
        out.par_chunks_mut(plane)
            .enumerate()
            .for_each(|(bc, y)| y.iter_mut().for_each(|v| *v += bias[bc % g.c_out]));
    }
    Ok(out)
}

fn conv2d_direct(x: &[f32], wt: &[f32], bias: Option<&[f32]>, g: &Window) -> Result<Vec<f32>> {
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
    out.par_chunks_mut(plane).enumerate().for_each(|(bc, y)| {
        let (b, co) = (bc / g.c_out, bc % g.c_out);
        let first = (co / cog) * cig;
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let mut acc = bias.map_or(0.0, |v| v[co]);
                for cl in 0..cig {
                    let xp = (b * g.c_in + first + cl) * g.h * g.w;
                    let wp = (co * cig + cl) * g.kh * g.kw;
                    for ky in 0..g.kh {
                        let iy = (oy * sh + ky * dh) as isize - ph as isize;
                        if iy < 0 || iy >= g.h as isize {
                            continue;
                        }
                        for kx in 0..g.kw {
                            let ix = (ox * sw + kx * dw) as isize - pw as isize;
                            if ix < 0 || ix >= g.w as isize {
                                continue;
                            }
                            acc +=
                                x[xp + iy as usize * g.w + ix as usize] * wt[wp + ky * g.kw + kx];
                        }
                    }
                }
                y[oy * g.ow + ox] = acc;
            }
        }
    });
    Ok(out)
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
    out.par_chunks_mut(plane).enumerate().for_each(|(p, y)| {
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
