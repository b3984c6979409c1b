//! q4_K or q6_K weights against activation rows sixteen at a time, one row per 32-bit lane
//! (AVX-512 with VNNI): each lane holds four consecutive int8 values of its row, and
//! `vpdpbusd` multiplies them by four weight values broadcast to every lane, 64
//! multiply-adds an instruction with no sum across lanes, for eight weight rows at a time. A
//! sub-block's sums are then weighted by its scale (`vpmulld`, once per 16 or 32 values), a
//! super-block's become f32 times both rows' scales, and the offset terms (q4_K's mins, q6_K's
//! −32) are f32 multiply-adds of a weight coefficient by the lanes' 16-value sums. The eight
//! weight rows are unpacked to bytes once for every band of sixteen activation rows. (ggml's
//! `tiled_run_micro_vnni_8x16` takes the same layout.) Measured on two Sapphire Rapids cores,
//! 4096×4096 q4_K: 16 rows 3.7 → 1.9 ms, 512 rows 82 → 59 ms; from 6 rows it beats the
//! one-row kernels (which unpack each super-block once for four rows: faster below).

use crate::dtype::DType;

/// Activation rows laid out for [`k_lanes`]: sixteen rows a band, one per 32-bit lane, each
/// lane holding four consecutive values of its row (the layout `vpdpbusd` multiplies by four
/// broadcast weight bytes), with each band's super-block scales and 16-value sums by lane.
/// (Built on every CPU; read by the x86 kernel only.)
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct LaneRows {
    /// Rows (the last band's lanes past them are zeros).
    m: usize,
    /// Super-blocks a row.
    blocks: usize,
    /// `[band][super-block][k / 4 within it: 64][lane: 16][4]` int8 values.
    qs: Vec<i8>,
    /// `[band][super-block][lane]` scales.
    d: Vec<f32>,
    /// `[band][super-block][16-value group: 16][lane]` sums as the scale gives them back.
    bsumf: Vec<f32>,
}

impl LaneRows {
    /// The rows of `xq` (`m` of them, `blocks` super-blocks each) in bands of sixteen.
    pub(crate) fn new(xq: &super::Q8KRow, m: usize, blocks: usize) -> LaneRows {
        let bands = m.div_ceil(16);
        let mut rows = LaneRows {
            m,
            blocks,
            qs: vec![0; bands * blocks * 4096],
            d: vec![0.0; bands * blocks * 16],
            bsumf: vec![0.0; bands * blocks * 256],
        };
        let (d, bsumf) = (
            crate::cpu::Shared(rows.d.as_mut_ptr()),
            crate::cpu::Shared(rows.bsumf.as_mut_ptr()),
        );
        crate::cpu::par_chunks_mut(&mut rows.qs, blocks * 4096, blocks * 4096, &|band, qs| {
            for lane in 0..16.min(m - 16 * band) {
                let i = 16 * band + lane;
                for sb in 0..blocks {
                    let src = &xq.qs[(i * blocks + sb) * 256..][..256];
                    let dst = &mut qs[sb * 4096..][..4096];
                    for (g, four) in src.chunks_exact(4).enumerate() {
                        dst[64 * g + 4 * lane..][..4].copy_from_slice(four);
                    }
                    let at = (band * blocks + sb) * 16;
                    // SAFETY: this band's entries alone, inside both vectors.
                    unsafe {
                        *d.ptr().add(at + lane) = xq.d[i * blocks + sb];
                        for g in 0..16 {
                            *bsumf.ptr().add((at + g) * 16 + lane) = xq.d[i * blocks + sb]
                                * f32::from(xq.bsums[(i * blocks + sb) * 16 + g]);
                        }
                    }
                }
            }
        });
        rows
    }
}

/// `out[t·m + i]` = weight row `t` of the eight in `w` (consecutive rows of `w.len() / 8`
/// bytes) with activation row `i` of `x`'s `m`.
pub(crate) type KLanes = fn(&[u8], &LaneRows, &mut [f32]);

