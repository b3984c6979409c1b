//! Scalar math for the CPU backend's elementwise ops: branch-free where it matters, so the
//! loops over slices that call these vectorise instead of calling libm once per value.

/// e^x with at most about 2 ulp of error (Cephes' `expf`: x = n·ln 2 + r with |r| ≤ ln 2 / 2,
/// a degree-7 polynomial for e^r, then a scale by 2^n). Overflows to +inf above 88.72,
/// underflows through the subnormals to 0 below -103.97, and keeps NaN; no branches, so a loop
/// of it vectorises.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    // Past these bounds the result is inf or 0 anyway; the clamp keeps n in i32 range (and
    // keeps NaN, which the arithmetic below carries through).
    let x = x.clamp(-104.0, 89.0);
    // n = round(x / ln 2), by the 1.5·2^23 trick (SSE2 has no vector rounding instruction):
    // adding it leaves round(x / ln 2) in the low bits of the sum's mantissa, which also gives
    // n as an integer without a float-to-int conversion (Rust's saturating one does not
    // vectorise).
    const ROUND: f32 = 12_582_912.0;
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    // r = x - n·ln 2, with ln 2 split in two so that n·LN2_HI is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    // 2^n as two factors 2^(n/2) and 2^(n - n/2), each a normal float for n in [-150, 128],
    // so that subnormal results and overflow to inf come out of the multiplications.
    // (Wrapping: for a NaN input these are garbage, and the result is NaN whatever they are.)
    let n = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let half = n >> 1;
    let scale = |e: i32| f32::from_bits((e.wrapping_add(127) as u32) << 23);
    er * scale(half) * scale(n - half)
}

/// The natural logarithm with at most about 2 ulp of error (Cephes' `logf`: x = m·2^e with m in
/// [√½, √2), a degree-8 polynomial for ln(1 + (m − 1)), then e·ln 2 added in two parts), and
/// no branches, so that a loop of it vectorises. Subnormals are scaled into the normal range
/// first; ln(0) is −inf, ln(+inf) is +inf, negative numbers and NaN give NaN.
#[inline(always)]
pub(crate) fn log_f32(x: f32) -> f32 {
    // Subnormals: scale by 2^23 (exact) and take 23 off the exponent.
    let tiny = x < f32::MIN_POSITIVE;
    let xs = if tiny { x * 8_388_608.0 } else { x };
    let bits = xs.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 126 - if tiny { 23 } else { 0 };
    // m in [0.5, 1), then moved to [√½, √2) with e adjusted.
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f00_0000);
    let low = m < std::f32::consts::FRAC_1_SQRT_2;
    e -= i32::from(low);
    let m = if low { m + m - 1.0 } else { m - 1.0 };
    let z = m * m;
    let mut p = 7.037_683_6e-2;
    p = p * m - 1.151_461_1e-1;
    p = p * m + 1.167_699_9e-1;
    p = p * m - 1.242_014_1e-1;
    p = p * m + 1.424_932_3e-1;
    p = p * m - 1.666_805_8e-1;
    p = p * m + 2.000_071_4e-1;
    p = p * m - 2.499_999_4e-1;
    p = p * m + 0.333_333_3;
    let ef = e as f32;
    let y = p * m * z + ef * -2.121_944_4e-4 - 0.5 * z;
    let r = m + y + ef * 0.693_359_4;
    // The edges, as selects: +inf stays, 0 gives -inf, below 0 (and NaN) gives NaN.
    let r = if x == f32::INFINITY { x } else { r };
    let r = if x == 0.0 { f32::NEG_INFINITY } else { r };
    if x < 0.0 || x.is_nan() { f32::NAN } else { r }
}

/// The logistic function 1 / (1 + e^-x), from e^-|x| so that neither side overflows or loses
/// its relative precision.
#[inline(always)]
pub(crate) fn sigmoid_f32(x: f32) -> f32 {
    let e = exp_f32(-x.abs());
    let top = if x >= 0.0 { 1.0 } else { e };
    // NaN: e is NaN, so the quotient is too.
    top / (1.0 + e)
}

/// tanh without a call into libm, so that loops of it vectorise: `(1 − e) / (1 + e)` with
/// `e = exp(−2|x|)` and the sign put back; under |x| = 1/4, where `1 − e` would cancel, the
/// odd series to x⁹ (error under 4e-9). Relative error about 2e-7 overall; ±1 past |x| ≈ 9,
/// NaN for NaN.
#[inline(always)]
pub(crate) fn tanh_f32(x: f32) -> f32 {
    let a = x.abs();
    let e = exp_f32(-2.0 * a);
    let big = (1.0 - e) / (1.0 + e);
    let x2 = x * x;
    let small = x
        * (1.0
            + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0 + x2 * (62.0 / 2835.0)))));
    if a < 0.25 { small } else { big.copysign(x) }
}

/// erf with absolute error below 1.5e-7 (Abramowitz & Stegun 7.1.26); the same formula as the
/// `erf` function in `shaders/common.wgsl`, since WGSL has no erf builtin.
#[inline(always)]
pub(crate) fn erf_f32(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp_f32(-x * x);
    if x < 0.0 { -y } else { y }
}

