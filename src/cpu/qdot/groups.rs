//! Products of grouped q8_0 and q4_0 weights (`cpu/row_groups.rs`: eight rows' blocks
//! interleaved) with activation rows quantized to q8 blocks: each group block's bytes are
//! loaded once, 64 at a time, for eight output rows, one scale conversion per eight blocks.
//! q4_0's eight rows lie in the lanes of one accumulator (two lanes a row, no horizontal sum
//! per row); q8_0's are summed in eight lanes a row, as ggml's `vec_dot_q8_0_q8_0` sums one
//! row, so its results are ggml's to the bit. AVX-512 VNNI (512-bit), AVX2, or portable code.

use super::Q8Slice;
use crate::cpu::row_groups::GROUP;
use crate::dtype::DType;
use crate::quant::f16_at;

/// `out[i·n + 8g + r]` = row `r` of group `g` of `w` (whole groups of `blocks` blocks a row)
/// with activation row `i` of `xs`, for `out` (rows of `n`) and `n` as the arguments go.
///
/// # Safety
/// `out` is valid for those writes, which no one else makes meanwhile.
pub(crate) type GroupsKernel = unsafe fn(&[u8], usize, &[Q8Slice], *mut f32, usize);

/// The fastest [`GroupsKernel`] for grouped q8_0 or q4_0 weights on this CPU.
pub(crate) fn groups_kernel(dtype: DType) -> GroupsKernel {
    #[cfg(target_arch = "x86_64")]
    {
        use super::{Isa, isa};
        // (The kernels' features were detected.)
        match (dtype, isa()) {
            (DType::Q8_0, Isa::Vnni) if x86::wide() => return x86::q8_0_512,
            (DType::Q4_0, Isa::Vnni) if x86::wide() => return x86::q4_0_512,
            (DType::Q8_0, Isa::Vnni | Isa::Avx2) => return x86::q8_0_avx2,
            (DType::Q4_0, Isa::Vnni | Isa::Avx2) => return x86::q4_0_avx2,
            _ => {}
        }
    }
    // SAFETY (each closure): the caller keeps [`GroupsKernel`]'s contract.
    match dtype {
        DType::Q8_0 => |w, b, x, o, n| unsafe { groups_scalar((w, b, x, o, n), 272, q8_0_dot) },
        _ => |w, b, x, o, n| unsafe { groups_scalar((w, b, x, o, n), 144, q4_0_dot) },
    }
}

/// Portable: group blocks of `size` bytes, value by value, `dot` giving a row's integer dot
/// product with an activation block.
///
/// # Safety
/// As [`GroupsKernel`].
unsafe fn groups_scalar(
    (w, blocks, xs, out, n): (&[u8], usize, &[Q8Slice], *mut f32, usize),
    size: usize,
    dot: fn(&[u8], usize, &[i8], i32) -> i32,
) {
    for (g, gw) in w.chunks_exact(size * blocks).enumerate() {
        for (i, x) in xs.iter().enumerate() {
            let mut acc = [0f32; GROUP];
            for (b, gb) in gw.chunks_exact(size).enumerate() {
                let xq = &x.qs[32 * b..32 * b + 32];
                for (r, a) in acc.iter_mut().enumerate() {
                    *a += f16_at(gb, 2 * r) * x.d[b] * dot(gb, r, xq, x.sums[b]) as f32;
                }
            }
            // SAFETY: per the contract.
            unsafe { store(out, n, g, i, &acc) };
        }
    }
}

/// Row `r`'s integer dot with `xq` in a q8_0 group block (rows' quants whole).
fn q8_0_dot(gb: &[u8], r: usize, xq: &[i8], _sum: i32) -> i32 {
    let q = &gb[2 * GROUP + 32 * r..][..32];
    q.iter()
        .zip(xq)
        .map(|(&w, &v)| w as i8 as i32 * v as i32)
        .sum()
}

/// Row `r`'s integer dot with `xq` (`sum` its Σ) in a q4_0 group block: Σ(q − 8)·x.
fn q4_0_dot(gb: &[u8], r: usize, xq: &[i8], sum: i32) -> i32 {
    let mut dot = -8 * sum;
    for c in 0..2 {
        let q = &gb[2 * GROUP + c * 64 + r * 8..][..8];
        for (j, &byte) in q.iter().enumerate() {
            dot += (byte & 15) as i32 * xq[8 * c + j] as i32;
            dot += (byte >> 4) as i32 * xq[16 + 8 * c + j] as i32;
        }
    }
    dot
}

