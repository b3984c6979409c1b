//! Gradient checks: for every differentiable op of the op table (`tests/optable`), backward on
//! each device is compared with central finite differences of the op's f64 reference, computed
//! on the CPU in f64. The op's output gradient is a fixed random tensor, so each check is a
//! vector-Jacobian product: d/dx_j Σ_k gy_k · f(x)_k.

mod common;
mod optable;

use common::*;
use kiln::{Device, Tensor};
use optable::*;

/// How an op of the table is checked.
enum Spec {
    /// Differentiable in these inputs, on these samples (`None`: the table's own samples that
    /// are small and moderate enough for finite differences).
    Check {
        wrt: &'static [usize],
        samples: Option<Vec<Sample>>,
    },
    /// Not differentiable, and why.
    NoGrad(&'static str),
}

use Spec::{Check, NoGrad};

const ONE: &[usize] = &[0];
const TWO: &[usize] = &[0, 1];
const THREE: &[usize] = &[0, 1, 2];

/// Shapes for elementwise gradient samples: a matrix, an odd vector, a scalar, an empty one.
const SHAPES: &[&[usize]] = &[&[2, 3, 5], &[7], &[], &[0, 3]];

/// Random values in `lo..hi`, moved at least `gap` away from every point of `kinks`.
fn values(rng: &mut Lcg, n: usize, lo: f32, hi: f32, kinks: &[f32], gap: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            loop {
                let v = rng.uniform(lo, hi);
                if kinks.iter().all(|k| (v - k).abs() >= gap) {
                    break v;
                }
            }
        })
        .collect()
}

fn unary(lo: f32, hi: f32, kinks: &[f32]) -> Option<Vec<Sample>> {
    let mut rng = Lcg(7);
    Some(
        SHAPES
            .iter()
            .map(|s| Sample {
                inputs: vec![(
                    s.to_vec(),
                    values(&mut rng, s.iter().product(), lo, hi, kinks, 0.05),
                )],
            })
            .collect(),
    )
}

/// Broadcasting pairs; `b` stays away from zero (division) and `a` is positive for `pow`.
fn binary(a_lo: f32, a_hi: f32) -> Option<Vec<Sample>> {
    let mut rng = Lcg(8);
    let pairs: &[(&[usize], &[usize])] = &[
        (&[3, 4], &[3, 4]),
        (&[3, 4], &[4]),
        (&[4], &[3, 4]),
        (&[2, 1, 5], &[3, 1]),
        (&[], &[2, 3]),
        (&[0, 3], &[3]),
    ];
    Some(
        pairs
            .iter()
            .map(|(a, b)| {
                let na = a.iter().product();
                let nb: usize = b.iter().product();
                let bv = values(&mut rng, nb, -2.0, 2.0, &[0.0], 0.5);
                Sample {
                    inputs: vec![(a.to_vec(), rng.vec(na, a_lo, a_hi)), (b.to_vec(), bv)],
                }
            })
            .collect(),
    )
}

/// Small matmul operands (finite differences cost inputs × a reference product each), stored
/// already transposed where the op transposes (as the table's `matmul_t_samples`).
fn matmul_small(ta: bool, tb: bool) -> Option<Vec<Sample>> {
    let cases: &[(&[usize], &[usize])] = &[
        (&[5, 7], &[7, 3]),
        (&[1, 9], &[9, 1]),
        (&[2, 3, 4, 5], &[5, 2]),
        (&[2, 1, 3, 4], &[3, 4, 2]),
        (&[4, 0], &[0, 3]),
    ];
    Some(transposed_pairs(cases, ta, tb, 9))
}

