//! Training: autograd semantics (accumulation, shared inputs, freed graphs, no_grad), the losses
//! against finite differences, the optimizers against their formulas in f64, a 2-layer MLP
//! whose loss falls on every device with the same curve on the CPU and the GPUs, and a training
//! loop whose GPU memory does not grow.

#[macro_use]
mod common;

use common::*;
use kiln::nn::{Adam, Optimizer, Sgd, cross_entropy, mse_loss};
use kiln::{Device, Error, Tensor};

fn t(dev: &Device, v: &[f32], s: &[usize]) -> Tensor {
    Tensor::from_slice(dev, v, s).unwrap()
}

fn grad_of(x: &Tensor) -> Vec<f32> {
    x.grad().expect("a gradient").to_vec().unwrap()
}

#[test]
fn gradients_accumulate_and_shared_inputs_sum() {
    for dev in devices() {
        let x = t(&dev, &[1.0, -2.0, 3.0], &[3]).with_grad().unwrap();
        // y = Σ (x·x + x): x is used three times; dy/dx = 2x + 1.
        let y = x.mul(&x).unwrap().add(&x).unwrap().sum_all().unwrap();
        y.backward().unwrap();
        assert_eq!(grad_of(&x), vec![3.0, -3.0, 7.0], "{dev}");
        // A second graph adds to the gradient; zero_grad clears it.
        x.mul_scalar(2.0)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert_eq!(grad_of(&x), vec![5.0, -1.0, 9.0], "{dev}");
        x.zero_grad();
        assert!(x.grad().is_none());
    }
}

#[test]
fn autograd_errors_and_modes() {
    for dev in devices() {
        let x = t(&dev, &[1.0, 2.0], &[2]).with_grad().unwrap();
        let y = x.square().unwrap().sum_all().unwrap();
        y.backward().unwrap();
        let again = y.backward().unwrap_err();
        assert!(
            matches!(again, Error::Autograd { op: "backward", .. }),
            "{dev}: {again:?}"
        );
        assert!(again.to_string().contains("already freed"), "{again}");
        // Non-scalar outputs need an explicit gradient of the right shape.
        let v = x.mul_scalar(3.0).unwrap();
        assert!(matches!(v.backward(), Err(Error::Autograd { .. })));
        let wrong = t(&dev, &[1.0, 1.0, 1.0], &[3]);
        assert!(matches!(
            v.backward_with(&wrong),
            Err(Error::ShapeMismatch { op: "backward", .. })
        ));
        // A plain tensor has no graph.
        let plain = t(&dev, &[1.0], &[1]);
        assert!(matches!(plain.backward(), Err(Error::Autograd { .. })));
        // no_grad records nothing, and detach leaves the graph.
        let z = kiln::no_grad(|| x.square().unwrap());
        assert!(!z.requires_grad());
        assert!(kiln::is_grad_enabled());
        {
            let _guard = kiln::NoGradGuard::new();
            assert!(!kiln::is_grad_enabled());
            assert!(!x.relu().unwrap().requires_grad());
        }
        assert!(x.relu().unwrap().requires_grad());
        assert!(!x.detach().requires_grad());
        assert!(x.is_leaf() && !v.is_leaf());
        // u32 tensors cannot require gradients; matmul_f16 has no backward.
        let ids = Tensor::from_vec_u32(&dev, vec![1], &[1]).unwrap();
        assert!(matches!(ids.with_grad(), Err(Error::DTypeMismatch { .. })));
        let m = t(&dev, &[1.0; 4], &[2, 2]).with_grad().unwrap();
        assert!(matches!(m.matmul_f16(&m), Err(Error::Autograd { .. })));
    }
}

/// Central differences in f64 of a scalar loss of `x` (the loss computed in f64 by `f`).
fn numeric(x: &[f32], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut v: Vec<f64> = x.iter().map(|&a| f64::from(a)).collect();
    (0..v.len())
        .map(|j| {
            let a = v[j];
            v[j] = a + 1e-5;
            let p = f(&v);
            v[j] = a - 1e-5;
            let m = f(&v);
            v[j] = a;
            (p - m) / 2e-5
        })
        .collect()
}

