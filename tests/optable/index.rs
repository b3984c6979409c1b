//! The op table's argmax, index_select, index_copy, gather and embedding (u32 tensors).

use super::*;
use kiln::{Device, Error, Tensor};

/// The index entries of the op table.
pub fn table() -> Vec<OpInfo> {
    vec![
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "argmax(-1)",
            grad: || Grad::NoGrad("integer output"),
            samples: argmax_samples,
            run: |t| t[0].argmax(-1, false),
            reference: |r| argmax_ref(&r[0], -1, false),
            tol: |_| (0.0, 0.0),
            errors: index_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "argmax(0, keepdim)",
            grad: || Grad::NoGrad("integer output"),
            samples: argmax_samples,
            run: |t| t[0].argmax(0, true),
            reference: |r| argmax_ref(&r[0], 0, true),
            tol: |_| (0.0, 0.0),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[1],
            packed_inputs: &[],
            name: "index_select(0)",
            grad: own,
            samples: || index_samples(0),
            run: |t| t[0].index_select(0, &t[1]),
            reference: |r| index_ref(r, 0),
            tol: |_| (0.0, 0.0),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[1],
            packed_inputs: &[],
            name: "index_select(1)",
            grad: own,
            samples: || index_samples(1),
            run: |t| t[0].index_select(1, &t[1]),
            reference: |r| index_ref(r, 1),
            tol: |_| (0.0, 0.0),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[1],
            packed_inputs: &[],
            name: "index_copy(1)",
            grad: || Grad::NoGrad("an in-place write"),
            samples: || copy_samples(1),
            run: |t| {
                // A clone shares the input's values: the write copies them first, so the
                // table's input keeps its own.
                let mut out = t[0].clone();
                out.index_copy(1, &t[1], &t[2])?;
                Ok(out)
            },
            reference: |r| copy_ref(r, 1),
            tol: |_| (0.0, 0.0),
            errors: copy_errors,
        },
        OpInfo {
            index_inputs: &[1],
            packed_inputs: &[],
            name: "index_copy(0)",
            grad: || Grad::NoGrad("an in-place write"),
            samples: || copy_samples(0),
            run: |t| {
                let mut out = t[0].clone();
                out.index_copy(0, &t[1], &t[2])?;
                Ok(out)
            },
            reference: |r| copy_ref(r, 0),
            tol: |_| (0.0, 0.0),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[0],
            packed_inputs: &[],
            name: "to_dtype(u32 to f32)",
            grad: || Grad::NoGrad("integer input"),
            samples: || {
                let big = [0.0, 1.0, 16_777_216.0, 4_294_967_040.0, 65_535.0];
                [1, 3, 5, 1000]
                    .iter()
                    .map(|&n| Sample {
                        inputs: vec![(
                            vec![n],
                            (0..n).map(|i| big[i % 5] + (i / 5) as f32).collect(),
                        )],
                    })
                    .collect()
            },
            run: |t| t[0].to_dtype(kiln::DType::F32),
            reference: |r| r[0].clone(),
            tol: |_| (0.0, 0.0),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[1],
            packed_inputs: &[],
            name: "gather(1)",
            grad: own,
            samples: || gather_samples(1),
            run: |t| t[0].gather(1, &t[1]),
            reference: |r| gather_ref(r, 1),
            tol: |_| (0.0, 0.0),
            errors: |d| {
                let x = Tensor::zeros(d, &[2, 3]).unwrap();
                let big = Tensor::from_vec_u32(d, vec![0; 8], &[4, 2]).unwrap();
                let oob = Tensor::from_vec_u32(d, vec![0, 3], &[1, 2]).unwrap();
                vec![
                    ("index larger than the source", x.gather(1, &big), |e| {
                        matches!(e, Error::ShapeMismatch { op: "gather", .. })
                    }),
                    ("index 3 of 3", x.gather(1, &oob), |e| {
                        *e == Error::IndexOutOfRange {
                            op: "gather",
                            index: 3,
                            size: 3,
                        }
                    }),
                ]
            },
        },
        OpInfo {
            index_inputs: &[1],
            packed_inputs: &[],
            name: "gather(0)",
            grad: own,
            samples: || gather_samples(0),
            run: |t| t[0].gather(0, &t[1]),
            reference: |r| gather_ref(r, 0),
            tol: |_| (0.0, 0.0),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[1],
            packed_inputs: &[],
            name: "embedding",
            grad: own,
            samples: || {
                let mut rng = Lcg(98);
                vec![
                    Sample {
                        inputs: vec![
                            (vec![10, 3], rng.vec(30, -1.0, 1.0)),
                            (vec![2, 3], vec![0.0, 9.0, 4.0, 4.0, 1.0, 7.0]),
                        ],
                    },
                    Sample {
                        inputs: vec![(vec![4, 8], rng.vec(32, -1.0, 1.0)), (vec![0], vec![])],
                    },
                ]
            },
            run: |t| Tensor::embedding(&t[0], &t[1]),
            reference: |r| {
                let flat = Ref {
                    shape: vec![r[1].data.len()],
                    data: r[1].data.clone(),
                };
                let mut out = index_ref(&[r[0].clone(), flat], 0);
                out.shape = r[1].shape.iter().cloned().chain([r[0].shape[1]]).collect();
                out
            },
            tol: |_| (0.0, 0.0),
            errors: no_errors,
        },
    ]
}