fn spec(name: &str) -> Spec {
    let own = || Check {
        wrt: ONE,
        samples: None,
    };
    let un = |lo, hi, kinks: &[f32]| Check {
        wrt: ONE,
        samples: unary(lo, hi, kinks),
    };
    match name {
        "relu" | "leaky_relu" | "abs" => un(-3.0, 3.0, &[0.0]),
        "gelu" | "gelu_tanh" | "sigmoid" | "tanh" | "silu" | "exp" | "neg" | "square"
        | "softplus" | "add_scalar" | "sub_scalar" | "mul_scalar" | "div_scalar" | "powf(3)" => {
            un(-3.0, 3.0, &[])
        }
        "elu" => un(-3.0, 3.0, &[0.0]),
        "log" | "sqrt" | "rsqrt" | "powf(1.5)" => un(0.2, 4.0, &[]),
        "recip" | "powf(-2)" => un(-3.0, 3.0, &[0.0]).with_gap(0.4),
        "clamp" => un(-4.0, 4.0, &[-1.5, 2.5]),
        "sum(-1)" | "sum(0, keepdim)" | "mean(-1, keepdim)" | "var(0)" | "max(-1)" | "min(0)"
        | "sum_all" | "softmax(-1)" | "softmax(0)" | "log_softmax(-1)" => own(),
        "transpose(0, -1)" | "permute([2, 0, 1])" | "narrow(-1, 1, 2)" | "narrow(0, 1, 1)" => own(),
        "cat(0)" | "cat(-1)" => Check {
            wrt: TWO,
            samples: None,
        },
        "layer_norm(w, b)" | "layer_norm" | "rms_norm(w)" => Check {
            wrt: THREE,
            samples: None,
        },
        "broadcast_to" => own(),
        "where" => Check {
            wrt: &[1, 2],
            samples: None,
        },
        "index_select(0)" | "index_select(1)" | "gather(1)" | "gather(0)" | "embedding" => own(),
        "conv2d(bias)" | "conv2d(stride 2, pad 1, dilation 2)" => Check {
            wrt: THREE,
            samples: None,
        },
        "max_pool2d(3, 2, 1)" | "avg_pool2d(2, 2)" | "avg_pool2d(3, 1, 1)" => own(),
        "add" | "sub" | "mul" | "div" | "maximum" | "minimum" => Check {
            wrt: TWO,
            samples: binary(-2.0, 2.0),
        },
        "pow" => Check {
            wrt: TWO,
            samples: binary(0.5, 2.0),
        },
        "eq" | "ne" | "lt" | "le" | "gt" | "ge" => NoGrad("a comparison: a 0/1 mask"),
        "argmax(-1)" | "argmax(0, keepdim)" => NoGrad("integer output"),
        "matmul" => Check {
            wrt: TWO,
            samples: matmul_small(false, false),
        },
        "matmul(aᵀ, b)" => Check {
            wrt: TWO,
            samples: matmul_small(true, false),
        },
        "matmul(a, bᵀ)" => Check {
            wrt: TWO,
            samples: matmul_small(false, true),
        },
        "matmul(aᵀ, bᵀ)" => Check {
            wrt: TWO,
            samples: matmul_small(true, true),
        },
        "linear+bias+gelu_tanh" | "linear" => Check {
            wrt: THREE,
            samples: None,
        },
        other => panic!("op `{other}` of the op table has no gradient spec in tests/grad.rs"),
    }
}

impl Spec {
    /// The same samples regenerated with a wider distance from the kinks.
    fn with_gap(self, gap: f32) -> Spec {
        let Check {
            wrt,
            samples: Some(samples),
        } = self
        else {
            return self;
        };
        let mut rng = Lcg(17);
        let samples = samples
            .into_iter()
            .map(|s| Sample {
                inputs: s
                    .inputs
                    .into_iter()
                    .map(|(shape, v)| {
                        let n = v.len();
                        (shape, values(&mut rng, n, -3.0, 3.0, &[0.0], gap))
                    })
                    .collect(),
            })
            .collect();
        Check {
            wrt,
            samples: Some(samples),
        }
    }
}

/// Largest total input size of a table sample used for finite differences.
const MAX_INPUTS: usize = 1200;

fn usable(s: &Sample) -> bool {
    s.inputs.iter().map(|i| i.1.len()).sum::<usize>() <= MAX_INPUTS
        && s.inputs
            .iter()
            .all(|i| i.1.iter().all(|v| v.is_finite() && v.abs() <= 10.0))
}

fn refs(inputs: &[(Vec<usize>, Vec<f64>)]) -> Vec<Ref> {
    inputs
        .iter()
        .map(|(s, v)| Ref {
            shape: s.clone(),
            data: v.clone(),
        })
        .collect()
}

