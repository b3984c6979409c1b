//! Four f16 or bf16 weight rows against several f32 activation rows at once (a register
//! tile): each weight value is widened once for up to six activation rows (AVX-512: 24
//! accumulators of the 32 registers) or two (AVX2: 8 of 16; three spill, 1.8× slower), where
//! a row dot widens the whole weight again for every activation row. The sums are f32, in
//! sixteen or eight lanes per pair of rows, added across lanes at the row's end. Measured on
//! two Zen 4 cores, 16 rows of 4096×4096 f16: four activation rows a tile 4.7–5.5 ms, six
//! 3.0–3.2, seven no faster.

use crate::dtype::DType;

/// `out[r·m + i]` = weight row `r` of the four (`w`, their bytes) with activation row `i` of
/// `x` (`m` rows of `k` values).
pub(crate) type HalfQuad = fn(&[&[u8]; 4], &[f32], usize, &mut [f32]);

/// The register tile for f16 or bf16 weights on this CPU, where it has one (AVX-512 F, or
/// AVX2 with FMA and F16C); `KILN_CPU_QDOT=avx2|scalar` asks for a lesser one, as for the
/// int8 kernels.
pub(crate) fn half_quad(dtype: DType) -> Option<HalfQuad> {
    #[cfg(target_arch = "x86_64")]
    {
        use super::Isa;
        let wide = super::isa() == Isa::Vnni && std::is_x86_feature_detected!("avx512f");
        // SAFETY (each closure): the features were detected.
        match (dtype, wide, super::isa()) {
            (DType::F16, true, _) => Some(|w, x, m, o| unsafe { x86::f16_quad512(w, x, m, o) }),
            (DType::BF16, true, _) => Some(|w, x, m, o| unsafe { x86::bf16_quad512(w, x, m, o) }),
            (_, _, Isa::Portable) => None,
            (DType::F16, false, _) => Some(|w, x, m, o| unsafe { x86::f16_quad256(w, x, m, o) }),
            (DType::BF16, false, _) => Some(|w, x, m, o| unsafe { x86::bf16_quad256(w, x, m, o) }),
            _ => None,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = dtype;
        None
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::x86::{hsum, widen_bf16, widen_f16};
    use crate::dtype::DType;
    use std::arch::x86_64::*;

    /// Sixteen f16 (a 256-bit load) as f32.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn f16_512(h: __m256i) -> __m512 {
        _mm512_cvtph_ps(h)
    }

    /// Sixteen bf16 as f32 (their bits shifted into the top half).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn bf16_512(h: __m256i) -> __m512 {
        _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
    }

    /// Sum of sixteen f32 lanes.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn sum512(v: __m512) -> f32 {
        _mm512_reduce_add_ps(v)
    }

    macro_rules! quad {
        (
            $name:ident, $feat:literal, $dtype:ident, $vec:ty, $hvec:ty, $lanes:literal,
            $rows:literal, $widen:ident, $hload:ident, $load:ident, $fma:ident, $zero:ident,
            $sum:ident
        ) => {
            /// Four weight rows (`w`, their bytes) with every row of `x` (`m` rows): see
            /// [`super::HalfQuad`]. Activation rows in tiles of up to
            #[doc = concat!(stringify!($rows), ", ", stringify!($lanes), " values a step.")]
            ///
            /// # Safety
            #[doc = concat!("The CPU has ", $feat, "; every row of `w` holds `x.len() / m` values, and `out` ")]
            /// has `4·m`.
            #[target_feature(enable = $feat)]
            pub(super) unsafe fn $name(w: &[&[u8]; 4], x: &[f32], m: usize, out: &mut [f32]) {
                /// Activation rows `i0..i0 + R` (`R` accumulators of each weight row, kept in
                /// registers).
                #[inline]
                #[target_feature(enable = $feat)]
                fn tile<const R: usize>(w: &[&[u8]; 4], x: &[f32], m: usize, i0: usize, out: &mut [f32]) {
                    let k = x.len() / m;
                    let mut acc = [[$zero(); 4]; R];
                    let mut j = 0;
                    // SAFETY: every load is inside its row (j + lanes ≤ k; the weight rows
                    // hold k values each, `x` holds m rows of k).
                    unsafe {
                        while j + $lanes <= k {
                            let mut ws = [$zero(); 4];
                            for (v, row) in ws.iter_mut().zip(w) {
                                *v = $widen($hload(row.as_ptr().add(2 * j) as *const $hvec));
                            }
                            for (i, a) in acc.iter_mut().enumerate() {
                                let xv = $load(x.as_ptr().add((i0 + i) * k + j));
                                for (s, wv) in a.iter_mut().zip(&ws) {
                                    *s = $fma(*wv, xv, *s);
                                }
                            }
                            j += $lanes;
                        }
                    }
                    // The last values of each row (fewer than a vector's lanes) in scalars.
                    let mut tails = [[0f32; $lanes]; 4];
                    for (t, row) in tails.iter_mut().zip(w) {
                        crate::quant::decode(DType::$dtype, &row[2 * j..2 * k], &mut t[..k - j]);
                    }
                    for (i, a) in acc.iter().enumerate() {
                        let xr = &x[(i0 + i) * k + j..(i0 + i + 1) * k];
                        for (r, (s, t)) in a.iter().zip(&tails).enumerate() {
                            let tail: f32 = t.iter().zip(xr).map(|(a, b)| a * b).sum();
                            out[r * m + i0 + i] = $sum(*s) + tail;
                        }
                    }
                }
                // The remainder's arms below go to five rows.
                const { assert!($rows <= 6) };
                let mut i0 = 0;
                while i0 + $rows <= m {
                    tile::<$rows>(w, x, m, i0, out);
                    i0 += $rows;
                }
                match m - i0 {
                    0 => {}
                    1 => tile::<1>(w, x, m, i0, out),
                    2 => tile::<2>(w, x, m, i0, out),
                    3 => tile::<3>(w, x, m, i0, out),
                    4 => tile::<4>(w, x, m, i0, out),
                    _ => tile::<5>(w, x, m, i0, out),
                }
            }
        };
    }

    quad!(
        f16_quad512,
        "avx512f,avx2,fma,f16c",
        F16,
        __m512,
        __m256i,
        16,
        6,
        f16_512,
        _mm256_loadu_si256,
        _mm512_loadu_ps,
        _mm512_fmadd_ps,
        _mm512_setzero_ps,
        sum512
    );
    quad!(
        bf16_quad512,
        "avx512f,avx2,fma,f16c",
        BF16,
        __m512,
        __m256i,
        16,
        6,
        bf16_512,
        _mm256_loadu_si256,
        _mm512_loadu_ps,
        _mm512_fmadd_ps,
        _mm512_setzero_ps,
        sum512
    );
    quad!(
        f16_quad256,
        "avx2,fma,f16c",
        F16,
        __m256,
        __m128i,
        8,
        2,
        widen_f16,
        _mm_loadu_si128,
        _mm256_loadu_ps,
        _mm256_fmadd_ps,
        _mm256_setzero_ps,
        hsum
    );
    quad!(
        bf16_quad256,
        "avx2,fma,f16c",
        BF16,
        __m256,
        __m128i,
        8,
        2,
        widen_bf16,
        _mm_loadu_si128,
        _mm256_loadu_ps,
        _mm256_fmadd_ps,
        _mm256_setzero_ps,
        hsum
    );
}
