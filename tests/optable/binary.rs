//! The op table's binary ops with broadcasting, comparisons, and `where`.

use super::*;
use kiln::{Device, Error, Tensor};

macro_rules! binary_op {
    ($name:literal, $method:ident, $f:expr, $grad:expr) => {
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: $name,
            samples: binary_samples,
            run: |t| t[0].$method(&t[1]),
            reference: |r| binary_ref(r, $f),
            tol: |_| (1e-6, 1e-6),
            errors: binary_errors,
            grad: $grad,
        }
    };
}

/// The binary entries of the op table.
pub fn table() -> Vec<OpInfo> {
    vec![
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "where",
            grad: || Grad::wrt(&[1, 2]),
            samples: where_samples,
            run: |t| Tensor::where_cond(&t[0], &t[1], &t[2]),
            reference: where_ref,
            tol: |_| (0.0, 0.0),
            errors: where_errors,
        },
        binary_op!("add", add, |a, b| a + b, || binary_grad(-2.0, 2.0)),
        binary_op!("sub", sub, |a, b| a - b, || binary_grad(-2.0, 2.0)),
        binary_op!("mul", mul, |a, b| a * b, || binary_grad(-2.0, 2.0)),
        binary_op!("div", div, |a, b| a / b, || binary_grad(-2.0, 2.0)),
        binary_op!("maximum", maximum, f64::max, || binary_grad(-2.0, 2.0)),
        binary_op!("minimum", minimum, f64::min, || binary_grad(-2.0, 2.0)),
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "pow",
            grad: || binary_grad(0.5, 2.0),
            samples: pow_samples,
            run: |t| t[0].pow(&t[1]),
            reference: |r| binary_ref(r, f64::powf),
            tol: |_| (1e-6, 2e-5),
            errors: no_errors,
        },
        binary_op!("eq", eq, |a, b| f64::from(u8::from(a == b)), || {
            Grad::NoGrad("a comparison: a 0/1 mask")
        }),
        binary_op!("ne", ne, |a, b| f64::from(u8::from(a != b)), || {
            Grad::NoGrad("a comparison: a 0/1 mask")
        }),
        binary_op!(
            "lt",
            lt,
            |a, b| f64::from(u8::from(a < b)),
            || Grad::NoGrad("a comparison: a 0/1 mask")
        ),
        binary_op!("le", le, |a, b| f64::from(u8::from(a <= b)), || {
            Grad::NoGrad("a comparison: a 0/1 mask")
        }),
        binary_op!(
            "gt",
            gt,
            |a, b| f64::from(u8::from(a > b)),
            || Grad::NoGrad("a comparison: a 0/1 mask")
        ),
        binary_op!("ge", ge, |a, b| f64::from(u8::from(a >= b)), || {
            Grad::NoGrad("a comparison: a 0/1 mask")
        }),
    ]
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