fn cross_entropy_ref(logits: &[f64], targets: &[u32], classes: usize) -> f64 {
    let rows = targets.len();
    let mut total = 0.0;
    for (r, &k) in targets.iter().enumerate() {
        let row = &logits[r * classes..(r + 1) * classes];
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        total += lse - row[k as usize];
    }
    total / rows as f64
}

#[test]
fn losses_match_their_formulas_and_gradients() {
    let mut rng = Lcg(5);
    let (rows, classes) = (6, 4);
    let logits = rng.vec(rows * classes, -3.0, 3.0);
    let targets: Vec<u32> = (0..rows as u32).map(|i| (i * 3) % classes as u32).collect();
    let pred = rng.vec(10, -1.0, 1.0);
    let target = rng.vec(10, -1.0, 1.0);
    for dev in devices() {
        let what = format!("cross_entropy on {dev}");
        let x = t(&dev, &logits, &[rows, classes]).with_grad().unwrap();
        let ids = Tensor::from_vec_u32(&dev, targets.clone(), &[rows]).unwrap();
        let loss = cross_entropy(&x, &ids).unwrap();
        assert_eq!(loss.shape(), &[] as &[usize]);
        let want = cross_entropy_ref(
            &logits.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
            &targets,
            classes,
        );
        assert_close(&what, &loss.to_vec().unwrap(), &[want], 1e-6, 1e-5);
        loss.backward().unwrap();
        let num = numeric(&logits, |v| cross_entropy_ref(v, &targets, classes));
        assert_close(&what, &grad_of(&x), &num, 1e-5, 1e-3);

        let what = format!("mse_loss on {dev}");
        let p = t(&dev, &pred, &[2, 5]).with_grad().unwrap();
        let q = t(&dev, &target, &[2, 5]);
        let loss = mse_loss(&p, &q).unwrap();
        let mse = |v: &[f64]| {
            v.iter()
                .zip(&target)
                .map(|(a, &b)| (a - f64::from(b)).powi(2))
                .sum::<f64>()
                / 10.0
        };
        let p64: Vec<f64> = pred.iter().map(|&v| f64::from(v)).collect();
        assert_close(&what, &loss.to_vec().unwrap(), &[mse(&p64)], 1e-6, 1e-5);
        loss.backward().unwrap();
        assert_close(&what, &grad_of(&p), &numeric(&pred, mse), 1e-5, 1e-3);

        // Errors: wrong target type, shape, class out of range, mse shapes.
        let f = t(&dev, &[0.0; 6], &[6]);
        assert!(matches!(
            cross_entropy(&x, &f),
            Err(Error::DTypeMismatch { .. })
        ));
        let short = Tensor::from_vec_u32(&dev, vec![0; 5], &[5]).unwrap();
        assert!(matches!(
            cross_entropy(&x, &short),
            Err(Error::ShapeMismatch { .. })
        ));
        let bad = Tensor::from_vec_u32(&dev, vec![0, 1, 2, 3, 4, 0], &[6]).unwrap();
        assert_eq!(
            cross_entropy(&x, &bad).unwrap_err(),
            Error::IndexOutOfRange {
                op: "cross_entropy",
                index: 4,
                size: 4
            }
        );
        assert!(matches!(
            mse_loss(&p, &t(&dev, &[0.0; 10], &[10])),
            Err(Error::ShapeMismatch { op: "mse_loss", .. })
        ));
    }
}

