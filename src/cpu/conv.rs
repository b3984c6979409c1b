//! Direct convolution and pooling, parallel over output planes; the choice among the
//! convolution kernels.

use super::alloc;
use super::par_chunks_mut;
use crate::conv::Window;
use crate::error::Result;
use crate::op::UnaryOp;

/// Convolution, then `act` on every output: depthwise kernels by their own loops, dense ones on
/// register tiles straight from the input (`conv_tile.rs`) where the CPU has them, else
/// through im2col and the SGEMM (`conv_gemm.rs`) where that pays, directly otherwise. Each kernel applies the activation to an output plane
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
    if let Some(t) = transposed(g) {
        return conv2d(x, wt, bias, &t, act);
    }
    if super::depthwise3::applies(g) {
        return super::depthwise3::conv2d(x, wt, bias, g, act);
    }
    if super::depthwise::applies(g) {
        return super::depthwise::conv2d(x, wt, bias, g, act);
    }
    if super::conv_tile::applies(g) {
        return super::conv_tile::conv2d(x, wt, bias, g, act);
    }
    if super::conv_gemm::worthwhile(g) {
        return super::conv_gemm::forward(x, wt, bias, g, act);
    }
    conv2d_direct(x, wt, bias, g, act)
}

/// A convolution along columns of one value (`w = kw = 1`, no padding across: a 1-D
/// convolution written as `[n, c, len, 1]`) as the same convolution along one row: the input,
/// weight and output are the same values in the same order, and every kernel then reads each
/// tap's inputs as one contiguous run rather than a value per output row.
fn transposed(g: &Window) -> Option<Window> {
    let o = &g.opts;
    let swap = |(a, b): (usize, usize)| (b, a);
    (g.w == 1 && g.kw == 1 && o.padding.1 == 0 && g.h > 1).then(|| Window {
        h: g.w,
        w: g.h,
        kh: g.kw,
        kw: g.kh,
        oh: g.ow,
        ow: g.oh,
        opts: crate::conv::Conv2dOptions {
            stride: swap(o.stride),
            padding: swap(o.padding),
            dilation: swap(o.dilation),
            groups: o.groups,
        },
        ..*g
    })
}

/// Deterministic values in [-1, 1), for the convolution kernels' tests.
#[cfg(test)]
pub(super) fn test_values(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| {
            let h = (i ^ seed).wrapping_mul(2_654_435_761).rotate_left(13);
            (h % 2000) as f32 / 1000.0 - 1.0
        })
        .collect()
}

/// `act` on a finished output plane, in the widest vectors the CPU has (`cpu::widest`: the
/// transcendental activations' polynomials run 16 lanes at a time on AVX-512).
pub(super) fn activate(act: Option<UnaryOp>, plane: &mut [f32]) {
    if let Some(op) = act {
        super::widest(Activate { op, plane });
    }
}

struct Activate<'a> {
    op: UnaryOp,
    plane: &'a mut [f32],
}