pub fn argmax_samples() -> Vec<Sample> {
    let mut out = reduce_samples();
    // Ties: the first maximum wins.
    out.push(Sample {
        inputs: vec![(vec![2, 4], vec![1.0, 3.0, 3.0, 0.0, -1.0, -1.0, -2.0, -1.0])],
    });
    // Rows long enough for the CPU's vector lanes (8 wide, a 5-value tail): a maximum tied in
    // three lanes (the first, at 11, wins), one tied only in the tail, a row of -inf, and a NaN
    // after a larger value (the NaN's index wins).
    let mut rng = Lcg(41);
    let len = 37;
    let mut rows = rng.vec(4 * len, -1.0, 1.0);
    for j in [19, 11, 30] {
        rows[j] = 5.0;
    }
    for j in [34, 36] {
        rows[len + j] = 7.0;
    }
    rows[2 * len..3 * len].fill(f32::NEG_INFINITY);
    rows[3 * len + 5] = 9.0;
    rows[3 * len + 25] = f32::NAN;
    out.push(Sample {
        inputs: vec![(vec![4, len], rows)],
    });
    // Rows of vec4s, as GPUs with a fixed subgroup size read them (one subgroup per row, the
    // lanes taking vec4s in turn, two at a time): 19 vec4s, so the second block of 8 lanes is
    // partial; 13 rows, so the last workgroup of 8 rows is partial.
    let len = 76;
    let mut rows = rng.vec(13 * len, -1.0, 1.0);
    let row = |r: usize| r * len;
    for j in [45, 9, 30] {
        rows[row(1) + j] = 5.0; // tied in three lanes and two blocks: 9 wins
    }
    rows[row(2)..row(3)].fill(f32::NEG_INFINITY);
    rows[row(3) + 5] = 9.0;
    for j in [66, 50] {
        rows[row(3) + j] = f32::NAN; // the first NaN (50) wins over the larger value before it
    }
    rows[row(4) + 75] = f32::NAN; // in the last vec4 only
    rows[row(5) + 12] = 8.0; // tied within one vec4: 12 wins
    rows[row(5) + 13] = 8.0;
    rows[row(6) + 75] = 4.0; // the last value, in the partial block
    rows[row(7)..row(8)].fill(0.5);
    out.push(Sample {
        inputs: vec![(vec![13, len], rows)],
    });
    // One vec4 per row (fewer than the lanes), and two blocks exactly (16 vec4s).
    out.push(Sample {
        inputs: vec![(
            vec![3, 4],
            vec![
                1.0,
                1.0,
                0.0,
                1.0,
                f32::NEG_INFINITY,
                f32::NEG_INFINITY,
                f32::NEG_INFINITY,
                f32::NEG_INFINITY,
                2.0,
                f32::NAN,
                3.0,
                f32::NAN,
            ],
        )],
    });
    let mut rows = rng.vec(2 * 64, -1.0, 1.0);
    rows[64 + 63] = 3.0;
    rows[64 + 35] = 3.0;
    out.push(Sample {
        inputs: vec![(vec![2, 64], rows)],
    });
    out
}

pub fn argmax_ref(r: &Ref, dim: isize, keepdim: bool) -> Ref {
    reduce_ref(r, dim, keepdim, |v| {
        // The first NaN, else the first maximum.
        if let Some(j) = v.iter().position(|x| x.is_nan()) {
            return j as f64;
        }
        let mut at = 0;
        for (j, x) in v.iter().enumerate() {
            if *x > v[at] {
                at = j;
            }
        }
        at as f64
    })
}