/// Three steps of an optimizer on 13 parameters of different sizes with fixed gradients,
/// against `reference` in f64 (called with the optimizer's step count). Parameter 3 has no
/// gradient at the first step, so the second step updates parameters with new and with kept
/// state together. On a GPU the steps batch several parameters per dispatch: the last step
/// must take fewer dispatches than there are parameters.
fn check_optimizer(
    name: &str,
    make: impl Fn() -> Box<dyn Optimizer>,
    reference: impl Fn(&mut [f64], &[f64], usize, &mut Vec<Vec<f64>>),
) {
    const SIZES: [usize; 13] = [37, 1, 300, 5, 64, 7, 129, 3, 11, 2, 50, 8, 20];
    let mut rng = Lcg(21);
    let w0: Vec<Vec<f32>> = SIZES.iter().map(|&n| rng.vec(n, -1.0, 1.0)).collect();
    let grads: Vec<Vec<Vec<f32>>> = (0..3)
        .map(|_| SIZES.iter().map(|&n| rng.vec(n, -1.0, 1.0)).collect())
        .collect();
    let has_grad = |step: usize, j: usize| !(step == 0 && j == 3);
    let mut want: Vec<Vec<f64>> = w0
        .iter()
        .map(|w| w.iter().map(|&v| f64::from(v)).collect())
        .collect();
    let mut states = vec![Vec::new(); SIZES.len()];
    for (step, gs) in grads.iter().enumerate() {
        for (j, g) in gs.iter().enumerate() {
            if has_grad(step, j) {
                let g64: Vec<f64> = g.iter().map(|&v| f64::from(v)).collect();
                reference(&mut want[j], &g64, step + 1, &mut states[j]);
            }
        }
    }
    for dev in devices() {
        let mut ws: Vec<Tensor> = w0
            .iter()
            .zip(SIZES)
            .map(|(w, n)| t(&dev, w, &[n]).with_grad().unwrap())
            .collect();
        let kept = ws[0].clone(); // a clone taken before the steps keeps its values
        let mut opt = make();
        let mut last_step_dispatches = 0;
        for (step, gs) in grads.iter().enumerate() {
            // loss = Σ w·g has gradient g.
            for (j, (w, g)) in ws.iter().zip(gs).enumerate() {
                if has_grad(step, j) {
                    let gt = t(&dev, g, &[g.len()]);
                    w.mul(&gt).unwrap().sum_all().unwrap().backward().unwrap();
                }
            }
            dev.synchronize().unwrap();
            let before = dev.stats().dispatches;
            let mut refs: Vec<&mut Tensor> = ws.iter_mut().collect();
            opt.step(&mut refs).unwrap();
            last_step_dispatches = dev.stats().dispatches - before;
            opt.zero_grad(&mut refs);
        }
        for (j, w) in ws.iter().enumerate() {
            assert_close(
                &format!("{name} on {dev}, parameter {j}"),
                &w.to_vec().unwrap(),
                &want[j],
                1e-6,
                1e-5,
            );
            assert!(w.is_leaf(), "the parameter stays a leaf");
        }
        assert_eq!(
            kept.to_vec().unwrap(),
            w0[0],
            "{name} on {dev}: copy-on-write"
        );
        if !dev.is_cpu() {
            say!("{name} on {dev}: {last_step_dispatches} dispatches for 13 parameters");
            assert!(
                last_step_dispatches < SIZES.len() as u64,
                "{name} on {dev}: {last_step_dispatches} dispatches for {} parameters",
                SIZES.len()
            );
        }
    }
}

#[test]
fn sgd_matches_its_formula() {
    check_optimizer(
        "sgd",
        || Box::new(Sgd::new(0.1)),
        |w, g, _, _| {
            for (w, g) in w.iter_mut().zip(g) {
                *w -= 0.1 * g;
            }
        },
    );
    for nesterov in [false, true] {
        check_optimizer(
            "sgd momentum",
            move || {
                Box::new(
                    Sgd::new(0.05)
                        .momentum(0.9)
                        .weight_decay(0.01)
                        .nesterov(nesterov),
                )
            },
            move |w, g, step, state| {
                if state.is_empty() {
                    state.push(vec![0.0; w.len()]);
                }
                for i in 0..w.len() {
                    let d = g[i] + 0.01 * w[i];
                    let b = if step == 1 { d } else { 0.9 * state[0][i] + d };
                    state[0][i] = b;
                    let upd = if nesterov { d + 0.9 * b } else { b };
                    w[i] -= 0.05 * upd;
                }
            },
        );
    }
}

