//! The real discrete Fourier transform by FFT (rustfft's planner: mixed radix, Rader and
//! Bluestein for primes, AVX where the CPU has it), row by row over the worker pool.

use super::{alloc, par_chunks_mut};
use crate::error::Result;
use rustfft::num_complex::Complex32;
use rustfft::{Fft, FftPlanner};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The planner and the transforms it made, by length.
type Plans = (FftPlanner<f32>, HashMap<usize, Arc<dyn Fft<f32>>>);

/// The forward transform of `n` points, planned once per length for the process.
fn plan(n: usize) -> Arc<dyn Fft<f32>> {
    static PLANS: OnceLock<Mutex<Plans>> = OnceLock::new();
    let plans = PLANS.get_or_init(|| Mutex::new((FftPlanner::new(), HashMap::new())));
    let mut guard = plans.lock().unwrap_or_else(|e| e.into_inner());
    let (planner, kept) = &mut *guard;
    kept.entry(n)
        .or_insert_with(|| planner.plan_fft_forward(n))
        .clone()
}

thread_local! {
    /// The calling thread's signal and scratch buffers.
    static BUFFERS: RefCell<(Vec<Complex32>, Vec<Complex32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Each of the `rows` rows of `len ≤ n` values of `x`, zero-padded to `n`, transformed:
/// `[rows, n/2 + 1, 2]`, bins 0..=n/2 (the others mirror them), real then imaginary part.
pub(crate) fn rfft(x: &[f32], rows: usize, len: usize, n: usize) -> Result<Vec<f32>> {
    let bins = n / 2 + 1;
    let mut out = alloc("rfft", rows * bins * 2)?;
    if rows == 0 {
        return Ok(out);
    }
    let fft = plan(n);
    let work = n * (usize::BITS - n.leading_zeros()) as usize;
    par_chunks_mut(&mut out, bins * 2, work, &|r, o| {
        let row = &x[r * len..(r + 1) * len];
        if row.iter().any(|v| !v.is_finite()) {
            // Term by term, as a GPU's product with the coefficients sums it, so that the
            // same bins come out NaN (inf · 0, inf − inf) and infinite: an FFT's butterflies
            // would mix the infinities into other bins.
            for (k, pair) in o.chunks_exact_mut(2).enumerate() {
                let (mut re, mut im) = (0f32, 0f32);
                for (t, &v) in row.iter().enumerate() {
                    let (c, s) = crate::dft::coefficient(t, k, n);
                    re += v * c;
                    im += v * s;
                }
                pair[0] = re;
                pair[1] = im;
            }
            return;
        }
        BUFFERS.with_borrow_mut(|(signal, scratch)| {
            signal.clear();
            signal.extend(row.iter().map(|&v| Complex32::new(v, 0.0)));
            signal.resize(n, Complex32::new(0.0, 0.0));
            scratch.resize(fft.get_inplace_scratch_len(), Complex32::new(0.0, 0.0));
            fft.process_with_scratch(signal, scratch);
            for (pair, z) in o.chunks_exact_mut(2).zip(signal.iter()) {
                pair[0] = z.re;
                pair[1] = z.im;
            }
        });
    });
    Ok(out)
}
