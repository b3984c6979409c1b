//! The op table's layout ops: transpose, permute, narrow, cat, broadcast_to.

use super::*;
use kiln::{Device, Error, Tensor};

/// The layout entries of the op table.
pub fn table() -> Vec<OpInfo> {
    vec![
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "pad([(1, 2), (-1, 3)], 0.5)",
            grad: own,
            samples: || shaped(&[&[3, 4], &[2, 5], &[1, 1], &[4, 257], &[3, 2]], 69),
            run: |t| t[0].pad(&[(1, 2), (-1, 3)], 0.5),
            reference: |r| pad_ref(&r[0], &[(1, 2), (-1, 3)], 0.5),
            tol: |_| (0.0, 0.0),
            errors: pad_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "pad([(0, 0), (2, -1), (-1, 1)], -3)",
            grad: own,
            samples: || shaped(&[&[2, 3, 4], &[1, 2, 3], &[3, 6, 2]], 68),
            run: |t| t[0].pad(&[(0, 0), (2, -1), (-1, 1)], -3.0),
            reference: |r| pad_ref(&r[0], &[(0, 0), (2, -1), (-1, 1)], -3.0),
            tol: |_| (0.0, 0.0),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "transpose(0, -1)",
            grad: own,
            samples: || {
                shaped(
                    &[
                        &[3, 4],
                        &[2, 3, 5],
                        &[1, 257],
                        &[0, 3],
                        &[5],
                        &[2, 3, 4, 5],
                        &[17, 1, 33],
                        // The CPU's tiled transpose: ragged tiles of 32 both ways.
                        &[40, 70],
                        &[9, 2, 37],
                    ],
                    70,
                )
            },
            run: |t| t[0].transpose(0, -1),
            reference: |r| {
                let mut perm: Vec<usize> = (0..r[0].shape.len()).collect();
                let last = perm.len() - 1;
                perm.swap(0, last);
                permute_ref(&r[0], &perm)
            },
            tol: |_| (0.0, 0.0),
            errors: layout_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "permute([2, 0, 1])",
            grad: own,
            samples: || {
                shaped(
                    &[
                        &[2, 3, 5],
                        &[1, 4, 1],
                        &[3, 0, 2],
                        &[7, 1, 33],
                        &[16, 17, 15],
                        &[33, 9, 41],
                    ],
                    71,
                )
            },
            run: |t| t[0].permute(&[2, 0, 1]),
            reference: |r| permute_ref(&r[0], &[2, 0, 1]),
            tol: |_| (0.0, 0.0),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "narrow(-1, 1, 2)",
            grad: own,
            samples: || {
                shaped(
                    &[
                        &[3, 4],
                        &[2, 3, 5],
                        &[1, 257],
                        &[4, 1, 6],
                        &[2, 300, 3],
                        &[0, 3],
                    ],
                    72,
                )
            },
            run: |t| t[0].narrow(-1, 1, 2),
            reference: |r| narrow_ref(&r[0], r[0].shape.len() - 1, 1, 2),
            tol: |_| (0.0, 0.0),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "narrow(0, 1, 1)",
            grad: own,
            samples: || shaped(&[&[3, 4], &[2, 3, 5], &[2, 300, 3], &[4, 0]], 73),
            run: |t| t[0].narrow(0, 1, 1),
            reference: |r| narrow_ref(&r[0], 0, 1, 1),
            tol: |_| (0.0, 0.0),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            // Two views of one buffer read by one fused program (a SwiGLU after a product
            // with the gate's and up's rows stacked): offsets inside the buffer, odd widths.
            name: "silu(narrow(-1, 0, h)) * narrow(-1, h, h)",
            grad: own,
            samples: || {
                shaped(
                    &[
                        &[3, 4],
                        &[2, 3, 10],
                        &[1, 514],
                        &[5, 2],
                        &[2, 300, 6],
                        &[0, 8],
                    ],
                    1075,
                )
            },
            run: |t| {
                let h = t[0].shape()[t[0].rank() - 1] / 2;
                t[0].narrow(-1, 0, h)?.silu()?.mul(&t[0].narrow(-1, h, h)?)
            },
            reference: |r| {
                let (axis, h) = (r[0].shape.len() - 1, r[0].shape[r[0].shape.len() - 1] / 2);
                let (a, b) = (narrow_ref(&r[0], axis, 0, h), narrow_ref(&r[0], axis, h, h));
                let data = (a.data.iter().zip(&b.data))
                    .map(|(&x, &y)| x * sigmoid(x) * y)
                    .collect();
                Ref {
                    shape: a.shape,
                    data,
                }
            },
            tol: |_| (2e-6, 2e-6),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "cat(0)",
            grad: || Grad::wrt(TWO),
            samples: || {
                pairs(
                    &[
                        (&[2, 3], &[4, 3]),
                        (&[0, 3], &[2, 3]),
                        (&[1, 5, 2], &[3, 5, 2]),
                        (&[257], &[1]),
                    ],
                    74,
                )
            },
            run: |t| Tensor::cat(&[&t[0], &t[1]], 0),
            reference: |r| cat_ref(&r[0], &r[1], 0),
            tol: |_| (0.0, 0.0),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "cat(-1)",
            grad: || Grad::wrt(TWO),
            samples: || {
                pairs(
                    &[
                        (&[2, 3], &[2, 1]),
                        (&[2, 3, 4], &[2, 3, 0]),
                        (&[3, 17], &[3, 16]),
                    ],
                    75,
                )
            },
            run: |t| Tensor::cat(&[&t[0], &t[1]], -1),
            reference: |r| cat_ref(&r[0], &r[1], r[0].shape.len() - 1),
            tol: |_| (0.0, 0.0),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "broadcast_to",
            grad: own,
            // The second input only carries the target shape.
            samples: || {
                pairs(
                    &[
                        (&[3], &[2, 3]),
                        (&[2, 1], &[2, 5]),
                        (&[1, 4, 1], &[3, 4, 2]),
                        (&[], &[2, 2]),
                        (&[5], &[0, 5]),
                        (&[2, 3], &[2, 3]),
                    ],
                    140,
                )
            },
            run: |t| t[0].broadcast_to(t[1].shape()),
            reference: |r| {
                let out = r[1].shape.clone();
                let n = out.iter().product();
                let data = (0..n)
                    .map(|i| r[0].data[bcast_index(&r[0].shape, &out, &unravel(i, &out))])
                    .collect();
                Ref { shape: out, data }
            },
            tol: |_| (0.0, 0.0),
            errors: |d| {
                let x = Tensor::zeros(d, &[2, 3]).unwrap();
                vec![
                    ("[2, 3] to [3, 3]", x.broadcast_to(&[3, 3]), |e| {
                        matches!(
                            e,
                            Error::ShapeMismatch {
                                op: "broadcast_to",
                                ..
                            }
                        )
                    }),
                    ("[2, 3] to [3]", x.broadcast_to(&[3]), |e| {
                        matches!(
                            e,
                            Error::ShapeMismatch {
                                op: "broadcast_to",
                                ..
                            }
                        )
                    }),
                ]
            },
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "broadcast_to of a computed value",
            grad: own,
            // One value still being computed (a fused program) repeated: it extends that program.
            samples: || {
                pairs(
                    &[
                        (&[], &[2, 3]),
                        (&[1, 1], &[4, 1, 3]),
                        (&[1], &[0]),
                        (&[2, 1], &[2, 3]),
                    ],
                    72,
                )
            },
            run: |t| t[0].mul_scalar(0.5)?.exp()?.broadcast_to(t[1].shape()),
            reference: |r| {
                let x = map_ref(&r[0], |v| (0.5 * v).exp());
                let out = r[1].shape.clone();
                let n = out.iter().product();
                let data = (0..n)
                    .map(|i| x.data[bcast_index(&x.shape, &out, &unravel(i, &out))])
                    .collect();
                Ref { shape: out, data }
            },
            tol: |_| (1e-6, 1e-6),
            errors: no_errors,
        },
    ]
}

