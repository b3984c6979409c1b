//! Convolution as matrix products on the SGEMM: per image and channel group, the column matrix
//! `[c_in/groups · kh · kw, oh · ow]` of the input (im2col: one row per kernel tap, zeros where
//! the tap falls in the padding), then
//!
//! - forward: `y = W · cols` (W as `[c_out/groups, taps]`), plus the bias;
//! - input gradient: `dcols = Wᵀ · dy`, scattered back onto the input (col2im);
//! - weight gradient: `dW += dy · colsᵀ`, summed over the images.
//!
//! Used when each output reads at least [`MIN_TAPS`] inputs (a 3×3 kernel over two or more
//! channels per group), or when each column value feeds at least [`MIN_OUT`] output channels (a
//! first layer over one input channel). Depthwise kernels (one input channel per group, fewer
//! than 8 outputs per group) run in `depthwise.rs` instead: each of their column values would be
//! read once, so the columns would cost as much as the math. The padding is zeros that multiply like any input (ONNX's and
//! PyTorch's definition: `inf · 0` is NaN); the direct loops give the same.

use super::alloc;
use super::par_chunks_mut;
use crate::conv::Window;
use crate::error::Result;
use crate::matmul_plan::MatmulPlan;
use crate::op::UnaryOp;
use crate::shape::Shape;

/// Input taps per output value at or above which a convolution runs through the SGEMM.
const MIN_TAPS: usize = 16;
/// Output channels per group at or above which a convolution with fewer taps runs through the
/// SGEMM too: every column value is then read by that many products.
const MIN_OUT: usize = 8;
/// The most values one image's column matrix may hold (64 MiB); larger ones run directly.
const MAX_COLUMNS: usize = 16 << 20;
/// Output values per image per channel (`oh·ow`) up to which several images' columns sit side
/// by side in one product (a 1-D convolution over a few frames, a late layer's small map):
/// one weight read and one product instead of a small product per image, each packing the
/// weight again.
const SIDE_BY_SIDE_PLANE: usize = 256;

/// Whether `g` runs through the SGEMM (operands aside: see the module docs). A pointwise
/// convolution always does: it needs no column matrix.
pub(crate) fn worthwhile(g: &Window) -> bool {
    let taps = g.c_in_group() * g.kh * g.kw;
    let reused = taps >= MIN_TAPS || g.c_out / g.opts.groups >= MIN_OUT;
    g.oh * g.ow > 0 && (pointwise(g) || (reused && taps * g.oh * g.ow <= MAX_COLUMNS))
}

/// A 1-D convolution of one input channel over one row, without padding or dilation (an
/// STFT's windows, a strided feature extractor over samples): output column `p`'s taps are the
/// input's values `p·stride .. p·stride + kw`.
fn framing(g: &Window) -> bool {
    (
        g.c_in,
        g.opts.groups,
        g.h,
        g.kh,
        g.opts.padding,
        g.opts.dilation.1,
    ) == (1, 1, 1, 1, (0, 0), 1)
}

/// A 1×1 kernel at stride 1 without padding: each image's channels of a group, `[c_in/groups,
/// h·w]`, are already its column matrix.
fn pointwise(g: &Window) -> bool {
    (g.kh, g.kw, g.opts.stride, g.opts.padding) == (1, 1, (1, 1), (0, 0))
}

/// The kernel tap of row `t` of a group's column matrix: (channel in group, ky, kx).
fn tap(g: &Window, t: usize) -> (usize, usize, usize) {
    (t / (g.kh * g.kw), (t / g.kw) % g.kh, t % g.kw)
}

/// Column matrices up to this many values stay allocated between convolutions (16 MiB), so
/// a network's convolutions do not each allocate and zero theirs.
const KEPT_COLUMNS: usize = 4 << 20;

