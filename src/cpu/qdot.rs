//! Dot products of one packed weight row with one activation row: int8 ones for q8_0 and
//! q4_0 against activations quantized to q8 blocks (AVX-512 VNNI, AVX2 or scalar, picked once
//! at run time; `KILN_CPU_QDOT=avx2|scalar` forces a lesser one, for tests), and f32 ones for
//! decoded chunks.

use crate::dtype::DType;
use crate::quant::f16_at;

mod groups;
mod half_tile;
mod k_lanes;

pub(crate) use groups::groups_kernel;
pub(crate) use half_tile::half_quad;
pub(crate) use k_lanes::{LaneRows, k_lanes};

/// An activation row quantized to 8 bits per value in blocks of 32 (ggml's `block_q8_0`, its
/// scales rounded to f16 as ggml stores them, kept in f32), with each block's sum of quantized
/// values (for q4_0's offset).
pub(crate) struct Q8Row {
    /// The quantized values.
    pub qs: Vec<i8>,
    /// Each block's scale: value ≈ d·q.
    pub d: Vec<f32>,
    /// Each block's Σq.
    pub sums: Vec<i32>,
}

impl Q8Row {
    /// `x` (a multiple of 32 values) quantized as ggml's CPU backend does for its q8_0 and q4_0
    /// products (`quantize_row_q8_0`, AVX and NEON): values times 127 / max |x| rounded to the
    /// nearest integer, ties to even, and the scale max |x| / 127 rounded to f16. The f16
    /// scale matters beyond its own 2⁻¹² error: each layer's activations are quantized again,
    /// and a slightly different input flips a few values to the next integer there, so with
    /// f32 scales a two-layer model's logits drifted 1e-2 from llama.cpp's; with f16 scales
    /// they agree to 1e-7.
    pub(crate) fn quantize(x: &[f32]) -> Q8Row {
        let blocks = x.len() / 32;
        let mut row = Q8Row {
            qs: vec![0; x.len()],
            d: vec![0.0; blocks],
            sums: vec![0; blocks],
        };
        // Threads take runs of blocks (a prompt's activations: single-threaded, this was 12%
        // of a 512-row product's time); each writes its own blocks' scales and sums.
        const RUN: usize = 256;
        let (d, sums) = (
            super::Shared(row.d.as_mut_ptr()),
            super::Shared(row.sums.as_mut_ptr()),
        );
        super::par_chunks_mut(&mut row.qs, 32 * RUN, 32 * RUN, &|c, qs| {
            let b0 = c * RUN;
            for (j, (q, xs)) in qs
                .chunks_exact_mut(32)
                .zip(x[32 * b0..].chunks_exact(32))
                .enumerate()
            {
                let (scale, sum) = quantize_block(xs, q);
                // SAFETY: block `b0 + j` is this run's alone, inside both vectors.
                unsafe {
                    *d.ptr().add(b0 + j) = scale;
                    *sums.ptr().add(b0 + j) = sum;
                }
            }
        });
        row
    }

    /// Blocks `b0..b1` of this row.
    pub(crate) fn blocks(&self, b0: usize, b1: usize) -> Q8Slice<'_> {
        Q8Slice {
            qs: &self.qs[32 * b0..32 * b1],
            d: &self.d[b0..b1],
            sums: &self.sums[b0..b1],
        }
    }
}

/// One block of 32 values quantized into `qs` (see [`Q8Row::quantize`]): its scale and Σq.
#[inline]
fn quantize_block(xs: &[f32], qs: &mut [i8]) -> (f32, i32) {
    let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = half::f16::from_f32(amax / 127.0).to_f32();
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0;
    for (q, v) in qs.iter_mut().zip(xs) {
        // Round to nearest, ties to even, as adding and taking away 1.5·2²³ does for
        // |v·id| ≤ 127 (f32 addition rounds that way); `round_ties_even` is a libm call per
        // value without SSE4.1 in the baseline target.
        const MAGIC: f32 = 12_582_912.0;
        *q = ((v * id + MAGIC) - MAGIC) as i8;
        sum += *q as i32;
    }
    (d, sum)
}

/// Consecutive blocks of a [`Q8Row`].
#[derive(Clone, Copy)]
pub(crate) struct Q8Slice<'a> {
    qs: &'a [i8],
    d: &'a [f32],
    sums: &'a [i32],
}

/// A weight row's dot product with activation blocks (as many as the row has).
pub(crate) type Kernel = fn(&[u8], Q8Slice) -> f32;

/// An activation row quantized for the K-quants (ggml's `block_q8_K`): 8 bits per value in
/// super-blocks of 256 with an f32 scale, and the sums of each 16 quantized values.
pub(crate) struct Q8KRow {
    /// The quantized values.
    qs: Vec<i8>,
    /// Each super-block's scale.
    d: Vec<f32>,
    /// Σq of each 16 values (at most 16·127: an i16).
    bsums: Vec<i16>,
}

impl Q8KRow {
    /// `x` (a multiple of 256 values) quantized as ggml's `quantize_row_q8_K` does: values
    /// times 127 / max |x| rounded to the nearest integer, ties to even, scale max |x| / 127
    /// (ggml negates both when the largest magnitude is negative: the same products). Threads
    /// take runs of super-blocks (a prompt's activations).
    pub(crate) fn quantize(x: &[f32]) -> Q8KRow {
        let blocks = x.len() / 256;
        let mut row = Q8KRow {
            qs: vec![0; x.len()],
            d: vec![0.0; blocks],
            bsums: vec![0; 16 * blocks],
        };
        const RUN: usize = 32;
        let (d, bsums) = (
            super::Shared(row.d.as_mut_ptr()),
            super::Shared(row.bsums.as_mut_ptr()),
        );
        super::par_chunks_mut(&mut row.qs, 256 * RUN, 256 * RUN, &|c, qs| {
            let b0 = c * RUN;
            for (j, (qs, xs)) in qs
                .chunks_exact_mut(256)
                .zip(x[256 * b0..].chunks_exact(256))
                .enumerate()
            {
                let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
                let scale = amax / 127.0;
                let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
                for (q, v) in qs.iter_mut().zip(xs) {
                    *q = crate::quant::nearest_int(v * id) as i8;
                }
                let sb = b0 + j;
                for (s, c) in qs.chunks_exact(16).enumerate() {
                    let sum = c.iter().map(|&q| q as i16).sum::<i16>();
                    // SAFETY: super-block `sb` is this run's alone, inside both vectors.
                    unsafe { *bsums.ptr().add(16 * sb + s) = sum };
                }
                // SAFETY: as above.
                unsafe { *d.ptr().add(sb) = scale };
            }
        });
        row
    }

