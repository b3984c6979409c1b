//! The op table's reductions along an axis and softmax.

use super::*;
use kiln::{Device, Error, Tensor};

/// The reduce entries of the op table.
pub fn table() -> Vec<OpInfo> {
    vec![
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "sum(-1)",
            grad: own,
            samples: reduce_samples_with_empty,
            run: |t| t[0].sum(-1, false),
            reference: |r| reduce_ref(&r[0], -1, false, |v| v.iter().sum()),
            tol: |r| (1e-6 * (1 + r[0].shape[r[0].shape.len() - 1]) as f64, 1e-6),
            errors: reduce_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "sum(0, keepdim)",
            grad: own,
            samples: reduce_samples_with_empty,
            run: |t| t[0].sum(0, true),
            reference: |r| reduce_ref(&r[0], 0, true, |v| v.iter().sum()),
            tol: |r| (1e-6 * (1 + r[0].shape[0]) as f64, 1e-6),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            // Rows longer than the CPU's pieces of outputs (16,384), several of them: pieces
            // cut at the rows' ends.
            name: "sum(1) and mean(1) over long rows",
            grad: own,
            samples: || shaped(&[&[2, 3, 4], &[3, 2, 20_000], &[2, 5, 16_385]], 74),
            run: |t| t[0].sum(1, false)?.add(&t[0].mean(1, false)?),
            reference: |r| {
                let s = reduce_ref(&r[0], 1, false, |v| v.iter().sum());
                let m = reduce_ref(&r[0], 1, false, mean);
                let data = s.data.iter().zip(&m.data).map(|(a, b)| a + b).collect();
                Ref {
                    shape: s.shape,
                    data,
                }
            },
            tol: |r| (1e-6 * (1 + r[0].shape[1]) as f64, 1e-6),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "mean(-1, keepdim)",
            grad: own,
            samples: reduce_samples_with_empty,
            run: |t| t[0].mean(-1, true),
            reference: |r| reduce_ref(&r[0], -1, true, mean),
            tol: |_| (1e-6, 1e-5),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "var(0)",
            grad: own,
            samples: reduce_samples_with_empty,
            run: |t| t[0].var(0, false),
            reference: |r| reduce_ref(&r[0], 0, false, var),
            tol: |_| (1e-5, 1e-5),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "max(-1)",
            grad: own,
            samples: reduce_samples,
            run: |t| t[0].max(-1, false),
            reference: |r| {
                reduce_ref(&r[0], -1, false, |v| {
                    v.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
                })
            },
            tol: |_| (0.0, 0.0),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "min(0)",
            grad: own,
            samples: reduce_samples,
            run: |t| t[0].min(0, false),
            reference: |r| {
                reduce_ref(&r[0], 0, false, |v| {
                    v.iter().cloned().fold(f64::INFINITY, f64::min)
                })
            },
            tol: |_| (0.0, 0.0),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "sum_all",
            grad: own,
            samples: reduce_samples_with_empty,
            run: |t| t[0].sum_all(),
            reference: |r| Ref {
                shape: vec![],
                data: vec![r[0].data.iter().sum()],
            },
            tol: |r| (1e-6 * (1 + r[0].data.len()) as f64, 1e-6),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "softmax(-1)",
            grad: own,
            samples: reduce_samples,
            run: |t| t[0].softmax(-1),
            reference: |r| softmax_ref(&r[0], -1, false),
            tol: |_| (1e-6, 1e-5),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "softmax(0)",
            grad: own,
            samples: reduce_samples,
            run: |t| t[0].softmax(0),
            reference: |r| softmax_ref(&r[0], 0, false),
            tol: |_| (1e-6, 1e-5),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "log_softmax(-1)",
            grad: own,
            samples: reduce_samples,
            run: |t| t[0].log_softmax(-1),
            reference: |r| softmax_ref(&r[0], -1, true),
            tol: |_| (2e-5, 1e-5),
            errors: no_errors,
        },
        // Along a middle axis with many columns (YOLOv8's box-distribution softmax: the CPU
        // splits the columns into tiles over its threads), a NaN in one column.
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "softmax(1) of wide columns",
            grad: own,
            samples: column_samples,
            run: |t| t[0].softmax(1),
            reference: |r| softmax_ref(&r[0], 1, false),
            tol: |_| (1e-6, 1e-5),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "log_softmax(1) of wide columns",
            grad: own,
            samples: column_samples,
            run: |t| t[0].log_softmax(1),
            reference: |r| softmax_ref(&r[0], 1, true),
            tol: |_| (2e-5, 1e-5),
            errors: no_errors,
        },
    ]
}

/// Softmax along axis 1 over many columns: 16 values in each of 8,400 columns (33 tiles of
/// 256), a smaller case whose third column holds a NaN, and one small enough for the gradient
/// check.
pub fn column_samples() -> Vec<Sample> {
    let mut rng = Lcg(67);
    let mut small = rng.vec(2 * 5 * 300, -3.0, 3.0);
    small[2 * 300 + 2] = f32::NAN;
    vec![
        Sample {
            inputs: vec![(vec![1, 16, 8400], rng.vec(16 * 8400, -3.0, 3.0))],
        },
        Sample {
            inputs: vec![(vec![2, 5, 300], small)],
        },
        Sample {
            inputs: vec![(vec![2, 3, 5], rng.vec(30, -3.0, 3.0))],
        },
    ]
}

