//! The AVX-512F micro-kernel: a 12 × 32 tile of C in 24 zmm accumulators; per step of k it
//! loads two vectors of B and broadcasts twelve values of A.
//!
//! On the 2-vCPU EPYC with AVX-512 (Zen 4, which splits 512-bit FMAs in two) four steps per
//! iteration, as the AVX2 kernel takes, and dropping the software prefetches each measured the
//! same as this loop against OpenBLAS in one process (`benches/peers/openblas`): 24 FMAs per
//! step already hide the loop's overhead.

use std::arch::x86_64::*;

const MR: usize = 12;
const NR: usize = 32;

super::micro_kernel!(
    /// The AVX-512F kernel.
    Avx512,
    MR,
    NR
);

/// [`super::Micro::kernel`] with AVX-512F.
///
/// # Safety
/// As [`super::Micro::kernel`], with AVX-512F available.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)] // a micro-kernel's operands, kept in registers
unsafe fn tile(
    kc: usize,
    ap: *const f32,
    bp: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
) {
    // SAFETY (whole body): the caller guarantees the pointer ranges above.
    unsafe {
        // Fetch the C tile while the loop runs: its rows are a row stride apart, and waiting
        // for them after the loop would stall the stores.
        for r in 0..rows {
            _mm_prefetch::<_MM_HINT_T0>(c.add(r * ldc) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(c.add(r * ldc + 16) as *const i8);
        }
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        let (mut a, mut b) = (ap, bp);
        for _ in 0..kc {
            // Software prefetch 16 steps ahead (wrapping: a hint past the panel end is harmless):
            // the A panel streams from L2 and the B panel
            // from L2/L3 on its first use; the hardware prefetchers alone left the FMAs idle
            // (the gain is in BENCHMARKS.md).
            _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add(MR * 16) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(NR * 16) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(NR * 16 + 16) as *const i8);
            let b0 = _mm512_loadu_ps(b);
            let b1 = _mm512_loadu_ps(b.add(16));
            for (r, row) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*a.add(r));
                row[0] = _mm512_fmadd_ps(av, b0, row[0]);
                row[1] = _mm512_fmadd_ps(av, b1, row[1]);
            }
            a = a.add(MR);
            b = b.add(NR);
        }
        // Lanes of the two vectors that fall inside C.
        let m0: __mmask16 = if cols >= 16 {
            0xffff
        } else {
            (1u32 << cols) as u16 - 1
        };
        let m1: __mmask16 = if cols >= NR {
            0xffff
        } else if cols > 16 {
            (1u32 << (cols - 16)) as u16 - 1
        } else {
            0
        };
        for (r, row) in acc.iter().enumerate().take(rows) {
            let p = c.add(r * ldc);
            let (mut v0, mut v1) = (row[0], row[1]);
            if accumulate {
                v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, p));
                v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, p.add(16)));
            }
            _mm512_mask_storeu_ps(p, m0, v0);
            _mm512_mask_storeu_ps(p.add(16), m1, v1);
        }
    }
}