    /// Super-blocks `b0..b1` of this row.
    pub(crate) fn blocks(&self, b0: usize, b1: usize) -> Q8KSlice<'_> {
        Q8KSlice {
            qs: &self.qs[256 * b0..256 * b1],
            d: &self.d[b0..b1],
            bsums: &self.bsums[16 * b0..16 * b1],
        }
    }
}

/// Consecutive super-blocks of a [`Q8KRow`].
#[derive(Clone, Copy)]
pub(crate) struct Q8KSlice<'a> {
    qs: &'a [i8],
    d: &'a [f32],
    bsums: &'a [i16],
}

/// The instruction sets the kernels below can use, best first.
// Only the x86-64 kernels choose by instruction set (there is no NEON kernel yet).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Isa {
    /// AVX-512 VNNI (256-bit `vpdpbusd`) with AVX2, FMA and F16C.
    Vnni,
    /// AVX2, FMA and F16C.
    Avx2,
    /// Portable code.
    Portable,
}

/// The best [`Isa`] this CPU has, or a lesser one that `KILN_CPU_QDOT=avx2|scalar` asks for
/// (tests run each), decided once per process.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        let (avx2, vnni) = {
            let avx2 = std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c");
            let vnni = avx2
                && std::is_x86_feature_detected!("avx512vnni")
                && std::is_x86_feature_detected!("avx512vl");
            (avx2, vnni)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let (avx2, vnni) = (false, false);
        let isa = match (std::env::var("KILN_CPU_QDOT").as_deref(), vnni, avx2) {
            (Ok("scalar"), _, _) | (_, false, false) => Isa::Portable,
            (Ok("avx2"), _, _) | (_, false, true) => Isa::Avx2,
            _ => Isa::Vnni,
        };
        log::debug!("CPU quantized dot kernels: {isa:?}");
        isa
    })
}

/// A K-quant weight row's dot product with activation super-blocks.
pub(crate) type KKernel = fn(&[u8], Q8KSlice) -> f32;

/// The fastest dot kernel for q4_K or q6_K weights on this CPU.
pub(crate) fn k_kernel(dtype: DType) -> KKernel {
    #[cfg(target_arch = "x86_64")]
    if isa() != Isa::Portable {
        // SAFETY (each closure): `isa` detected AVX2, FMA and F16C.
        return match dtype {
            DType::Q6K => |w, x| unsafe { x86::q6_k_rows(w, [x])[0] },
            _ => |w, x| unsafe { x86::q4_k_rows(w, [x])[0] },
        };
    }
    match dtype {
        DType::Q6K => q6_k_scalar,
        _ => q4_k_scalar,
    }
}

/// One K-quant weight row's dot products with four activation rows.
pub(crate) type KKernel4 = fn(&[u8], [Q8KSlice; 4]) -> [f32; 4];

/// The fastest one-row-by-four kernel for q4_K or q6_K weights on this CPU: each weight
/// super-block is unpacked once (scales, mins, nibbles) for four activation rows.
pub(crate) fn k_kernel4(dtype: DType) -> KKernel4 {
    #[cfg(target_arch = "x86_64")]
    if isa() != Isa::Portable {
        // SAFETY (each closure): `isa` detected AVX2, FMA and F16C.
        return match dtype {
            DType::Q6K => |w, x| unsafe { x86::q6_k_rows(w, x) },
            _ => |w, x| unsafe { x86::q4_k_rows(w, x) },
        };
    }
    match dtype {
        DType::Q6K => |w, x| x.map(|r| q6_k_scalar(w, r)),
        _ => |w, x| x.map(|r| q4_k_scalar(w, r)),
    }
}

/// q4_K weights, portable: per super-block d·Σ sc_j·(q·x)_j − dmin·Σ m_j·(Σx)_j.
fn q4_k_scalar(w: &[u8], x: Q8KSlice) -> f32 {
    let mut sum = 0f32;
    for (sb, blk) in w.chunks_exact(144).enumerate() {
        let (scales, qs) = (&blk[4..16], &blk[16..144]);
        let xq = &x.qs[256 * sb..256 * sb + 256];
        let bs = &x.bsums[16 * sb..16 * sb + 16];
        let (mut sumi, mut summ) = (0i32, 0i32);
        for j in 0..8 {
            let (sc, m) = crate::quant::scale_min_k4(j, scales);
            let q = &qs[32 * (j / 2)..32 * (j / 2) + 32];
            let shift = 4 * (j % 2);
            let dot: i32 = (0..32)
                .map(|l| ((q[l] >> shift) & 0x0f) as i32 * xq[32 * j + l] as i32)
                .sum();
            sumi += sc as i32 * dot;
            summ += m as i32 * (bs[2 * j] as i32 + bs[2 * j + 1] as i32);
        }
        let dx = x.d[sb];
        sum += f16_at(blk, 0) * dx * sumi as f32 - f16_at(blk, 2) * dx * summ as f32;
    }
    sum
}

/// q6_K weights, portable: per super-block d·Σ sc_j·((q·x)_j − 32·(Σx)_j).
fn q6_k_scalar(w: &[u8], x: Q8KSlice) -> f32 {
    let mut sum = 0f32;
    for (sb, blk) in w.chunks_exact(210).enumerate() {
        let xq = &x.qs[256 * sb..256 * sb + 256];
        let bs = &x.bsums[16 * sb..16 * sb + 16];
        let mut sumi = 0i32;
        for h in 0..2 {
            let (ql, qh) = (&blk[64 * h..64 * h + 64], &blk[128 + 32 * h..160 + 32 * h]);
            for quarter in 0..4 {
                for half16 in 0..2 {
                    let j = 8 * h + 2 * quarter + half16;
                    let sc = blk[192 + j] as i8 as i32;
                    let mut dot = 0i32;
                    for l in 16 * half16..16 * half16 + 16 {
                        let lo = (ql[l + 32 * (quarter % 2)] >> (4 * (quarter / 2))) & 0x0f;
                        let hi = (qh[l] >> (2 * quarter)) & 3;
                        dot += (lo | (hi << 4)) as i32 * xq[128 * h + 32 * quarter + l] as i32;
                    }
                    sumi += sc * (dot - 32 * bs[j] as i32);
                }
            }
        }
        sum += f16_at(blk, 208) * x.d[sb] * sumi as f32;
    }
    sum
}

