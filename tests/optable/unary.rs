//! The op table's unary ops: activations and scalar math.

use super::*;

macro_rules! unary_op {
    ($name:literal, $method:ident, $reference:expr, $grad:expr) => {
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: $name,
            samples: unary_samples,
            run: |t| t[0].$method(),
            reference: |r| map_ref(&r[0], $reference),
            tol: |_| (2e-6, 2e-6),
            errors: no_errors,
            grad: $grad,
        }
    };
}

/// A unary math op: its samples, its f64 formula, and a relative tolerance (GPU `exp` and `log`
/// lose a few ulp more than the activations' formulas).
macro_rules! math_op {
    ($name:literal, $samples:expr, $run:expr, $reference:expr, $grad:expr) => {
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: $name,
            samples: $samples,
            run: $run,
            reference: |r| map_ref(&r[0], $reference),
            tol: |_| (1e-6, 2e-5),
            errors: no_errors,
            grad: $grad,
        }
    };
}

/// The unary entries of the op table.
pub fn table() -> Vec<OpInfo> {
    vec![
        unary_op!("relu", relu, |v| if v < 0.0 { 0.0 } else { v }, || un(
            -3.0,
            3.0,
            &[0.0]
        )),
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "hard_sigmoid",
            grad: || un(-3.0, 3.0, &[-2.5, 2.5]),
            samples: unary_samples,
            run: |t| t[0].hard_sigmoid(0.2, 0.5),
            reference: |r| map_ref(&r[0], |v| (0.2f32 as f64 * v + 0.5).clamp(0.0, 1.0)),
            tol: |_| (2e-6, 2e-6),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "hard_swish",
            grad: || un(-5.0, 5.0, &[-3.0, 3.0]),
            samples: unary_samples,
            run: |t| t[0].hard_swish(),
            reference: |r| map_ref(&r[0], |v| v * (v / 6.0 + 0.5).clamp(0.0, 1.0)),
            tol: |_| (2e-6, 2e-6),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "leaky_relu",
            grad: || un(-3.0, 3.0, &[0.0]),
            samples: unary_samples,
            run: |t| t[0].leaky_relu(0.1),
            reference: |r| map_ref(&r[0], |v| if v < 0.0 { 0.1f32 as f64 * v } else { v }),
            tol: |_| (2e-6, 2e-6),
            errors: no_errors,
        },
        unary_op!(
            "gelu",
            gelu,
            |v| 0.5 * v * (1.0 + erf(v / 2f64.sqrt())),
            || un(-3.0, 3.0, &[])
        ),
        unary_op!(
            "gelu_tanh",
            gelu_tanh,
            |v| 0.5
                * v
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh()),
            || un(-3.0, 3.0, &[])
        ),
        unary_op!("sigmoid", sigmoid, sigmoid, || un(-3.0, 3.0, &[])),
        unary_op!("tanh", tanh, f64::tanh, || un(-3.0, 3.0, &[])),
        unary_op!("silu", silu, |v| v * sigmoid(v), || un(-3.0, 3.0, &[])),
        math_op!("exp", unary_samples, |t| t[0].exp(), f64::exp, || un(
            -3.0,
            3.0,
            &[]
        )),
        math_op!("log", positive_samples, |t| t[0].log(), f64::ln, || un(
            0.2,
            4.0,
            &[]
        )),
        math_op!("sqrt", positive_samples, |t| t[0].sqrt(), f64::sqrt, || un(
            0.2,
            4.0,
            &[]
        )),
        math_op!(
            "rsqrt",
            positive_samples,
            |t| t[0].rsqrt(),
            |v| 1.0 / v.sqrt(),
            || un(0.2, 4.0, &[])
        ),
        math_op!("abs", unary_samples, |t| t[0].abs(), f64::abs, || un(
            -3.0,
            3.0,
            &[0.0]
        )),
        math_op!("neg", unary_samples, |t| t[0].neg(), |v| -v, || un(
            -3.0,
            3.0,
            &[]
        )),
        math_op!(
            "recip",
            unary_samples,
            |t| t[0].recip(),
            |v| 1.0 / v,
            || un(-3.0, 3.0, &[0.0]).with_gap(0.4)
        ),
        math_op!(
            "square",
            unary_samples,
            |t| t[0].square(),
            |v| v * v,
            || un(-3.0, 3.0, &[])
        ),
        math_op!(
            "powf(1.5)",
            positive_samples,
            |t| t[0].powf(1.5),
            |v| v.powf(1.5),
            || un(0.2, 4.0, &[])
        ),
        math_op!(
            "powf(3)",
            unary_samples,
            |t| t[0].powf(3.0),
            |v| v.powi(3),
            || un(-3.0, 3.0, &[])
        ),
        math_op!(
            "powf(-2)",
            unary_samples,
            |t| t[0].powf(-2.0),
            |v| v.powi(-2),
            || un(-3.0, 3.0, &[0.0]).with_gap(0.4)
        ),
        math_op!(
            "clamp",
            unary_samples,
            |t| t[0].clamp(-1.5, 2.5),
            |v| v.clamp(-1.5, 2.5),
            || un(-4.0, 4.0, &[-1.5, 2.5])
        ),
        math_op!("erf", unary_samples, |t| t[0].erf(), erf, || un(
            -3.0,
            3.0,
            &[]
        )),
        math_op!("sin", trig_samples, |t| t[0].sin(), f64::sin, || un(
            -3.0,
            3.0,
            &[]
        )),
        math_op!("cos", trig_samples, |t| t[0].cos(), f64::cos, || un(
            -3.0,
            3.0,
            &[]
        )),
        math_op!("floor", unary_samples, |t| t[0].floor(), f64::floor, steps),
        math_op!("ceil", unary_samples, |t| t[0].ceil(), f64::ceil, steps),
        math_op!(
            "sign",
            unary_samples,
            |t| t[0].sign(),
            |v| if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                0.0
            },
            || un(-3.0, 3.0, &[0.0])
        ),
        math_op!(
            "round",
            unary_samples,
            |t| t[0].round(),
            f64::round_ties_even,
            || un(-3.0, 3.0, &[-2.5, -1.5, -0.5, 0.5, 1.5, 2.5])
        ),
        math_op!(
            "softplus",
            unary_samples,
            |t| t[0].softplus(),
            |v| v.max(0.0) + (-v.abs()).exp().ln_1p(),
            || un(-3.0, 3.0, &[])
        ),
        math_op!(
            "elu",
            unary_samples,
            |t| t[0].elu(0.7),
            |v| if v > 0.0 {
                v
            } else {
                0.7f32 as f64 * v.exp_m1()
            },
            || un(-3.0, 3.0, &[0.0])
        ),
        math_op!(
            "add_scalar",
            unary_samples,
            |t| t[0].add_scalar(0.25),
            |v| v + 0.25,
            || un(-3.0, 3.0, &[])
        ),
        math_op!(
            "sub_scalar",
            unary_samples,
            |t| t[0].sub_scalar(0.25),
            |v| v - 0.25,
            || un(-3.0, 3.0, &[])
        ),
        math_op!(
            "mul_scalar",
            unary_samples,
            |t| t[0].mul_scalar(-3.0),
            |v| v * -3.0,
            || un(-3.0, 3.0, &[])
        ),
        math_op!(
            "div_scalar",
            unary_samples,
            |t| t[0].div_scalar(7.0),
            |v| v / 7.0,
            || un(-3.0, 3.0, &[])
        ),
    ]
}

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

/// Gradient samples for the integer steps (floor, ceil): away from every integer.
fn steps() -> Grad {
    un(-3.0, 3.0, &[-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0])
}

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

/// Samples for sin and cos: the unary shapes over [-20, 20], and edges up to |x| = 1e4, the
/// range kiln's GPU sin and cos are accurate on (README, Numerics).
pub fn trig_samples() -> Vec<Sample> {
    let mut out = unary_samples();
    for s in &mut out {
        for v in &mut s.inputs[0].1 {
            *v = v.clamp(-20.0, 20.0);
        }
    }
    let special = vec![0.0, -0.0, 1e-30, 3.1, 1e3, -1e3, 1e4, -1e4, 12345.6];
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