/// The lane kernel for q4_K or q6_K weights on this CPU, where it has one (AVX-512 BW with
/// VNNI; `KILN_CPU_QDOT=avx2|scalar` turn it off, as for the other int8 kernels).
pub(crate) fn k_lanes(dtype: DType) -> Option<KLanes> {
    #[cfg(target_arch = "x86_64")]
    {
        let wide = super::isa() == super::Isa::Vnni
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw");
        // SAFETY (each closure): the features were detected.
        match (dtype, wide) {
            (DType::Q4K, true) => Some(|w, x, o| unsafe { x86::lanes::<x86::Q4K>(w, x, o) }),
            (DType::Q6K, true) => Some(|w, x, o| unsafe { x86::lanes::<x86::Q6K>(w, x, o) }),
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
    use super::LaneRows;
    use crate::quant::f16_at;
    use std::arch::x86_64::*;

    /// A super-block of a K-quant weight row, its scales unpacked.
    pub(super) struct Unpacked {
        /// The super-block's scale.
        d: f32,
        /// Its sub-block scales (the first `256 / SUB`).
        ints: [i32; 16],
        /// The offset term's coefficient of each 16-value group (q4_K: −dmin·min, q6_K:
        /// −32·d·scale).
        offset: __m512,
    }

    /// A K-quant layout: its super-block's size and how to unpack it.
    pub(super) trait Kind {
        /// Bytes a super-block.
        const BYTES: usize;
        /// Values a sub-block scale covers (q4_K 32, q6_K 16).
        const SUB: usize;
        /// The scales of the super-block at `blk`.
        ///
        /// # Safety
        /// The caller enables AVX-512 F and BW, AVX2 and FMA (this is inlined into it);
        /// `blk` points at a whole super-block.
        unsafe fn unpack(blk: *const u8) -> Unpacked;
        /// Values `64c..64c + 64` of the super-block at `blk` as unsigned bytes.
        ///
        /// # Safety
        /// As `unpack`; `c < 4`.
        unsafe fn values(blk: *const u8, c: usize) -> __m512i;
    }

    /// q4_K: 144 bytes (d, dmin, twelve bytes of 6-bit scales and mins, 128 of nibbles).
    pub(super) struct Q4K;

    impl Kind for Q4K {
        const BYTES: usize = 144;
        const SUB: usize = 32;

        #[inline(always)]
        unsafe fn unpack(blk: *const u8) -> Unpacked {
            // SAFETY: the caller's features and super-block.
            unsafe {
                let b = std::slice::from_raw_parts(blk, 144);
                // Scales in 16-bit lanes 0..8, mins in 8..16.
                let ms = super::super::x86::q4_k_scales_mins(b);
                let mut lanes = [0u16; 16];
                _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, ms);
                let ints = std::array::from_fn(|j| if j < 8 { i32::from(lanes[j]) } else { 0 });
                // Each min twice (it covers two 16-value groups), as f32.
                let idx =
                    _mm512_set_epi32(15, 15, 14, 14, 13, 13, 12, 12, 11, 11, 10, 10, 9, 9, 8, 8);
                let mins =
                    _mm512_cvtepi32_ps(_mm512_permutexvar_epi32(idx, _mm512_cvtepu16_epi32(ms)));
                Unpacked {
                    d: f16_at(b, 0),
                    ints,
                    offset: _mm512_mul_ps(_mm512_set1_ps(-f16_at(b, 2)), mins),
                }
            }
        }

        #[inline(always)]
        unsafe fn values(blk: *const u8, c: usize) -> __m512i {
            // SAFETY: the caller's features and super-block.
            unsafe {
                // Step `c`'s 32 bytes of nibbles: low ones values 64c.., high ones 64c + 32...
                let q = _mm256_loadu_si256(blk.add(16 + 32 * c) as *const __m256i);
                let both =
                    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(q), _mm256_srli_epi16(q, 4));
                _mm512_and_si512(both, _mm512_set1_epi8(0x0f))
            }
        }
    }

    /// q6_K: 210 bytes (128 of low nibbles, 64 of 2-bit high parts, 16 i8 scales, d).
    pub(super) struct Q6K;

    impl Kind for Q6K {
        const BYTES: usize = 210;
        const SUB: usize = 16;

        #[inline(always)]
        unsafe fn unpack(blk: *const u8) -> Unpacked {
            // SAFETY: the caller's features and super-block: sixteen i8 scales at 192, d at 208.
            unsafe {
                let d = f16_at(std::slice::from_raw_parts(blk, 210), 208);
                let sc = _mm_loadu_si128(blk.add(192) as *const __m128i);
                let ints = std::array::from_fn(|j| i32::from(*blk.add(192 + j) as i8));
                let scf = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(sc));
                Unpacked {
                    d,
                    ints,
                    offset: _mm512_mul_ps(_mm512_set1_ps(-32.0 * d), scf),
                }
            }
        }

        #[inline(always)]
        unsafe fn values(blk: *const u8, c: usize) -> __m512i {
            // SAFETY: the caller's features and super-block.
            unsafe {
                // Values 128h..128h + 128: low nibbles of ql[64h..64h + 64] then their high ones,
                // each with two bits of qh[32h..32h + 32] (bits 0-1, 2-3 for the low nibbles'
                // halves, 4-5, 6-7 for the high ones').
                let (h, upper) = (c / 2, c % 2 == 1);
                let ql = _mm512_loadu_si512(blk.add(64 * h) as *const __m512i);
                let qh = _mm256_loadu_si256(blk.add(128 + 32 * h) as *const __m256i);
                let qh =
                    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(qh), _mm256_srli_epi16(qh, 2));
                let (ql, qh) = if upper {
                    (_mm512_srli_epi16(ql, 4), _mm512_srli_epi16(qh, 4))
                } else {
                    (ql, qh)
                };
                let lo = _mm512_and_si512(ql, _mm512_set1_epi8(0x0f));
                let hi = _mm512_slli_epi16(_mm512_and_si512(qh, _mm512_set1_epi8(3)), 4);
                _mm512_or_si512(lo, hi)
            }
        }
    }

    /// Eight weight rows unpacked for [`lanes`]: their values as bytes (`[row][k]`), and per
    /// row and super-block the sub-block scales, the scale and the 16-value groups' offset
    /// coefficients.
    #[derive(Default)]
    struct Eight {
        bytes: Vec<u8>,
        ints: Vec<i32>,
        d: Vec<f32>,
        offset: Vec<f32>,
    }

    thread_local! {
        /// Each thread's unpacked rows for [`lanes`], reused from call to call.
        static EIGHT: std::cell::RefCell<Eight> = std::cell::RefCell::new(Eight::default());
    }

    /// Eight weight rows with every activation row: see [`super::KLanes`]. The rows are
    /// unpacked once; then for each band of sixteen activation rows, each group of four
    /// weight values is broadcast to the sixteen lanes and `vpdpbusd` adds its products with
    /// the lanes' four activation values (64 multiply-adds an instruction, eight rows'
    /// accumulators), each sub-block's sums times its scale (`vpmulld`), each super-block's
    /// in f32 times both scales, the offset terms as f32 multiply-adds.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and VNNI with AVX2; `w` holds eight rows of `x`'s
    /// super-blocks, `out` `8·m` values.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    pub(super) unsafe fn lanes<K: Kind>(w: &[u8], x: &LaneRows, out: &mut [f32]) {
        let blocks = x.blocks;
        let k = 256 * blocks;
        EIGHT.with_borrow_mut(|e| {
            e.bytes.resize(8 * k, 0);
            e.ints.resize(8 * blocks * 16, 0);
            e.d.resize(8 * blocks, 0.0);
            e.offset.resize(8 * blocks * 16, 0.0);
            for t in 0..8 {
                for sb in 0..blocks {
                    // SAFETY: super-block `sb` of row `t`; the buffers were sized above.
                    unsafe {
                        let blk = w.as_ptr().add((t * blocks + sb) * K::BYTES);
                        for c in 0..4 {
                            let dst = e.bytes.as_mut_ptr().add(t * k + 256 * sb + 64 * c);
                            _mm512_storeu_si512(dst as *mut _, K::values(blk, c));
                        }
                        let un = K::unpack(blk);
                        let at = t * blocks + sb;
                        e.ints[16 * at..16 * at + 16].copy_from_slice(&un.ints);
                        e.d[at] = un.d;
                        _mm512_storeu_ps(e.offset.as_mut_ptr().add(16 * at), un.offset);
                    }
                }
            }
            for band in 0..x.m.div_ceil(16) {
                // SAFETY: the unpacked rows and the band, as sized.
                unsafe { band_pass::<K>(e, x, band, out) };
            }
        });
    }

    /// One band of sixteen activation rows against the eight unpacked rows.
    ///
    /// # Safety
    /// As [`lanes`]; `e` holds the rows unpacked.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    unsafe fn band_pass<K: Kind>(e: &Eight, x: &LaneRows, band: usize, out: &mut [f32]) {
        let (blocks, m) = (x.blocks, x.m);
        let k = 256 * blocks;
        let subs = 256 / K::SUB;
        let mut acc = [_mm512_setzero_ps(); 8];
        // SAFETY: every index is inside the buffers (`LaneRows::new`, `lanes`).
        unsafe {
            for sb in 0..blocks {
                let at = band * blocks + sb;
                let xq = x.qs.as_ptr().add(at * 4096);
                let mut s1 = [_mm512_setzero_si512(); 8];
                for s in 0..subs {
                    let mut a = [_mm512_setzero_si512(); 8];
                    for g in 0..K::SUB / 4 {
                        let kg = s * K::SUB / 4 + g;
                        let codes = _mm512_loadu_si512(xq.add(64 * kg) as *const _);
                        for (t, a) in a.iter_mut().enumerate() {
                            let four = (e.bytes.as_ptr().add(t * k + 256 * sb + 4 * kg)
                                as *const i32)
                                .read_unaligned();
                            *a = _mm512_dpbusd_epi32(*a, _mm512_set1_epi32(four), codes);
                        }
                    }
                    for (t, (s1, a)) in s1.iter_mut().zip(a).enumerate() {
                        let sc = *e.ints.get_unchecked((t * blocks + sb) * 16 + s);
                        *s1 = _mm512_add_epi32(*s1, _mm512_mullo_epi32(a, _mm512_set1_epi32(sc)));
                    }
                }
                let dl = _mm512_loadu_ps(x.d.as_ptr().add(at * 16));
                for (t, (acc, s1)) in acc.iter_mut().zip(s1).enumerate() {
                    let f = _mm512_mul_ps(_mm512_set1_ps(*e.d.get_unchecked(t * blocks + sb)), dl);
                    *acc = _mm512_fmadd_ps(f, _mm512_cvtepi32_ps(s1), *acc);
                }
                for g in 0..16 {
                    let bs = _mm512_loadu_ps(x.bsumf.as_ptr().add((at * 16 + g) * 16));
                    for (t, acc) in acc.iter_mut().enumerate() {
                        let o = *e.offset.get_unchecked((t * blocks + sb) * 16 + g);
                        *acc = _mm512_fmadd_ps(_mm512_set1_ps(o), bs, *acc);
                    }
                }
            }
        }
        let lanes = 16.min(m - 16 * band);
        for (t, acc) in acc.iter().enumerate() {
            let mut v = [0f32; 16];
            // SAFETY: 16 values.
            unsafe { _mm512_storeu_ps(v.as_mut_ptr(), *acc) };
            out[t * m + 16 * band..][..lanes].copy_from_slice(&v[..lanes]);
        }
    }
}
