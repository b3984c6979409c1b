//! Convolution as matrix products on the SGEMM: per image and channel group, the column matrix
//! `[c_in/groups · kh · kw, oh · ow]` of the input (im2col: one row per kernel tap, zeros where
//! the tap falls in the padding), then
//!
//! - forward: `y = W · cols` (W as `[c_out/groups, taps]`), plus the bias;
//! - input gradient: `dcols = Wᵀ · dy`, scattered back onto the input (col2im);
//! - weight gradient: `dW += dy · colsᵀ`, summed over the images.
//!
//! Used when each output reads at least [`MIN_TAPS`] inputs (a 3×3 kernel over two or more
//! channels per group). Depthwise and tiny kernels stay on the direct loops, whose columns would
//! cost more than their math. The padding is zeros that multiply like any input (ONNX's and
//! PyTorch's definition: `inf · 0` is NaN); the direct loops give the same.

use super::alloc;
use crate::conv::Window;
use crate::error::Result;
use crate::matmul_plan::MatmulPlan;
use crate::shape::Shape;
use rayon::prelude::*;

/// Input taps per output value at or above which a convolution runs through the SGEMM.
const MIN_TAPS: usize = 16;
/// The most values one image's column matrix may hold (64 MiB); larger ones run directly.
const MAX_COLUMNS: usize = 16 << 20;

/// Whether `g` runs through the SGEMM (operands aside: see the module docs).
pub(crate) fn worthwhile(g: &Window) -> bool {
    let taps = g.c_in_group() * g.kh * g.kw;
    taps >= MIN_TAPS && taps * g.oh * g.ow <= MAX_COLUMNS && g.oh * g.ow > 0
}

/// The kernel tap of row `t` of a group's column matrix: (channel in group, ky, kx).
fn tap(g: &Window, t: usize) -> (usize, usize, usize) {
    (t / (g.kh * g.kw), (t / g.kw) % g.kh, t % g.kw)
}

/// Input row `iy` and column `ix` read by output (oy, ox) at tap (ky, kx), if not padding.
fn source(g: &Window, oy: usize, ox: usize, ky: usize, kx: usize) -> Option<(usize, usize)> {
    let iy = (oy * g.opts.stride.0 + ky * g.opts.dilation.0).checked_sub(g.opts.padding.0)?;
    let ix = (ox * g.opts.stride.1 + kx * g.opts.dilation.1).checked_sub(g.opts.padding.1)?;
    (iy < g.h && ix < g.w).then_some((iy, ix))
}

/// The column matrix of image `b`, group `grp` into `cols` (`taps × oh·ow`).
fn im2col(x: &[f32], g: &Window, b: usize, grp: usize, cols: &mut [f32]) {
    let (cig, plane) = (g.c_in_group(), g.oh * g.ow);
    cols.par_chunks_mut(plane).enumerate().for_each(|(t, row)| {
        let (cl, ky, kx) = tap(g, t);
        let xp = (b * g.c_in + grp * cig + cl) * g.h * g.w;
        for oy in 0..g.oh {
            let dst = &mut row[oy * g.ow..(oy + 1) * g.ow];
            for (ox, d) in dst.iter_mut().enumerate() {
                *d = source(g, oy, ox, ky, kx).map_or(0.0, |(iy, ix)| x[xp + iy * g.w + ix]);
            }
        }
    });
}

/// Adds the column matrix `cols` of image `b`, group `grp` back onto the input gradient `dx`
/// (the transpose of [`im2col`]); parallel over the group's channels, which own disjoint
/// planes of `dx`.
fn col2im(cols: &[f32], g: &Window, b: usize, grp: usize, dx: &mut [f32]) {
    let (cig, plane, taps) = (g.c_in_group(), g.oh * g.ow, g.kh * g.kw);
    let first = (b * g.c_in + grp * cig) * g.h * g.w;
    dx[first..first + cig * g.h * g.w]
        .par_chunks_mut(g.h * g.w)
        .enumerate()
        .for_each(|(cl, plane_dx)| {
            for t in cl * taps..(cl + 1) * taps {
                let (_, ky, kx) = tap(g, t);
                let row = &cols[t * plane..(t + 1) * plane];
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        if let Some((iy, ix)) = source(g, oy, ox, ky, kx) {
                            plane_dx[iy * g.w + ix] += row[oy * g.ow + ox];
                        }
                    }
                }
            }
        });
}

/// `(c_out/groups, taps, oh·ow)` of `g`.
fn dims(g: &Window) -> (usize, usize, usize) {
    (
        g.c_out / g.opts.groups,
        g.c_in_group() * g.kh * g.kw,
        g.oh * g.ow,
    )
}

/// The forward convolution (`worthwhile(g)`).
pub(crate) fn forward(x: &[f32], wt: &[f32], bias: Option<&[f32]>, g: &Window) -> Result<Vec<f32>> {
    let (cog, taps, plane) = dims(g);
    let plan = MatmulPlan::transposed(
        &Shape::new(&[cog, taps])?,
        &Shape::new(&[taps, plane])?,
        false,
        false,
    )?;
    let mut out = alloc("conv2d", g.n * g.c_out * plane)?;
    let mut cols = alloc("conv2d", taps * plane)?;
    for b in 0..g.n {
        for grp in 0..g.opts.groups {
            im2col(x, g, b, grp, &mut cols);
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

/// The input gradient from the output gradient `dy` (`worthwhile(g)`; every term is one the
/// direct loop also sums, so any operands).
pub(crate) fn grad_input(dy: &[f32], wt: &[f32], g: &Window) -> Result<Vec<f32>> {
    let (cog, taps, plane) = dims(g);
    // Wᵀ · dy: W is stored [cog, taps].
    let plan = MatmulPlan::transposed(
        &Shape::new(&[cog, taps])?,
        &Shape::new(&[cog, plane])?,
        true,
        false,
    )?;
    let mut dx = alloc("conv2d backward", g.n * g.c_in * g.h * g.w)?;
    for b in 0..g.n {
        for grp in 0..g.opts.groups {
            let w0 = grp * cog * taps;
            let d0 = (b * g.c_out + grp * cog) * plane;
            let dcols = super::matmul(&wt[w0..w0 + cog * taps], &dy[d0..d0 + cog * plane], &plan)?;
            col2im(&dcols, g, b, grp, &mut dx);
        }
    }
    Ok(dx)
}

/// The weight gradient from the output gradient `dy` and the input `x` (`worthwhile(g)`).
pub(crate) fn grad_weight(dy: &[f32], x: &[f32], g: &Window) -> Result<Vec<f32>> {
    let (cog, taps, plane) = dims(g);
    // dy · colsᵀ: cols is stored [taps, plane].
    let plan = MatmulPlan::transposed(
        &Shape::new(&[cog, plane])?,
        &Shape::new(&[taps, plane])?,
        false,
        true,
    )?;
    let mut dw = alloc("conv2d backward", g.c_out * taps)?;
    let mut cols = alloc("conv2d backward", taps * plane)?;
    for b in 0..g.n {
        for grp in 0..g.opts.groups {
            im2col(x, g, b, grp, &mut cols);
            let d0 = (b * g.c_out + grp * cog) * plane;
            let part = super::matmul(&dy[d0..d0 + cog * plane], &cols, &plan)?;
            let w0 = grp * cog * taps;
            dw[w0..w0 + cog * taps]
                .iter_mut()
                .zip(&part)
                .for_each(|(d, p)| *d += p);
        }
    }
    Ok(dw)
}
