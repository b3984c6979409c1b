//! Direct convolution and pooling, parallel over output planes.

use super::alloc;
use crate::conv::Window;
use crate::error::Result;
use rayon::prelude::*;

/// Convolution: through im2col and the SGEMM (`conv_gemm.rs`) where that pays, directly
/// otherwise.
pub(crate) fn conv2d(x: &[f32], wt: &[f32], bias: Option<&[f32]>, g: &Window) -> Result<Vec<f32>> {
    if super::conv_gemm::worthwhile(g) && wt.iter().all(|v| v.is_finite()) {
        return super::conv_gemm::forward(x, wt, bias, g);
    }
    conv2d_direct(x, wt, bias, g)
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