/// The fastest dot kernel for q8_0 or q4_0 weights on this CPU.
pub(crate) fn kernel(dtype: DType) -> Kernel {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY (each closure): `isa` detected the features.
        match (dtype, isa()) {
            (DType::Q8_0, Isa::Vnni) => return |w, x| unsafe { x86::q8_0_vnni(w, x) },
            (DType::Q4_0, Isa::Vnni) => return |w, x| unsafe { x86::q4_0_vnni(w, x) },
            (DType::Q8_0, Isa::Avx2) => return |w, x| unsafe { x86::q8_0_avx2(w, x) },
            (DType::Q4_0, Isa::Avx2) => return |w, x| unsafe { x86::q4_0_avx2(w, x) },
            _ => {}
        }
    }
    match dtype {
        DType::Q4_0 => q4_0_scalar,
        _ => q8_0_scalar,
    }
}

/// Consecutive weight rows' (of the given bytes each) dot products with one activation row.
pub(crate) type RowsKernel = fn(&[u8], usize, Q8Slice, &mut [f32]);

/// The fastest [`RowsKernel`] for q8_0 or q4_0 weights on this CPU: [`kernel`] row by row.
pub(crate) fn rows_kernel(dtype: DType) -> RowsKernel {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY (each closure): `isa` detected the features.
        match (dtype, isa()) {
            (DType::Q8_0, Isa::Vnni) => {
                return |w, b, x, o| unsafe { x86::q8_0_rows_vnni(w, b, x, o) };
            }
            (DType::Q4_0, Isa::Vnni) => {
                return |w, b, x, o| unsafe { x86::q4_0_rows_vnni(w, b, x, o) };
            }
            (DType::Q8_0, Isa::Avx2) => {
                return |w, b, x, o| unsafe { x86::q8_0_rows_avx2(w, b, x, o) };
            }
            (DType::Q4_0, Isa::Avx2) => {
                return |w, b, x, o| unsafe { x86::q4_0_rows_avx2(w, b, x, o) };
            }
            _ => {}
        }
    }
    match dtype {
        DType::Q4_0 => |w, b, x, o| rows_with(q4_0_scalar, w, b, x, o),
        _ => |w, b, x, o| rows_with(q8_0_scalar, w, b, x, o),
    }
}

/// `one` over consecutive weight rows of `row_bytes` bytes into `out`.
fn rows_with(one: Kernel, w: &[u8], row_bytes: usize, x: Q8Slice, out: &mut [f32]) {
    for (o, row) in out.iter_mut().zip(w.chunks_exact(row_bytes)) {
        *o = one(row, x);
    }
}

/// Four weight rows' dot products with several activation rows at once (a register tile):
/// `out[i * 4 + r]` is weight row `r` with activation row `i`, for `rows()` activation rows.
#[derive(Clone, Copy)]
pub(crate) struct Tile {
    rows: usize,
    run: fn(&[&[u8]; 4], &[Q8Slice], &mut [f32]),
}

impl Tile {
    /// Activation rows per call.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Runs the tile on `x` (exactly `rows()` rows) into `out` (`rows() * 4` values).
    pub(crate) fn run(&self, w: &[&[u8]; 4], x: &[Q8Slice], out: &mut [f32]) {
        (self.run)(w, x, out)
    }
}

/// The register tile for q8_0 or q4_0 weights on this CPU, where it has one (AVX2: two
/// activation rows, sixteen registers; AVX-512 VNNI: four, thirty-two registers).
pub(crate) fn tile(dtype: DType) -> Option<Tile> {
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! t {
            ($mr:literal, $f:path) => {
                Tile {
                    rows: $mr,
                    run: |w, x, out| {
                        let x: [Q8Slice; $mr] = std::array::from_fn(|i| x[i]);
                        // SAFETY: `isa` detected the features; the rows hold whole blocks.
                        let r = unsafe { $f(*w, x) };
                        for (o, v) in out.chunks_exact_mut(4).zip(r) {
                            o.copy_from_slice(&v);
                        }
                    },
                }
            };
        }
        match (dtype, isa()) {
            (DType::Q8_0, Isa::Vnni) => return Some(t!(4, x86::q8_0_tile_vnni)),
            (DType::Q4_0, Isa::Vnni) => return Some(t!(4, x86::q4_0_tile_vnni)),
            (DType::Q8_0, Isa::Avx2) => return Some(t!(2, x86::q8_0_tile_avx2)),
            (DType::Q4_0, Isa::Avx2) => return Some(t!(2, x86::q4_0_tile_avx2)),
            _ => {}
        }
    }
    let _ = dtype;
    None
}

/// Four weight rows' dot products with one activation row.
pub(crate) type Kernel4 = fn([&[u8]; 4], Q8Slice) -> [f32; 4];

/// The fastest four-row dot kernel for q8_0 or q4_0 weights on this CPU: the activation block
/// is loaded once for four weight rows, and four independent accumulators keep the
/// multiply-adds busy.
pub(crate) fn kernel4(dtype: DType) -> Kernel4 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY (each closure): `isa` detected the features.
        match (dtype, isa()) {
            (DType::Q8_0, Isa::Vnni) => return |w, x| unsafe { x86::q8_0_x4_vnni(w, x) },
            (DType::Q4_0, Isa::Vnni) => return |w, x| unsafe { x86::q4_0_x4_vnni(w, x) },
            (DType::Q8_0, Isa::Avx2) => return |w, x| unsafe { x86::q8_0_x4_avx2(w, x) },
            (DType::Q4_0, Isa::Avx2) => return |w, x| unsafe { x86::q4_0_x4_avx2(w, x) },
            _ => {}
        }
    }
    match dtype {
        DType::Q4_0 => |w, x| w.map(|r| q4_0_scalar(r, x)),
        _ => |w, x| w.map(|r| q8_0_scalar(r, x)),
    }
}

/// q8_0 weights, portable.
fn q8_0_scalar(w: &[u8], x: Q8Slice) -> f32 {
    let mut sum = 0f32;
    for (b, blk) in w.chunks_exact(34).enumerate() {
        let dot: i32 = blk[2..]
            .iter()
            .zip(&x.qs[32 * b..32 * b + 32])
            .map(|(&q, &v)| q as i8 as i32 * v as i32)
            .sum();
        sum += f16_at(blk, 0) * x.d[b] * dot as f32;
    }
    sum
}