#[test]
fn adam_and_adamw_match_their_formulas() {
    for decoupled in [false, true] {
        let name = if decoupled { "adamw" } else { "adam" };
        check_optimizer(
            name,
            move || {
                Box::new(if decoupled {
                    Adam::adamw(0.01, 0.1)
                } else {
                    Adam::new(0.01).weight_decay(0.1)
                })
            },
            move |w, g, step, state| {
                if state.is_empty() {
                    state.push(vec![0.0; w.len()]);
                    state.push(vec![0.0; w.len()]);
                }
                let (b1, b2, lr, wd, eps) = (0.9f64, 0.999f64, 0.01, 0.1, 1e-8);
                for i in 0..w.len() {
                    let mut d = g[i];
                    if decoupled {
                        w[i] *= 1.0 - lr * wd;
                    } else {
                        d += wd * w[i];
                    }
                    state[0][i] = b1 * state[0][i] + (1.0 - b1) * d;
                    state[1][i] = b2 * state[1][i] + (1.0 - b2) * d * d;
                    let mhat = state[0][i] / (1.0 - b1.powi(step as i32));
                    let vhat = state[1][i] / (1.0 - b2.powi(step as i32));
                    w[i] -= lr * mhat / (vhat.sqrt() + eps);
                }
            },
        );
    }
}

/// A 2-layer MLP (8 → 16 → 3) on a fixed synthetic 3-class problem: `steps` Adam steps with
/// cross-entropy, returning the loss of every step.
fn train_mlp(dev: &Device, steps: usize) -> Vec<f32> {
    let mut rng = Lcg(31);
    let n = 48;
    let x: Vec<f32> = rng.vec(n * 8, -1.0, 1.0);
    // The class is which of three fixed directions the input points along most.
    let labels: Vec<u32> = x
        .chunks(8)
        .map(|r| {
            let s = [r[0] + r[1] - r[2], r[3] - r[4] + r[5], r[6] + r[7] - r[0]];
            (0..3).max_by(|&a, &b| s[a].total_cmp(&s[b])).unwrap() as u32
        })
        .collect();
    let xs = t(dev, &x, &[n, 8]);
    let ys = Tensor::from_vec_u32(dev, labels, &[n]).unwrap();
    let init = |shape: &[usize], seed: u64, scale: f32| {
        Tensor::randn(dev, shape, seed)
            .unwrap()
            .mul_scalar(scale)
            .unwrap()
            .with_grad()
            .unwrap()
    };
    let mut w1 = init(&[16, 8], 1, 0.35);
    let mut b1 = Tensor::zeros(dev, &[16]).unwrap().with_grad().unwrap();
    let mut w2 = init(&[3, 16], 2, 0.25);
    let mut b2 = Tensor::zeros(dev, &[3]).unwrap().with_grad().unwrap();
    let mut opt = Adam::new(0.02);
    let mut losses = Vec::new();
    for _ in 0..steps {
        let h = xs
            .linear(&w1, Some(&b1), Some(kiln::UnaryOp::Relu))
            .unwrap();
        let logits = h.linear(&w2, Some(&b2), None).unwrap();
        let loss = cross_entropy(&logits, &ys).unwrap();
        loss.backward().unwrap();
        let mut params = [&mut w1, &mut b1, &mut w2, &mut b2];
        opt.step(&mut params).unwrap();
        opt.zero_grad(&mut params);
        losses.push(loss.to_vec().unwrap()[0]);
    }
    losses
}