/// (source, indices along `dim`) samples; index values are stored as f32 and converted.
pub fn index_samples(dim: usize) -> Vec<Sample> {
    let mut rng = Lcg(97);
    let shapes: &[&[usize]] = &[&[5, 4], &[3, 6, 2], &[1, 257], &[4, 1]];
    shapes
        .iter()
        .map(|s| {
            let n = s.iter().product();
            let len = s[dim] as u32;
            let idx: Vec<f32> = (0..7).map(|_| (rng.next_u32() % len) as f32).collect();
            Sample {
                inputs: vec![(s.to_vec(), rng.vec(n, -3.0, 3.0)), (vec![7], idx)],
            }
        })
        .chain(std::iter::once(Sample {
            inputs: vec![
                (vec![3, 4], (0..12).map(|x| x as f32).collect()),
                (vec![0], vec![]),
            ],
        }))
        .collect()
}

pub fn index_ref(r: &[Ref], dim: usize) -> Ref {
    let (x, idx) = (&r[0], &r[1]);
    let mut shape = x.shape.clone();
    shape[dim] = idx.data.len();
    let st = strides(&x.shape);
    let n = shape.iter().product();
    let data = (0..n)
        .map(|i| {
            let mut m = unravel(i, &shape);
            m[dim] = idx.data[m[dim]] as usize;
            x.data[m.iter().zip(&st).map(|(a, b)| a * b).sum::<usize>()]
        })
        .collect();
    Ref { shape, data }
}

/// (destination, distinct indices along `dim`, source) samples, with no index and with every
/// slice written.
pub fn copy_samples(dim: usize) -> Vec<Sample> {
    let mut rng = Lcg(99);
    let cases: &[(&[usize], &[u32])] = &[
        (&[5, 4], &[3]),
        (&[3, 6, 2], &[2, 0]),
        (&[4, 257], &[1, 3, 0, 2]),
        (&[3, 4], &[]),
        (&[2, 3, 5], &[1, 0]),
    ];
    cases
        .iter()
        .map(|&(s, idx)| {
            let mut src = s.to_vec();
            src[dim] = idx.len();
            // The destination's own values stay where no index points.
            let n = s.iter().product();
            let m = src.iter().product();
            Sample {
                inputs: vec![
                    (s.to_vec(), rng.vec(n, -3.0, 3.0)),
                    (vec![idx.len()], idx.iter().map(|&i| i as f32).collect()),
                    (src, rng.vec(m, 4.0, 9.0)),
                ],
            }
        })
        .filter(|sample| {
            sample.inputs[1]
                .1
                .iter()
                .all(|&i| (i as usize) < sample.inputs[0].0[dim])
        })
        .collect()
}

pub fn copy_ref(r: &[Ref], dim: usize) -> Ref {
    let (dst, idx, src) = (&r[0], &r[1], &r[2]);
    let mut out = dst.clone();
    let st = strides(&dst.shape);
    for (i, &x) in src.data.iter().enumerate() {
        let mut m = unravel(i, &src.shape);
        m[dim] = idx.data[m[dim]] as usize;
        out.data[m.iter().zip(&st).map(|(a, b)| a * b).sum::<usize>()] = x;
    }
    out
}

fn copy_errors(d: &Device) -> Vec<ErrorCase> {
    let idx = |v: Vec<u32>| Tensor::from_vec_u32(d, v.clone(), &[v.len()]).unwrap();
    let mut x = Tensor::zeros(d, &[3, 4]).unwrap();
    let src = Tensor::ones(d, &[3, 2]).unwrap();
    let mut tracked = Tensor::zeros(d, &[3, 4]).unwrap().with_grad().unwrap();
    let mut bits = Tensor::from_vec_u32(d, vec![0; 12], &[3, 4]).unwrap();
    // A write that succeeded where it should not have reaches the runner as an Ok result.
    let done = |r: kiln::Result<()>| r.and_then(|()| Tensor::zeros(d, &[0]));
    vec![
        (
            "index 4 of 4",
            done(x.index_copy(1, &idx(vec![0, 4]), &src)),
            |e| {
                *e == Error::IndexOutOfRange {
                    op: "index_copy",
                    index: 4,
                    size: 4,
                }
            },
        ),
        (
            "a repeated index",
            done(x.index_copy(1, &idx(vec![2, 2]), &src)),
            |e| {
                matches!(
                    e,
                    Error::InvalidArgument {
                        op: "index_copy",
                        ..
                    }
                )
            },
        ),
        (
            "a source of 3 slices for 2 indices",
            done(x.index_copy(0, &idx(vec![0, 1]), &src)),
            |e| {
                matches!(
                    e,
                    Error::ShapeMismatch {
                        op: "index_copy",
                        ..
                    }
                )
            },
        ),
        (
            "an f32 source into u32",
            done(bits.index_copy(1, &idx(vec![0, 1]), &src)),
            |e| {
                matches!(
                    e,
                    Error::DTypeMismatch {
                        op: "index_copy",
                        ..
                    }
                )
            },
        ),
        (
            "a destination that requires gradients",
            done(tracked.index_copy(1, &idx(vec![0, 1]), &src)),
            |e| {
                matches!(
                    e,
                    Error::Unsupported {
                        op: "index_copy",
                        ..
                    }
                )
            },
        ),
        (
            "dimension 2 of 2",
            done(x.index_copy(2, &idx(vec![0]), &src)),
            |e| {
                matches!(
                    e,
                    Error::InvalidArgument {
                        op: "index_copy",
                        ..
                    } | Error::InvalidShape {
                        op: "index_copy",
                        ..
                    }
                )
            },
        ),
    ]
}