thread_local! {
    /// The calling thread's column matrix, reused ([`with_scratch`]).
    static COLUMNS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `f` on a buffer of `n` values whose contents are left over from earlier use (callers
/// overwrite all of it): the thread's kept buffer when it is free and `n` fits
/// [`KEPT_COLUMNS`], a new one otherwise.
fn with_scratch<T>(n: usize, f: impl FnOnce(&mut [f32]) -> Result<T>) -> Result<T> {
    if n > KEPT_COLUMNS {
        return f(&mut alloc("conv2d", n)?);
    }
    let kept = COLUMNS.with(|c| c.try_borrow_mut().map(|mut v| std::mem::take(&mut *v)));
    let Ok(mut buf) = kept else {
        return f(&mut alloc("conv2d", n)?); // in use further up this thread's stack
    };
    if buf.len() < n {
        buf = alloc("conv2d", n)?;
    }
    let out = f(&mut buf[..n]);
    COLUMNS.with(|c| {
        if let Ok(mut v) = c.try_borrow_mut() {
            *v = buf;
        }
    });
    out
}

/// The column matrix of image `b`, group `grp`: the input's own values for a pointwise
/// convolution, else written into `cols` (`taps × oh·ow`) by [`im2col`].
fn columns<'a>(x: &'a [f32], g: &Window, b: usize, grp: usize, cols: &'a mut [f32]) -> &'a [f32] {
    let (cig, plane) = (g.c_in_group(), g.oh * g.ow);
    if pointwise(g) {
        let first = (b * g.c_in + grp * cig) * plane;
        return &x[first..first + cig * plane];
    }
    im2col(x, g, b, grp, cols);
    cols
}

/// The column matrix of image `b`, group `grp` into `cols` (`taps × oh·ow`): per output row,
/// the span of columns whose tap lands inside the input is one copy (strided when the stride
/// is), the rest zeros.
fn im2col(x: &[f32], g: &Window, b: usize, grp: usize, cols: &mut [f32]) {
    let (cig, plane, sw) = (g.c_in_group(), g.oh * g.ow, g.opts.stride.1);
    let spans = super::conv::column_spans(g);
    par_chunks_mut(cols, plane, plane, &|t, row| {
        let (cl, ky, kx) = tap(g, t);
        let xp = (b * g.c_in + grp * cig + cl) * g.h * g.w;
        for (oy, dst) in row.chunks_exact_mut(g.ow).enumerate() {
            let Some((start, lo, hi)) = tap_run(g, &spans, ky, kx, oy) else {
                dst.fill(0.0);
                continue;
            };
            dst[..lo].fill(0.0);
            dst[hi..].fill(0.0);
            let start = xp + start;
            if sw == 1 {
                dst[lo..hi].copy_from_slice(&x[start..start + hi - lo]);
            } else {
                dst[lo..hi]
                    .iter_mut()
                    .zip(x[start..].iter().step_by(sw))
                    .for_each(|(d, &v)| *d = v);
            }
        }
    });
}

/// Where tap (`ky`, `kx`) of output row `oy` reads an input plane: the output columns
/// `lo..hi` whose tap lands inside it (`spans`: [`super::conv::column_spans`]), from plane
/// offset `start` on at the column stride; `None` when the row's tap lies in the padding or no
/// column's does.
fn tap_run(
    g: &Window,
    spans: &[(usize, usize)],
    ky: usize,
    kx: usize,
    oy: usize,
) -> Option<(usize, usize, usize)> {
    let (lo, hi) = spans[kx];
    let (sh, sw) = g.opts.stride;
    let (dh, dw) = g.opts.dilation;
    let (ph, pw) = g.opts.padding;
    let iy = (oy * sh + ky * dh)
        .checked_sub(ph)
        .filter(|&iy| iy < g.h && lo < hi)?;
    Some((iy * g.w + lo * sw + kx * dw - pw, lo, hi))
}

/// Adds the column matrix `cols` of image `b`, group `grp` back onto the input gradient `dx`
/// (the transpose of [`im2col`]); parallel over the group's channels, which own disjoint
/// planes of `dx`. Per tap and output row, the columns whose tap lands inside the input are
/// one strided run (as in `im2col`); each value of `dx` sums its terms in the order of a loop
/// over taps, rows and columns.
fn col2im(cols: &[f32], g: &Window, b: usize, grp: usize, dx: &mut [f32]) {
    let (cig, plane, taps) = (g.c_in_group(), g.oh * g.ow, g.kh * g.kw);
    let sw = g.opts.stride.1;
    let spans = super::conv::column_spans(g);
    let first = (b * g.c_in + grp * cig) * g.h * g.w;
    let work = taps * plane;
    par_chunks_mut(
        &mut dx[first..first + cig * g.h * g.w],
        g.h * g.w,
        work,
        &|cl, plane_dx| {
            for t in cl * taps..(cl + 1) * taps {
                let (_, ky, kx) = tap(g, t);
                let row = &cols[t * plane..(t + 1) * plane];
                for oy in 0..g.oh {
                    let Some((start, lo, hi)) = tap_run(g, &spans, ky, kx, oy) else {
                        continue;
                    };
                    let src = &row[oy * g.ow + lo..oy * g.ow + hi];
                    if sw == 1 {
                        let dst = &mut plane_dx[start..start + (hi - lo)];
                        dst.iter_mut().zip(src).for_each(|(d, &v)| *d += v);
                    } else {
                        let dst = plane_dx[start..].iter_mut().step_by(sw);
                        dst.zip(src).for_each(|(d, &v)| *d += v);
                    }
                }
            }
        },
    );
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
pub(crate) fn forward(
    x: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    g: &Window,
    act: Option<UnaryOp>,
) -> Result<Vec<f32>> {
    let (cog, taps, plane) = dims(g);
    // Bias and activation of output channel `c`'s plane, applied by the thread that computed
    // it while it is in that thread's cache (rows of the products are channel planes).
    let finish = |c: usize, y: &mut [f32]| {
        if let Some(b) = bias {
            let b = b[c % g.c_out];
            y.iter_mut().for_each(|v| *v += b);
        }
        super::conv::activate(act, y);
    };
    let plan = MatmulPlan::transposed(
        &Shape::new(&[cog, taps])?,
        &Shape::new(&[taps, plane])?,
        false,
        false,
    )?;
    let out = if framing(g) {
        // Each output column's taps are a contiguous run of the input: the column matrix is
        // the input itself, read with stride 1 between taps and the stride between columns
        // (no im2col pass).
        let batched = MatmulPlan {
            offsets: (0..g.n).map(|b| (0, b * g.w)).collect(),
            b_strides: (1, g.opts.stride.1),
            out_shape: Shape::new(&[g.n, cog, plane])?,
            ..plan
        };
        super::matmul_then(wt, x, &batched, Some(&finish))?
    } else if g.opts.groups == 1 && g.n > 1 && plane <= SIDE_BY_SIDE_PLANE {
        // The images' columns side by side, `[taps, n·plane]`: one product, its rows the
        // output channels over every image (bias and activation on each row), then the
        // rows dealt back to NCHW.
        let wide = g.n * plane;
        let plan = MatmulPlan::transposed(
            &Shape::new(&[cog, taps])?,
            &Shape::new(&[taps, wide])?,
            false,
            false,
        )?;
        let y = with_scratch(taps * (wide + plane), |buf| {
            let (cols, own) = buf.split_at_mut(taps * wide);
            for b in 0..g.n {
                let part = columns(x, g, b, 0, own);
                for (t, row) in part.chunks_exact(plane).enumerate() {
                    cols[t * wide + b * plane..][..plane].copy_from_slice(row);
                }
            }
            super::matmul_then(wt, cols, &plan, Some(&finish))
        })?;
        let mut out = alloc("conv2d", g.n * g.c_out * plane)?;
        for (c, row) in y.chunks_exact(wide).enumerate() {
            for (b, src) in row.chunks_exact(plane).enumerate() {
                out[(b * g.c_out + c) * plane..][..plane].copy_from_slice(src);
            }
        }
        out
    } else if pointwise(g) {
        // One batched product over (image, group), reading the input in place; the batches'
        // outputs follow one another as NCHW's (image, channel) planes do.
        let groups = g.opts.groups;
        let batched = MatmulPlan {
            offsets: (0..g.n * groups)
                .map(|bg| {
                    let (b, grp) = (bg / groups, bg % groups);
                    (grp * cog * taps, (b * g.c_in + grp * taps) * plane)
                })
                .collect(),
            out_shape: Shape::new(&[g.n * groups, cog, plane])?,
            ..plan
        };
        super::matmul_then(wt, x, &batched, Some(&finish))?
    } else if g.n * g.opts.groups * taps * plane <= MAX_COLUMNS {
        // Every (image, group)'s columns, then one batched product whose outputs follow one
        // another as NCHW's planes do.
        let (groups, per) = (g.opts.groups, taps * plane);
        let batched = MatmulPlan {
            offsets: (0..g.n * groups)
                .map(|bg| ((bg % groups) * cog * taps, bg * per))
                .collect(),
            out_shape: Shape::new(&[g.n * groups, cog, plane])?,
            ..plan
        };
        with_scratch(g.n * groups * per, |cols| {
            for (bg, part) in cols.chunks_exact_mut(per).enumerate() {
                im2col(x, g, bg / groups, bg % groups, part);
            }
            super::matmul_then(wt, cols, &batched, Some(&finish))
        })?
    } else {
        let mut out = alloc("conv2d", g.n * g.c_out * plane)?;
        let mut cols = alloc("conv2d", taps * plane)?;
        for b in 0..g.n {
            for grp in 0..g.opts.groups {
                im2col(x, g, b, grp, &mut cols);
                let w0 = grp * cog * taps;
                let rows = |i: usize, y: &mut [f32]| finish(grp * cog + i, y);
                let y = super::matmul_then(&wt[w0..w0 + cog * taps], &cols, &plan, Some(&rows))?;
                let o0 = (b * g.c_out + grp * cog) * plane;
                out[o0..o0 + cog * plane].copy_from_slice(&y);
            }
        }
        out
    };
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
    let mut cols = alloc(
        "conv2d backward",
        if pointwise(g) { 0 } else { taps * plane },
    )?;
    for b in 0..g.n {
        for grp in 0..g.opts.groups {
            let cols = columns(x, g, b, grp, &mut cols);
            let d0 = (b * g.c_out + grp * cog) * plane;
            let part = super::matmul(&dy[d0..d0 + cog * plane], cols, &plan)?;
            let w0 = grp * cog * taps;
            dw[w0..w0 + cog * taps]
                .iter_mut()
                .zip(&part)
                .for_each(|(d, p)| *d += p);
        }
    }
    Ok(dw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::Conv2dOptions;

    use super::super::conv::test_values as values;

    fn close(what: &str, a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                "{what}: value {i}: {x} vs {y}"
            );
        }
    }

    /// The SGEMM forms (im2col, or the input in place for pointwise kernels) give the direct
    /// loops' results, forward and both gradients, over strides, padding, dilation, groups,
    /// several images and a bias; a depthwise kernel stays direct.
    #[test]
    fn gemm_forms_match_the_direct_loops() {
        let cases = [
            // (n, c_in, h, w, c_out, k, stride, padding, dilation, groups)
            (2, 6, 5, 7, 4, (1, 1), (1, 1), (0, 0), (1, 1), 2), // pointwise, grouped
            (1, 16, 4, 4, 8, (1, 1), (1, 1), (0, 0), (1, 1), 1), // pointwise
            (2, 16, 6, 5, 3, (1, 1), (2, 1), (0, 0), (1, 1), 1), // 1x1, strided: im2col
            (2, 4, 7, 6, 5, (3, 3), (2, 2), (1, 1), (1, 1), 1),
            (1, 8, 9, 8, 4, (3, 2), (1, 2), (2, 1), (2, 1), 2),
            (2, 8, 7, 11, 4, (2, 3), (2, 3), (1, 2), (1, 2), 2), // stride 3 with dilation
            (3, 1, 8, 8, 8, (3, 3), (1, 1), (1, 1), (1, 1), 1),  // one input channel, 8 outputs
        ];
        for (i, &(n, c_in, h, w, c_out, k, stride, padding, dilation, groups)) in
            cases.iter().enumerate()
        {
            let opts = Conv2dOptions {
                stride,
                padding,
                dilation,
                groups,
            };
            let g = Window::new(
                "test",
                &[n, c_in, h, w],
                c_out,
                Some(c_in / groups),
                k,
                opts,
            )
            .unwrap();
            assert!(worthwhile(&g), "case {i} should take the SGEMM");
            let depthwise = Window::new(
                "test",
                &[n, c_out, h, w],
                c_out,
                Some(1),
                k,
                Conv2dOptions {
                    groups: c_out,
                    ..opts
                },
            );
            assert!(
                !depthwise.is_ok_and(|d| worthwhile(&d) && !pointwise(&d)),
                "case {i}: depthwise stays direct"
            );
            let x = values(n * c_in * h * w, 1 + i as u32);
            let wt = values(c_out * g.c_in_group() * k.0 * k.1, 100 + i as u32);
            let bias = values(c_out, 200 + i as u32);
            let dy = values(n * c_out * g.oh * g.ow, 300 + i as u32);
            let what = |part: &str| format!("case {i} {part}");
            close(
                &what("forward"),
                &forward(&x, &wt, Some(&bias), &g, None).unwrap(),
                &super::super::conv::conv2d_direct(&x, &wt, Some(&bias), &g, None).unwrap(),
            );
            close(
                &what("input gradient"),
                &grad_input(&dy, &wt, &g).unwrap(),
                &super::super::grad::grad_input_direct(&dy, &wt, &g).unwrap(),
            );
            close(
                &what("weight gradient"),
                &grad_weight(&dy, &x, &g).unwrap(),
                &super::super::grad::grad_weight_direct(&dy, &x, &g).unwrap(),
            );
        }
    }
}
