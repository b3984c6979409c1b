//! The op table's real Fourier transform.

use super::*;
use kiln::{Device, Error, Tensor};

/// The rfft entries: a power of two, a mixed-radix length (Whisper's 400), an odd prime, and
/// one transform that both truncates and pads (12 points of rows of 20, of 5).
pub fn table() -> Vec<OpInfo> {
    vec![
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "rfft(8)",
            grad: || Grad::wrt(ONE),
            samples: || fft_samples(&[&[3, 8], &[2, 2, 5], &[1, 1], &[0, 8], &[4, 0]]),
            run: |t| t[0].rfft(8),
            reference: |r| rfft_ref(&r[0], 8),
            tol: |r| tol(r),
            errors: rfft_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "rfft(400)",
            grad: || Grad::wrt(ONE),
            samples: || fft_samples(&[&[3, 400], &[2, 250]]),
            run: |t| t[0].rfft(400),
            reference: |r| rfft_ref(&r[0], 400),
            tol: |r| tol(r),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "rfft(13)",
            grad: || Grad::wrt(ONE),
            samples: || fft_samples(&[&[2, 13], &[3, 2, 9]]),
            run: |t| t[0].rfft(13),
            reference: |r| rfft_ref(&r[0], 13),
            tol: |r| tol(r),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "rfft(12) truncating and padding",
            grad: || Grad::wrt(ONE),
            samples: || fft_samples(&[&[2, 20], &[3, 5]]),
            run: |t| t[0].rfft(12),
            reference: |r| rfft_ref(&r[0], 12),
            tol: |r| tol(r),
            errors: no_errors,
        },
    ]
}

/// Sums of up to `len` terms of magnitude ≤ 2.
fn tol(r: &[Ref]) -> (f64, f64) {
    let len = r[0].shape.last().copied().unwrap_or(1).max(1);
    (2e-6 * len as f64, 1e-5)
}

fn fft_samples(shapes: &[&[usize]]) -> Vec<Sample> {
    let mut rng = Lcg(180);
    let mut out: Vec<Sample> = shapes
        .iter()
        .map(|s| {
            let n = s.iter().product();
            Sample {
                inputs: vec![(s.to_vec(), rng.vec(n, -2.0, 2.0))],
            }
        })
        .collect();
    // A NaN poisons every bin of its row, and only its row.
    if shapes[0] == [3, 8] {
        let mut v = rng.vec(16, -2.0, 2.0);
        v[3] = f32::NAN;
        out.push(Sample {
            inputs: vec![(vec![2, 8], v)],
        });
    }
    out
}

/// numpy's `rfft(x, n)` along the last axis in f64: `[..., n/2 + 1, 2]`.
pub fn rfft_ref(x: &Ref, n: usize) -> Ref {
    let len = *x.shape.last().unwrap();
    let rows: usize = x.shape[..x.shape.len() - 1].iter().product();
    let bins = n / 2 + 1;
    let mut data = vec![0.0; rows * bins * 2];
    for r in 0..rows {
        for k in 0..bins {
            let (mut re, mut im) = (0.0, 0.0);
            for t in 0..len.min(n) {
                let theta = 2.0 * std::f64::consts::PI * ((t * k) % n) as f64 / n as f64;
                re += x.data[r * len + t] * theta.cos();
                im -= x.data[r * len + t] * theta.sin();
            }
            data[(r * bins + k) * 2] = re;
            data[(r * bins + k) * 2 + 1] = im;
        }
    }
    let mut shape = x.shape[..x.shape.len() - 1].to_vec();
    shape.extend([bins, 2]);
    Ref { shape, data }
}

fn rfft_errors(d: &Device) -> Vec<ErrorCase> {
    let x = Tensor::zeros(d, &[2, 8]).unwrap();
    vec![
        ("0 points", x.rfft(0), |e| {
            matches!(e, Error::InvalidArgument { op: "rfft", .. })
        }),
        ("2^24 + 1 points", x.rfft((1 << 24) + 1), |e| {
            matches!(e, Error::InvalidArgument { op: "rfft", .. })
        }),
        (
            "a scalar",
            Tensor::full(d, &[], 1.0).unwrap().rfft(4),
            |e| matches!(e, Error::InvalidShape { op: "rfft", .. }),
        ),
        (
            "u32 values",
            Tensor::from_vec_u32(d, vec![1, 2], &[2]).unwrap().rfft(4),
            |e| matches!(e, Error::DTypeMismatch { op: "rfft", .. }),
        ),
    ]
}