/// Writes group `g`'s eight sums with activation row `i` to `out` (rows of `n`).
///
/// # Safety
/// As [`GroupsKernel`].
#[inline]
unsafe fn store(out: *mut f32, n: usize, g: usize, i: usize, rows: &[f32; GROUP]) {
    // SAFETY: per the contract.
    unsafe { std::ptr::copy_nonoverlapping(rows.as_ptr(), out.add(i * n + g * GROUP), GROUP) };
}

/// Activation rows of `blocks` blocks that a product takes as one band: about 128 KiB of
/// quantized values (a prompt's rows of 4,096 values as one band took 2.4× as long: every
/// group streamed all of them from L3).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn band_rows(blocks: usize) -> usize {
    (4096 / blocks.max(1)).max(4)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::Q8Slice;
    use super::GROUP;
    use std::arch::x86_64::*;

    /// Whether the 512-bit kernels can run (AVX-512 F and BW beside VNNI).
    pub(super) fn wide() -> bool {
        static WIDE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *WIDE.get_or_init(|| {
            std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512vnni")
        })
    }

    /// The eight rows' sums from two accumulators of four rows each (rows `4h + i` in lanes
    /// `2i` and `2i + 1` of `h`).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn rows_of(a: __m256, b: __m256) -> [f32; GROUP] {
        // [r0, r1, r4, r5 | r2, r3, r6, r7], put in order.
        let s = _mm256_hadd_ps(a, b);
        let s = _mm256_permutevar8x32_ps(s, _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7));
        let mut out = [0f32; GROUP];
        // SAFETY: eight floats.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
        out
    }

    /// The eight bytes of an activation block at `at` (0, 8, 16 or 24) in every 64-bit lane.
    ///
    /// # Safety
    /// The bytes are readable.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn bcast256(x: *const i8, at: usize) -> __m256i {
        // SAFETY: per the contract.
        _mm256_set1_epi64x(unsafe { x.add(at).cast::<i64>().read_unaligned() })
    }

    /// [`bcast256`] over 512 bits.
    ///
    /// # Safety
    /// The bytes are readable.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn bcast512(x: *const i8, at: usize) -> __m512i {
        // SAFETY: per the contract.
        _mm512_set1_epi64(unsafe { x.add(at).cast::<i64>().read_unaligned() })
    }

    /// An i32 vector with `v` in the even lanes (each row's first) and 0 in the odd ones.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn even512(v: i32) -> __m512i {
        _mm512_set1_epi64(v as u32 as i64)
    }

    /// [`even512`] over 256 bits.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn even256(v: i32) -> __m256i {
        _mm256_set1_epi64x(v as u32 as i64)
    }

    macro_rules! wide_kernel {
        ($name:ident, $tile:ident, $size:literal, $dots:ident) => {
            /// `R` activation rows with one group (at `w`, `blocks` group blocks).
            ///
            /// # Safety
            /// The CPU has AVX-512 F, BW and VNNI; the group and the rows hold `blocks` blocks.
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
            unsafe fn $tile<const R: usize>(
                w: *const u8,
                blocks: usize,
                x: [Q8Slice; R],
            ) -> [[f32; GROUP]; R] {
                // Scale `i` into lanes 2i and 2i + 1.
                let spread = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
                let mut acc = [_mm512_setzero_ps(); R];
                for b in 0..blocks {
                    // SAFETY: inside the group and the rows.
                    unsafe {
                        let p = w.add(b * $size);
                        let d = _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i));
                        let d = _mm512_permutexvar_ps(spread, _mm512_castps256_ps512(d));
                        let q = $dots(p.add(2 * GROUP));
                        for r in 0..R {
                            let xs = x[r].qs.as_ptr().add(32 * b);
                            let dot = q.dot(xs, *x[r].sums.get_unchecked(b));
                            let s = _mm512_mul_ps(d, _mm512_set1_ps(*x[r].d.get_unchecked(b)));
                            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, acc[r]);
                        }
                    }
                }
                acc.map(|a| {
                    let high = _mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a));
                    rows_of(_mm512_castps512_ps256(a), _mm256_castpd_ps(high))
                })
            }

            wrapper!(
                $name,
                "avx512f,avx512bw,avx512vnni,avx2,fma,f16c",
                $tile,
                $size,
                4
            );
        };
    }

    macro_rules! wrapper {
        ($name:ident, $features:literal, $tile:ident, $size:literal, $rows:literal) => {
            /// A [`super::GroupsKernel`]: every group, `$rows` activation rows at a time.
            ///
            /// # Safety
            /// The CPU has the features; `w` holds whole groups of `blocks` blocks a row, the
            /// activation rows as many blocks, `out` every group's rows.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $name(
                w: &[u8],
                blocks: usize,
                xs: &[Q8Slice],
                out: *mut f32,
                n: usize,
            ) {
                let m = xs.len();
                // Activation rows a band at a time (outside), the groups inside: the band
                // stays in L2 while the groups pass.
                let band = super::band_rows(blocks);
                for i0 in (0..m).step_by(band) {
                    let i1 = (i0 + band).min(m);
                    for (g, gw) in w.chunks_exact($size * blocks).enumerate() {
                        let mut i = i0;
                        while i1 - i >= $rows {
                            let x: [Q8Slice; $rows] = std::array::from_fn(|j| xs[i + j]);
                            // SAFETY: per the contract.
                            unsafe {
                                let v = $tile::<$rows>(gw.as_ptr(), blocks, x);
                                for (j, rows) in v.iter().enumerate() {
                                    super::store(out, n, g, i + j, rows);
                                }
                            }
                            i += $rows;
                        }
                        while i < i1 {
                            // SAFETY: per the contract.
                            unsafe {
                                let [rows] = $tile::<1>(gw.as_ptr(), blocks, [xs[i]]);
                                super::store(out, n, g, i, &rows);
                            }
                            i += 1;
                        }
                    }
                }
            }
        };
    }

    /// A q4_0 group block's quants (at `p`) unpacked: chunk 0's low and high nibbles, chunk
    /// 1's, as unsigned bytes.
    struct Q4Wide([__m512i; 4]);

    impl Q4Wide {
        /// Row sums Σ(q − 8)·x in two lanes a row, for activation block `x` (`sum` its Σx).
        ///
        /// # Safety
        /// The block's 32 values are readable.
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        unsafe fn dot(&self, x: *const i8, sum: i32) -> __m512i {
            let [lo0, hi0, lo1, hi1] = self.0;
            // SAFETY: per the contract.
            unsafe {
                // Two chains of two, not one of four: a `vpdpbusd` waits for the last one.
                let a = _mm512_dpbusd_epi32(even512(-8 * sum), lo0, bcast512(x, 0));
                let a = _mm512_dpbusd_epi32(a, hi0, bcast512(x, 16));
                let b = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo1, bcast512(x, 8));
                let b = _mm512_dpbusd_epi32(b, hi1, bcast512(x, 24));
                _mm512_add_epi32(a, b)
            }
        }
    }

    /// Loads and unpacks a q4_0 group block's quants.
    ///
    /// # Safety
    /// 128 bytes at `p` are readable.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn q4_wide(p: *const u8) -> Q4Wide {
        let mask = _mm512_set1_epi8(0x0f);
        // SAFETY: per the contract.
        let (v0, v1) = unsafe {
            (
                _mm512_loadu_si512(p as *const _),
                _mm512_loadu_si512(p.add(64) as *const _),
            )
        };
        let lo = |v| _mm512_and_si512(v, mask);
        let hi = |v| _mm512_and_si512(_mm512_srli_epi16::<4>(v), mask);
        Q4Wide([lo(v0), hi(v0), lo(v1), hi(v1)])
    }

    wide_kernel!(q4_0_512, q4_0_tile_512, 144, q4_wide);

    /// `R` activation rows with one q8_0 group (at `w`, `blocks` group blocks), each row summed
    /// as ggml sums it: per block, eight i32 lanes of four products each, converted and
    /// multiplied-added into eight f32 lanes with the product of the two scales; at the end the
    /// lanes' horizontal sum in ggml's order. Two rows share a 512-bit register.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and VNNI; the group and the rows hold `blocks` blocks.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    unsafe fn q8_0_tile_512<const R: usize>(
        w: *const u8,
        blocks: usize,
        x: [Q8Slice; R],
    ) -> [[f32; GROUP]; R] {
        // Rows 2p and 2p + 1's scales, each over eight lanes.
        let pairs: [__m512i; 4] = std::array::from_fn(|p| {
            let (a, b) = (2 * p as i32, 2 * p as i32 + 1);
            _mm512_setr_epi32(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b)
        });
        let flip = _mm512_set1_epi8(-128);
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        for b in 0..blocks {
            // SAFETY: inside the group and the rows.
            unsafe {
                let p = w.add(b * 272);
                let d =
                    _mm512_castps256_ps512(_mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)));
                let d: [__m512; 4] = std::array::from_fn(|q| _mm512_permutexvar_ps(pairs[q], d));
                // Quants + 128 (unsigned), two rows a register.
                let q: [__m512i; 4] = std::array::from_fn(|q| {
                    _mm512_xor_si512(_mm512_loadu_si512(p.add(16 + 64 * q) as *const _), flip)
                });
                for r in 0..R {
                    let xv = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                        x[r].qs.as_ptr().add(32 * b) as *const __m256i,
                    ));
                    // −128·(each lane's four x): what the +128 adds.
                    let off = _mm512_sub_epi32(
                        _mm512_setzero_si512(),
                        _mm512_dpbusd_epi32(_mm512_setzero_si512(), flip, xv),
                    );
                    let dx = _mm512_set1_ps(*x[r].d.get_unchecked(b));
                    for j in 0..4 {
                        let dot = _mm512_dpbusd_epi32(off, q[j], xv);
                        let s = _mm512_mul_ps(d[j], dx);
                        acc[r][j] = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(dot), acc[r][j]);
                    }
                }
            }
        }
        acc.map(|a| {
            let mut rows = [0f32; GROUP];
            for (j, v) in a.into_iter().enumerate() {
                let high = _mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v));
                rows[2 * j] = super::super::x86::hsum(_mm512_castps512_ps256(v));
                rows[2 * j + 1] = super::super::x86::hsum(_mm256_castpd_ps(high));
            }
            rows
        })
    }

    wrapper!(
        q8_0_512,
        "avx512f,avx512bw,avx512vnni,avx2,fma,f16c",
        q8_0_tile_512,
        272,
        4
    );

    /// One activation row with one q8_0 group (at `w`), AVX2, each row summed as ggml sums it
    /// (see [`q8_0_tile_512`]).
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; the group and the row hold `blocks` blocks.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_0_tile_avx2<const R: usize>(
        w: *const u8,
        blocks: usize,
        x: [Q8Slice; R],
    ) -> [[f32; GROUP]; R] {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); GROUP]; R];
        for b in 0..blocks {
            // SAFETY: inside the group and the rows.
            unsafe {
                let p = w.add(b * 272);
                let mut d = [0f32; GROUP];
                _mm256_storeu_ps(
                    d.as_mut_ptr(),
                    _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
                );
                for r in 0..R {
                    let xv = _mm256_loadu_si256(x[r].qs.as_ptr().add(32 * b) as *const __m256i);
                    let dx = *x[r].d.get_unchecked(b);
                    for (j, a) in acc[r].iter_mut().enumerate() {
                        let q = _mm256_loadu_si256(p.add(16 + 32 * j) as *const __m256i);
                        let dot = _mm256_madd_epi16(
                            _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(xv, q)),
                            ones,
                        );
                        let s = _mm256_set1_ps(d[j] * dx);
                        *a = _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(dot), *a);
                    }
                }
            }
        }
        acc.map(|a| a.map(|v| super::super::x86::hsum(v)))
    }

    wrapper!(q8_0_avx2, "avx2,fma,f16c", q8_0_tile_avx2, 272, 1);

    /// `R` activation rows with one q4_0 group (at `w`), AVX2: rows 0–3 and 4–7 as two halves.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; the group and the rows hold `blocks` blocks.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_0_tile_avx2<const R: usize>(
        w: *const u8,
        blocks: usize,
        x: [Q8Slice; R],
    ) -> [[f32; GROUP]; R] {
        const SIZE: usize = 144;
        let mask = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        let spread = [
            _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3),
            _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7),
        ];
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for b in 0..blocks {
            // SAFETY: inside the group and the rows.
            unsafe {
                let p = w.add(b * SIZE);
                let d = _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i));
                for h in 0..2 {
                    let ld = |at: usize| _mm256_loadu_si256(p.add(16 + at + 32 * h) as *const _);
                    let (v0, v1) = (ld(0), ld(64));
                    let lo = |v| _mm256_and_si256(v, mask);
                    let hi = |v| _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask);
                    let (lo0, hi0, lo1, hi1) = (lo(v0), hi(v0), lo(v1), hi(v1));
                    let dh = _mm256_permutevar8x32_ps(d, spread[h]);
                    for r in 0..R {
                        let xs = x[r].qs.as_ptr().add(32 * b);
                        // Each product pair ≤ 2·15·127: four sums fit in 16 bits.
                        let p16 = _mm256_add_epi16(
                            _mm256_add_epi16(
                                _mm256_maddubs_epi16(lo0, bcast256(xs, 0)),
                                _mm256_maddubs_epi16(hi0, bcast256(xs, 16)),
                            ),
                            _mm256_add_epi16(
                                _mm256_maddubs_epi16(lo1, bcast256(xs, 8)),
                                _mm256_maddubs_epi16(hi1, bcast256(xs, 24)),
                            ),
                        );
                        let dot = _mm256_add_epi32(
                            _mm256_madd_epi16(p16, ones),
                            even256(-8 * *x[r].sums.get_unchecked(b)),
                        );
                        let s = _mm256_mul_ps(dh, _mm256_set1_ps(*x[r].d.get_unchecked(b)));
                        acc[r][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), s, acc[r][h]);
                    }
                }
            }
        }
        acc.map(|[a, b]| rows_of(a, b))
    }

    wrapper!(q4_0_avx2, "avx2,fma,f16c", q4_0_tile_avx2, 144, 2);
}