#[test]
fn mlp_loss_falls_with_the_same_curve_on_every_device() {
    let steps = 60;
    let cpu = train_mlp(&Device::cpu(), steps);
    assert!(
        cpu[steps - 1] < 0.5 * cpu[0],
        "the loss must at least halve: {:?}",
        cpu
    );
    say!(
        "mlp on cpu: loss {:.4} -> {:.4} in {steps} steps",
        cpu[0],
        cpu[steps - 1]
    );
    for dev in gpus() {
        let gpu = train_mlp(&dev, steps);
        say!(
            "mlp on {dev}: loss {:.4} -> {:.4} in {steps} steps",
            gpu[0],
            gpu[steps - 1]
        );
        let want: Vec<f64> = cpu.iter().map(|&v| f64::from(v)).collect();
        assert_close(
            &format!("loss curve on {dev} vs cpu"),
            &gpu,
            &want,
            1e-4,
            1e-3,
        );
    }
}

#[test]
fn training_does_not_grow_gpu_memory() {
    for dev in fresh_gpus() {
        let mut w = Tensor::randn(&dev, &[32, 16], 3)
            .unwrap()
            .with_grad()
            .unwrap();
        let x = Tensor::randn(&dev, &[64, 16], 4).unwrap();
        let y = Tensor::randn(&dev, &[64, 32], 5).unwrap();
        let mut opt = Adam::new(0.01);
        let mut live = Vec::new();
        for _ in 0..40 {
            let loss =
                mse_loss(&x.linear(&w, None, Some(kiln::UnaryOp::Tanh)).unwrap(), &y).unwrap();
            loss.backward().unwrap();
            opt.step(&mut [&mut w]).unwrap();
            opt.zero_grad(&mut [&mut w]);
            drop(loss);
            dev.synchronize().unwrap();
            live.push(dev.memory().live);
        }
        // After warm-up (optimizer state allocated), the live buffer count is flat.
        assert!(
            live[5..].iter().all(|&n| n == live[5]),
            "live buffers grew on {dev}: {live:?}"
        );
        say!("training loop on {dev}: {} live buffers per step", live[5]);
    }
}

#[test]
fn optimizer_state_must_match_its_parameter() {
    for dev in devices() {
        let mut a = Tensor::ones(&dev, &[3]).unwrap().with_grad().unwrap();
        a.sum_all().unwrap().backward().unwrap();
        let mut opt = Sgd::new(0.1).momentum(0.9);
        opt.step(&mut [&mut a]).unwrap();
        assert_eq!(a.to_vec().unwrap(), vec![0.9; 3]);
        // A different parameter in the same position is an error, not a silent mix-up.
        let mut b = Tensor::ones(&dev, &[4]).unwrap().with_grad().unwrap();
        b.sum_all().unwrap().backward().unwrap();
        assert!(matches!(
            opt.step(&mut [&mut b]),
            Err(Error::ShapeMismatch {
                op: "optimizer step",
                ..
            })
        ));
        // A parameter without a gradient is skipped.
        let mut c = Tensor::ones(&dev, &[2]).unwrap().with_grad().unwrap();
        Adam::new(0.1).step(&mut [&mut c]).unwrap();
        assert_eq!(c.to_vec().unwrap(), vec![1.0; 2]);
    }
}

/// A long chain of recorded ops that never sees backward is freed without recursing once per
/// node (which would overflow the stack).
#[test]
fn dropping_a_very_long_graph_does_not_overflow_the_stack() {
    let x = Tensor::ones(&Device::cpu(), &[1])
        .unwrap()
        .with_grad()
        .unwrap();
    let mut y = x.clone();
    for _ in 0..200_000 {
        y = y.add_scalar(1.0).unwrap();
    }
    assert_eq!(y.to_vec().unwrap(), vec![200_001.0]);
    drop(y);
    // And after backward, the freed graph is as cheap to drop.
    let mut z = x.clone();
    for _ in 0..200_000 {
        z = z.mul_scalar(1.0).unwrap();
    }
    z.sum_all().unwrap().backward().unwrap();
    assert_eq!(x.grad().unwrap().to_vec().unwrap(), vec![1.0]);
}
