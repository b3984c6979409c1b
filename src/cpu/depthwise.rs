//! Depthwise convolution: each output channel reads one input channel (`c_in == groups`, a
//! channel multiplier of `c_out / groups`), any kernel size, stride, dilation and padding.
//!
//! Per output plane, the input plane is first laid out in phase planes (`phases.rs`), zero-padded
//! and split by the stride, so that each tap is one contiguous multiply-add over the whole
//! output at the phases' pitch: long loops that vectorise, no edge cases, whatever the kernel.
//! Every output sums the bias and then the taps row by row, left to right, as the general
//! direct loop does, and the padding's zeros multiply like any input (`inf · 0` is NaN).

use super::alloc;
use super::par_chunks_mut;
use super::phases::Phases;
use crate::conv::Window;
use crate::error::Result;
use crate::op::UnaryOp;
use std::cell::RefCell;

/// Output channels per input channel below which a depthwise convolution runs here; from it
/// on, the SGEMM shares each column value among that many outputs (`conv_gemm.rs`).
const MAX_MULTIPLIER: usize = 8;

/// The most outputs [`accumulate`] sums at a time (its AVX-512 block).
const MAX_BLOCK: usize = 64;

/// Whether `g` is a convolution [`conv2d`] computes.
pub(crate) fn applies(g: &Window) -> bool {
    g.c_in_group() == 1 && g.c_out / g.opts.groups < MAX_MULTIPLIER && g.kh * g.kw > 1
}

/// A worker's buffers: the phase planes, the output at their pitch, and the taps' (offset,
/// weight) pairs.
type Scratch = (Vec<f32>, Vec<f32>, Vec<(usize, f32)>);

