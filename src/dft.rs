//! The discrete Fourier transform's coefficients, shared by the CPU's FFT (for rows it sums
//! term by term) and the tensor layer's product with the coefficient matrix.

use std::f64::consts::PI;

/// `e^{-2πi·tk/n}` as (re, im) in f32, computed in f64 from `tk mod n` (exact for any `t`, `k`).
pub(crate) fn coefficient(t: usize, k: usize, n: usize) -> (f32, f32) {
    let theta = 2.0 * PI * ((t * k) % n) as f64 / n as f64;
    (theta.cos() as f32, -theta.sin() as f32)
}
