//! The AVX2 + FMA micro-kernel: a 6 × 16 tile of C in 12 ymm accumulators; per step of k it
//! loads two vectors of B and broadcasts six values of A (8 loads for 12 FMAs, so the FMA
//! units, not the load ports, set the pace; 16 ymm registers leave none to spare).

use std::arch::x86_64::*;

const MR: usize = 6;
const NR: usize = 16;
/// Steps of k per iteration of the main loop.
const UNROLL: usize = 4;

super::micro_kernel!(
    /// The AVX2 and FMA kernel.
    Avx2,
    MR,
    NR
);

/// [`super::Micro::kernel`] with AVX2 and FMA.
///
/// # Safety
/// As [`super::Micro::kernel`], with AVX2 and FMA available.
#[target_feature(enable = "avx2,fma")]
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
        for r in 0..rows {
            _mm_prefetch::<_MM_HINT_T0>(c.add(r * ldc) as *const i8);
        }
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        let (mut a, mut b) = (ap, bp);
        // One step of k: two vectors of B, six broadcasts of A, twelve FMAs.
        let mut step = |a: *const f32, b: *const f32| {
            let b0 = _mm256_loadu_ps(b);
            let b1 = _mm256_loadu_ps(b.add(8));
            for (r, row) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*a.add(r));
                row[0] = _mm256_fmadd_ps(av, b0, row[0]);
                row[1] = _mm256_fmadd_ps(av, b1, row[1]);
            }
        };
        // UNROLL steps per iteration, at constant offsets from pointers advanced once. On the
        // 2-core EPYC (Zen 3) the test `kernel_in_l1` measures 96% of the FMA peak this way
        // against about 80% with one step per iteration (whose pointer updates and branch
        // cost a slot in every six cycles of FMAs). No software prefetch: ahead of A, of B or
        // of both, it measured slower than the hardware's (benches/peers/openblas).
        for _ in 0..kc / UNROLL {
            for u in 0..UNROLL {
                step(a.add(u * MR), b.add(u * NR));
            }
            a = a.add(UNROLL * MR);
            b = b.add(UNROLL * NR);
        }
        for u in 0..kc % UNROLL {
            step(a.add(u * MR), b.add(u * NR));
        }
        if cols == NR {
            for (r, row) in acc.iter().enumerate().take(rows) {
                let p = c.add(r * ldc);
                let (mut v0, mut v1) = (row[0], row[1]);
                if accumulate {
                    v0 = _mm256_add_ps(v0, _mm256_loadu_ps(p));
                    v1 = _mm256_add_ps(v1, _mm256_loadu_ps(p.add(8)));
                }
                _mm256_storeu_ps(p, v0);
                _mm256_storeu_ps(p.add(8), v1);
            }
            return;
        }
        // An edge tile: through a buffer, only the `cols` values of each row that lie in C.
        let mut buf = [0.0f32; NR];
        for (r, row) in acc.iter().enumerate().take(rows) {
            _mm256_storeu_ps(buf.as_mut_ptr(), row[0]);
            _mm256_storeu_ps(buf.as_mut_ptr().add(8), row[1]);
            let p = c.add(r * ldc);
            for (j, v) in buf.iter().enumerate().take(cols) {
                *p.add(j) = if accumulate { *p.add(j) + v } else { *v };
            }
        }
    }
}
