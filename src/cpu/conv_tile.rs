//! Dense convolution on register tiles, read straight from the input: no column matrix, no
//! packing. Each image's input channels are laid out once in phase planes (`phases.rs`), where
//! tap `(ky, kx)` of every output is one contiguous run at a fixed offset for any stride,
//! dilation and padding. A tile is a block of output channels (8 on AVX-512, 4 on AVX2) times
//! three vectors of consecutive outputs at the phases' pitch (48 or 24; the spare columns of
//! each row are computed and dropped); for every (input channel, tap) it loads the three input
//! vectors once and multiply-adds each into the block's accumulators by the broadcast weights,
//! 24 or 12 of them, which stay in registers for the whole sum.
//!
//! Through im2col and the SGEMM (`conv_gemm.rs`) the same convolution writes every input value
//! `kh·kw` times into the column matrix and the SGEMM copies that again into its panels: for
//! convolutions with few output channels (a detector's 16–64, a first layer over three) those
//! copies cost as much as the arithmetic. Pointwise kernels keep the SGEMM, which reads their
//! input in place, as do grouped convolutions and strides over 2 (a framing convolution).

use super::alloc;
use super::phases::Phases;
use super::{Shared, spin_pool};
use crate::conv::Window;
use crate::error::Result;
use crate::op::UnaryOp;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Vectors of consecutive outputs per tile.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const VECTORS: usize = 3;
/// Output channels up to which a convolution runs here: with more, the SGEMM's packing is
/// shared by enough of them that its faster kernel wins (two Sapphire Rapids cores, 3×3 at
/// 10×10 to 40×40: tiles 1.3–1.5× faster at 64 channels, even at 128, slower at 256).
const MAX_OUT: usize = 64;
/// Output positions (at the phases' pitch) from which a convolution runs here. Even a 3×3
/// output (15 positions of a 48-position tile) was faster here than through the SGEMM's
/// few-column path (ocr_det's 96→24 channels: 36 → 24 µs; at 6×6, 89 → 23 µs).
const MIN_SPAN: usize = 8;

/// One tile: `out[c·T + i]` (`T` = `VECTORS` × the kernel's lanes) += the sum over every
/// `j < offs.len()` of `w[c·stride + j] · x[offs[j] + i]`, for the block's `CB` channels,
/// of which the first `rows` are real (the others repeat the last one's weights; the caller
/// drops their sums). The weights are read where they lie, `[c_out, c_in·kh·kw]`: eight
/// channels' rows are eight streams, one broadcast each per step.
type TileFn = unsafe fn(*const f32, &[usize], *const f32, usize, usize, &mut [f32]);

/// The tile kernel for this CPU: (output channels per block, outputs per tile, kernel).
#[derive(Clone, Copy)]
struct Kernel {
    block: usize,
    span: usize,
    tile: TileFn,
}

