//! The pure helpers of the op table: test values, comparison, f64 math and index arithmetic.
//! No devices here, so the browser's op table (crates/kiln-web) includes this file too.
#![allow(dead_code)]

/// A deterministic stream of test values (not kiln's RNG, so the tests do not trust it).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next_u32(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * (self.next_u32() as f32 / (1u64 << 31) as f32)
    }

    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }

    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.next_u32() as usize % xs.len()]
    }
}

/// |x - y| <= atol + rtol * |ref|, NaN where the reference is NaN, exact infinities.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    if let Err(e) = check_close(what, got, want, atol, rtol) {
        panic!("{e}");
    }
}

/// [`assert_close`] as a value: the first element outside the tolerance, described.
pub fn check_close(
    what: &str,
    got: &[f32],
    want: &[f64],
    atol: f64,
    rtol: f64,
) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: length {} where the reference has {}",
            got.len(),
            want.len()
        ));
    }
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = f64::from(g);
        if w.is_nan() {
            if !g.is_nan() {
                return Err(format!("{what}[{i}]: got {g}, want NaN"));
            }
            continue;
        }
        if w.is_infinite() || (w.abs() > f64::from(f32::MAX)) {
            let inf = w.signum() * f64::INFINITY;
            if g != inf {
                return Err(format!("{what}[{i}]: got {g}, want {w} ({inf} in f32)"));
            }
            continue;
        }
        let err = (g - w).abs();
        let tol = atol + rtol * w.abs();
        if err.is_nan() || err > tol {
            return Err(format!(
                "{what}[{i}]: got {g}, want {w} (error {err:.3e} > tolerance {tol:.3e})"
            ));
        }
    }
    Ok(())
}

/// erf in f64: Taylor series below 3, continued fraction for erfc above (error < 1e-13).
pub fn erf(x: f64) -> f64 {
    let a = x.abs();
    let r = if a < 3.0 {
        let mut term = a;
        let mut sum = a;
        let mut n = 0.0;
        loop {
            n += 1.0;
            term *= -a * a / n;
            let add = term / (2.0 * n + 1.0);
            sum += add;
            if add.abs() <= 1e-17 * sum.abs() || n > 200.0 {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc(a) = exp(-a²)/√π · 1/(a + 1/2/(a + 1/(a + 3/2/(a + ...)))), evaluated bottom-up.
        let mut f = 0.0;
        for k in (1..60).rev() {
            f = (k as f64 / 2.0) / (a + f);
        }
        1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + f)
    };
    if x < 0.0 { -r } else { r }
}

/// Row-major strides.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// numpy broadcast of two shapes, or None.
pub fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    let get = |s: &[usize], i: usize| {
        if i + s.len() >= r {
            s[i + s.len() - r]
        } else {
            1
        }
    };
    (0..r)
        .map(|i| match (get(a, i), get(b, i)) {
            (x, y) if x == y => Some(x),
            (1, y) => Some(y),
            (x, 1) => Some(x),
            _ => None,
        })
        .collect()
}

/// Index into `shape` (broadcast to `out`) for the output multi-index `idx`.
pub fn bcast_index(shape: &[usize], out: &[usize], idx: &[usize]) -> usize {
    let st = strides(shape);
    let off = out.len() - shape.len();
    (0..shape.len())
        .map(|i| {
            if shape[i] == 1 {
                0
            } else {
                idx[i + off] * st[i]
            }
        })
        .sum()
}

/// Multi-index of linear index `i` in `shape`.
pub fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = i % shape[d];
        i /= shape[d];
    }
    idx
}