/// q4_0 weights, portable: Σ(q − 8)·x = Σq·x − 8·Σx.
fn q4_0_scalar(w: &[u8], x: Q8Slice) -> f32 {
    let mut sum = 0f32;
    for (b, blk) in w.chunks_exact(18).enumerate() {
        let xs = &x.qs[32 * b..32 * b + 32];
        let mut dot = 0i32;
        for j in 0..16 {
            dot += (blk[2 + j] & 0x0f) as i32 * xs[j] as i32;
            dot += (blk[2 + j] >> 4) as i32 * xs[j + 16] as i32;
        }
        sum += f16_at(blk, 0) * x.d[b] * (dot - 8 * x.sums[b]) as f32;
    }
    sum
}

/// A dot product of an f16 or bf16 weight row (its bytes) with an f32 row.
pub(crate) type HalfKernel = fn(&[u8], &[f32]) -> f32;

/// The fastest f16 or bf16 row dot on this CPU (F16C and FMA, or portable).
pub(crate) fn half_kernel(dtype: DType) -> HalfKernel {
    #[cfg(target_arch = "x86_64")]
    if isa() != Isa::Portable {
        // SAFETY (each closure): `isa` detected AVX2, FMA and F16C.
        return match dtype {
            DType::BF16 => |w, x| unsafe { x86::bf16_dot(w, x) },
            _ => |w, x| unsafe { x86::f16_dot(w, x) },
        };
    }
    match dtype {
        DType::BF16 => |w, x| {
            w.chunks_exact(2)
                .zip(x)
                .map(|(b, v)| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16) * v)
                .sum()
        },
        _ => |w, x| {
            w.chunks_exact(2)
                .zip(x)
                .map(|(b, v)| f16_at(b, 0) * v)
                .sum()
        },
    }
}

