//! Gradient checks: for every differentiable op of the op table (`tests/optable`, whose entries
//! carry their gradient spec), backward on each device is compared with central finite
//! differences of the op's f64 reference, computed on the CPU in f64. The op's output
//! gradient is a fixed random tensor, so each check is a vector-Jacobian product:
//! d/dx_j Σ_k gy_k · f(x)_k. A custom harness (libtest-mimic) makes one test per op and device
//! from the table at run time.

mod common;
mod optable;

use common::*;
use kiln::{Device, Tensor};
use libtest_mimic::{Arguments, Trial};
use optable::*;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

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
                let t = input(op, k, dev, s, v).unwrap();
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

/// The samples `op`'s gradient is checked on, and the inputs it is checked with respect to;
/// `None` for an op without a gradient.
fn grad_cases(op: &OpInfo) -> Option<(&'static [usize], Vec<Sample>)> {
    let (wrt, samples) = match (op.grad)() {
        Grad::NoGrad(_) => return None,
        Grad::Check { wrt, samples } => (wrt, samples),
    };
    let samples: Vec<Sample> =
        samples.unwrap_or_else(|| (op.samples)().into_iter().filter(usable).collect());
    assert!(!samples.is_empty(), "{}: no sample small enough", op.name);
    Some((wrt, samples))
}

fn every_gradient_spec_names_inputs_or_a_reason() {
    for op in table() {
        match (op.grad)() {
            Grad::Check { wrt, .. } => assert!(!wrt.is_empty(), "{}", op.name),
            Grad::NoGrad(why) => assert!(!why.is_empty(), "{}", op.name),
        }
    }
}

/// The gradient checks as one test per (differentiable op, device), named `<op>::cpu` and
/// `<op>::gpu<i>`, so that `cargo test --test grad -- softmax` checks one op's gradients
/// everywhere. The GPU tests of one adapter share one device and take turns on it.
fn gradient_trials() -> Vec<Trial> {
    let ops: Arc<Vec<OpInfo>> = Arc::new(table());
    let gpus: Vec<(Device, Arc<Mutex<()>>)> = match std::panic::catch_unwind(gpus) {
        Ok(gpus) => gpus
            .into_iter()
            .map(|d| (d, Arc::new(Mutex::new(()))))
            .collect(),
        Err(e) => {
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "no GPU adapter".into());
            return vec![Trial::test("gradients::gpus_present", move || {
                Err(why.clone().into())
            })];
        }
    };
    let mut trials = Vec::new();
    for i in 0..ops.len() {
        if matches!((ops[i].grad)(), Grad::NoGrad(_)) {
            continue;
        }
        let name = ops[i].name;
        let table = ops.clone();
        trials.push(Trial::test(format!("{name}::cpu"), move || {
            let (wrt, samples) = grad_cases(&table[i]).expect("a gradient spec");
            check_op_on(&table[i], wrt, &samples, &Device::cpu());
            Ok(())
        }));
        for (g, (dev, turn)) in gpus.iter().enumerate() {
            let (table, dev, turn) = (ops.clone(), dev.clone(), turn.clone());
            trials.push(Trial::test(format!("{name}::gpu{g}"), move || {
                let _turn = turn.lock().unwrap_or_else(|e| e.into_inner());
                let (wrt, samples) = grad_cases(&table[i]).expect("a gradient spec");
                check_op_on(&table[i], wrt, &samples, &dev);
                Ok(())
            }));
        }
    }
    trials
}

fn main() -> ExitCode {
    init_logging();
    let args = Arguments::from_args();
    let mut trials = gradient_trials();
    trials.push(Trial::test(
        "every_gradient_spec_names_inputs_or_a_reason",
        || {
            every_gradient_spec_names_inputs_or_a_reason();
            Ok(())
        },
    ));
    trials.push(Trial::test(
        "linear_gradients_match_the_cpu_under_every_matmul_config",
        || {
            linear_gradients_match_the_cpu_under_every_matmul_config();
            Ok(())
        },
    ));
    libtest_mimic::run(&args, trials).exit_code()
}

/// A linear layer's gradients under every matmul configuration match the CPU's: the weight's
/// and the bias's come from one product where version 4 adds A's row sums as a column of ones
/// (in-feature counts that fill the last tile exactly, and that leave it ragged).
fn linear_gradients_match_the_cpu_under_every_matmul_config() {
    let grads = |dev: &Device, (rows, k, n): (usize, usize, usize)| -> Vec<Vec<f32>> {
        let mut rng = Lcg(9 + k as u64);
        let x = Tensor::from_vec(dev, rng.vec(rows * k, -1.0, 1.0), &[rows, k])
            .unwrap()
            .with_grad()
            .unwrap();
        let w = Tensor::from_vec(dev, rng.vec(n * k, -1.0, 1.0), &[n, k])
            .unwrap()
            .with_grad()
            .unwrap();
        let b = Tensor::from_vec(dev, rng.vec(n, -1.0, 1.0), &[n])
            .unwrap()
            .with_grad()
            .unwrap();
        let y = x.linear(&w, Some(&b), None).unwrap();
        let up = Tensor::from_vec(dev, rng.vec(rows * n, -1.0, 1.0), &[rows, n]).unwrap();
        y.mul(&up).unwrap().sum_all().unwrap().backward().unwrap();
        [&x, &w, &b]
            .iter()
            .map(|t| t.grad().unwrap().to_vec().unwrap())
            .collect()
    };
    let shapes = [(5, 16, 3), (7, 5, 9), (33, 64, 10)];
    let want: Vec<_> = shapes.iter().map(|&s| grads(&Device::cpu(), s)).collect();
    for dev in fresh_gpus() {
        let mut configs: Vec<Option<kiln::gpu::MatmulConfig>> = vec![None];
        configs.extend(kiln::gpu::matmul_configs().into_iter().map(Some));
        for config in configs {
            dev.set_matmul_config(config);
            for (s, want) in shapes.iter().zip(&want) {
                for (i, (got, want)) in grads(&dev, *s).iter().zip(want).enumerate() {
                    let want: Vec<f64> = want.iter().map(|&v| f64::from(v)).collect();
                    assert_close(
                        &format!("linear {s:?} input {i} under {config:?} on {dev}"),
                        got,
                        &want,
                        1e-4,
                        1e-4,
                    );
                }
            }
        }
        dev.set_matmul_config(None);
    }
}
