//! The op table, shared by `tests/ops.rs` (forward values and errors on every device) and
//! `tests/grad.rs` (gradients against finite differences of the same f64 references): each op
//! names its sample inputs, its f64 reference, its tolerance and its error cases.

#![allow(dead_code)]

use crate::common::*;
use kiln::{Device, Error, Tensor};

/// A reference value: shape and f64 data.
#[derive(Clone, Debug)]
pub struct Ref {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

/// An input that must fail: what it is, what the op returned, and a check of the error.
pub type ErrorCase = (&'static str, kiln::Result<Tensor>, fn(&Error) -> bool);

/// One sample: input shapes and values.
pub struct Sample {
    pub inputs: Vec<(Vec<usize>, Vec<f32>)>,
}

pub struct OpInfo {
    pub name: &'static str,
    pub samples: fn() -> Vec<Sample>,
    pub run: fn(&[Tensor]) -> kiln::Result<Tensor>,
    pub reference: fn(&[Ref]) -> Ref,
    /// (atol, rtol) for a sample; matmul scales atol by k.
    pub tol: fn(&[Ref]) -> (f64, f64),
    /// Inputs that must fail, with a check of the error.
    pub errors: fn(&Device) -> Vec<ErrorCase>,
}

// ---- samples ---------------------------------------------------------------------------

/// Elementwise sample shapes: empty, one element, workgroup edges ±1, odd ranks.
pub const UNARY_SHAPES: &[&[usize]] = &[
    &[0],
    &[1],
    &[255],
    &[256],
    &[257],
    &[3, 0, 2],
    &[2, 3, 5],
    &[7, 1, 33],
    &[],
];

pub fn unary_samples() -> Vec<Sample> {
    let mut rng = Lcg(11);
    let mut out: Vec<Sample> = UNARY_SHAPES
        .iter()
        .map(|s| {
            let n = s.iter().product();
            Sample {
                inputs: vec![(s.to_vec(), rng.vec(n, -6.0, 6.0))],
            }
        })
        .collect();
    // Values at the edges of the formulas: zero, tiny, large, and the extremes of f32.
    let special = vec![
        0.0, -0.0, 1e-30, -1e-30, 20.0, -20.0, 88.0, -88.0, 100.0, -100.0, 1e30, -1e30,
    ];
    out.push(Sample {
        inputs: vec![(vec![special.len()], special)],
    });
    out
}

/// Samples for ops defined on x >= 0 only: positive values, zero, and extremes.
pub fn positive_samples() -> Vec<Sample> {
    let mut rng = Lcg(12);
    let mut out: Vec<Sample> = UNARY_SHAPES
        .iter()
        .map(|s| {
            let n = s.iter().product();
            Sample {
                inputs: vec![(s.to_vec(), rng.vec(n, 0.01, 10.0))],
            }
        })
        .collect();
    let special = vec![0.0, 1e-30, 1e-6, 1.0, 1e6, 1e30, f32::MAX];
    out.push(Sample {
        inputs: vec![(vec![special.len()], special)],
    });
    out
}

pub fn binary_samples() -> Vec<Sample> {
    let mut rng = Lcg(22);
    let mut pairs: Vec<(Vec<usize>, Vec<usize>)> = vec![
        (vec![3, 4], vec![3, 4]),
        (vec![3, 4], vec![4]),
        (vec![4], vec![3, 4]),
        (vec![2, 1, 5], vec![3, 1]),
        (vec![5, 1, 3], vec![1, 4, 1]),
        (vec![0, 3], vec![3]),
        (vec![1], vec![7]),
        (vec![], vec![2, 3]),
        (vec![257], vec![257]),
        (vec![2, 3, 1, 4], vec![3, 5, 1]),
        (vec![1, 1, 1], vec![1]),
    ];
    // Ties: integers in a small range, so eq/le/ge see equal pairs.
    let ties = |rng: &mut Lcg, n: usize| {
        (0..n)
            .map(|_| (rng.next_u32() % 3) as f32 - 1.0)
            .collect::<Vec<f32>>()
    };
    // Random broadcast-compatible pairs.
    let dims = [0usize, 1, 2, 3, 5, 15, 16, 17];
    while pairs.len() < 24 {
        let rank = 1 + rng.next_u32() as usize % 4;
        let out: Vec<usize> = (0..rank).map(|_| rng.pick(&dims[1..])).collect();
        let mut a = out.clone();
        let mut b = out.clone();
        for d in 0..rank {
            match rng.next_u32() % 4 {
                0 => a[d] = 1,
                1 => b[d] = 1,
                _ => {}
            }
        }
        if rng.next_u32().is_multiple_of(5) {
            a[0] = 0;
            b[0] = if b[0] == 1 { 1 } else { 0 };
        }
        let drop = rng.next_u32() as usize % rank;
        pairs.push((a, b[drop..].to_vec()));
    }
    let (ta, tb) = (ties(&mut rng, 64), ties(&mut rng, 8));
    let tie_sample = Sample {
        inputs: vec![(vec![8, 8], ta), (vec![8], tb)],
    };
    pairs
        .into_iter()
        .map(|(a, b)| {
            let na = a.iter().product();
            let nb = b.iter().product();
            // Keep divisors away from zero so division is well conditioned.
            let bv = rng
                .vec(nb, 0.5, 4.0)
                .into_iter()
                .map(|v| {
                    if rng.next_u32().is_multiple_of(2) {
                        v
                    } else {
                        -v
                    }
                })
                .collect();
            Sample {
                inputs: vec![(a, rng.vec(na, -4.0, 4.0)), (b, bv)],
            }
        })
        .chain(std::iter::once(tie_sample))
        .collect()
}

/// Bases of both signs with integer exponents, and positive bases with fractional ones; plus a
/// comparison-friendly sample with repeated values (ties for eq/le/ge).
pub fn pow_samples() -> Vec<Sample> {
    let mut rng = Lcg(55);
    let base: Vec<f32> = rng.vec(60, -3.0, 3.0);
    let exps: Vec<f32> = (0..60).map(|i| (i % 7) as f32 - 3.0).collect();
    let pos: Vec<f32> = rng.vec(40, 0.0, 5.0);
    let frac: Vec<f32> = rng.vec(40, -2.5, 2.5);
    vec![
        Sample {
            inputs: vec![(vec![60], base), (vec![60], exps)],
        },
        Sample {
            inputs: vec![(vec![4, 10], pos), (vec![4, 10], frac)],
        },
        Sample {
            inputs: vec![
                (vec![3, 1], vec![0.0, 2.0, -2.0]),
                (vec![4], vec![0.0, 1.0, -1.0, 0.5]),
            ],
        },
    ]
}

pub fn matmul_samples() -> Vec<Sample> {
    let mut rng = Lcg(33);
    let shapes: Vec<(Vec<usize>, Vec<usize>)> = vec![
        (vec![300, 257], vec![257, 129]), // the named case: no dimension divides the tile
        (vec![16, 16], vec![16, 16]),
        (vec![15, 17], vec![17, 31]),
        (vec![17, 33], vec![33, 15]),
        (vec![1, 64], vec![64, 1]),
        (vec![1, 1], vec![1, 1]),
        (vec![64, 1], vec![1, 64]),
        (vec![5, 0], vec![0, 7]), // k = 0: zeros
        (vec![0, 4], vec![4, 3]),
        (vec![4, 3], vec![3, 0]),
        (vec![2, 3, 17, 5], vec![5, 9]),
        (vec![4, 1, 8, 16], vec![3, 16, 7]),
        (vec![3, 33, 32], vec![3, 32, 33]),
        (vec![2, 0, 3, 4], vec![4, 5]),
        // Shapes every candidate tile divides: these run the unchecked kernel variants.
        (vec![128, 64], vec![64, 128]),
        (vec![2, 64, 32], vec![32, 64]),
    ];
    shapes
        .into_iter()
        .map(|(a, b)| {
            let na = a.iter().product();
            let nb = b.iter().product();
            Sample {
                inputs: vec![(a, rng.vec(na, -1.0, 1.0)), (b, rng.vec(nb, -1.0, 1.0))],
            }
        })
        .collect()
}

// ---- references ------------------------------------------------------------------------

pub fn map_ref(x: &Ref, f: impl Fn(f64) -> f64) -> Ref {
    Ref {
        shape: x.shape.clone(),
        data: x.data.iter().map(|&v| f(v)).collect(),
    }
}

pub fn sigmoid(v: f64) -> f64 {
    1.0 / (1.0 + (-v).exp())
}

pub fn binary_ref(r: &[Ref], f: fn(f64, f64) -> f64) -> Ref {
    let (a, b) = (&r[0], &r[1]);
    let out = broadcast(&a.shape, &b.shape).expect("sample shapes broadcast");
    let n = out.iter().product();
    let data = (0..n)
        .map(|i| {
            let idx = unravel(i, &out);
            f(
                a.data[bcast_index(&a.shape, &out, &idx)],
                b.data[bcast_index(&b.shape, &out, &idx)],
            )
        })
        .collect();
    Ref { shape: out, data }
}

pub fn matmul_ref(r: &[Ref]) -> Ref {
    let (a, b) = (&r[0], &r[1]);
    let (ar, br) = (a.shape.len(), b.shape.len());
    let (m, k, n) = (a.shape[ar - 2], a.shape[ar - 1], b.shape[br - 1]);
    let batch = broadcast(&a.shape[..ar - 2], &b.shape[..br - 2]).unwrap();
    let nb: usize = batch.iter().product();
    let mut data = Vec::with_capacity(nb * m * n);
    for bi in 0..nb {
        let idx = unravel(bi, &batch);
        let oa = bcast_index(&a.shape[..ar - 2], &batch, &idx) * m * k;
        let ob = bcast_index(&b.shape[..br - 2], &batch, &idx) * k * n;
        for i in 0..m {
            for j in 0..n {
                data.push(
                    (0..k)
                        .map(|p| a.data[oa + i * k + p] * b.data[ob + p * n + j])
                        .sum(),
                );
            }
        }
    }
    let mut shape = batch;
    shape.extend([m, n]);
    Ref { shape, data }
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
    let axis = if dim < 0 {
        (dim + r.shape.len() as isize) as usize
    } else {
        dim as usize
    };
    let outer: usize = r.shape[..axis].iter().product();
    let len = r.shape[axis];
    let inner: usize = r.shape[axis + 1..].iter().product();
    let mut data = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            let v: Vec<f64> = (0..len)
                .map(|j| r.data[(o * len + j) * inner + i])
                .collect();
            data.push(f(&v));
        }
    }
    let mut shape = r.shape.clone();
    if keepdim {
        shape[axis] = 1;
    } else {
        shape.remove(axis);
    }
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

pub fn shaped(shapes: &[&[usize]], seed: u64) -> Vec<Sample> {
    let mut rng = Lcg(seed);
    shapes
        .iter()
        .map(|s| {
            let n = s.iter().product();
            Sample {
                inputs: vec![(s.to_vec(), rng.vec(n, -3.0, 3.0))],
            }
        })
        .collect()
}

pub fn pairs(shapes: &[(&[usize], &[usize])], seed: u64) -> Vec<Sample> {
    let mut rng = Lcg(seed);
    shapes
        .iter()
        .map(|(a, b)| {
            let (na, nb) = (a.iter().product(), b.iter().product());
            Sample {
                inputs: vec![
                    (a.to_vec(), rng.vec(na, -3.0, 3.0)),
                    (b.to_vec(), rng.vec(nb, -3.0, 3.0)),
                ],
            }
        })
        .collect()
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

/// Transpose the last two dimensions of a reference.
pub fn t_last(r: &Ref) -> Ref {
    let n = r.shape.len();
    let mut perm: Vec<usize> = (0..n).collect();
    perm.swap(n - 2, n - 1);
    permute_ref(r, &perm)
}

/// Samples for `op(a) x op(b)`, stored already transposed where the op transposes.
pub fn matmul_t_samples(ta: bool, tb: bool) -> Vec<Sample> {
    let cases: &[(&[usize], &[usize])] = &[
        (&[300, 257], &[257, 129]),
        (&[17, 33], &[33, 15]),
        (&[1, 64], &[64, 1]),
        (&[128, 64], &[64, 128]),
        (&[2, 3, 17, 5], &[5, 9]),
        (&[5, 0], &[0, 7]),
    ];
    transposed_pairs(cases, ta, tb, 90)
}

/// Random operand pairs of the given shapes, each stored with its last two dimensions swapped
/// where `ta` / `tb` says.
pub fn transposed_pairs(
    cases: &[(&[usize], &[usize])],
    ta: bool,
    tb: bool,
    seed: u64,
) -> Vec<Sample> {
    let mut rng = Lcg(seed);
    let sw = |s: &[usize], t: bool| {
        let mut d = s.to_vec();
        let r = d.len();
        if t {
            d.swap(r - 2, r - 1);
        }
        d
    };
    cases
        .iter()
        .map(|(a, b)| {
            let (a, b) = (sw(a, ta), sw(b, tb));
            let (na, nb) = (a.iter().product(), b.iter().product());
            Sample {
                inputs: vec![(a, rng.vec(na, -1.0, 1.0)), (b, rng.vec(nb, -1.0, 1.0))],
            }
        })
        .collect()
}

pub fn where_samples() -> Vec<Sample> {
    let mut rng = Lcg(95);
    let cases: &[[&[usize]; 3]] = &[
        [&[3, 4], &[3, 4], &[3, 4]],
        [&[3, 1], &[4], &[3, 4]],
        [&[2, 1, 5], &[3, 1], &[1]],
        [&[0, 3], &[3], &[1]],
        [&[], &[2, 3], &[3]],
        [&[257], &[1], &[257]],
    ];
    cases
        .iter()
        .map(|c| {
            let nm = c[0].iter().product();
            let mask = (0..nm)
                .map(|_| rng.pick(&[0.0, 1.0, -0.0, 2.5, f32::NAN]))
                .collect();
            let (na, nb) = (c[1].iter().product(), c[2].iter().product());
            Sample {
                inputs: vec![
                    (c[0].to_vec(), mask),
                    (c[1].to_vec(), rng.vec(na, -3.0, 3.0)),
                    (c[2].to_vec(), rng.vec(nb, -3.0, 3.0)),
                ],
            }
        })
        .collect()
}

pub fn where_ref(r: &[Ref]) -> Ref {
    let ab = broadcast(&r[1].shape, &r[2].shape).unwrap();
    let out = broadcast(&r[0].shape, &ab).unwrap();
    let n = out.iter().product();
    let data = (0..n)
        .map(|i| {
            let idx = unravel(i, &out);
            let m = r[0].data[bcast_index(&r[0].shape, &out, &idx)];
            let pick = if m != 0.0 || m.is_nan() { &r[1] } else { &r[2] };
            pick.data[bcast_index(&pick.shape, &out, &idx)]
        })
        .collect();
    Ref { shape: out, data }
}

pub fn where_errors(d: &Device) -> Vec<ErrorCase> {
    let m = Tensor::zeros(d, &[2, 3]).unwrap();
    let a = Tensor::zeros(d, &[4]).unwrap();
    let b = Tensor::zeros(d, &[3]).unwrap();
    vec![
        ("a [4] and b [3]", Tensor::where_cond(&m, &a, &b), |e| {
            matches!(e, Error::ShapeMismatch { op: "where", .. })
        }),
        ("mask [2,3] with [4]", Tensor::where_cond(&m, &a, &a), |e| {
            matches!(e, Error::ShapeMismatch { op: "where", .. })
        }),
    ]
}

/// The second input's values as a u32 index tensor on the same device.
pub fn as_indices(t: &Tensor) -> Tensor {
    let v: Vec<u32> = t.to_vec().unwrap().into_iter().map(|x| x as u32).collect();
    Tensor::from_vec_u32(t.device(), v, t.shape()).unwrap()
}

pub fn argmax_samples() -> Vec<Sample> {
    let mut out = reduce_samples();
    // Ties: the first maximum wins.
    out.push(Sample {
        inputs: vec![(vec![2, 4], vec![1.0, 3.0, 3.0, 0.0, -1.0, -1.0, -2.0, -1.0])],
    });
    out
}

pub fn argmax_ref(r: &Ref, dim: isize, keepdim: bool) -> Ref {
    reduce_ref(r, dim, keepdim, |v| {
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

/// (input NCHW, weight, bias) samples: odd sizes, 1x1 kernels, channels 1 and 3, an empty batch.
pub fn conv_samples() -> Vec<Sample> {
    let mut rng = Lcg(110);
    let cases: &[(&[usize], &[usize])] = &[
        (&[2, 3, 9, 7], &[4, 3, 3, 3]),
        (&[1, 1, 5, 5], &[2, 1, 1, 1]),
        (&[1, 2, 17, 16], &[3, 2, 5, 2]),
        (&[0, 2, 4, 4], &[1, 2, 3, 3]),
        (&[1, 4, 3, 3], &[2, 4, 3, 3]),
    ];
    cases
        .iter()
        .map(|(x, w)| {
            let (nx, nw) = (x.iter().product(), w.iter().product());
            Sample {
                inputs: vec![
                    (x.to_vec(), rng.vec(nx, -1.0, 1.0)),
                    (w.to_vec(), rng.vec(nw, -1.0, 1.0)),
                    (vec![w[0]], rng.vec(w[0], -1.0, 1.0)),
                ],
            }
        })
        .collect()
}

pub fn conv_ref(r: &[Ref], opts: kiln::Conv2dOptions, bias: bool) -> Ref {
    let (x, w, b) = (&r[0], &r[1], &r[2]);
    let [n, ci, h, wd] = x.shape[..] else {
        unreachable!()
    };
    let [co, _, kh, kw] = w.shape[..] else {
        unreachable!()
    };
    let (sh, sw) = opts.stride;
    let (ph, pw) = opts.padding;
    let (dh, dw) = opts.dilation;
    let oh = (h + 2 * ph - dh * (kh - 1) - 1) / sh + 1;
    let ow = (wd + 2 * pw - dw * (kw - 1) - 1) / sw + 1;
    let mut data = vec![];
    for bi in 0..n {
        for c in 0..co {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = if bias { b.data[c] } else { 0.0 };
                    for i in 0..ci {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * sh + ky * dh) as isize - ph as isize;
                                let ix = (ox * sw + kx * dw) as isize - pw as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd {
                                    acc += x.data
                                        [((bi * ci + i) * h + iy as usize) * wd + ix as usize]
                                        * w.data[((c * ci + i) * kh + ky) * kw + kx];
                                }
                            }
                        }
                    }
                    data.push(acc);
                }
            }
        }
    }
    Ref {
        shape: vec![n, co, oh, ow],
        data,
    }
}

