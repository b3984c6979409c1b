//! The op table's walks along one axis: cumsum and topk.

use super::*;
use kiln::{Device, Error, Tensor};

/// The scan entries of the op table.
pub fn table() -> Vec<OpInfo> {
    vec![
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "cumsum(-1)",
            grad: own,
            samples: reduce_samples,
            run: |t| t[0].cumsum(-1, false, false),
            reference: |r| cumsum_ref(&r[0], -1, false, false),
            tol: |r| (2e-6 * (1 + r[0].data.len()) as f64, 1e-5),
            errors: scan_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "cumsum(0, exclusive, reverse)",
            grad: own,
            samples: reduce_samples,
            run: |t| t[0].cumsum(0, true, true),
            reference: |r| cumsum_ref(&r[0], 0, true, true),
            tol: |r| (2e-6 * (1 + r[0].data.len()) as f64, 1e-5),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "topk(2, -1) values",
            grad: own,
            samples: topk_samples,
            run: |t| Ok(t[0].topk(2, -1, true)?.0),
            reference: |r| topk_ref(&r[0], 2, -1, true).0,
            tol: |_| (0.0, 0.0),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "topk(1, 0, smallest) values",
            grad: own,
            samples: topk_samples,
            run: |t| Ok(t[0].topk(1, 0, false)?.0),
            reference: |r| topk_ref(&r[0], 1, 0, false).0,
            tol: |_| (0.0, 0.0),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "topk(3, -1) indices, ties and NaN",
            grad: || Grad::NoGrad("integer output"),
            samples: topk_tie_samples,
            run: |t| Ok(t[0].topk(3, -1, true)?.1),
            reference: |r| topk_ref(&r[0], 3, -1, true).1,
            tol: |_| (0.0, 0.0),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "topk(2, 1, smallest) indices, ties and NaN",
            grad: || Grad::NoGrad("integer output"),
            samples: topk_tie_samples,
            run: |t| Ok(t[0].topk(2, 1, false)?.1),
            reference: |r| topk_ref(&r[0], 2, 1, false).1,
            tol: |_| (0.0, 0.0),
            errors: no_errors,
        },
    ]
}

pub fn cumsum_ref(r: &Ref, dim: isize, exclusive: bool, reverse: bool) -> Ref {
    let axis = if dim < 0 {
        r.shape.len() - 1
    } else {
        dim as usize
    };
    along(r, dim, r.shape[axis], &|row| {
        let n = row.len();
        let mut out = vec![0.0; n];
        let mut acc = 0.0;
        for t in 0..n {
            let j = if reverse { n - 1 - t } else { t };
            if exclusive {
                out[j] = acc;
                acc += row[j];
            } else {
                acc += row[j];
                out[j] = acc;
            }
        }
        out
    })
}

/// (values, indices) of the `k` first along `dim`: larger (or smaller) first, NaN the
/// largest, ties by the lower index.
pub fn topk_ref(r: &Ref, k: usize, dim: isize, largest: bool) -> (Ref, Ref) {
    let order = move |row: &[f64]| {
        let mut idx: Vec<usize> = (0..row.len()).collect();
        idx.sort_by(|&p, &q| {
            let (a, b) = (row[p], row[q]);
            let c = a
                .partial_cmp(&b)
                .unwrap_or_else(|| a.is_nan().cmp(&b.is_nan()));
            if largest { c.reverse() } else { c }
        });
        idx.truncate(k);
        idx
    };
    let values = along(r, dim, k, &|row| {
        order(row).iter().map(|&j| row[j]).collect()
    });
    let indices = along(r, dim, k, &|row| {
        order(row).iter().map(|&j| j as f64).collect()
    });
    (values, indices)
}

/// Distinct random values (no ties, so finite differences see one pick).
pub fn topk_samples() -> Vec<Sample> {
    shaped(&[&[3, 4], &[2, 3, 5], &[4, 1, 6], &[2, 300]], 140)
}

/// Rows with ties and NaN.
pub fn topk_tie_samples() -> Vec<Sample> {
    let nan = f32::NAN;
    vec![
        Sample {
            inputs: vec![(
                vec![3, 5],
                vec![
                    1.0, 3.0, 3.0, 0.0, 3.0, //
                    -1.0, nan, 2.0, nan, -1.0, //
                    0.0, -0.0, 0.0, 5.0, -2.0,
                ],
            )],
        },
        Sample {
            inputs: vec![(vec![2, 3, 4], (0..24).map(|i| (i % 3) as f32).collect())],
        },
    ]
}

fn scan_errors(d: &Device) -> Vec<ErrorCase> {
    let x = Tensor::zeros(d, &[2, 3]).unwrap();
    let u = Tensor::from_vec_u32(d, vec![1, 2], &[2]).unwrap();
    vec![
        (
            "topk with k larger than the axis",
            x.topk(4, 1, true).map(|p| p.0),
            |e| matches!(e, Error::InvalidArgument { op: "topk", .. }),
        ),
        ("cumsum of a u32 tensor", u.cumsum(0, false, false), |e| {
            matches!(e, Error::DTypeMismatch { op: "cumsum", .. })
        }),
        (
            "cumsum along a missing axis",
            x.cumsum(2, false, false),
            |e| matches!(e, Error::InvalidShape { op: "cumsum", .. }),
        ),
    ]
}