pub fn index_errors(d: &Device) -> Vec<ErrorCase> {
    let x = Tensor::zeros(d, &[3, 4]).unwrap();
    let bad = Tensor::from_vec_u32(d, vec![0, 4], &[2]).unwrap();
    let f = Tensor::zeros(d, &[2]).unwrap();
    let two_d = Tensor::from_vec_u32(d, vec![0, 1], &[1, 2]).unwrap();
    let w = Tensor::zeros(d, &[5, 2]).unwrap();
    let ids = Tensor::from_vec_u32(d, vec![1, 5], &[2]).unwrap();
    vec![
        ("index 4 of 4 columns", x.index_select(1, &bad), |e| {
            *e == Error::IndexOutOfRange {
                op: "index_select",
                index: 4,
                size: 4,
            } && e.to_string() == "index_select: index 4 is out of range for a dimension of size 4"
        }),
        ("f32 indices", x.index_select(0, &f), |e| {
            matches!(
                e,
                Error::DTypeMismatch {
                    op: "index_select",
                    expected: kiln::DType::U32,
                    got: kiln::DType::F32
                }
            )
        }),
        ("2-D indices", x.index_select(0, &two_d), |e| {
            matches!(
                e,
                Error::InvalidShape {
                    op: "index_select",
                    ..
                }
            )
        }),
        ("embedding id 5 of 5", Tensor::embedding(&w, &ids), |e| {
            matches!(
                e,
                Error::IndexOutOfRange {
                    op: "embedding",
                    index: 5,
                    size: 5
                }
            )
        }),
        ("relu of a u32 tensor", bad.relu(), |e| {
            matches!(e, Error::DTypeMismatch { op: "relu", .. })
        }),
        ("u32 + f32", bad.add(&f), |e| {
            matches!(e, Error::DTypeMismatch { op: "add", .. })
        }),
        (
            "argmax over an empty axis",
            Tensor::zeros(d, &[2, 0]).unwrap().argmax(1, false),
            |e| matches!(e, Error::InvalidShape { op: "argmax", .. }),
        ),
    ]
}

/// (source, index) samples for gather along `dim`: index values below the source's extent.
pub fn gather_samples(dim: usize) -> Vec<Sample> {
    let mut rng = Lcg(120);
    let cases: &[(&[usize], &[usize])] = &[
        (&[4, 5], &[4, 3]),
        (&[3, 4, 2], &[2, 6, 2]),
        (&[1, 257], &[1, 300]),
        (&[3, 3], &[0, 3]),
    ];
    cases
        .iter()
        .map(|(x, ix)| {
            // For dim 0, swap the first two extents so dimension 0 is the gathered one.
            let mut ix = ix.to_vec();
            if dim == 0 {
                ix.swap(0, 1);
            }
            let x: Vec<usize> = if dim == 0 {
                vec![x[1], x[0]]
                    .into_iter()
                    .chain(x[2..].iter().cloned())
                    .collect()
            } else {
                x.to_vec()
            };
            let (nx, ni) = (x.iter().product(), ix.iter().product());
            let len = x[dim] as u32;
            let idx = (0..ni).map(|_| (rng.next_u32() % len) as f32).collect();
            Sample {
                inputs: vec![(x.clone(), rng.vec(nx, -3.0, 3.0)), (ix, idx)],
            }
        })
        .collect()
}

pub fn gather_ref(r: &[Ref], dim: usize) -> Ref {
    let (x, idx) = (&r[0], &r[1]);
    let st = strides(&x.shape);
    let data = (0..idx.data.len())
        .map(|i| {
            let mut m = unravel(i, &idx.shape);
            m[dim] = idx.data[i] as usize;
            x.data[m.iter().zip(&st).map(|(a, b)| a * b).sum::<usize>()]
        })
        .collect();
    Ref {
        shape: idx.shape.clone(),
        data,
    }
}