/// Shapes for reductions and softmax: the reduced axis includes 1, tile edges and long rows.
pub const REDUCE_SHAPES: &[&[usize]] = &[
    &[3, 4],
    &[2, 3, 5],
    &[1, 257],
    &[257, 1],
    &[4, 1, 6],
    &[2, 300, 3],
    &[1, 1],
];

pub fn reduce_samples() -> Vec<Sample> {
    let mut rng = Lcg(66);
    let mut out: Vec<Sample> = REDUCE_SHAPES
        .iter()
        .map(|s| {
            let n = s.iter().product();
            Sample {
                inputs: vec![(s.to_vec(), rng.vec(n, -3.0, 3.0))],
            }
        })
        .collect();
    // Large values: softmax must subtract the maximum first.
    out.push(Sample {
        inputs: vec![(
            vec![2, 3],
            vec![1000.0, 1001.0, 999.0, -1000.0, -1001.0, -999.0],
        )],
    });
    out
}

/// Samples whose reduced dimensions may be empty (sum, mean, var): [0, 3] reduced along 0 or -1.
pub fn reduce_samples_with_empty() -> Vec<Sample> {
    let mut out = reduce_samples();
    out.push(Sample {
        inputs: vec![(vec![0, 3], vec![])],
    });
    out.push(Sample {
        inputs: vec![(vec![3, 0], vec![])],
    });
    out
}

/// Reference reduction of `r` along `axis` (negative counts from the end).
pub fn reduce_ref(r: &Ref, dim: isize, keepdim: bool, f: fn(&[f64]) -> f64) -> Ref {
    let mut out = along(r, dim, 1, &|row| vec![f(row)]);
    if !keepdim {
        let axis = if dim < 0 {
            (dim + r.shape.len() as isize) as usize
        } else {
            dim as usize
        };
        out.shape.remove(axis);
    }
    out
}

/// `f` applied to every row along `dim` (row → `out_len` values in the row's place).
pub fn along(r: &Ref, dim: isize, out_len: usize, f: &dyn Fn(&[f64]) -> Vec<f64>) -> Ref {
    let axis = if dim < 0 {
        (dim + r.shape.len() as isize) as usize
    } else {
        dim as usize
    };
    let outer: usize = r.shape[..axis].iter().product();
    let len = r.shape[axis];
    let inner: usize = r.shape[axis + 1..].iter().product();
    let mut data = vec![0.0; outer * out_len * inner];
    for o in 0..outer {
        for i in 0..inner {
            let row: Vec<f64> = (0..len)
                .map(|j| r.data[(o * len + j) * inner + i])
                .collect();
            for (j, v) in f(&row).into_iter().enumerate() {
                data[(o * out_len + j) * inner + i] = v;
            }
        }
    }
    let mut shape = r.shape.clone();
    shape[axis] = out_len;
    Ref { shape, data }
}

pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

pub fn var(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let m = mean(v);
    v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() as f64 - 1.0)
}

pub fn softmax_ref(r: &Ref, dim: isize, log: bool) -> Ref {
    let axis = if dim < 0 {
        (dim + r.shape.len() as isize) as usize
    } else {
        dim as usize
    };
    let len = r.shape[axis];
    let inner: usize = r.shape[axis + 1..].iter().product();
    let mut data = r.data.clone();
    for (o, block) in data.chunks_mut(len * inner).enumerate() {
        for i in 0..inner {
            let v: Vec<f64> = (0..len)
                .map(|j| r.data[o * len * inner + j * inner + i])
                .collect();
            let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = v.iter().map(|x| (x - m).exp()).sum();
            for j in 0..len {
                let d = v[j] - m;
                block[j * inner + i] = if log { d - s.ln() } else { d.exp() / s };
            }
        }
    }
    Ref {
        shape: r.shape.clone(),
        data,
    }
}

pub fn reduce_errors(d: &Device) -> Vec<ErrorCase> {
    let x = Tensor::zeros(d, &[2, 3]).unwrap();
    let e = Tensor::zeros(d, &[2, 0]).unwrap();
    vec![
        ("dim 2 of [2,3]", x.sum(2, false), |e| {
            matches!(e, Error::InvalidShape { op: "sum", .. })
        }),
        ("dim -3 of [2,3]", x.softmax(-3), |e| {
            matches!(e, Error::InvalidShape { op: "softmax", .. })
        }),
        ("max over an empty axis", e.max(1, false), |e| {
            matches!(e, Error::InvalidShape { op: "max", .. }) && e.to_string().contains("empty")
        }),
        ("min over an empty axis", e.min(-1, true), |e| {
            matches!(e, Error::InvalidShape { op: "min", .. })
        }),
    ]
}
