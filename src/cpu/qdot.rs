//! Dot products of one packed weight row with one activation row: int8 ones for q8_0 and
//! q4_0 against activations quantized to q8 blocks (AVX-512 VNNI, AVX2 or scalar, picked once
//! at run time), and an f32 one for decoded chunks.

use crate::dtype::DType;
use crate::quant::f16_at;

/// 32 activation values as int8 with an f32 scale (ggml's `block_q8_0`, the scale kept in
/// f32).
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub(crate) struct Q8Block {
    /// The 32 quantized values.
    qs: [i8; 32],
    /// Their scale: value ≈ d·q.
    d: f32,
}

impl Q8Block {
    /// 32 values quantized like ggml's `quantize_row_q8_0` (scale = max |x| / 127, rounded
    /// half away from zero).
    pub(crate) fn quantize(x: &[f32]) -> Q8Block {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0i8; 32];
        for (q, v) in qs.iter_mut().zip(x) {
            *q = (v * id).round() as i8;
        }
        Q8Block { qs, d }
    }
}

/// A weight row's dot product with an activation row of q8 blocks.
pub(crate) type Kernel = fn(&[u8], &[Q8Block]) -> f32;

/// The fastest dot kernel for q8_0 or q4_0 weights on this CPU.
pub(crate) fn kernel(dtype: DType) -> Kernel {
    #[cfg(target_arch = "x86_64")]
    {
        let vnni = std::is_x86_feature_detected!("avx512vnni")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma");
        let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
        let isa = std::env::var("KILN_CPU_QDOT").unwrap_or_default();
        let (vnni, avx2) = match isa.as_str() {
            "scalar" => (false, false),
            "avx2" => (false, avx2),
            _ => (vnni, avx2),
        };
        match (dtype, vnni, avx2) {
            (DType::Q8_0, true, _) => return |w, x| unsafe { x86::q8_0_vnni(w, x) },
            (DType::Q4_0, true, _) => return |w, x| unsafe { x86::q4_0_vnni(w, x) },
            (DType::Q8_0, _, true) => return |w, x| unsafe { x86::q8_0_avx2(w, x) },
            (DType::Q4_0, _, true) => return |w, x| unsafe { x86::q4_0_avx2(w, x) },
            _ => {}
        }
    }
    match dtype {
        DType::Q4_0 => q4_0_scalar,
        _ => q8_0_scalar,
    }
}

/// q8_0 weights, portable.
fn q8_0_scalar(w: &[u8], x: &[Q8Block]) -> f32 {
    let mut sum = 0f32;
    for (b, xb) in w.chunks_exact(34).zip(x) {
        let dot: i32 = b[2..]
            .iter()
            .zip(&xb.qs)
            .map(|(&q, &v)| q as i8 as i32 * v as i32)
            .sum();
        sum += f16_at(b, 0) * xb.d * dot as f32;
    }
    sum
}

/// q4_0 weights, portable.
fn q4_0_scalar(w: &[u8], x: &[Q8Block]) -> f32 {
    let mut sum = 0f32;
    for (b, xb) in w.chunks_exact(18).zip(x) {
        let mut dot = 0i32;
        for j in 0..16 {
            dot += ((b[2 + j] & 0x0f) as i32 - 8) * xb.qs[j] as i32;
            dot += ((b[2 + j] >> 4) as i32 - 8) * xb.qs[j + 16] as i32;
        }
        sum += f16_at(b, 0) * xb.d * dot as f32;
    }
    sum
}

/// `a · b` in f32 (eight partial sums, which the compiler keeps in vector registers).
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
    use super::Q8Block;
    use crate::quant::f16_at;
    use std::arch::x86_64::*;

    /// Horizontal sum of eight f32 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// The 32 nibbles of a q4_0 block (at `p`) as int8 values in −8..=7.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn q4_0_values(p: *const u8) -> __m256i {
        // SAFETY: the caller passes 16 readable bytes.
        let qs = unsafe { _mm_loadu_si128(p as *const __m128i) };
        let m = _mm_set1_epi8(0x0f);
        let lo = _mm_and_si128(qs, m);
        let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), m);
        _mm256_sub_epi8(_mm256_set_m128i(hi, lo), _mm256_set1_epi8(8))
    }

    /// Σ w·x over 32 int8 pairs as eight i32 lanes, with AVX2's unsigned × signed
    /// multiply-add (|w| × x·sign(w)).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn dot_avx2(w: __m256i, x: __m256i) -> __m256i {
        let aw = _mm256_sign_epi8(w, w);
        let sx = _mm256_sign_epi8(x, w);
        _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), _mm256_set1_epi16(1))
    }

    /// [`dot_avx2`] with AVX-512 VNNI's one-instruction multiply-add.
    #[inline]
    #[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
    fn dot_vnni(w: __m256i, x: __m256i) -> __m256i {
        let aw = _mm256_sign_epi8(w, w);
        let sx = _mm256_sign_epi8(x, w);
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), aw, sx)
    }

    macro_rules! kernel {
        ($name:ident, $features:literal, $dot:ident, $size:literal, $load:expr) => {
            /// One weight row's dot product with an activation row of q8 blocks.
            ///
            /// # Safety
            /// The CPU has the target features; `w` holds `x.len()` blocks.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $name(w: &[u8], x: &[Q8Block]) -> f32 {
                let mut acc = _mm256_setzero_ps();
                for (b, xb) in w.chunks_exact($size).zip(x) {
                    // SAFETY: each block holds its scale and its values.
                    let wv = unsafe { $load(b.as_ptr().add(2)) };
                    // SAFETY: `qs` is 32 bytes.
                    let xv = unsafe { _mm256_load_si256(xb.qs.as_ptr() as *const __m256i) };
                    let d = _mm256_set1_ps(f16_at(b, 0) * xb.d);
                    acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps($dot(wv, xv)), acc);
                }
                hsum(acc)
            }
        };
    }

    /// 32 int8 values at `p`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn q8_0_values(p: *const u8) -> __m256i {
        // SAFETY: the caller passes 32 readable bytes.
        unsafe { _mm256_loadu_si256(p as *const __m256i) }
    }

    kernel!(q8_0_avx2, "avx2,fma", dot_avx2, 34, q8_0_values);
    kernel!(q4_0_avx2, "avx2,fma", dot_avx2, 18, q4_0_values);
    kernel!(
        q8_0_vnni,
        "avx2,fma,avx512vnni,avx512vl",
        dot_vnni,
        34,
        q8_0_values
    );
    kernel!(
        q4_0_vnni,
        "avx2,fma,avx512vnni,avx512vl",
        dot_vnni,
        18,
        q4_0_values
    );

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