/// Lanes of the partial sums and maxima below: 32 independent accumulators, which the
/// compiler keeps in two AVX-512 or four AVX2 registers, so that as many chains of dependent
/// adds run at once (a single accumulator is one chain that no compiler may reorder; one
/// register's worth waited on its add's latency: softmax rows of 18,710 spent a third of
/// their time in the sum and the maximum).
const LANES: usize = 32;

/// The sum of `xs`, accumulated in [`LANES`] interleaved partial sums, then those in order.
#[inline]
pub(crate) fn sum_f32(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The sum of the squares of `xs`, in [`LANES`] partial sums like [`sum_f32`].
#[inline]
pub(crate) fn sum_squares_f32(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v * v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The largest value of `xs` (which holds no NaN), -inf when empty.
#[inline]
pub(crate) fn max_f32(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    acc.iter().fold(tail, |m, &v| m.max(v))
}

/// Whether `xs` holds a NaN (no early exit, so the loop vectorises).
#[inline]
pub(crate) fn has_nan(xs: &[f32]) -> bool {
    xs.iter().fold(false, |any, v| any | v.is_nan())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between two finite floats of the same sign.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm_and_keeps_the_edges() {
        let mut worst = 0;
        let mut x = -103.0f32;
        while x < 88.7 {
            let (got, want) = (exp_f32(x), (x as f64).exp() as f32);
            if want.is_normal() {
                worst = worst.max(ulps(got, want));
            } else {
                // Subnormal results: absolute error within a few subnormal steps.
                assert!(
                    (got - want).abs() <= 4.0 * f32::from_bits(1),
                    "exp({x}) = {got}, want {want}"
                );
            }
            x += 0.0137;
        }
        assert!(worst <= 2, "worst error {worst} ulp");
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f32(89.0), f32::INFINITY);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-200.0), 0.0);
        assert!(exp_f32(f32::NAN).is_nan());
        assert!(exp_f32(88.7).is_finite());
    }

    #[test]
    fn log_is_within_two_ulp_of_libm_and_keeps_the_edges() {
        let mut worst = 0;
        // Every exponent, subnormals included, at many mantissas.
        let mut bits = 1u32;
        while bits < 0x7f80_0000 {
            let x = f32::from_bits(bits);
            let (got, want) = (log_f32(x), (x as f64).ln() as f32);
            if want == 0.0 {
                assert!(got.abs() <= 1e-7, "log({x}) = {got}");
            } else {
                worst = worst.max(ulps(got, want));
            }
            bits += 0x1_3579;
        }
        assert!(worst <= 2, "worst error {worst} ulp");
        assert_eq!(log_f32(1.0), 0.0);
        assert_eq!(log_f32(0.0), f32::NEG_INFINITY);
        assert_eq!(log_f32(-0.0), f32::NEG_INFINITY);
        assert_eq!(log_f32(f32::INFINITY), f32::INFINITY);
        assert!(log_f32(-1.0).is_nan());
        assert!(log_f32(f32::NEG_INFINITY).is_nan());
        assert!(log_f32(f32::NAN).is_nan());
    }

    #[test]
    fn lane_sums_and_maxima_match_sequential_ones() {
        for n in [0usize, 1, 7, 8, 9, 31, 100] {
            let xs: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.25)
                .collect();
            let seq: f32 = xs.iter().sum();
            assert!((sum_f32(&xs) - seq).abs() < 1e-5, "sum of {n}");
            let m = xs.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            assert_eq!(max_f32(&xs), m, "max of {n}");
            assert!(!has_nan(&xs));
        }
        assert!(has_nan(&[1.0, f32::NAN, 2.0]));
    }

    #[test]
    fn sigmoid_keeps_precision_on_both_sides() {
        for &x in &[-90.0f32, -20.0, -1.0, 0.0, 1.0, 20.0, 90.0] {
            let want = 1.0 / (1.0 + (-(x as f64)).exp());
            let got = sigmoid_f32(x) as f64;
            assert!(
                (got - want).abs() <= 2e-7 * want.max(1e-30),
                "sigmoid({x}) = {got}, want {want}"
            );
        }
        assert!(sigmoid_f32(f32::NAN).is_nan());
        assert_eq!(sigmoid_f32(f32::INFINITY), 1.0);
        assert_eq!(sigmoid_f32(f32::NEG_INFINITY), 0.0);
    }
}

#[cfg(test)]
mod tanh_tests {
    /// Over a dense sweep (and the edges: zero, tiny, huge, infinite, NaN) `tanh_f32` is
    /// within 3e-7 relative (and 1e-37 absolute) of f64's tanh.
    #[test]
    fn tanh_f32_is_close_to_tanh_everywhere() {
        let mut worst = 0.0f64;
        let sweep = (-200_000..=200_000).map(|i| i as f32 * 1e-4);
        let edges = [
            0.0,
            -0.0,
            1e-30,
            -1e-30,
            0.25,
            -0.25,
            20.0,
            1e30,
            f32::INFINITY,
        ];
        for x in sweep.chain(edges) {
            let (got, want) = (f64::from(super::tanh_f32(x)), f64::from(x).tanh());
            let err = (got - want).abs() / want.abs().max(1e-37);
            worst = worst.max(err);
            assert!(err <= 3e-7, "tanh({x}) = {got}, want {want}");
        }
        assert_eq!(super::tanh_f32(f32::NEG_INFINITY), -1.0);
        assert!(super::tanh_f32(f32::NAN).is_nan());
        assert!(worst > 0.0);
    }
}
