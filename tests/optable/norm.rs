//! The op table's layer_norm and rms_norm.

use super::*;
use kiln::{Device, Error, Tensor};

/// The norm entries of the op table.
pub fn table() -> Vec<OpInfo> {
    vec![
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "layer_norm(w, b)",
            grad: || Grad::wrt(THREE),
            samples: norm_samples,
            run: |t| t[0].layer_norm(Some(&t[1]), Some(&t[2]), 1e-5),
            reference: |r| norm_ref(r, 1e-5, false, true),
            tol: |_| (1e-5, 1e-5),
            errors: norm_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "layer_norm",
            grad: || Grad::wrt(THREE),
            samples: norm_samples,
            run: |t| t[0].layer_norm(None, None, 1e-3),
            reference: |r| norm_ref(r, 1e-3, false, false),
            tol: |_| (1e-5, 1e-5),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "rms_norm(w)",
            grad: || Grad::wrt(THREE),
            samples: norm_samples,
            run: |t| t[0].rms_norm(Some(&t[1]), 1e-6),
            reference: |r| norm_ref(r, 1e-6, true, true),
            tol: |_| (1e-5, 1e-5),
            errors: no_errors,
        },
    ]
}

pub fn norm_samples() -> Vec<Sample> {
    let mut rng = Lcg(80);
    let shapes: &[&[usize]] = &[
        &[3, 4],
        &[2, 3, 5],
        &[1, 257],
        &[4, 1],
        &[0, 6],
        &[5, 0],
        &[7],
    ];
    shapes
        .iter()
        .map(|s| {
            let n = s.iter().product();
            let l = *s.last().unwrap();
            Sample {
                inputs: vec![
                    (s.to_vec(), rng.vec(n, -3.0, 3.0)),
                    (vec![l], rng.vec(l, 0.5, 1.5)),
                    (vec![l], rng.vec(l, -1.0, 1.0)),
                ],
            }
        })
        .collect()
}

pub fn norm_ref(r: &[Ref], eps: f64, rms: bool, affine: bool) -> Ref {
    let (x, w, b) = (&r[0], &r[1], &r[2]);
    let l = *x.shape.last().unwrap();
    let mut data = x.data.clone();
    if l > 0 {
        for row in data.chunks_mut(l) {
            let mean = if rms {
                0.0
            } else {
                row.iter().sum::<f64>() / l as f64
            };
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / l as f64;
            for (j, v) in row.iter_mut().enumerate() {
                *v = (*v - mean) / (var + eps).sqrt();
                if affine {
                    *v = *v * w.data[j] + if rms { 0.0 } else { b.data[j] };
                }
            }
        }
    }
    Ref {
        shape: x.shape.clone(),
        data,
    }
}

pub fn norm_errors(d: &Device) -> Vec<ErrorCase> {
    let x = Tensor::zeros(d, &[2, 3]).unwrap();
    let w = Tensor::zeros(d, &[2]).unwrap();
    let s = Tensor::zeros(d, &[]).unwrap();
    vec![
        (
            "weight [2] for rows of 3",
            x.layer_norm(Some(&w), None, 1e-5),
            |e| {
                matches!(
                    e,
                    Error::ShapeMismatch {
                        op: "layer_norm",
                        ..
                    }
                )
            },
        ),
        ("negative eps", x.rms_norm(None, -1.0), |e| {
            matches!(e, Error::InvalidArgument { op: "rms_norm", .. })
        }),
        ("a scalar", s.layer_norm(None, None, 1e-5), |e| {
            matches!(
                e,
                Error::InvalidShape {
                    op: "layer_norm",
                    ..
                }
            )
        }),
    ]
}