pub fn pool_ref(
    x: &Ref,
    k: (usize, usize),
    s: (usize, usize),
    p: (usize, usize),
    max: bool,
) -> Ref {
    let [n, c, h, w] = x.shape[..] else {
        unreachable!()
    };
    let oh = (h + 2 * p.0 - k.0) / s.0 + 1;
    let ow = (w + 2 * p.1 - k.1) / s.1 + 1;
    let mut data = vec![];
    for plane in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut vals = vec![];
                for ky in 0..k.0 {
                    for kx in 0..k.1 {
                        let iy = (oy * s.0 + ky) as isize - p.0 as isize;
                        let ix = (ox * s.1 + kx) as isize - p.1 as isize;
                        if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                            vals.push(x.data[(plane * h + iy as usize) * w + ix as usize]);
                        }
                    }
                }
                data.push(if max {
                    vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
                } else {
                    vals.iter().sum::<f64>() / (k.0 * k.1) as f64
                });
            }
        }
    }
    Ref {
        shape: vec![n, c, oh, ow],
        data,
    }
}

pub fn conv_errors(d: &Device) -> Vec<ErrorCase> {
    let x = Tensor::zeros(d, &[1, 3, 8, 8]).unwrap();
    let w = Tensor::zeros(d, &[2, 4, 3, 3]).unwrap();
    let w3 = Tensor::zeros(d, &[2, 3, 3]).unwrap();
    let big = Tensor::zeros(d, &[2, 3, 9, 9]).unwrap();
    let s0 = kiln::Conv2dOptions {
        stride: (0, 1),
        ..Default::default()
    };
    vec![
        (
            "c_in 3 vs weight c_in 4",
            x.conv2d(&w, None, Default::default()),
            |e| matches!(e, Error::ShapeMismatch { op: "conv2d", .. }),
        ),
        (
            "weight of rank 3",
            x.conv2d(&w3, None, Default::default()),
            |e| matches!(e, Error::InvalidShape { op: "conv2d", .. }),
        ),
        (
            "kernel larger than the input",
            x.conv2d(&big, None, Default::default()),
            |e| {
                matches!(e, Error::InvalidShape { op: "conv2d", .. })
                    && e.to_string().contains("does not fit")
            },
        ),
        (
            "stride 0",
            x.conv2d(&Tensor::zeros(d, &[2, 3, 3, 3]).unwrap(), None, s0),
            |e| matches!(e, Error::InvalidArgument { op: "conv2d", .. }),
        ),
        (
            "input of rank 3",
            w3.max_pool2d((2, 2), (2, 2), (0, 0)),
            |e| {
                matches!(
                    e,
                    Error::InvalidShape {
                        op: "max_pool2d",
                        ..
                    }
                )
            },
        ),
        (
            "padding over half the kernel",
            x.avg_pool2d((2, 2), (1, 1), (2, 0)),
            |e| {
                matches!(
                    e,
                    Error::InvalidArgument {
                        op: "avg_pool2d",
                        ..
                    }
                )
            },
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

pub fn linear_samples() -> Vec<Sample> {
    let mut rng = Lcg(44);
    // (x shape, out_features): weight is [out, in], bias [out].
    let cases: Vec<(Vec<usize>, usize)> = vec![
        (vec![300, 257], 129),
        (vec![1, 64], 10),
        (vec![5, 17], 1),
        (vec![2, 3, 33], 31),
        (vec![64, 32], 64),
        (vec![4, 0], 3),
        (vec![0, 8], 4),
    ];
    cases
        .into_iter()
        .map(|(x, n)| {
            let k = *x.last().unwrap();
            let nx = x.iter().product();
            Sample {
                inputs: vec![
                    (x, rng.vec(nx, -1.0, 1.0)),
                    (vec![n, k], rng.vec(n * k, -1.0, 1.0)),
                    (vec![n], rng.vec(n, -1.0, 1.0)),
                ],
            }
        })
        .collect()
}

/// x · wᵀ + b, then `act`.
pub fn linear_ref(r: &[Ref], act: fn(f64) -> f64) -> Ref {
    let (x, w, b) = (&r[0], &r[1], &r[2]);
    let (n, k) = (w.shape[0], w.shape[1]);
    let wt: Vec<f64> = (0..k * n).map(|i| w.data[(i % n) * k + i / n]).collect();
    let mut out = matmul_ref(&[
        x.clone(),
        Ref {
            shape: vec![k, n],
            data: wt,
        },
    ]);
    for (i, v) in out.data.iter_mut().enumerate() {
        *v = act(*v + b.data[i % n]);
    }
    out
}

pub fn linear_errors(d: &Device) -> Vec<ErrorCase> {
    let x = Tensor::zeros(d, &[2, 3]).unwrap();
    let w = Tensor::zeros(d, &[4, 5]).unwrap();
    let w3 = Tensor::zeros(d, &[4, 3]).unwrap();
    let b = Tensor::zeros(d, &[5]).unwrap();
    vec![
        ("x [2,3], w [4,5]", x.linear(&w, None, None), |e| {
            matches!(e, Error::ShapeMismatch { op: "linear", .. })
        }),
        (
            "bias [5] for 4 outputs",
            x.linear(&w3, Some(&b), None),
            |e| matches!(e, Error::ShapeMismatch { op: "linear", .. }),
        ),
        (
            "weight of rank 3",
            x.linear(&Tensor::zeros(d, &[1, 4, 3]).unwrap(), None, None),
            |e| matches!(e, Error::InvalidShape { op: "linear", .. }),
        ),
    ]
}

pub fn no_errors(_: &Device) -> Vec<ErrorCase> {
    vec![]
}

pub fn binary_errors(d: &Device) -> Vec<ErrorCase> {
    let a = Tensor::zeros(d, &[2, 3]).unwrap();
    let b = Tensor::zeros(d, &[4]).unwrap();
    let c = Tensor::zeros(d, &[3, 2, 2]).unwrap();
    vec![
        ("[2,3] + [4]", a.add(&b), |e| {
            matches!(e, Error::ShapeMismatch { op: "add", lhs, rhs } if lhs == &[2, 3] && rhs == &[4])
                && e.to_string().contains("add")
        }),
        ("[2,3] / [3,2,2]", a.div(&c), |e| {
            matches!(e, Error::ShapeMismatch { op: "div", .. })
        }),
    ]
}

pub fn matmul_errors(d: &Device) -> Vec<ErrorCase> {
    let a = Tensor::zeros(d, &[2, 3]).unwrap();
    let b = Tensor::zeros(d, &[4, 5]).unwrap();
    let v = Tensor::zeros(d, &[3]).unwrap();
    let x = Tensor::zeros(d, &[2, 2, 3]).unwrap();
    let y = Tensor::zeros(d, &[3, 3, 4]).unwrap();
    vec![
        ("[2,3] x [4,5]", a.matmul(&b), |e| {
            matches!(e, Error::ShapeMismatch { op: "matmul", .. })
                && e.to_string().starts_with("matmul: shape mismatch")
        }),
        ("[2,3] x [3]", a.matmul(&v), |e| {
            matches!(e, Error::InvalidShape { op: "matmul", .. })
        }),
        ("batch 2 vs 3", x.matmul(&y), |e| {
            matches!(e, Error::ShapeMismatch { op: "matmul", .. })
        }),
    ]
}

macro_rules! unary_op {
    ($name:literal, $method:ident, $reference:expr) => {
        OpInfo {
            name: $name,
            samples: unary_samples,
            run: |t| t[0].$method(),
            reference: |r| map_ref(&r[0], $reference),
            tol: |_| (2e-6, 2e-6),
            errors: no_errors,
        }
    };
}

/// A unary math op: its samples, its f64 formula, and a relative tolerance (GPU `exp` and `log`
/// lose a few ulp more than the activations' formulas).
macro_rules! math_op {
    ($name:literal, $samples:expr, $run:expr, $reference:expr) => {
        OpInfo {
            name: $name,
            samples: $samples,
            run: $run,
            reference: |r| map_ref(&r[0], $reference),
            tol: |_| (1e-6, 2e-5),
            errors: no_errors,
        }
    };
}

macro_rules! binary_op {
    ($name:literal, $method:ident, $f:expr) => {
        OpInfo {
            name: $name,
            samples: binary_samples,
            run: |t| t[0].$method(&t[1]),
            reference: |r| binary_ref(r, $f),
            tol: |_| (1e-6, 1e-6),
            errors: binary_errors,
        }
    };
}

pub fn table() -> Vec<OpInfo> {
    vec![
        unary_op!("relu", relu, |v| if v < 0.0 { 0.0 } else { v }),
        OpInfo {
            name: "leaky_relu",
            samples: unary_samples,
            run: |t| t[0].leaky_relu(0.1),
            reference: |r| map_ref(&r[0], |v| if v < 0.0 { 0.1f32 as f64 * v } else { v }),
            tol: |_| (2e-6, 2e-6),
            errors: no_errors,
        },
        unary_op!("gelu", gelu, |v| 0.5 * v * (1.0 + erf(v / 2f64.sqrt()))),
        unary_op!("gelu_tanh", gelu_tanh, |v| 0.5
            * v
            * (1.0
                + ((2.0 / std::f64::consts::PI).sqrt()
                    * (v + 0.044715 * v * v * v))
                    .tanh())),
        unary_op!("sigmoid", sigmoid, sigmoid),
        unary_op!("tanh", tanh, f64::tanh),
        unary_op!("silu", silu, |v| v * sigmoid(v)),
        math_op!("exp", unary_samples, |t| t[0].exp(), f64::exp),
        math_op!("log", positive_samples, |t| t[0].log(), f64::ln),
        math_op!("sqrt", positive_samples, |t| t[0].sqrt(), f64::sqrt),
        math_op!("rsqrt", positive_samples, |t| t[0].rsqrt(), |v| 1.0
            / v.sqrt()),
        math_op!("abs", unary_samples, |t| t[0].abs(), f64::abs),
        math_op!("neg", unary_samples, |t| t[0].neg(), |v| -v),
        math_op!("recip", unary_samples, |t| t[0].recip(), |v| 1.0 / v),
        math_op!("square", unary_samples, |t| t[0].square(), |v| v * v),
        math_op!("powf(1.5)", positive_samples, |t| t[0].powf(1.5), |v| v
            .powf(1.5)),
        math_op!("powf(3)", unary_samples, |t| t[0].powf(3.0), |v| v.powi(3)),
        math_op!("powf(-2)", unary_samples, |t| t[0].powf(-2.0), |v| v
            .powi(-2)),
        math_op!("clamp", unary_samples, |t| t[0].clamp(-1.5, 2.5), |v| v
            .clamp(-1.5, 2.5)),
        math_op!("softplus", unary_samples, |t| t[0].softplus(), |v| v
            .max(0.0)
            + (-v.abs()).exp().ln_1p()),
        math_op!("elu", unary_samples, |t| t[0].elu(0.7), |v| if v > 0.0 {
            v
        } else {
            0.7f32 as f64 * v.exp_m1()
        }),
        math_op!(
            "add_scalar",
            unary_samples,
            |t| t[0].add_scalar(0.25),
            |v| v + 0.25
        ),
        math_op!(
            "sub_scalar",
            unary_samples,
            |t| t[0].sub_scalar(0.25),
            |v| v - 0.25
        ),
        math_op!(
            "mul_scalar",
            unary_samples,
            |t| t[0].mul_scalar(-3.0),
            |v| v * -3.0
        ),
        math_op!("div_scalar", unary_samples, |t| t[0].div_scalar(7.0), |v| v
            / 7.0),
        OpInfo {
            name: "sum(-1)",
            samples: reduce_samples_with_empty,
            run: |t| t[0].sum(-1, false),
            reference: |r| reduce_ref(&r[0], -1, false, |v| v.iter().sum()),
            tol: |r| (1e-6 * (1 + r[0].shape[r[0].shape.len() - 1]) as f64, 1e-6),
            errors: reduce_errors,
        },
        OpInfo {
            name: "sum(0, keepdim)",
            samples: reduce_samples_with_empty,
            run: |t| t[0].sum(0, true),
            reference: |r| reduce_ref(&r[0], 0, true, |v| v.iter().sum()),
            tol: |r| (1e-6 * (1 + r[0].shape[0]) as f64, 1e-6),
            errors: no_errors,
        },
        OpInfo {
            name: "mean(-1, keepdim)",
            samples: reduce_samples_with_empty,
            run: |t| t[0].mean(-1, true),
            reference: |r| reduce_ref(&r[0], -1, true, mean),
            tol: |_| (1e-6, 1e-5),
            errors: no_errors,
        },
        OpInfo {
            name: "var(0)",
            samples: reduce_samples_with_empty,
            run: |t| t[0].var(0, false),
            reference: |r| reduce_ref(&r[0], 0, false, var),
            tol: |_| (1e-5, 1e-5),
            errors: no_errors,
        },
        OpInfo {
            name: "max(-1)",
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
            name: "min(0)",
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
            name: "sum_all",
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
            name: "softmax(-1)",
            samples: reduce_samples,
            run: |t| t[0].softmax(-1),
            reference: |r| softmax_ref(&r[0], -1, false),
            tol: |_| (1e-6, 1e-5),
            errors: no_errors,
        },
        OpInfo {
            name: "softmax(0)",
            samples: reduce_samples,
            run: |t| t[0].softmax(0),
            reference: |r| softmax_ref(&r[0], 0, false),
            tol: |_| (1e-6, 1e-5),
            errors: no_errors,
        },
        OpInfo {
            name: "log_softmax(-1)",
            samples: reduce_samples,
            run: |t| t[0].log_softmax(-1),
            reference: |r| softmax_ref(&r[0], -1, true),
            tol: |_| (2e-5, 1e-5),
            errors: no_errors,
        },
        OpInfo {
            name: "transpose(0, -1)",
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
            name: "permute([2, 0, 1])",
            samples: || {
                shaped(
                    &[
                        &[2, 3, 5],
                        &[1, 4, 1],
                        &[3, 0, 2],
                        &[7, 1, 33],
                        &[16, 17, 15],
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
            name: "narrow(-1, 1, 2)",
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
            name: "narrow(0, 1, 1)",
            samples: || shaped(&[&[3, 4], &[2, 3, 5], &[2, 300, 3], &[4, 0]], 73),
            run: |t| t[0].narrow(0, 1, 1),
            reference: |r| narrow_ref(&r[0], 0, 1, 1),
            tol: |_| (0.0, 0.0),
            errors: no_errors,
        },
        OpInfo {
            name: "cat(0)",
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
            name: "cat(-1)",
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
            name: "layer_norm(w, b)",
            samples: norm_samples,
            run: |t| t[0].layer_norm(Some(&t[1]), Some(&t[2]), 1e-5),
            reference: |r| norm_ref(r, 1e-5, false, true),
            tol: |_| (1e-5, 1e-5),
            errors: norm_errors,
        },
        OpInfo {
            name: "layer_norm",
            samples: norm_samples,
            run: |t| t[0].layer_norm(None, None, 1e-3),
            reference: |r| norm_ref(r, 1e-3, false, false),
            tol: |_| (1e-5, 1e-5),
            errors: no_errors,
        },
        OpInfo {
            name: "rms_norm(w)",
            samples: norm_samples,
            run: |t| t[0].rms_norm(Some(&t[1]), 1e-6),
            reference: |r| norm_ref(r, 1e-6, true, true),
            tol: |_| (1e-5, 1e-5),
            errors: no_errors,
        },
        OpInfo {
            name: "where",
            samples: where_samples,
            run: |t| Tensor::where_cond(&t[0], &t[1], &t[2]),
            reference: where_ref,
            tol: |_| (0.0, 0.0),
            errors: where_errors,
        },
        OpInfo {
            name: "broadcast_to",
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
            name: "argmax(-1)",
            samples: argmax_samples,
            run: |t| t[0].argmax(-1, false),
            reference: |r| argmax_ref(&r[0], -1, false),
            tol: |_| (0.0, 0.0),
            errors: index_errors,
        },
        OpInfo {
            name: "argmax(0, keepdim)",
            samples: argmax_samples,
            run: |t| t[0].argmax(0, true),
            reference: |r| argmax_ref(&r[0], 0, true),
            tol: |_| (0.0, 0.0),
            errors: no_errors,
        },
        OpInfo {
            name: "index_select(0)",
            samples: || index_samples(0),
            run: |t| t[0].index_select(0, &as_indices(&t[1])),
            reference: |r| index_ref(r, 0),
            tol: |_| (0.0, 0.0),
            errors: no_errors,
        },
        OpInfo {
            name: "index_select(1)",
            samples: || index_samples(1),
            run: |t| t[0].index_select(1, &as_indices(&t[1])),
            reference: |r| index_ref(r, 1),
            tol: |_| (0.0, 0.0),
            errors: no_errors,
        },
        OpInfo {
            name: "gather(1)",
            samples: || gather_samples(1),
            run: |t| t[0].gather(1, &as_indices(&t[1])),
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
            name: "gather(0)",
            samples: || gather_samples(0),
            run: |t| t[0].gather(0, &as_indices(&t[1])),
            reference: |r| gather_ref(r, 0),
            tol: |_| (0.0, 0.0),
            errors: no_errors,
        },
        OpInfo {
            name: "embedding",
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
            run: |t| Tensor::embedding(&t[0], &as_indices(&t[1])),
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
        OpInfo {
            name: "conv2d(bias)",
            samples: conv_samples,
            run: |t| t[0].conv2d(&t[1], Some(&t[2]), Default::default()),
            reference: |r| conv_ref(r, Default::default(), true),
            tol: |r| {
                (
                    1e-6 * (1 + r[1].data.len() / r[1].shape[0].max(1)) as f64,
                    1e-5,
                )
            },
            errors: conv_errors,
        },
        OpInfo {
            name: "conv2d(stride 2, pad 1, dilation 2)",
            samples: conv_samples,
            run: |t| {
                t[0].conv2d(
                    &t[1],
                    None,
                    kiln::Conv2dOptions {
                        stride: (2, 1),
                        padding: (1, 2),
                        dilation: (2, 1),
                    },
                )
            },
            reference: |r| {
                conv_ref(
                    r,
                    kiln::Conv2dOptions {
                        stride: (2, 1),
                        padding: (1, 2),
                        dilation: (2, 1),
                    },
                    false,
                )
            },
            tol: |r| {
                (
                    1e-6 * (1 + r[1].data.len() / r[1].shape[0].max(1)) as f64,
                    1e-5,
                )
            },
            errors: no_errors,
        },
        OpInfo {
            name: "max_pool2d(3, 2, 1)",
            samples: || {
                shaped(
                    &[&[2, 3, 9, 7], &[1, 1, 5, 5], &[1, 2, 17, 16], &[0, 2, 4, 4]],
                    111,
                )
            },
            run: |t| t[0].max_pool2d((3, 3), (2, 2), (1, 1)),
            reference: |r| pool_ref(&r[0], (3, 3), (2, 2), (1, 1), true),
            tol: |_| (0.0, 0.0),
            errors: no_errors,
        },
        OpInfo {
            name: "avg_pool2d(2, 2)",
            samples: || {
                shaped(
                    &[&[2, 3, 9, 7], &[1, 1, 5, 5], &[1, 2, 17, 16], &[0, 2, 4, 4]],
                    112,
                )
            },
            run: |t| t[0].avg_pool2d((2, 2), (2, 2), (0, 0)),
            reference: |r| pool_ref(&r[0], (2, 2), (2, 2), (0, 0), false),
            tol: |_| (1e-6, 1e-6),
            errors: no_errors,
        },
        OpInfo {
            name: "avg_pool2d(3, 1, 1)",
            samples: || shaped(&[&[1, 2, 6, 5], &[2, 1, 3, 3]], 113),
            run: |t| t[0].avg_pool2d((3, 3), (1, 1), (1, 1)),
            reference: |r| pool_ref(&r[0], (3, 3), (1, 1), (1, 1), false),
            tol: |_| (1e-6, 1e-6),
            errors: no_errors,
        },
        binary_op!("add", add, |a, b| a + b),
        binary_op!("sub", sub, |a, b| a - b),
        binary_op!("mul", mul, |a, b| a * b),
        binary_op!("div", div, |a, b| a / b),
        binary_op!("maximum", maximum, f64::max),
        binary_op!("minimum", minimum, f64::min),
        OpInfo {
            name: "pow",
            samples: pow_samples,
            run: |t| t[0].pow(&t[1]),
            reference: |r| binary_ref(r, f64::powf),
            tol: |_| (1e-6, 2e-5),
            errors: no_errors,
        },
        binary_op!("eq", eq, |a, b| f64::from(u8::from(a == b))),
        binary_op!("ne", ne, |a, b| f64::from(u8::from(a != b))),
        binary_op!("lt", lt, |a, b| f64::from(u8::from(a < b))),
        binary_op!("le", le, |a, b| f64::from(u8::from(a <= b))),
        binary_op!("gt", gt, |a, b| f64::from(u8::from(a > b))),
        binary_op!("ge", ge, |a, b| f64::from(u8::from(a >= b))),
        OpInfo {
            name: "matmul",
            samples: matmul_samples,
            run: |t| t[0].matmul(&t[1]),
            reference: matmul_ref,
            // f32 accumulation over k terms of |a·b| <= 1: the absolute error grows with k.
            tol: |r| (1e-6 * (1 + r[0].shape[r[0].shape.len() - 1]) as f64, 1e-5),
            errors: matmul_errors,
        },
        OpInfo {
            name: "matmul(aᵀ, b)",
            samples: || matmul_t_samples(true, false),
            run: |t| t[0].matmul_transposed(&t[1], true, false),
            reference: |r| matmul_ref(&[t_last(&r[0]), r[1].clone()]),
            tol: |r| (1e-6 * (1 + r[0].shape[r[0].shape.len() - 2]) as f64, 1e-5),
            errors: no_errors,
        },
        OpInfo {
            name: "matmul(a, bᵀ)",
            samples: || matmul_t_samples(false, true),
            run: |t| t[0].matmul_transposed(&t[1], false, true),
            reference: |r| matmul_ref(&[r[0].clone(), t_last(&r[1])]),
            tol: |r| (1e-6 * (1 + r[0].shape[r[0].shape.len() - 1]) as f64, 1e-5),
            errors: no_errors,
        },
        OpInfo {
            name: "matmul(aᵀ, bᵀ)",
            samples: || matmul_t_samples(true, true),
            run: |t| t[0].matmul_transposed(&t[1], true, true),
            reference: |r| matmul_ref(&[t_last(&r[0]), t_last(&r[1])]),
            tol: |r| (1e-6 * (1 + r[0].shape[r[0].shape.len() - 2]) as f64, 1e-5),
            errors: no_errors,
        },
        OpInfo {
            name: "linear+bias+gelu_tanh",
            samples: linear_samples,
            run: |t| t[0].linear(&t[1], Some(&t[2]), Some(kiln::UnaryOp::GeluTanh)),
            reference: |r| {
                linear_ref(r, |v| {
                    0.5 * v
                        * (1.0
                            + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v))
                                .tanh())
                })
            },
            tol: |r| (1e-6 * (2 + r[1].shape[1]) as f64, 1e-5),
            errors: linear_errors,
        },
        OpInfo {
            name: "linear",
            samples: linear_samples,
            run: |t| t[0].linear(&t[1], None, None),
            reference: |r| {
                let zero = Ref {
                    shape: r[2].shape.clone(),
                    data: vec![0.0; r[2].data.len()],
                };
                linear_ref(&[r[0].clone(), r[1].clone(), zero], |v| v)
            },
            tol: |r| (1e-6 * (1 + r[1].shape[1]) as f64, 1e-5),
            errors: no_errors,
        },
    ]
}