/// Reference permute: output dimension i is input dimension perm[i].
pub fn permute_ref(r: &Ref, perm: &[usize]) -> Ref {
    let shape: Vec<usize> = perm.iter().map(|&d| r.shape[d]).collect();
    let st = strides(&r.shape);
    let n = shape.iter().product();
    let data = (0..n)
        .map(|i| {
            let idx = unravel(i, &shape);
            r.data[perm
                .iter()
                .enumerate()
                .map(|(o, &d)| idx[o] * st[d])
                .sum::<usize>()]
        })
        .collect();
    Ref { shape, data }
}

/// Reference narrow along `axis` (non-negative).
pub fn narrow_ref(r: &Ref, axis: usize, start: usize, len: usize) -> Ref {
    let mut shape = r.shape.clone();
    shape[axis] = len;
    let st = strides(&r.shape);
    let n = shape.iter().product();
    let data = (0..n)
        .map(|i| {
            let mut idx = unravel(i, &shape);
            idx[axis] += start;
            r.data[idx.iter().zip(&st).map(|(a, b)| a * b).sum::<usize>()]
        })
        .collect();
    Ref { shape, data }
}

/// Reference concatenation of two tensors along `axis` (non-negative).
pub fn cat_ref(a: &Ref, b: &Ref, axis: usize) -> Ref {
    let mut shape = a.shape.clone();
    shape[axis] += b.shape[axis];
    let n = shape.iter().product();
    let data = (0..n)
        .map(|i| {
            let mut idx = unravel(i, &shape);
            let (src, st) = if idx[axis] < a.shape[axis] {
                (a, strides(&a.shape))
            } else {
                idx[axis] -= a.shape[axis];
                (b, strides(&b.shape))
            };
            src.data[idx.iter().zip(&st).map(|(x, y)| x * y).sum::<usize>()]
        })
        .collect();
    Ref { shape, data }
}

