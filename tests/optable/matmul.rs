//! The op table's matrix products: matmul (plain and transposed operands) and linear.

use super::*;
use kiln::{Device, Error, Tensor};

/// The matmul entries of the op table.
pub fn table() -> Vec<OpInfo> {
    vec![
        OpInfo {
            index_inputs: &[],
            name: "matmul",
            grad: || matmul_grad(false, false),
            samples: matmul_samples,
            run: |t| t[0].matmul(&t[1]),
            reference: matmul_ref,
            // f32 accumulation over k terms of |a·b| <= 1: the absolute error grows with k.
            tol: |r| (1e-6 * (1 + r[0].shape[r[0].shape.len() - 1]) as f64, 1e-5),
            errors: matmul_errors,
        },
        OpInfo {
            index_inputs: &[],
            name: "matmul(aᵀ, b)",
            grad: || matmul_grad(true, false),
            samples: || matmul_t_samples(true, false),
            run: |t| t[0].matmul_transposed(&t[1], true, false),
            reference: |r| matmul_ref(&[t_last(&r[0]), r[1].clone()]),
            tol: |r| (1e-6 * (1 + r[0].shape[r[0].shape.len() - 2]) as f64, 1e-5),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            name: "matmul(a, bᵀ)",
            grad: || matmul_grad(false, true),
            samples: || matmul_t_samples(false, true),
            run: |t| t[0].matmul_transposed(&t[1], false, true),
            reference: |r| matmul_ref(&[r[0].clone(), t_last(&r[1])]),
            tol: |r| (1e-6 * (1 + r[0].shape[r[0].shape.len() - 1]) as f64, 1e-5),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            name: "matmul(aᵀ, bᵀ)",
            grad: || matmul_grad(true, true),
            samples: || matmul_t_samples(true, true),
            run: |t| t[0].matmul_transposed(&t[1], true, true),
            reference: |r| matmul_ref(&[t_last(&r[0]), t_last(&r[1])]),
            tol: |r| (1e-6 * (1 + r[0].shape[r[0].shape.len() - 2]) as f64, 1e-5),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            name: "linear+bias+gelu_tanh",
            grad: || Grad::wrt(THREE),
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
            index_inputs: &[],
            // Version 4's plain epilogue (a bias, then ReLU) on lavapipe.
            name: "linear+bias+relu",
            grad: || Grad::wrt(THREE),
            samples: linear_samples,
            run: |t| t[0].linear(&t[1], Some(&t[2]), Some(kiln::UnaryOp::Relu)),
            reference: |r| linear_ref(r, |v| v.max(0.0)),
            tol: |r| (1e-6 * (2 + r[1].shape[1]) as f64, 1e-5),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            name: "linear",
            grad: || Grad::wrt(THREE),
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
        OpInfo {
            index_inputs: &[],
            name: "linear_add(w, b, residual)",
            grad: || Grad::wrt(&[0, 1, 2, 3]),
            samples: linear_residual_samples,
            run: |t| t[0].linear_add(&t[1], Some(&t[2]), &t[3]),
            reference: |r| {
                let mut out = linear_ref(&r[..3], |v| v);
                for (v, &x) in out.data.iter_mut().zip(&r[3].data) {
                    *v += x;
                }
                out
            },
            tol: |r| (1e-6 * (1 + r[1].shape[1]) as f64, 1e-5),
            errors: linear_residual_errors,
        },
    ]
}

/// The linear samples with a residual of the output's shape.
pub fn linear_residual_samples() -> Vec<Sample> {
    let mut rng = Lcg(45);
    linear_samples()
        .into_iter()
        .map(|mut s| {
            let mut out = s.inputs[0].0.clone();
            *out.last_mut().unwrap() = s.inputs[1].0[0];
            let n = out.iter().product();
            s.inputs.push((out, rng.vec(n, -1.0, 1.0)));
            s
        })
        .collect()
}

fn linear_residual_errors(d: &Device) -> Vec<ErrorCase> {
    let x = Tensor::zeros(d, &[2, 3]).unwrap();
    let w = Tensor::zeros(d, &[4, 3]).unwrap();
    vec![(
        "residual [4, 2] for a [2, 4] output",
        x.linear_add(&w, None, &Tensor::zeros(d, &[4, 2]).unwrap()),
        |e| matches!(e, Error::ShapeMismatch { op: "linear", .. }),
    )]
}

pub fn matmul_samples() -> Vec<Sample> {
    let mut rng = Lcg(33);
    let shapes: Vec<(Vec<usize>, Vec<usize>)> = vec![
        (vec![300, 257], vec![257, 129]), // the named case: no dimension divides the tile
        (vec![16, 16], vec![16, 16]),
        (vec![15, 17], vec![17, 31]),
        (vec![17, 33], vec![33, 15]),
        (vec![300, 200], vec![200, 9]), // many weight rows, few columns: the CPU's row dots
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