/// `a · b` in f32.
pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the features were just detected.
        return unsafe { x86::dot_f32_avx2(a, b) };
    }
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + ra.iter().zip(rb).map(|(x, y)| x * y).sum::<f32>()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Q8Slice;
    use std::arch::x86_64::*;

    /// Horizontal sum of eight f32 lanes, in ggml's order (`hsum_float_8`).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// A mask of the first `count` (≤ 8) of eight 32-bit lanes, for masked loads.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn first_lanes(count: usize) -> __m256i {
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(count as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }

    /// The products of `count` (≤ 8) weight blocks' f16 scales (the first at `w`, one every
    /// `stride` bytes) with the activation blocks' scales at `xd`, into `out`: eight at once
    /// with F16C, off the accumulators' dependency chains (converting one scale per block
    /// made each block wait on the previous one's multiply-add).
    ///
    /// # Safety
    /// The blocks and scales are readable.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scales(
        w: *const u8,
        stride: usize,
        xd: *const f32,
        count: usize,
        out: &mut [f32; 8],
    ) {
        // Whole groups (all but a row's last) take the values straight from registers and
        // memory: gathering them through small stores and one wide load stalls the load
        // (store forwarding fails), a cost that showed as about two cycles per block.
        // SAFETY: per the contract.
        unsafe {
            let at = |j: usize| w.add(stride * j).cast::<i16>().read_unaligned();
            let (h, xs) = if count == 8 {
                let h = _mm_setr_epi16(at(0), at(1), at(2), at(3), at(4), at(5), at(6), at(7));
                (h, _mm256_loadu_ps(xd))
            } else {
                // A row's last group: lanes past `count` zero, read with a masked load and
                // inserts (small stores then a wide load would stall, once per row).
                let g = |j: usize| if j < count { at(j) } else { 0 };
                let h = _mm_setr_epi16(g(0), g(1), g(2), g(3), g(4), g(5), g(6), g(7));
                (h, _mm256_maskload_ps(xd, first_lanes(count)))
            };
            let s = _mm256_mul_ps(_mm256_cvtph_ps(h), xs);
            _mm256_storeu_ps(out.as_mut_ptr(), s);
        }
    }

    /// The 32 nibbles of a q4_0 block's 16 bytes at `p`, as unsigned bytes 0..=15 in value
    /// order (low nibbles first).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn nibbles(p: *const u8) -> __m256i {
        // SAFETY: the caller passes 16 readable bytes.
        let qs = unsafe { _mm_loadu_si128(p as *const __m128i) };
        let m = _mm_set1_epi8(0x0f);
        let lo = _mm_and_si128(qs, m);
        let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), m);
        _mm256_set_m128i(hi, lo)
    }

    /// Σ u·s over 32 unsigned × signed byte pairs, as eight i32 lanes (AVX2).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn udot_avx2(u: __m256i, s: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
    }

    /// [`udot_avx2`] in one AVX-512 VNNI instruction.
    #[inline]
    #[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
    fn udot_vnni(u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
    }

    /// Σ w·x over 32 signed byte pairs: |w| · (x with w's sign).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn signed_pair(w: __m256i, x: __m256i) -> (__m256i, __m256i) {
        (_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w))
    }

    /// A q8_0 block's (at `wb`) integer dot product with activation values `xv`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_0_block_avx2(wb: *const u8, xv: __m256i, _sum: i32) -> __m256i {
        // SAFETY: the caller passes a whole block.
        let wv = unsafe { _mm256_loadu_si256(wb.add(2) as *const __m256i) };
        let (u, s) = signed_pair(wv, xv);
        udot_avx2(u, s)
    }

    /// [`q8_0_block_avx2`] with VNNI.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    unsafe fn q8_0_block_vnni(wb: *const u8, xv: __m256i, _sum: i32) -> __m256i {
        // SAFETY: the caller passes a whole block.
        let wv = unsafe { _mm256_loadu_si256(wb.add(2) as *const __m256i) };
        let (u, s) = signed_pair(wv, xv);
        udot_vnni(u, s)
    }

    /// A q4_0 block's integer dot product: on unsigned nibbles, less 8·Σx (`sum`).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_0_block_avx2(wb: *const u8, xv: __m256i, sum: i32) -> __m256i {
        // SAFETY: the caller passes a whole block.
        let dot = udot_avx2(unsafe { nibbles(wb.add(2)) }, xv);
        _mm256_sub_epi32(dot, _mm256_castsi128_si256(_mm_cvtsi32_si128(8 * sum)))
    }

    /// [`q4_0_block_avx2`] with VNNI.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    unsafe fn q4_0_block_vnni(wb: *const u8, xv: __m256i, sum: i32) -> __m256i {
        // SAFETY: the caller passes a whole block.
        let dot = udot_vnni(unsafe { nibbles(wb.add(2)) }, xv);
        _mm256_sub_epi32(dot, _mm256_castsi128_si256(_mm_cvtsi32_si128(8 * sum)))
    }

    macro_rules! x4 {
        ($name:ident, $features:literal, $size:literal, $block:ident) => {
            /// Four weight rows' dot products with one activation row: each activation
            /// block is loaded once, four accumulators run side by side.
            ///
            /// # Safety
            /// The CPU has the target features; each row holds as many blocks as `x`.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $name(w: [&[u8]; 4], x: Q8Slice) -> [f32; 4] {
                let blocks = w[0].len() / $size;
                let xp = x.qs.as_ptr();
                let wp = w.map(|r| r.as_ptr());
                let mut acc = [_mm256_setzero_ps(); 4];
                let mut sc = [[0f32; 8]; 4];
                for b0 in (0..blocks).step_by(8) {
                    let count = (blocks - b0).min(8);
                    for r in 0..4 {
                        // SAFETY: inside the rows' blocks.
                        unsafe {
                            scales(
                                wp[r].add($size * b0),
                                $size,
                                x.d.as_ptr().add(b0),
                                count,
                                &mut sc[r],
                            )
                        };
                    }
                    for b in b0..b0 + count {
                        // SAFETY: inside the rows' blocks and the activation row.
                        unsafe {
                            let xv = _mm256_loadu_si256(xp.add(32 * b) as *const __m256i);
                            let sum = *x.sums.get_unchecked(b);
                            for r in 0..4 {
                                let dot = $block(wp[r].add($size * b), xv, sum);
                                let d = _mm256_set1_ps(*sc[r].get_unchecked(b - b0));
                                acc[r] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot), acc[r]);
                            }
                        }
                    }
                }
                [hsum(acc[0]), hsum(acc[1]), hsum(acc[2]), hsum(acc[3])]
            }
        };
    }

    x4!(q8_0_x4_avx2, "avx2,fma,f16c", 34, q8_0_block_avx2);
    x4!(
        q8_0_x4_vnni,
        "avx2,fma,f16c,avx512vnni,avx512vl",
        34,
        q8_0_block_vnni
    );
    x4!(q4_0_x4_avx2, "avx2,fma,f16c", 18, q4_0_block_avx2);
    x4!(
        q4_0_x4_vnni,
        "avx2,fma,f16c,avx512vnni,avx512vl",
        18,
        q4_0_block_vnni
    );

    /// A q8_0 weight block's half of a pair: |w|, and w itself for the signs.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_0_prep(wb: *const u8) -> (__m256i, __m256i) {
        // SAFETY: the caller passes a whole block.
        let wv = unsafe { _mm256_loadu_si256(wb.add(2) as *const __m256i) };
        (_mm256_sign_epi8(wv, wv), wv)
    }

    /// A q4_0 weight block's half of a pair: its nibbles (the second value unused).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_0_prep(wb: *const u8) -> (__m256i, __m256i) {
        // SAFETY: the caller passes a whole block.
        let n = unsafe { nibbles(wb.add(2)) };
        (n, n)
    }

    /// The integer dot of a prepared q8_0 block with activation values `xv` (AVX2).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn q8_0_pair_avx2((u, w): (__m256i, __m256i), xv: __m256i, _sum: i32) -> __m256i {
        udot_avx2(u, _mm256_sign_epi8(xv, w))
    }

    /// [`q8_0_pair_avx2`] with VNNI.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    fn q8_0_pair_vnni((u, w): (__m256i, __m256i), xv: __m256i, _sum: i32) -> __m256i {
        udot_vnni(u, _mm256_sign_epi8(xv, w))
    }

    /// The integer dot of a prepared q4_0 block: on unsigned nibbles, less 8·Σx (AVX2).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn q4_0_pair_avx2((u, _): (__m256i, __m256i), xv: __m256i, sum: i32) -> __m256i {
        let dot = udot_avx2(u, xv);
        _mm256_sub_epi32(dot, _mm256_castsi128_si256(_mm_cvtsi32_si128(8 * sum)))
    }

    /// [`q4_0_pair_avx2`] with VNNI.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    fn q4_0_pair_vnni((u, _): (__m256i, __m256i), xv: __m256i, sum: i32) -> __m256i {
        let dot = udot_vnni(u, xv);
        _mm256_sub_epi32(dot, _mm256_castsi128_si256(_mm_cvtsi32_si128(8 * sum)))
    }

    macro_rules! tile {
        ($name:ident, $features:literal, $size:literal, $mr:literal, $prep:ident, $pair:ident) => {
            /// Four weight rows' dot products with `MR` activation rows, a register tile: each
            /// weight block is prepared once (loaded, made unsigned) for the `MR` rows and each
            /// activation block loaded once for the four weight rows. Every output keeps its
            /// own accumulator and takes the blocks in order, as the one-row kernel does.
            ///
            /// # Safety
            /// The CPU has the target features; each row holds as many blocks as each `x`.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $name(w: [&[u8]; 4], x: [Q8Slice; $mr]) -> [[f32; 4]; $mr] {
                let blocks = w[0].len() / $size;
                let wp = w.map(|r| r.as_ptr());
                let mut acc = [[_mm256_setzero_ps(); 4]; $mr];
                let mut wd = [[0f32; 8]; 4];
                let ones = [1f32; 8];
                for b0 in (0..blocks).step_by(8) {
                    let count = (blocks - b0).min(8);
                    for r in 0..4 {
                        // SAFETY: inside the rows' blocks (the weight scales alone).
                        unsafe {
                            scales(
                                wp[r].add($size * b0),
                                $size,
                                ones.as_ptr(),
                                count,
                                &mut wd[r],
                            )
                        };
                    }
                    for b in b0..b0 + count {
                        // SAFETY: inside the rows' blocks and the activation rows.
                        unsafe {
                            let prep = [0, 1, 2, 3].map(|r| $prep(wp[r].add($size * b)));
                            for i in 0..$mr {
                                let xv = _mm256_loadu_si256(
                                    x[i].qs.as_ptr().add(32 * b) as *const __m256i
                                );
                                let (sum, dx) =
                                    (*x[i].sums.get_unchecked(b), *x[i].d.get_unchecked(b));
                                for r in 0..4 {
                                    let dot = $pair(prep[r], xv, sum);
                                    // dw·dx, the product ggml forms, then one multiply-add.
                                    let d = _mm256_set1_ps(*wd[r].get_unchecked(b - b0) * dx);
                                    acc[i][r] =
                                        _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot), acc[i][r]);
                                }
                            }
                        }
                    }
                }
                let mut out = [[0f32; 4]; $mr];
                for (o, a) in out.iter_mut().zip(acc) {
                    for (v, x) in o.iter_mut().zip(a) {
                        *v = hsum(x);
                    }
                }
                out
            }
        };
    }

    tile!(
        q8_0_tile_avx2,
        "avx2,fma,f16c",
        34,
        2,
        q8_0_prep,
        q8_0_pair_avx2
    );
    tile!(
        q8_0_tile_vnni,
        "avx2,fma,f16c,avx512vnni,avx512vl",
        34,
        4,
        q8_0_prep,
        q8_0_pair_vnni
    );
    tile!(
        q4_0_tile_avx2,
        "avx2,fma,f16c",
        18,
        2,
        q4_0_prep,
        q4_0_pair_avx2
    );
    tile!(
        q4_0_tile_vnni,
        "avx2,fma,f16c,avx512vnni,avx512vl",
        18,
        4,
        q4_0_prep,
        q4_0_pair_vnni
    );

    macro_rules! x1 {
        ($name:ident, $features:literal, $size:literal, $block:ident) => {
            /// One weight row's dot product with an activation row, summed in ggml's order
            /// (`ggml_vec_dot_q8_0_q8_0`: one 8-lane accumulator, then its horizontal sum), so
            /// a model's logits agree with llama.cpp's to the last bits: with two accumulators
            /// taking alternate blocks, last-bit differences grew to 1e-2 in a two-layer model's
            /// logits, each layer's activations being quantized again.
            ///
            /// # Safety
            /// The CPU has the target features; `w` holds as many blocks as `x`.
            #[inline]
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $name(w: &[u8], x: Q8Slice) -> f32 {
                let blocks = w.len() / $size;
                let (wp, xp) = (w.as_ptr(), x.qs.as_ptr());
                // Block `b` into the accumulator.
                macro_rules! step {
                    ($b:expr, $acc:expr, $sc:expr, $b0:expr) => {{
                        let b = $b;
                        // SAFETY: inside the row's blocks and the activation row.
                        unsafe {
                            let xv = _mm256_loadu_si256(xp.add(32 * b) as *const __m256i);
                            let dot = $block(wp.add($size * b), xv, *x.sums.get_unchecked(b));
                            let d = _mm256_set1_ps(*$sc.get_unchecked(b - $b0));
                            _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot), $acc)
                        }
                    }};
                }
                let mut acc = _mm256_setzero_ps();
                let mut sc = [0f32; 8];
                for b0 in (0..blocks).step_by(8) {
                    let count = (blocks - b0).min(8);
                    // SAFETY: inside the row's blocks.
                    unsafe {
                        scales(
                            wp.add($size * b0),
                            $size,
                            x.d.as_ptr().add(b0),
                            count,
                            &mut sc,
                        )
                    };
                    for b in b0..b0 + count {
                        acc = step!(b, acc, sc, b0);
                    }
                }
                hsum(acc)
            }
        };
    }

    x1!(q8_0_avx2, "avx2,fma,f16c", 34, q8_0_block_avx2);
    x1!(
        q8_0_vnni,
        "avx2,fma,f16c,avx512vnni,avx512vl",
        34,
        q8_0_block_vnni
    );
    macro_rules! q4_0_row {
        ($name:ident, $features:literal, $udot:ident) => {
            /// One q4_0 weight row's dot product with an activation row: each block's integer
            /// dot on the unsigned nibbles (0..=15), scaled into four 8-lane accumulators taking
            /// the blocks in turn (one accumulator bounds the loop at a multiply-add's latency
            /// per block; llama.cpp sums q4_0 in another order anyway, from its repacked
            /// layout, so no order here matches its bits). The nibbles' offset of 8 comes off
            /// once per row, as `8·Σ_b dw_b·dx_b·Σx_b` summed eight blocks at a time beside the
            /// scales (not per block, which took three of the loop's eleven instructions). The
            /// nibbles are unpacked from one broadcast load: the high half shifted by 4, then
            /// masked.
            ///
            /// # Safety
            /// The CPU has the target features; `w` holds as many blocks as `x`.
            #[inline]
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $name(w: &[u8], x: Q8Slice) -> f32 {
                const SIZE: usize = 18;
                let blocks = w.len() / SIZE;
                let (wp, xp) = (w.as_ptr(), x.qs.as_ptr());
                let mask = _mm256_set1_epi8(0x0f);
                let shift = _mm256_setr_epi64x(0, 0, 4, 4);
                let mut sc = [0f32; 8];
                // Block `b` into accumulator `$a`.
                macro_rules! block {
                    ($b:expr, $a:expr, $b0:expr) => {{
                        let b = $b;
                        // SAFETY: inside the row's blocks and the activation row.
                        unsafe {
                            let q = _mm256_broadcastsi128_si256(_mm_loadu_si128(
                                wp.add(SIZE * b + 2) as *const __m128i,
                            ));
                            let n = _mm256_and_si256(_mm256_srlv_epi64(q, shift), mask);
                            let xv = _mm256_loadu_si256(xp.add(32 * b) as *const __m256i);
                            let dot = $udot(n, xv);
                            let d = _mm256_set1_ps(*sc.get_unchecked(b - $b0));
                            $a = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot), $a);
                        }
                    }};
                }
                let (mut a0, mut a1, mut a2, mut a3) = (
                    _mm256_setzero_ps(),
                    _mm256_setzero_ps(),
                    _mm256_setzero_ps(),
                    _mm256_setzero_ps(),
                );
                let mut offset = _mm256_setzero_ps();
                for b0 in (0..blocks).step_by(8) {
                    let count = (blocks - b0).min(8);
                    // SAFETY: inside the row's blocks and the activation row's scales and sums.
                    unsafe {
                        scales(
                            wp.add(SIZE * b0),
                            SIZE,
                            x.d.as_ptr().add(b0),
                            count,
                            &mut sc,
                        );
                        // A masked load for a row's last group: copying it out and loading
                        // it wide stalled on the copy's stores, once per row.
                        let sums =
                            _mm256_maskload_epi32(x.sums.as_ptr().add(b0), first_lanes(count));
                        // Lanes past `count` hold a scale of 0.
                        let scv = _mm256_loadu_ps(sc.as_ptr());
                        offset = _mm256_fmadd_ps(scv, _mm256_cvtepi32_ps(sums), offset);
                    }
                    let mut b = b0;
                    while b + 4 <= b0 + count {
                        block!(b, a0, b0);
                        block!(b + 1, a1, b0);
                        block!(b + 2, a2, b0);
                        block!(b + 3, a3, b0);
                        b += 4;
                    }
                    while b < b0 + count {
                        block!(b, a0, b0);
                        b += 1;
                    }
                }
                let both = |a: __m256, b: __m256| _mm256_add_ps(a, b);
                hsum(both(both(a0, a1), both(a2, a3))) - 8.0 * hsum(offset)
            }
        };
    }

    q4_0_row!(q4_0_avx2, "avx2,fma,f16c", udot_avx2);
    q4_0_row!(q4_0_vnni, "avx2,fma,f16c,avx512vnni,avx512vl", udot_vnni);

    macro_rules! rows {
        ($name:ident, $features:literal, $row:ident) => {
            /// The row kernel over consecutive weight rows of `row_bytes` bytes into `out`, in
            /// one call: no call through a pointer per row, the constants kept in registers.
            ///
            /// # Safety
            /// The CPU has the target features; each row holds as many blocks as `x`.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $name(w: &[u8], row_bytes: usize, x: Q8Slice, out: &mut [f32]) {
                for (o, row) in out.iter_mut().zip(w.chunks_exact(row_bytes)) {
                    // SAFETY: per the contract.
                    *o = unsafe { $row(row, x) };
                }
            }
        };
    }

    rows!(q8_0_rows_avx2, "avx2,fma,f16c", q8_0_avx2);
    rows!(
        q8_0_rows_vnni,
        "avx2,fma,f16c,avx512vnni,avx512vl",
        q8_0_vnni
    );
    rows!(q4_0_rows_avx2, "avx2,fma,f16c", q4_0_avx2);
    rows!(
        q4_0_rows_vnni,
        "avx2,fma,f16c,avx512vnni,avx512vl",
        q4_0_vnni
    );

    macro_rules! half_dot {
        ($name:ident, $widen:ident, $dtype:ident) => {
            /// An f16/bf16 weight row (`w`, its bytes) dotted with `x`, widened eight values
            /// at a time, four accumulators.
            ///
            /// # Safety
            /// The CPU has AVX2, FMA and F16C; `w` holds `x.len()` values.
            #[target_feature(enable = "avx2,fma,f16c")]
            pub(super) unsafe fn $name(w: &[u8], x: &[f32]) -> f32 {
                let n = x.len();
                let (wp, xp) = (w.as_ptr(), x.as_ptr());
                let mut acc = [_mm256_setzero_ps(); 4];
                let mut i = 0;
                // SAFETY: every load is inside both rows.
                unsafe {
                    while i + 32 <= n {
                        for (j, s) in acc.iter_mut().enumerate() {
                            let h = _mm_loadu_si128(wp.add(2 * (i + 8 * j)) as *const __m128i);
                            let v = _mm256_loadu_ps(xp.add(i + 8 * j));
                            *s = _mm256_fmadd_ps($widen(h), v, *s);
                        }
                        i += 32;
                    }
                    while i + 8 <= n {
                        let h = _mm_loadu_si128(wp.add(2 * i) as *const __m128i);
                        acc[0] = _mm256_fmadd_ps($widen(h), _mm256_loadu_ps(xp.add(i)), acc[0]);
                        i += 8;
                    }
                }
                let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
                let mut sum = hsum(v);
                let rest = &w[2 * i..];
                let mut tail = [0f32; 8];
                crate::quant::decode(crate::dtype::DType::$dtype, rest, &mut tail[..n - i]);
                for (t, v) in tail.iter().zip(&x[i..]) {
                    sum += t * v;
                }
                sum
            }
        };
    }

    /// Eight f16 as f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn widen_f16(h: __m128i) -> __m256 {
        _mm256_cvtph_ps(h)
    }

    /// Eight bf16 as f32 (their bits shifted into the top half).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn widen_bf16(h: __m128i) -> __m256 {
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
    }

    half_dot!(f16_dot, widen_f16, F16);

    /// `maddubs` then `madd` by 16-bit `scale`: Σ over 32 u8 × i8 pairs, each pair of
    /// products weighted by its 16-bit lane of `scale`, as eight i32 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn scaled_dot(u: __m256i, s: __m256i, scale: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), scale)
    }

    /// Shuffle masks that spread 16-bit lane `j` (of each 128-bit half) over its half.
    const SPREAD16: [[u8; 16]; 8] = {
        let mut t = [[0u8; 16]; 8];
        let mut j = 0;
        while j < 8 {
            let mut i = 0;
            while i < 8 {
                t[j][2 * i] = 2 * j as u8;
                t[j][2 * i + 1] = 2 * j as u8 + 1;
                i += 1;
            }
            j += 1;
        }
        t
    };

    /// A ymm whose low half spreads 16-bit lane `lo` and whose high half lane `hi`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn spread_mask(lo: usize, hi: usize) -> __m256i {
        // SAFETY: both rows are 16 bytes.
        unsafe {
            _mm256_set_m128i(
                _mm_loadu_si128(SPREAD16[hi].as_ptr() as *const __m128i),
                _mm_loadu_si128(SPREAD16[lo].as_ptr() as *const __m128i),
            )
        }
    }

    /// A q4_K super-block's scales (low half) and mins (high half) as 16-bit lanes, unpacked a
    /// word at a time (ggml's kmask trick).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn q4_k_scales_mins(blk: &[u8]) -> __m256i {
        let mut u = [0u32; 4];
        for (i, c) in blk[4..16].chunks_exact(4).enumerate() {
            u[i] = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        let (k1, k2, k3) = (0x3f3f_3f3fu32, 0x0f0f_0f0fu32, 0x0303_0303u32);
        u[3] = ((u[2] >> 4) & k2) | (((u[1] >> 6) & k3) << 4);
        let uaux = u[1] & k1;
        u[1] = (u[2] & k2) | (((u[0] >> 6) & k3) << 4);
        u[2] = uaux;
        u[0] &= k1;
        // SAFETY: `u` is 16 bytes.
        _mm256_cvtepu8_epi16(unsafe { _mm_loadu_si128(u.as_ptr() as *const __m128i) })
    }

    /// One q4_K weight row's dot products with `R` activation rows (ggml's
    /// `vec_dot_q4_K_q8_K` scheme: scales and mins unpacked a word at a time and spread by
    /// shuffles, the mins' products with the activation sums in one `madd`), each super-block
    /// unpacked once for all `R`.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; `w` holds as many super-blocks as each row of `x`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q4_k_rows<const R: usize>(w: &[u8], x: [super::Q8KSlice; R]) -> [f32; R] {
        let mut acc = [_mm256_setzero_ps(); R];
        let mut acc_m = [_mm_setzero_ps(); R];
        let m4 = _mm256_set1_epi8(0x0f);
        let masks = [0, 1, 2, 3, 4, 5, 6, 7].map(|j| spread_mask(j, j));
        for (sb, blk) in w.chunks_exact(144).enumerate() {
            let qs = blk[16..144].as_ptr();
            let ms = q4_k_scales_mins(blk);
            let (d, dmin) = (crate::quant::f16_at(blk, 0), crate::quant::f16_at(blk, 2));
            // SAFETY: inside the super-block and the activation rows.
            unsafe {
                for r in 0..R {
                    let bs = _mm256_loadu_si256(x[r].bsums.as_ptr().add(16 * sb) as *const __m256i);
                    let b32 =
                        _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
                    let prod = _mm_madd_epi16(_mm256_extracti128_si256(ms, 1), b32);
                    let f = _mm_set1_ps(-dmin * *x[r].d.get_unchecked(sb));
                    acc_m[r] = _mm_fmadd_ps(f, _mm_cvtepi32_ps(prod), acc_m[r]);
                }
                let sc = _mm256_castsi256_si128(ms);
                let scales = _mm256_set_m128i(sc, sc);
                let mut sums = [_mm256_setzero_si256(); R];
                for c in 0..4 {
                    let q = _mm256_loadu_si256(qs.add(32 * c) as *const __m256i);
                    let lo = _mm256_and_si256(q, m4);
                    let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                    let s0 = _mm256_shuffle_epi8(scales, masks[2 * c]);
                    let s1 = _mm256_shuffle_epi8(scales, masks[2 * c + 1]);
                    for r in 0..R {
                        let xq = x[r].qs.as_ptr().add(256 * sb + 64 * c);
                        let x0 = _mm256_loadu_si256(xq as *const __m256i);
                        let x1 = _mm256_loadu_si256(xq.add(32) as *const __m256i);
                        let p = _mm256_add_epi32(scaled_dot(lo, x0, s0), scaled_dot(hi, x1, s1));
                        sums[r] = _mm256_add_epi32(sums[r], p);
                    }
                }
                for r in 0..R {
                    let f = _mm256_set1_ps(d * *x[r].d.get_unchecked(sb));
                    acc[r] = _mm256_fmadd_ps(f, _mm256_cvtepi32_ps(sums[r]), acc[r]);
                }
            }
        }
        let mut out = [0f32; R];
        for r in 0..R {
            let m = _mm_add_ps(acc_m[r], _mm_movehl_ps(acc_m[r], acc_m[r]));
            let m = _mm_add_ss(m, _mm_movehdup_ps(m));
            out[r] = hsum(acc[r]) + _mm_cvtss_f32(m);
        }
        out
    }

    /// One q6_K weight row's dot products with `R` activation rows: 6-bit values assembled
    /// from their nibbles and 2-bit pairs, scales spread by shuffles, the −32 offset as
    /// Σ scale·(activation sum) in one `madd`; each super-block assembled once for all `R`.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; `w` holds as many super-blocks as each row of `x`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q6_k_rows<const R: usize>(w: &[u8], x: [super::Q8KSlice; R]) -> [f32; R] {
        let mut acc = [_mm256_setzero_ps(); R];
        let (m4, m2) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(3));
        let masks = [0, 1, 2, 3].map(|n| spread_mask(2 * n, 2 * n + 1));
        for (sb, blk) in w.chunks_exact(210).enumerate() {
            // SAFETY: inside the super-block and the activation rows.
            unsafe {
                let sc16 =
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.as_ptr().add(192) as *const __m128i));
                let mut sums = [_mm256_setzero_si256(); R];
                for r in 0..R {
                    let bs = _mm256_loadu_si256(x[r].bsums.as_ptr().add(16 * sb) as *const __m256i);
                    let off = _mm256_madd_epi16(sc16, bs);
                    sums[r] = _mm256_sub_epi32(sums[r], _mm256_slli_epi32(off, 5));
                }
                for h in 0..2 {
                    let half = if h == 0 {
                        _mm256_castsi256_si128(sc16)
                    } else {
                        _mm256_extracti128_si256(sc16, 1)
                    };
                    let scales = _mm256_set_m128i(half, half);
                    let ql = blk.as_ptr().add(64 * h);
                    let qa = _mm256_loadu_si256(ql as *const __m256i);
                    let qb = _mm256_loadu_si256(ql.add(32) as *const __m256i);
                    let qh = _mm256_loadu_si256(blk.as_ptr().add(128 + 32 * h) as *const __m256i);
                    let hbits = |v: __m256i| _mm256_slli_epi16(_mm256_and_si256(v, m2), 4);
                    let q = [
                        _mm256_or_si256(_mm256_and_si256(qa, m4), hbits(qh)),
                        _mm256_or_si256(_mm256_and_si256(qb, m4), hbits(_mm256_srli_epi16(qh, 2))),
                        _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16(qa, 4), m4),
                            hbits(_mm256_srli_epi16(qh, 4)),
                        ),
                        _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16(qb, 4), m4),
                            hbits(_mm256_srli_epi16(qh, 6)),
                        ),
                    ];
                    for (n, qn) in q.into_iter().enumerate() {
                        let s = _mm256_shuffle_epi8(scales, masks[n]);
                        for r in 0..R {
                            let xv = _mm256_loadu_si256(
                                x[r].qs.as_ptr().add(256 * sb + 128 * h + 32 * n) as *const __m256i,
                            );
                            sums[r] = _mm256_add_epi32(sums[r], scaled_dot(qn, xv, s));
                        }
                    }
                }
                let d = crate::quant::f16_at(blk, 208);
                for r in 0..R {
                    let f = _mm256_set1_ps(d * *x[r].d.get_unchecked(sb));
                    acc[r] = _mm256_fmadd_ps(f, _mm256_cvtepi32_ps(sums[r]), acc[r]);
                }
            }
        }
        let mut out = [0f32; R];
        for r in 0..R {
            out[r] = hsum(acc[r]);
        }
        out
    }

    half_dot!(bf16_dot, widen_bf16, BF16);

    /// `a · b` in f32 with four 8-lane accumulators.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: every load is inside both slices.
        unsafe {
            while i + 32 <= n {
                for (j, s) in acc.iter_mut().enumerate() {
                    let x = _mm256_loadu_ps(a.as_ptr().add(i + 8 * j));
                    let y = _mm256_loadu_ps(b.as_ptr().add(i + 8 * j));
                    *s = _mm256_fmadd_ps(x, y, *s);
                }
                i += 32;
            }
            while i + 8 <= n {
                let x = _mm256_loadu_ps(a.as_ptr().add(i));
                let y = _mm256_loadu_ps(b.as_ptr().add(i));
                acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
                i += 8;
            }
        }
        let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut sum = hsum(v);
        for j in i..n {
            sum += a[j] * b[j];
        }
        sum
    }
}