/// Central differences of Σ gy · f(x) in input `i`, in f64.
fn numeric_grad(op: &OpInfo, x: &[(Vec<usize>, Vec<f64>)], i: usize, gy: &[f64]) -> Vec<f64> {
    const H: f64 = 1e-5;
    let dot = |inputs: &[(Vec<usize>, Vec<f64>)]| -> f64 {
        let out = (op.reference)(&refs(inputs));
        out.data.iter().zip(gy).map(|(a, b)| a * b).sum()
    };
    let mut work = x.to_vec();
    (0..x[i].1.len())
        .map(|j| {
            let v = x[i].1[j];
            work[i].1[j] = v + H;
            let plus = dot(&work);
            work[i].1[j] = v - H;
            let minus = dot(&work);
            work[i].1[j] = v;
            (plus - minus) / (2.0 * H)
        })
        .collect()
}

fn check_op_on(op: &OpInfo, wrt: &[usize], samples: &[Sample], dev: &Device) -> usize {
    let mut checked = 0;
    for (si, sample) in samples.iter().enumerate() {
        let what = format!(
            "{} grad sample {si} {:?} on {dev}",
            op.name,
            sample.inputs.iter().map(|i| &i.0).collect::<Vec<_>>()
        );
        let inputs: Vec<Tensor> = sample
            .inputs
            .iter()
            .enumerate()
            .map(|(k, (s, v))| {
                let t = Tensor::from_slice(dev, v, s).unwrap();
                if wrt.contains(&k) {
                    t.with_grad().unwrap()
                } else {
                    t
                }
            })
            .collect();
        let y = (op.run)(&inputs).unwrap_or_else(|e| panic!("{what}: forward: {e}"));
        let mut rng = Lcg(1000 + si as u64);
        let gy = rng.vec(y.numel(), -1.0, 1.0);
        let gy_t = Tensor::from_slice(dev, &gy, y.shape()).unwrap();
        y.backward_with(&gy_t)
            .unwrap_or_else(|e| panic!("{what}: backward: {e}"));
        let x64: Vec<(Vec<usize>, Vec<f64>)> = sample
            .inputs
            .iter()
            .map(|(s, v)| (s.clone(), v.iter().map(|&a| f64::from(a)).collect()))
            .collect();
        let gy64: Vec<f64> = gy.iter().map(|&v| f64::from(v)).collect();
        for &i in wrt {
            let want = numeric_grad(op, &x64, i, &gy64);
            let got = match inputs[i].grad() {
                Some(g) => {
                    assert_eq!(g.shape(), inputs[i].shape(), "{what}: grad {i} shape");
                    g.to_vec().unwrap()
                }
                // An input the op does not read gets no gradient: it must be zero.
                None => vec![0.0; want.len()],
            };
            // f32 forward and backward against an f64 derivative: the error grows with the
            // number of terms each gradient element sums.
            let terms = (y.numel() + inputs[i].numel()).max(1) as f64;
            let scale = 1.0 + want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let atol = 2e-5 * scale * terms.sqrt();
            assert_close(&format!("{what}: d/dinput{i}"), &got, &want, atol, 2e-3);
        }
        checked += 1;
    }
    checked
}

fn check_table_on(dev: &Device) {
    let (mut ops, mut cases) = (0, 0);
    for op in table() {
        let (wrt, samples) = match spec(op.name) {
            NoGrad(_) => continue,
            Check { wrt, samples } => (wrt, samples),
        };
        let samples: Vec<Sample> =
            samples.unwrap_or_else(|| (op.samples)().into_iter().filter(usable).collect());
        assert!(!samples.is_empty(), "{}: no sample small enough", op.name);
        cases += check_op_on(&op, wrt, &samples, dev);
        ops += 1;
    }
    eprintln!("gradient checks: {ops} ops, {cases} samples passed on {dev}");
}

#[test]
fn every_table_op_has_a_gradient_spec() {
    for op in table() {
        match spec(op.name) {
            Check { wrt, .. } => assert!(!wrt.is_empty(), "{}", op.name),
            NoGrad(why) => assert!(!why.is_empty()),
        }
    }
}

#[test]
fn gradients_match_finite_differences_on_cpu() {
    check_table_on(&Device::cpu());
}

#[test]
fn gradients_match_finite_differences_on_every_gpu() {
    for dev in gpus() {
        check_table_on(&dev);
    }
}
