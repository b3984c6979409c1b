//! The op table's rotary position embedding.

use super::*;
use kiln::{Device, Error, RopeLayout, Tensor};

/// The rope entries of the op table: both pair layouts.
pub fn table() -> Vec<OpInfo> {
    vec![
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "rope(adjacent)",
            grad: || Grad::wrt(ONE),
            samples: rope_samples,
            run: |t| t[0].rope(&t[1], &t[2], RopeLayout::Adjacent),
            reference: |r| rope_ref(r, false),
            tol: |_| (1e-5, 1e-5),
            errors: rope_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "rope(halves)",
            grad: || Grad::wrt(ONE),
            samples: rope_samples,
            run: |t| t[0].rope(&t[1], &t[2], RopeLayout::Halves),
            reference: |r| rope_ref(r, true),
            tol: |_| (1e-5, 1e-5),
            errors: no_errors,
        },
    ]
}

/// x `[..., t, heads, d]` with tables `[t, half]`: whole rows rotated, part of a row (2·half <
/// d), several batches, one head, no rotation at all, and no positions.
pub fn rope_samples() -> Vec<Sample> {
    let mut rng = Lcg(170);
    let cases: &[(&[usize], usize)] = &[
        (&[1, 3, 2, 8], 4),
        (&[2, 4, 3, 6], 2),
        (&[5, 1, 4], 2),
        (&[2, 1, 2, 10], 0),
        (&[1, 0, 2, 4], 2),
    ];
    cases
        .iter()
        .map(|&(x, half)| {
            let t = x[x.len() - 3];
            let n: usize = x.iter().product();
            Sample {
                inputs: vec![
                    (x.to_vec(), rng.vec(n, -2.0, 2.0)),
                    (vec![t, half], rng.vec(t * half, -1.0, 1.0)),
                    (vec![t, half], rng.vec(t * half, -1.0, 1.0)),
                ],
            }
        })
        .collect()
}

/// RoPE in f64: pair p of a row at position i is `(a, b)` → `(a·c − b·s, a·s + b·c)`.
pub fn rope_ref(r: &[Ref], halves: bool) -> Ref {
    let (x, c, s) = (&r[0], &r[1], &r[2]);
    let rank = x.shape.len();
    let (t, heads, d) = (x.shape[rank - 3], x.shape[rank - 2], x.shape[rank - 1]);
    let half = c.shape[1];
    let mut data = x.data.clone();
    for (row, out) in data.chunks_exact_mut(d.max(1)).enumerate() {
        let i = row / heads % t;
        let src = &x.data[row * d..(row + 1) * d];
        for p in 0..half {
            let (ja, jb) = if halves {
                (p, p + half)
            } else {
                (2 * p, 2 * p + 1)
            };
            let (cv, sv) = (c.data[i * half + p], s.data[i * half + p]);
            out[ja] = src[ja] * cv - src[jb] * sv;
            out[jb] = src[ja] * sv + src[jb] * cv;
        }
    }
    Ref {
        shape: x.shape.clone(),
        data,
    }
}

fn rope_errors(d: &Device) -> Vec<ErrorCase> {
    let t = |s: &[usize]| Tensor::zeros(d, s).unwrap();
    let (x, c) = (t(&[3, 2, 8]), t(&[3, 4]));
    let shape = |e: &Error| matches!(e, Error::InvalidShape { op: "rope", .. });
    vec![
        (
            "x of rank 2",
            t(&[3, 8]).rope(&c, &c, RopeLayout::Adjacent),
            shape,
        ),
        (
            "tables for 2 positions of 3",
            x.rope(&t(&[2, 4]), &t(&[2, 4]), RopeLayout::Adjacent),
            shape,
        ),
        (
            "sin's shape not cos's",
            x.rope(&c, &t(&[3, 3]), RopeLayout::Halves),
            shape,
        ),
        (
            "10 rotated values of 8",
            x.rope(&t(&[3, 5]), &t(&[3, 5]), RopeLayout::Adjacent),
            shape,
        ),
        (
            "u32 x",
            Tensor::from_vec_u32(d, vec![0; 48], &[3, 2, 8])
                .unwrap()
                .rope(&c, &c, RopeLayout::Adjacent),
            |e| matches!(e, Error::DTypeMismatch { op: "rope", .. }),
        ),
        (
            "tables that require gradients",
            x.rope(&c.clone().with_grad().unwrap(), &c, RopeLayout::Adjacent),
            |e| matches!(e, Error::Unsupported { op: "rope", .. }),
        ),
    ]
}