pub fn layout_errors(d: &Device) -> Vec<ErrorCase> {
    let x = Tensor::zeros(d, &[2, 3]).unwrap();
    let y = Tensor::zeros(d, &[3, 3]).unwrap();
    vec![
        ("permute [0,0]", x.permute(&[0, 0]), |e| {
            matches!(e, Error::InvalidShape { op: "permute", .. })
        }),
        ("permute [1]", x.permute(&[1]), |e| {
            matches!(e, Error::InvalidShape { op: "permute", .. })
        }),
        ("transpose dim 2", x.transpose(0, 2), |e| {
            matches!(
                e,
                Error::InvalidShape {
                    op: "transpose",
                    ..
                }
            )
        }),
        ("narrow past the end", x.narrow(1, 2, 2), |e| {
            matches!(e, Error::InvalidShape { op: "narrow", .. })
                && e.to_string().contains("outside")
        }),
        (
            "cat [2,3] and [3,3] along 1",
            Tensor::cat(&[&x, &y], 1),
            |e| matches!(e, Error::ShapeMismatch { op: "cat", .. }),
        ),
        ("cat of nothing", Tensor::cat(&[], 0), |e| {
            matches!(e, Error::InvalidShape { op: "cat", .. })
        }),
    ]
}

/// Constant padding (negative: cropping) of `r`, element by element.
pub fn pad_ref(r: &Ref, pads: &[(isize, isize)], value: f64) -> Ref {
    let shape: Vec<usize> = r
        .shape
        .iter()
        .zip(pads)
        .map(|(&n, &(b, a))| (n as isize + b + a) as usize)
        .collect();
    let n: usize = shape.iter().product();
    let src_strides = strides(&r.shape);
    let data = (0..n)
        .map(|i| {
            let idx = unravel(i, &shape);
            let mut at = 0;
            for (d, &o) in idx.iter().enumerate() {
                let s = o as isize - pads[d].0;
                if s < 0 || s >= r.shape[d] as isize {
                    return value;
                }
                at += s as usize * src_strides[d];
            }
            r.data[at]
        })
        .collect();
    Ref { shape, data }
}

fn pad_errors(d: &Device) -> Vec<ErrorCase> {
    let x = Tensor::zeros(d, &[2, 3]).unwrap();
    let u = Tensor::from_vec_u32(d, vec![1, 2], &[2]).unwrap();
    vec![
        ("one pair for a matrix", x.pad(&[(1, 1)], 0.0), |e| {
            matches!(e, Error::InvalidArgument { op: "pad", .. })
        }),
        (
            "a crop past the extent",
            x.pad(&[(0, 0), (-2, -2)], 0.0),
            |e| matches!(e, Error::InvalidArgument { op: "pad", .. }),
        ),
        ("a u32 tensor", u.pad(&[(1, 0)], 0.0), |e| {
            matches!(e, Error::DTypeMismatch { op: "pad", .. })
        }),
    ]
}
