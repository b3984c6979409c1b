//! The real discrete Fourier transform (`rfft`).

use super::Tensor;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::shape::Shape;
use crate::storage::Kernel;
use std::sync::Mutex;

/// The most points a transform takes (2^24): beyond any signal's frame, and the coefficient
/// matrix of a composed transform is limited separately ([`MAX_MATRIX`]).
const MAX_POINTS: usize = 1 << 24;

/// The largest coefficient matrix a device without an FFT multiplies by (values).
const MAX_MATRIX: usize = 1 << 26;

impl Tensor {
    /// The real discrete Fourier transform along the last axis at `n` points, as numpy's
    /// `rfft(x, n)`: the last axis truncated to its first `n` values or zero-padded to `n`,
    /// and the output `[..., n/2 + 1, 2]` holds bins `0..=n/2`, each as its real and imaginary
    /// part (`X_k = Σ_t x_t · e^{-2πi·tk/n}`). The CPU runs an FFT (O(n log n), rustfft); a GPU
    /// multiplies by the transform's coefficient matrix (made in f64 on the host, kept for the
    /// last few shapes), as does any device when gradients are recorded (the product's). A row
    /// holding a NaN or an infinity is summed term by term on the CPU, as the product sums it,
    /// so its NaN and infinite bins are the same on every device.
    ///
    /// `n = 0` or over 2^24 is `InvalidArgument`, a scalar `InvalidShape`, a composed transform
    /// whose matrix would exceed 2^26 values `Unsupported`.
    pub fn rfft(&self, n: usize) -> Result<Tensor> {
        const OP: &str = "rfft";
        if let Some(r) = Tensor::via_f32(&[self], |t| t[0].rfft(n)) {
            return r;
        }
        self.expect(DType::F32, OP)?;
        let Some(&len) = self.shape().last() else {
            return Err(Error::InvalidShape {
                op: OP,
                reason: "a scalar has no axis to transform".into(),
            });
        };
        if n == 0 || n > MAX_POINTS {
            return Err(Error::InvalidArgument {
                op: OP,
                reason: format!("{n} points (1 to {MAX_POINTS})"),
            });
        }
        let bins = n / 2 + 1;
        let lead = &self.shape()[..self.rank() - 1];
        let rows: usize = lead.iter().product();
        let mut dims = lead.to_vec();
        dims.extend([bins, 2]);
        let m = len.min(n);
        let tracking = Tensor::tracking(&[self]);
        if (rows == 0 || m == 0) && !tracking {
            return Tensor::zeros(&self.device, &dims); // an empty sum
        }
        let x = if len > n {
            self.narrow(-1, 0, n)?
        } else {
            self.clone()
        };
        if !tracking && self.storage.takes(Kernel::Fft) {
            let storage = x.storage.rfft(rows, m, n)?;
            return Ok(self.with(storage, Shape::new(&dims)?));
        }
        if m * bins * 2 > MAX_MATRIX {
            return Err(Error::Unsupported {
                op: OP,
                reason: format!(
                    "a {n}-point transform of {m} values on this device (its matrix would hold over {MAX_MATRIX} values)"
                ),
            });
        }
        x.reshape(&[rows, m])?
            .matmul(&coefficients(self, m, n)?)?
            .reshape(&dims)
    }
}

/// The `[m, (n/2 + 1)·2]` matrix taking `m` samples to the `n`-point transform's bins (re, im),
/// on `like`'s device: kept for the last few shapes (an audio front end transforms frames of
/// one length on every call, and the matrix costs more to make than to multiply by).
fn coefficients(like: &Tensor, m: usize, n: usize) -> Result<Tensor> {
    static KEPT: Mutex<Vec<((usize, usize), Tensor)>> = Mutex::new(Vec::new());
    const KEEP: usize = 8;
    let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, t)) = kept
        .iter()
        .find(|(k, t)| *k == (m, n) && t.device().same(like.device()))
    {
        return Ok(t.clone());
    }
    let bins = n / 2 + 1;
    let mut mat = vec![0f32; m * bins * 2];
    for t in 0..m {
        for k in 0..bins {
            let (re, im) = crate::dft::coefficient(t, k, n);
            mat[(t * bins + k) * 2] = re;
            mat[(t * bins + k) * 2 + 1] = im;
        }
    }
    let t = Tensor::from_vec(like.device(), mat, &[m, bins * 2])?;
    if kept.len() == KEEP {
        kept.remove(0);
    }
    kept.push(((m, n), t.clone()));
    Ok(t)
}