impl super::Wide for Activate<'_> {
    type Out = ();
    #[inline(always)]
    fn run(self) {
        self.op.apply_slice(self.plane);
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

/// Per kernel column `kx`, the output columns whose tap lies inside the input
/// ([`valid_columns`] at `g`'s stride, dilation and padding across).
pub(super) fn column_spans(g: &Window) -> Vec<(usize, usize)> {
    let o = &g.opts;
    (0..g.kw)
        .map(|kx| valid_columns(g.ow, g.w, o.stride.1, kx, o.dilation.1, o.padding.1))
        .collect()
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
    let cols = column_spans(g);
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

/// Max (NaN-propagating, padding ignored) or average (padding counted as zeros) pooling,
/// parallel over planes, each plane on the CPU's widest vectors ([`Pooled`]).
pub(crate) fn pool2d(x: &[f32], g: &Window, max: bool) -> Result<Vec<f32>> {
    let plane = g.oh * g.ow;
    let mut out = alloc(
        if max { "max_pool2d" } else { "avg_pool2d" },
        g.n * g.c_out * plane,
    )?;
    if plane == 0 {
        return Ok(out);
    }
    let cols: Vec<(usize, usize)> = (0..g.kw)
        .map(|kx| valid_columns(g.ow, g.w, g.opts.stride.1, kx, 1, g.opts.padding.1))
        .collect();
    par_chunks_mut(&mut out, plane, plane * g.kh * g.kw, &|p, y| {
        let xs = &x[p * g.h * g.w..(p + 1) * g.h * g.w];
        super::widest(Pooled {
            xs,
            y,
            g,
            cols: &cols,
            max,
        });
    });
    Ok(out)
}

/// One pooled plane `y` of input plane `xs`: each output row gathers its window's input rows
/// tap by tap over the columns where the tap lies inside (`cols`, per kx), as plain loops that
/// vectorise. Max keeps the largest value and turns NaN if any value was; average sums and
/// divides by the window's size.
struct Pooled<'a> {
    xs: &'a [f32],
    y: &'a mut [f32],
    g: &'a Window,
    cols: &'a [(usize, usize)],
    max: bool,
}

impl super::Wide for Pooled<'_> {
    type Out = ();

    #[inline(always)]
    fn run(self) {
        let Pooled {
            xs,
            y,
            g,
            cols,
            max,
        } = self;
        let (sh, sw) = g.opts.stride;
        let (ph, pw) = g.opts.padding;
        let mut nan = vec![false; g.ow];
        for (oy, row) in y.chunks_exact_mut(g.ow).enumerate() {
            row.fill(if max { f32::NEG_INFINITY } else { 0.0 });
            nan.fill(false);
            for ky in 0..g.kh {
                let Some(iy) = (oy * sh + ky).checked_sub(ph).filter(|&iy| iy < g.h) else {
                    continue;
                };
                let src = &xs[iy * g.w..(iy + 1) * g.w];
                for (kx, &(lo, hi)) in cols.iter().enumerate() {
                    if lo >= hi {
                        continue;
                    }
                    let start = lo * sw + kx - pw;
                    let out = &mut row[lo..hi];
                    if sw == 1 {
                        let src = &src[start..start + (hi - lo)];
                        if max {
                            for ((o, &v), n) in out.iter_mut().zip(src).zip(&mut nan[lo..hi]) {
                                *o = o.max(v);
                                *n |= v.is_nan();
                            }
                        } else {
                            out.iter_mut().zip(src).for_each(|(o, &v)| *o += v);
                        }
                    } else {
                        let src = src[start..].iter().step_by(sw);
                        if max {
                            for ((o, &v), n) in out.iter_mut().zip(src).zip(&mut nan[lo..hi]) {
                                *o = o.max(v);
                                *n |= v.is_nan();
                            }
                        } else {
                            out.iter_mut().zip(src).for_each(|(o, &v)| *o += v);
                        }
                    }
                }
            }
            if max {
                row.iter_mut()
                    .zip(&nan)
                    .filter(|(_, n)| **n)
                    .for_each(|(o, _)| *o = f32::NAN);
            } else {
                let size = (g.kh * g.kw) as f32;
                row.iter_mut().for_each(|o| *o /= size);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::Conv2dOptions;

    /// A convolution down columns of one value, run along a row ([`transposed`]), gives the
    /// direct loop's results on the original window: strides, dilation, padding along the
    /// column, groups and several images, through each kernel the row form reaches.
    #[test]
    fn columns_of_one_value_run_as_rows() {
        let cases = [
            // (n, c_in, h, c_out, kh, stride, padding, dilation, groups)
            (2, 4, 40, 6, 5, 3, 1, 2, 2),
            (1, 3, 70, 8, 3, 2, 2, 1, 1),
            (2, 16, 33, 32, 5, 1, 0, 1, 1),
            (1, 8, 25, 8, 3, 1, 1, 3, 8),
        ];
        for (i, &(n, c_in, h, c_out, kh, s, p, d, groups)) in cases.iter().enumerate() {
            let opts = Conv2dOptions {
                stride: (s, 1),
                padding: (p, 0),
                dilation: (d, 1),
                groups,
            };
            let cig = c_in / groups;
            let g = Window::new("test", &[n, c_in, h, 1], c_out, Some(cig), (kh, 1), opts).unwrap();
            assert!(transposed(&g).is_some(), "case {i}");
            let value = |j: usize| ((j * 7919 + i * 31) % 2000) as f32 / 1000.0 - 1.0;
            let x: Vec<f32> = (0..n * c_in * h).map(value).collect();
            let wt: Vec<f32> = (0..c_out * cig * kh).map(|j| value(j + 5)).collect();
            let bias: Vec<f32> = (0..c_out).map(|j| value(j + 11)).collect();
            let want = conv2d_direct(&x, &wt, Some(&bias), &g, None).unwrap();
            let got = conv2d(&x, &wt, Some(&bias), &g, None).unwrap();
            assert_eq!(got.len(), want.len(), "case {i}");
            for (j, (a, e)) in got.iter().zip(&want).enumerate() {
                let tol = 1e-5 * (cig * kh) as f32 * (1.0 + e.abs());
                assert!((a - e).abs() <= tol, "case {i} output {j}: {a} vs {e}");
            }
        }
    }
}