thread_local! {
    /// Per worker ([`Scratch`]).
    static SCRATCH: RefCell<Scratch> = const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// The convolution (`applies(g)`), parallel over output planes.
pub(crate) fn conv2d(
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
    let mult = g.c_out / g.opts.groups;
    let taps = g.kh * g.kw;
    let layout = Phases::new(g);
    let (pitch, phase_len) = (layout.pitch, layout.phase_len);
    // The output at the phase pitch, in whole blocks (the spare values are dropped); the
    // phase planes end in a block's worth of slack so the last block reads inside them.
    let wide_len = (g.oh * pitch).next_multiple_of(MAX_BLOCK);
    par_chunks_mut(&mut out, plane, plane * taps, &|bc, y| {
        let (b, co) = (bc / g.c_out, bc % g.c_out);
        let ci = co / mult;
        let xs = &x[(b * g.c_in + ci) * g.h * g.w..][..g.h * g.w];
        let k = &wt[co * taps..][..taps];
        SCRATCH.with_borrow_mut(|(phases, wide, weighted)| {
            phases.clear();
            phases.resize(sh * sw * phase_len + MAX_BLOCK, 0.0);
            layout.fill(g, xs, phases);
            weighted.clear();
            weighted.extend(layout.offsets.iter().zip(k).map(|(&o, &w)| (o, w)));
            wide.clear();
            wide.resize(wide_len, 0.0);
            accumulate(wide, phases, weighted, bias.map_or(0.0, |v| v[co]));
            for (row, src) in y.chunks_exact_mut(g.ow).zip(wide.chunks_exact(pitch)) {
                row.copy_from_slice(&src[..g.ow]);
            }
        });
        super::conv::activate(act, y);
    });
    Ok(out)
}

/// `wide[i] = bias + Σ_taps w · phases[off + i]`, summed in the taps' order, on the widest
/// vectors the CPU has (the same values on each: Rust never fuses a multiply and an add).
fn accumulate(wide: &mut [f32], phases: &[f32], offsets: &[(usize, f32)], bias: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, checked just above.
            return unsafe { accumulate_avx512(wide, phases, offsets, bias) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { accumulate_avx2(wide, phases, offsets, bias) };
        }
    }
    accumulate_blocks::<16>(wide, phases, offsets, bias);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn accumulate_avx512(wide: &mut [f32], phases: &[f32], offsets: &[(usize, f32)], bias: f32) {
    accumulate_blocks::<MAX_BLOCK>(wide, phases, offsets, bias);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn accumulate_avx2(wide: &mut [f32], phases: &[f32], offsets: &[(usize, f32)], bias: f32) {
    accumulate_blocks::<32>(wide, phases, offsets, bias);
}

/// [`accumulate`], `B` outputs at a time, their sums kept in registers across the taps
/// (`wide` is whole blocks).
#[inline(always)]
fn accumulate_blocks<const B: usize>(
    wide: &mut [f32],
    phases: &[f32],
    offsets: &[(usize, f32)],
    bias: f32,
) {
    let mut at = 0;
    for block in wide.chunks_exact_mut(B) {
        let mut acc = [bias; B];
        for &(off, wv) in offsets {
            let src: &[f32; B] = phases[off + at..][..B].try_into().expect("a block");
            for (a, &v) in acc.iter_mut().zip(src) {
                *a += v * wv;
            }
        }
        block.copy_from_slice(&acc);
        at += B;
    }
}

#[cfg(test)]
mod tests {
    use super::super::depthwise3;
    use super::*;
    use crate::conv::Conv2dOptions;

    /// The phase-plane kernel, and the unrolled 3×3 one (`depthwise3`) where it applies, give
    /// exactly the general direct loop's values, bit for bit, over kernel sizes, strides,
    /// dilations, paddings, channel multipliers, odd and even and tiny sizes, a bias, and a
    /// non-finite weight.
    #[test]
    fn depthwise_kernels_match_the_direct_loop_exactly() {
        let mut seed = 7u32;
        let mut next = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
        };
        let (mut checked, mut checked3) = (0, 0);
        for (h, w) in [
            (7, 9),
            (8, 8),
            (3, 3),
            (2, 5),
            (1, 1),
            (12, 5),
            (14, 14),
            (5, 40),
            (4, 57),
        ] {
            for (kh, kw) in [(3, 3), (5, 5), (1, 3), (3, 1), (7, 7)] {
                for (stride, dil, pad, mult) in [
                    (1, 1, 0, 1),
                    (1, 1, 1, 1),
                    (2, 1, 0, 1),
                    (2, 1, 1, 1),
                    (1, 1, 2, 1),
                    (2, 1, 2, 2),
                    (1, 2, 2, 1),
                    (3, 1, 1, 3),
                    (2, 2, 3, 1),
                ] {
                    let (n, c) = (2, 3);
                    let opts = Conv2dOptions {
                        stride: (stride, stride),
                        padding: (pad, pad),
                        dilation: (dil, dil),
                        groups: c,
                    };
                    let shape = [n, c, h, w];
                    let Ok(g) = Window::new("test", &shape, c * mult, Some(1), (kh, kw), opts)
                    else {
                        continue; // a window larger than the padded input
                    };
                    assert!(applies(&g));
                    let x: Vec<f32> = (0..n * c * h * w).map(|_| next()).collect();
                    let mut wt: Vec<f32> = (0..c * mult * kh * kw).map(|_| next()).collect();
                    if (h, w) == (7, 9) {
                        wt[kh * kw / 2] = f32::INFINITY;
                    }
                    let bias: Vec<f32> = (0..c * mult).map(|_| next()).collect();
                    let got = conv2d(&x, &wt, Some(&bias), &g, None).unwrap();
                    let want =
                        super::super::conv::conv2d_direct(&x, &wt, Some(&bias), &g, None).unwrap();
                    let mut kernels = vec![("phase planes", got)];
                    if depthwise3::applies(&g) {
                        let got = depthwise3::conv2d(&x, &wt, Some(&bias), &g, None).unwrap();
                        kernels.push(("unrolled 3x3", got));
                        checked3 += 1;
                    }
                    for (kernel, got) in kernels {
                        assert_eq!(got.len(), want.len());
                        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                            assert!(
                                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                                "{kernel}: {h}x{w} kernel {kh}x{kw} stride {stride} dilation \
                                 {dil} pad {pad} multiplier {mult}: value {i}: {a} vs {b}"
                            );
                        }
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked > 150 && checked3 > 20, "{checked}, {checked3}");
    }
}
