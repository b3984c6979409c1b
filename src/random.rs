//! Seeded random numbers, generated on the host so that every device gets the same values.

use crate::error::{Error, Result};

/// SplitMix64: small, fast, and good enough for initialising weights and test data.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 bits.
    fn next_f64(&mut self) -> f64 {
        (self.next() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Room for `n` values, or `OutOfMemory` instead of an abort.
fn room(op: &'static str, n: usize) -> Result<Vec<f32>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|e| Error::OutOfMemory(format!("{op}: {n} f32 values on the host: {e}")))?;
    Ok(v)
}

/// `n` values uniform in [0, 1).
pub(crate) fn uniform(op: &'static str, seed: u64, n: usize) -> Result<Vec<f32>> {
    let mut rng = SplitMix64(seed);
    let mut out = room(op, n)?;
    // 24 bits: every value is exactly representable and strictly below 1.
    out.extend((0..n).map(|_| (rng.next() >> 40) as f32 * (1.0 / (1u32 << 24) as f32)));
    Ok(out)
}

/// `n` values from the standard normal distribution (Box–Muller in f64).
pub(crate) fn normal(op: &'static str, seed: u64, n: usize) -> Result<Vec<f32>> {
    let mut rng = SplitMix64(seed);
    let mut out = room(op, n)?;
    while out.len() < n {
        let u1 = 1.0 - rng.next_f64(); // in (0, 1], so ln is finite
        let u2 = rng.next_f64();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        out.push((r * t.cos()) as f32);
        if out.len() < n {
            out.push((r * t.sin()) as f32);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn normal_has_unit_moments() {
        let v = super::normal("test", 7, 100_000).unwrap();
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
        let var = v
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / v.len() as f64;
        assert!(mean.abs() < 0.02, "{mean}");
        assert!((var - 1.0).abs() < 0.02, "{var}");
    }

    #[test]
    fn uniform_is_in_range_and_seeded() {
        let u = |seed| super::uniform("test", seed, 1000).unwrap();
        let a = u(1);
        assert!(a.iter().all(|&x| (0.0..1.0).contains(&x)));
        assert_eq!(a, u(1));
        assert_ne!(a, u(2));
    }
}
