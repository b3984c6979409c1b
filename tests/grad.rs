//! Gradient checks: for every differentiable op of the op table (`tests/optable`, whose entries
//! carry their gradient spec), backward on each device is compared with central finite
//! differences of the op's f64 reference, computed on the CPU in f64. The op's output
//! gradient is a fixed random tensor, so each check is a vector-Jacobian product:
//! d/dx_j Σ_k gy_k · f(x)_k.

mod common;
mod optable;

use common::*;
use kiln::{Device, Tensor};
use optable::*;

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
        let (wrt, samples) = match (op.grad)() {
            Grad::NoGrad(_) => continue,
            Grad::Check { wrt, samples } => (wrt, samples),
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
fn every_gradient_spec_names_inputs_or_a_reason() {
    for op in table() {
        match (op.grad)() {
            Grad::Check { wrt, .. } => assert!(!wrt.is_empty(), "{}", op.name),
            Grad::NoGrad(why) => assert!(!why.is_empty(), "{}", op.name),
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

/// A linear layer's gradients under every matmul configuration match the CPU's: the weight's
/// and the bias's come from one product where version 4 adds A's row sums as a column of ones
/// (in-feature counts that fill the last tile exactly, and that leave it ragged).
#[test]
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