/// The widest tile kernel this CPU has, if any (`KILN_CPU_WIDEST=avx2` asks for the AVX2 one,
/// `baseline` for none, as it does of `cpu::widest`).
fn kernel() -> Option<Kernel> {
    #[cfg(target_arch = "x86_64")]
    {
        static KERNEL: std::sync::OnceLock<Option<Kernel>> = std::sync::OnceLock::new();
        *KERNEL.get_or_init(|| {
            let asked = std::env::var("KILN_CPU_WIDEST").ok();
            let wide = std::arch::is_x86_feature_detected!("avx512f")
                && !matches!(asked.as_deref(), Some("avx2" | "baseline"));
            let narrow = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && asked.as_deref() != Some("baseline");
            if wide {
                Some(Kernel {
                    block: x86::BLOCK512,
                    span: VECTORS * 16,
                    tile: x86::tile512,
                })
            } else if narrow {
                Some(Kernel {
                    block: x86::BLOCK256,
                    span: VECTORS * 8,
                    tile: x86::tile256,
                })
            } else {
                None
            }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// Whether `g` runs here: a dense (ungrouped) convolution that is not pointwise, at stride 1
/// or 2, whose output at the phases' pitch fills at least [`MIN_SPAN`] positions, on a CPU
/// with a tile kernel. `KILN_CPU_CONV_TILES=0` turns it off (read once).
pub(crate) fn applies(g: &Window) -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on = *ON.get_or_init(|| std::env::var("KILN_CPU_CONV_TILES").as_deref() != Ok("0"));
    let o = &g.opts;
    let pointwise = (g.kh, g.kw, o.stride, o.padding) == (1, 1, (1, 1), (0, 0));
    on && kernel().is_some()
        && o.groups == 1
        && !pointwise
        && g.c_out <= MAX_OUT
        && o.stride.0 <= 2
        && o.stride.1 <= 2
        && g.oh * Phases::pitch_of(g) >= MIN_SPAN
}

/// The convolution (`applies(g)`), then `act`: per image, the phases of every input channel
/// (in parallel over channels), then the output's rows in runs claimed by the threads, each
/// run's tiles over every block of output channels while its inputs are in the cache.
pub(crate) fn conv2d(
    x: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    g: &Window,
    act: Option<UnaryOp>,
) -> Result<Vec<f32>> {
    let k = kernel().expect("conv_tile::applies checked for a kernel");
    conv2d_with(k, x, wt, bias, g, act)
}

/// [`conv2d`] on tile kernel `k`.
fn conv2d_with(
    k: Kernel,
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
    let layout = Phases::new(g);
    let (taps, ci_len) = (g.kh * g.kw, layout.plane_len(g));
    let steps = g.c_in * taps;
    // Where (input channel, tap) `j` reads for the first output.
    let offs: Vec<usize> = (0..g.c_in)
        .flat_map(|ci| layout.offsets.iter().map(move |&o| ci * ci_len + o))
        .collect();
    let blocks = g.c_out.div_ceil(k.block);
    // The input's phases, channel after channel, then a tile's slack: the last tile reads up
    // to a tile past the last output's taps. Every image writes the same places, so the
    // padding's zeros from `alloc` stay.
    let mut xs = alloc("conv2d", g.c_in * ci_len + k.span)?;
    let threads = spin_pool::width();
    let tiles = (g.oh * layout.pitch).div_ceil(k.span);
    // Work is claimed in runs of tiles, and when the tiles are few (a small output) a tile's
    // blocks of output channels are split too, so that every thread has some.
    let parts = (4 * threads).div_ceil(tiles).clamp(1, blocks);
    let per_part = blocks.div_ceil(parts);
    let parts = blocks.div_ceil(per_part);
    // Units (tile, part) per claim: about eight claims a thread.
    let per_claim = (tiles * parts / (8 * threads)).max(1);
    // A tile reads `kh` runs of about `span + kw` inputs of each channel per phase column
    // that its taps reach (`min(kw, sw)`): as many channels a pass as fill 16 KiB of the L1
    // cache.
    let runs = g.kh * g.kw.min(g.opts.stride.1);
    let channels = (16384 / (4 * runs * (k.span + g.kw * g.opts.dilation.1))).max(1);
    let work = steps * blocks * k.block * plane;
    for b in 0..g.n {
        let image = &x[b * g.c_in * g.h * g.w..][..g.c_in * g.h * g.w];
        super::par_chunks_mut(&mut xs[..g.c_in * ci_len], ci_len, ci_len, &|ci, d| {
            layout.fill(g, &image[ci * g.h * g.w..][..g.h * g.w], d);
        });
        let job = Tiles {
            k,
            g,
            pitch: layout.pitch,
            xs: &xs,
            offs: &offs,
            wt,
            bias,
            act,
            chunk: channels * taps,
            y: Shared(out[b * g.c_out * plane..].as_mut_ptr()),
        };
        let next = AtomicUsize::new(0);
        let claim = |_| {
            loop {
                let u0 = next.fetch_add(per_claim, Ordering::Relaxed);
                if u0 >= tiles * parts {
                    break;
                }
                for u in u0..(u0 + per_claim).min(tiles * parts) {
                    let (t, part) = (u / parts, u % parts);
                    job.run(t, part * per_part..((part + 1) * per_part).min(blocks));
                }
            }
        };
        if threads > 1 && work >= 1 << 18 {
            spin_pool::run(threads, &claim);
        } else {
            claim(0);
        }
    }
    Ok(out)
}

thread_local! {
    /// A thread's tiles of its blocks of output channels ([`Tiles::run`]).
    static SUMS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One image's output, a tile of positions and some blocks of output channels at a time
/// ([`Tiles::run`]).
struct Tiles<'a> {
    k: Kernel,
    g: &'a Window,
    /// The phases' row pitch: output `(oy, ox)` is position `oy·pitch + ox`.
    pitch: usize,
    /// The image's input channels' phases, one after another, and a tile's slack.
    xs: &'a [f32],
    /// Per step (input channel, tap), where it reads in `xs` for position 0.
    offs: &'a [usize],
    /// The weights, `[c_out][step]`.
    wt: &'a [f32],
    bias: Option<&'a [f32]>,
    act: Option<UnaryOp>,
    /// Steps per pass over a tile: whole input channels whose inputs for a tile stay in the
    /// L1 cache while every block reads them.
    chunk: usize,
    /// The image's output (`c_out × oh × ow`); a tile's positions of a block's channels are
    /// that tile's and block's alone.
    y: Shared<f32>,
}

impl Tiles<'_> {
    /// Tile `t` (positions `t·span ..`) of output-channel blocks `blocks`: the sums, then the
    /// positions that are outputs (columns below `ow`), bias and activation included.
    fn run(&self, t: usize, blocks: std::ops::Range<usize>) {
        let (g, k, pitch) = (self.g, self.k, self.pitch);
        let steps = self.offs.len();
        let plane = g.oh * g.ow;
        let per_block = k.block * k.span;
        let (p, p_end) = (t * k.span, ((t + 1) * k.span).min(g.oh * pitch));
        SUMS.with_borrow_mut(|sums| {
            sums.clear();
            sums.resize(blocks.len() * per_block, 0.0);
            for j0 in (0..steps).step_by(self.chunk) {
                let offs = &self.offs[j0..(j0 + self.chunk).min(steps)];
                for (blk, tile) in blocks.clone().zip(sums.chunks_exact_mut(per_block)) {
                    let co = blk * k.block;
                    let rows = k.block.min(g.c_out - co);
                    let w = &self.wt[co * steps + j0..];
                    // SAFETY: the kernel was detected; every read `p + offs[j] + i` (i < span)
                    // lies in `xs`, whose phases end in a tile's slack (p < oh·pitch, and a
                    // tap's offset plus oh·pitch stays inside its channel's phases); `w` holds
                    // a block's weights for these steps, `tile` a whole tile.
                    unsafe {
                        (k.tile)(self.xs.as_ptr().add(p), offs, w.as_ptr(), steps, rows, tile);
                    }
                }
            }
            for (blk, tile) in blocks.zip(sums.chunks_exact(per_block)) {
                for (c, vals) in tile.chunks_exact(k.span).enumerate() {
                    let co = blk * k.block + c;
                    if co >= g.c_out {
                        break;
                    }
                    let b = self.bias.map_or(0.0, |v| v[co]);
                    // Row by row, the tile's positions that are outputs.
                    let mut q = p;
                    while q < p_end {
                        let (oy, ox) = (q / pitch, q % pitch);
                        let end = p_end.min((oy + 1) * pitch);
                        if ox < g.ow {
                            let n = (end - q).min(g.ow - ox);
                            // SAFETY: (co, oy, ox..ox + n) is inside the image's output (co <
                            // c_out, oy < oh, ox + n <= ow), written by this tile and block
                            // alone.
                            let dst = unsafe {
                                std::slice::from_raw_parts_mut(
                                    self.y.ptr().add(co * plane + oy * g.ow + ox),
                                    n,
                                )
                            };
                            for (d, &v) in dst.iter_mut().zip(&vals[q - p..]) {
                                *d = v + b;
                            }
                            super::conv::activate(self.act, dst);
                        }
                        q = end;
                    }
                }
            }
        });
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::VECTORS;
    use std::arch::x86_64::*;

    /// Output channels per block on AVX-512: 8 × 3 accumulators, 3 inputs and a broadcast
    /// weight of the 32 registers.
    pub(super) const BLOCK512: usize = 8;
    /// On AVX2: 4 × 3 accumulators, 3 inputs and a weight of the 16 registers.
    pub(super) const BLOCK256: usize = 4;

    macro_rules! tile {
        ($name:ident, $feat:literal, $vec:ty, $lanes:literal, $block:ident, $load:ident,
         $set1:ident, $fma:ident, $zero:ident, $store:ident) => {
            /// One tile (see `TileFn`).
            ///
            /// # Safety
            #[doc = concat!("The CPU has ", $feat, "; `x + offs[j] + i` is readable for every `j` and ")]
            /// `i` below the tile's span; `w + c·stride + j` is readable for every `c < rows`
            /// (at least one) and `j`; `out` holds the tile.
            #[target_feature(enable = $feat)]
            pub(super) unsafe fn $name(
                x: *const f32,
                offs: &[usize],
                w: *const f32,
                stride: usize,
                rows: usize,
                out: &mut [f32],
            ) {
                assert!(out.len() >= $block * VECTORS * $lanes && rows >= 1, "a whole tile");
                // SAFETY: rows below `rows` (per the contract).
                let wr: [*const f32; $block] =
                    std::array::from_fn(|c| unsafe { w.add(c.min(rows - 1) * stride) });
                let mut acc = [[$zero(); VECTORS]; $block];
                // SAFETY: per the function's contract; `out` holds the tile (asserted).
                unsafe {
                    for (c, a) in acc.iter_mut().enumerate() {
                        for (v, s) in a.iter_mut().enumerate() {
                            *s = $load(out.as_ptr().add((c * VECTORS + v) * $lanes));
                        }
                    }
                    for (j, &o) in offs.iter().enumerate() {
                        let p = x.add(o);
                        let mut xv = [$zero(); VECTORS];
                        for (v, xr) in xv.iter_mut().enumerate() {
                            *xr = $load(p.add(v * $lanes));
                        }
                        for (a, r) in acc.iter_mut().zip(&wr) {
                            let wv = $set1(*r.add(j));
                            for (s, &xr) in a.iter_mut().zip(&xv) {
                                *s = $fma(wv, xr, *s);
                            }
                        }
                    }
                    for (c, a) in acc.iter().enumerate() {
                        for (v, &s) in a.iter().enumerate() {
                            $store(out.as_mut_ptr().add((c * VECTORS + v) * $lanes), s);
                        }
                    }
                }
            }
        };
    }

    tile!(
        tile512,
        "avx512f",
        __m512,
        16,
        BLOCK512,
        _mm512_loadu_ps,
        _mm512_set1_ps,
        _mm512_fmadd_ps,
        _mm512_setzero_ps,
        _mm512_storeu_ps
    );
    tile!(
        tile256,
        "avx2,fma",
        __m256,
        8,
        BLOCK256,
        _mm256_loadu_ps,
        _mm256_set1_ps,
        _mm256_fmadd_ps,
        _mm256_setzero_ps,
        _mm256_storeu_ps
    );
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::conv::Conv2dOptions;

    use super::super::conv::test_values as values;

    /// Every tile kernel this CPU has gives the direct loop's results (to rounding: the
    /// sums run in another order, with fused multiply-adds) over strides 1 and 2, padding,
    /// dilation, kernels of one row or column, several images, input channels over one pass
    /// and output channels that leave a block part empty, with and without bias and
    /// activation; an infinite weight meets the padding's zeros as NaN, as in the direct loop.
    #[test]
    fn tiles_match_the_direct_loop() {
        let mut kernels = Vec::new();
        if std::arch::is_x86_feature_detected!("avx512f") {
            kernels.push((
                "avx512",
                Kernel {
                    block: x86::BLOCK512,
                    span: VECTORS * 16,
                    tile: x86::tile512,
                },
            ));
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            kernels.push((
                "avx2",
                Kernel {
                    block: x86::BLOCK256,
                    span: VECTORS * 8,
                    tile: x86::tile256,
                },
            ));
        }
        let cases = [
            // (n, c_in, h, w, c_out, k, stride, padding, dilation)
            (2, 3, 17, 19, 5, (3, 3), (1, 1), (1, 1), (1, 1)),
            (1, 40, 12, 12, 13, (3, 3), (1, 1), (1, 1), (1, 1)),
            (2, 7, 21, 18, 9, (3, 3), (2, 2), (1, 1), (1, 1)),
            (1, 4, 23, 20, 8, (5, 3), (2, 1), (2, 1), (2, 1)),
            (1, 6, 40, 1, 16, (5, 1), (1, 1), (2, 0), (1, 1)),
            (1, 2, 9, 70, 4, (1, 7), (1, 2), (0, 3), (1, 2)),
            (3, 64, 10, 10, 64, (3, 3), (1, 1), (1, 1), (1, 1)),
            (2, 20, 3, 3, 11, (3, 3), (1, 1), (1, 1), (1, 1)),
        ];
        for (name, k) in kernels {
            for (i, &(n, c_in, h, w, c_out, ks, stride, padding, dilation)) in
                cases.iter().enumerate()
            {
                let opts = Conv2dOptions {
                    stride,
                    padding,
                    dilation,
                    groups: 1,
                };
                let g = Window::new("test", &[n, c_in, h, w], c_out, Some(c_in), ks, opts).unwrap();
                let x = values(n * c_in * h * w, 1 + i as u32);
                let mut wt = values(c_out * c_in * ks.0 * ks.1, 100 + i as u32);
                let bias = values(c_out, 200 + i as u32);
                for (poison, act, with_bias) in [
                    (false, None, true),
                    (false, Some(UnaryOp::Silu), false),
                    (true, None, true),
                ] {
                    if poison {
                        wt[0] = f32::INFINITY;
                    }
                    let b = with_bias.then_some(&bias[..]);
                    let want = super::super::conv::conv2d_direct(&x, &wt, b, &g, act).unwrap();
                    let got = conv2d_with(k, &x, &wt, b, &g, act).unwrap();
                    assert_eq!(got.len(), want.len());
                    let taps = (c_in * ks.0 * ks.1) as f32;
                    for (j, (a, e)) in got.iter().zip(&want).enumerate() {
                        let what = format!(
                            "{name} case {i} poison {poison} act {act:?}: output {j}: {a} vs {e}"
                        );
                        if e.is_nan() {
                            assert!(a.is_nan(), "{what}");
                        } else if e.is_infinite() {
                            assert_eq!(a, e, "{what}");
                        } else {
                            assert!((a - e).abs() <= 1e-6 * taps * (1.0 + e.abs()), "{what}");
                        }
                    }
                }
            }
        }
    }
}
