//! Capture and replay (`Device::capture`, `Graph::run`): a replayed training step trains as
//! the eager step does (Adam and SGD with momentum, captured on the first step or a later one),
//! replays leave other tensors alone and keep memory flat, and what cannot be replayed is a
//! typed error (the digits examples' steps replayed: `tests/examples.rs`).

#[macro_use]
mod common;

use common::*;
use kiln::nn::{Adam, Dropout, Module, Optimizer, Sgd, cross_entropy};
use kiln::{Device, Error, Tensor};

/// A small classification set: 4 batches of 12 rows of 8 features, 3 classes.
fn batches(dev: &Device) -> Vec<(Tensor, Tensor)> {
    let mut rng = Lcg(7);
    (0..4)
        .map(|_| {
            let x: Vec<f32> = rng.vec(12 * 8, -1.0, 1.0);
            let y: Vec<u32> = x
                .chunks(8)
                .map(|r| {
                    let s = [r[0] + r[1] - r[2], r[3] - r[4] + r[5], r[6] + r[7] - r[0]];
                    (0..3).max_by(|&a, &b| s[a].total_cmp(&s[b])).unwrap() as u32
                })
                .collect();
            (
                Tensor::from_slice(dev, &x, &[12, 8]).unwrap(),
                Tensor::from_vec_u32(dev, y, &[12]).unwrap(),
            )
        })
        .collect()
}

struct Mlp {
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
}

impl Mlp {
    fn new(dev: &Device) -> Mlp {
        let init = |shape: &[usize], seed: u64, scale: f32| {
            Tensor::randn(dev, shape, seed)
                .unwrap()
                .mul_scalar(scale)
                .unwrap()
                .with_grad()
                .unwrap()
        };
        Mlp {
            w1: init(&[16, 8], 1, 0.35),
            b1: init(&[16], 3, 0.1),
            w2: init(&[3, 16], 2, 0.25),
            b2: init(&[3], 4, 0.1),
        }
    }

    /// One training step on (x, y); returns the loss (before the update).
    fn step(&mut self, opt: &mut dyn Optimizer, x: &Tensor, y: &Tensor) -> kiln::Result<Tensor> {
        let h = x.linear(&self.w1, Some(&self.b1), Some(kiln::UnaryOp::Relu))?;
        let logits = h.linear(&self.w2, Some(&self.b2), None)?;
        let loss = cross_entropy(&logits, y)?;
        loss.backward()?;
        let mut params = [&mut self.w1, &mut self.b1, &mut self.w2, &mut self.b2];
        opt.step(&mut params)?;
        opt.zero_grad(&mut params);
        Ok(loss.detach())
    }

    fn values(&self) -> Vec<f32> {
        [&self.w1, &self.b1, &self.w2, &self.b2]
            .iter()
            .flat_map(|t| t.to_vec().unwrap())
            .collect()
    }
}

/// Makes a fresh optimizer.
type MakeOptimizer = fn() -> Box<dyn Optimizer>;

fn optimizers() -> Vec<(&'static str, MakeOptimizer)> {
    vec![
        ("adam", || Box::new(Adam::new(0.02))),
        ("adamw", || Box::new(Adam::adamw(0.02, 0.01))),
        ("sgd momentum", || {
            Box::new(Sgd::new(0.1).momentum(0.9).nesterov(true))
        }),
    ]
}

#[test]
fn a_replayed_training_step_trains_as_the_eager_step_does() {
    let steps = 12;
    // Devices of its own: the test reads the device's dispatch counter.
    for dev in std::iter::once(Device::cpu()).chain(fresh_gpus()) {
        let data = batches(&dev);
        for (name, make) in optimizers() {
            // Eager: every step runs its ops.
            let mut eager = Mlp::new(&dev);
            let mut opt = make();
            let eager_losses: Vec<f32> = (0..steps)
                .map(|i| {
                    let (x, y) = &data[i % data.len()];
                    eager.step(opt.as_mut(), x, y).unwrap().to_vec().unwrap()[0]
                })
                .collect();
            // Captured on step `first` (0: the optimizer's state is made inside the capture),
            // replayed for the rest.
            for first in [0, 2] {
                let mut model = Mlp::new(&dev);
                let mut opt = make();
                let mut losses = Vec::new();
                for i in 0..first {
                    let (x, y) = &data[i % data.len()];
                    losses.push(model.step(opt.as_mut(), x, y).unwrap().to_vec().unwrap()[0]);
                }
                let (x, y) = &data[first % data.len()];
                let (mut graph, out) = dev
                    .capture(&[x, y], |io| {
                        Ok(vec![model.step(opt.as_mut(), &io[0], &io[1])?])
                    })
                    .unwrap();
                losses.push(out[0].to_vec().unwrap()[0]);
                let before = dev.stats();
                for i in first + 1..steps {
                    let (x, y) = &data[i % data.len()];
                    let out = graph.run(&[x, y]).unwrap();
                    losses.push(out[0].to_vec().unwrap()[0]);
                }
                let runs = (steps - first - 1) as u64;
                let after = dev.stats();
                assert_eq!(
                    after.dispatches - before.dispatches,
                    graph.dispatches() as u64 * runs,
                    "{dev} {name}: a run records exactly the captured dispatches"
                );
                assert_eq!(
                    after.replayed - before.replayed,
                    after.dispatches - before.dispatches,
                    "{dev} {name}: every one of them counted as replayed"
                );
                if !dev.is_cpu() {
                    // At least one submission per run: each reads its loss back.
                    assert!(after.submissions - before.submissions >= runs, "{dev}");
                }
                if !dev.is_cpu() {
                    assert!(graph.dispatches() > 0, "{dev}");
                }
                drop(graph);
                let want: Vec<f64> = eager_losses.iter().map(|&v| f64::from(v)).collect();
                assert_close(
                    &format!("{dev} {name} captured at step {first}: losses"),
                    &losses,
                    &want,
                    1e-5,
                    1e-4,
                );
                let want: Vec<f64> = eager.values().iter().map(|&v| f64::from(v)).collect();
                assert_close(
                    &format!("{dev} {name} captured at step {first}: parameters"),
                    &model.values(),
                    &want,
                    1e-5,
                    1e-4,
                );
            }
            say!(
                "capture on {dev} ({name}): {steps} steps, loss {:.4} -> {:.4}, same as eager",
                eager_losses[0],
                eager_losses[steps - 1]
            );
        }
    }
}

#[test]
fn adam_counts_replayed_steps() {
    // Two Adam runs: one eager for 6 steps then one more; one captured at step 1 and replayed
    // to step 6 then one eager step. The last eager step's bias correction is step 7's in
    // both, so the parameters agree.
    for dev in devices() {
        let data = batches(&dev);
        let mut a = Mlp::new(&dev);
        let mut oa = Adam::new(0.02);
        for i in 0..7 {
            let (x, y) = &data[i % 4];
            a.step(&mut oa, x, y).unwrap();
        }
        let mut b = Mlp::new(&dev);
        let mut ob = Adam::new(0.02);
        {
            let (x, y) = &data[0];
            let (mut g, _) = dev
                .capture(&[x, y], |io| Ok(vec![b.step(&mut ob, &io[0], &io[1])?]))
                .unwrap();
            for i in 1..6 {
                let (x, y) = &data[i % 4];
                g.run(&[x, y]).unwrap();
            }
        }
        let (x, y) = &data[6 % 4];
        b.step(&mut ob, x, y).unwrap();
        let want: Vec<f64> = a.values().iter().map(|&v| f64::from(v)).collect();
        assert_close(
            &format!("{dev}: adam after replays"),
            &b.values(),
            &want,
            1e-5,
            1e-4,
        );
    }
}

#[test]
fn replays_leave_other_tensors_alone_and_memory_flat() {
    for dev in fresh_gpus() {
        let data = batches(&dev);
        let mut model = Mlp::new(&dev);
        let mut opt = Adam::new(0.01);
        let (x, y) = &data[0];
        model.step(&mut opt, x, y).unwrap();
        dev.synchronize().unwrap();
        let outside = dev.memory().live;
        let (mut graph, _) = dev
            .capture(&[x, y], |io| {
                Ok(vec![model.step(&mut opt, &io[0], &io[1])?])
            })
            .unwrap();
        // Tensors made after the capture get buffers no replay writes.
        let z: Vec<Tensor> = (0..8)
            .map(|i| Tensor::full(&dev, &[12, 16], i as f32).unwrap())
            .collect();
        let w: Vec<Tensor> = z.iter().map(|t| t.add_scalar(1.0).unwrap()).collect();
        let mut live = Vec::new();
        for i in 0..60 {
            let (x, y) = &data[i % 4];
            let out = graph.run(&[x, y]).unwrap();
            drop(out);
            dev.synchronize().unwrap();
            live.push(dev.memory().live);
        }
        assert!(
            live.iter().all(|&n| n == live[0]),
            "live buffers changed over replays on {dev}: {live:?}"
        );
        for (i, (z, w)) in z.iter().zip(&w).enumerate() {
            assert!(z.to_vec().unwrap().iter().all(|&v| v == i as f32), "{dev}");
            assert!(
                w.to_vec().unwrap().iter().all(|&v| v == i as f32 + 1.0),
                "{dev}"
            );
        }
        drop((z, w));
        drop(graph);
        dev.synchronize().unwrap();
        let after = dev.memory().live;
        assert!(
            after <= outside + 2,
            "dropping the graph releases its buffers on {dev}: {outside} live before the \
             capture, {after} after"
        );
        say!(
            "replay on {dev}: {} live buffers per replay, flat over 60; {after} after the graph dropped",
            live[0]
        );
    }
}

#[test]
fn embedding_steps_replay_with_new_indices() {
    // An embedding table trained through index_select with indices that change every run:
    // the replayed gradient reads them on the device (no host grouping to repeat).
    for dev in devices() {
        let batches: Vec<Tensor> = [
            [0u32, 3, 3, 1, 4, 4],
            [2, 2, 2, 0, 1, 4],
            [4, 3, 2, 1, 0, 0],
        ]
        .iter()
        .map(|ids| Tensor::from_vec_u32(&dev, ids.to_vec(), &[6]).unwrap())
        .collect();
        let weights = Tensor::randn(&dev, &[6, 4], 11).unwrap();
        let table = || {
            Tensor::randn(&dev, &[5, 4], 9)
                .unwrap()
                .with_grad()
                .unwrap()
        };
        let step = |t: &mut Tensor, opt: &mut Sgd, ids: &Tensor| -> kiln::Result<Tensor> {
            let loss = t.index_select(0, ids)?.tanh()?.mul(&weights)?.sum_all()?;
            loss.backward()?;
            opt.step(&mut [&mut *t])?;
            opt.zero_grad(&mut [&mut *t]);
            Ok(loss.detach())
        };
        let (mut eager, mut opt) = (table(), Sgd::new(0.1).momentum(0.5));
        let want: Vec<f32> = (0..6)
            .map(|i| {
                step(&mut eager, &mut opt, &batches[i % 3])
                    .unwrap()
                    .to_vec()
                    .unwrap()[0]
            })
            .collect();
        let (mut t, mut opt) = (table(), Sgd::new(0.1).momentum(0.5));
        let mut got = Vec::new();
        {
            let (mut graph, out) = dev
                .capture(&[&batches[0]], |io| {
                    Ok(vec![step(&mut t, &mut opt, &io[0])?])
                })
                .unwrap();
            got.push(out[0].to_vec().unwrap()[0]);
            for i in 1..6 {
                got.push(graph.run(&[&batches[i % 3]]).unwrap()[0].to_vec().unwrap()[0]);
            }
            let bad = Tensor::from_vec_u32(&dev, vec![5; 6], &[6]).unwrap();
            let err = graph.run(&[&bad]).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::IndexOutOfRange {
                        op: "index_select",
                        index: 5,
                        size: 5
                    }
                ),
                "{dev}: {err:?}"
            );
        }
        let want64: Vec<f64> = want.iter().map(|&v| f64::from(v)).collect();
        assert_close(
            &format!("{dev}: embedding losses"),
            &got,
            &want64,
            1e-5,
            1e-4,
        );
        let want64: Vec<f64> = eager
            .to_vec()
            .unwrap()
            .iter()
            .map(|&v| f64::from(v))
            .collect();
        assert_close(
            &format!("{dev}: embedding table"),
            &t.to_vec().unwrap(),
            &want64,
            1e-5,
            1e-4,
        );
    }
}

#[test]
fn a_decode_step_writes_its_cache_in_place_and_replays_in_one_submission() {
    // A key/value cache preallocated to 8 positions; each step writes its token's key and
    // value at `pos` (index_copy) and attends over the first `len` keys (attention_cached),
    // with pos and len graph inputs. Replays must match the eager steps, fill the cache, and
    // submit once per step with its readback.
    let (cap, heads, d) = (8, 2, 4);
    let mut rng = Lcg(5);
    let tokens: Vec<[Vec<f32>; 3]> = (0..cap)
        .map(|_| std::array::from_fn(|_| rng.vec(heads * d, -1.0, 1.0)))
        .collect();
    let causal = kiln::AttentionOptions {
        causal: true,
        scale: None,
    };
    // Devices of its own: the submission counter is the device's, and other tests submit to
    // the shared ones in parallel (which made this fail in CI: 2 submissions at a step).
    for dev in std::iter::once(Device::cpu()).chain(fresh_gpus()) {
        let row = |v: &[f32]| Tensor::from_slice(&dev, v, &[1, 1, heads, d]).unwrap();
        let at = |i: usize| Tensor::from_vec_u32(&dev, vec![i as u32], &[1]).unwrap();
        let new_cache = || Tensor::zeros(&dev, &[1, cap, heads, d]).unwrap();
        let step = |k: &mut Tensor, v: &mut Tensor, io: &[Tensor]| -> kiln::Result<Vec<Tensor>> {
            k.index_copy(1, &io[0], &io[3])?;
            v.index_copy(1, &io[0], &io[4])?;
            Ok(vec![io[2].attention_cached(k, v, &io[1], causal)?])
        };
        let inputs = |i: usize| {
            let [q, k, v] = &tokens[i];
            [at(i), at(i + 1), row(q), row(k), row(v)]
        };
        let (mut ek, mut ev) = (new_cache(), new_cache());
        let want: Vec<Vec<f32>> = (0..cap)
            .map(|i| {
                step(&mut ek, &mut ev, &inputs(i)).unwrap()[0]
                    .to_vec()
                    .unwrap()
            })
            .collect();
        let (mut k, mut v) = (new_cache(), new_cache());
        let first = inputs(0);
        let (mut graph, out) = dev
            .capture(&first.iter().collect::<Vec<_>>(), |io| {
                step(&mut k, &mut v, io)
            })
            .unwrap();
        assert_eq!(out[0].to_vec().unwrap(), want[0], "{dev}: the captured run");
        for (i, want) in want.iter().enumerate().skip(1) {
            let io = inputs(i);
            let before = dev.stats().submissions;
            let got = graph.run(&io.iter().collect::<Vec<_>>()).unwrap()[0]
                .to_vec()
                .unwrap();
            if !dev.is_cpu() {
                assert_eq!(dev.stats().submissions - before, 1, "{dev}: step {i}");
            }
            assert_eq!(&got, want, "{dev}: step {i}");
        }
        let bad = inputs(0);
        let past = at(cap);
        let mut io: Vec<&Tensor> = bad.iter().collect();
        io[0] = &past;
        let err = graph.run(&io).unwrap_err();
        assert!(
            matches!(
                err,
                Error::IndexOutOfRange {
                    op: "index_copy",
                    index: 8,
                    size: 8
                }
            ),
            "{dev}: {err:?}"
        );
        drop(graph);
        assert_eq!(k.to_vec().unwrap(), ek.to_vec().unwrap(), "{dev}: keys");
        assert_eq!(v.to_vec().unwrap(), ev.to_vec().unwrap(), "{dev}: values");
    }
}

#[test]
fn rows_of_a_packed_table_replay_with_new_ids() {
    // An embedding from a q8_0 or f16 table (a language model's token embeddings) reads its
    // ids on the device, so a replay picks the new rows.
    for dev in devices() {
        for dtype in [kiln::DType::Q8_0, kiln::DType::F16] {
            let table = Tensor::randn(&dev, &[5, 32], 3)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let ids = |v: &[u32]| Tensor::from_vec_u32(&dev, v.to_vec(), &[v.len()]).unwrap();
            let rows = |i: &Tensor| Tensor::embedding(&table, i)?.tanh();
            let batches = [ids(&[0, 4]), ids(&[3, 1]), ids(&[2, 2])];
            let (mut graph, _) = dev
                .capture(&[&batches[0]], |io| Ok(vec![rows(&io[0])?]))
                .unwrap();
            for b in &batches[1..] {
                let got = graph.run(&[b]).unwrap()[0].to_vec().unwrap();
                let want = rows(b).unwrap().to_vec().unwrap();
                assert_eq!(got, want, "{dev}: {dtype:?}");
            }
        }
    }
}

#[test]
fn what_cannot_be_replayed_is_an_error() {
    for dev in devices() {
        let data = batches(&dev);
        let (x, y) = &data[0];
        let mut model = Mlp::new(&dev);
        let mut opt = Adam::new(0.01);
        let (mut graph, _) = dev
            .capture(&[x, y], |io| {
                Ok(vec![model.step(&mut opt, &io[0], &io[1])?])
            })
            .unwrap();
        // Wrong inputs: count, shape, dtype, an index out of range.
        let err = graph.run(&[x]).unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument { .. }),
            "{dev}: {err:?}"
        );
        let short = Tensor::zeros(&dev, &[11, 8]).unwrap();
        let err = graph.run(&[&short, y]).unwrap_err();
        assert!(matches!(err, Error::ShapeMismatch { .. }), "{dev}: {err:?}");
        let err = graph.run(&[x, x]).unwrap_err();
        assert!(
            matches!(
                err,
                Error::ShapeMismatch { .. } | Error::DTypeMismatch { .. }
            ),
            "{dev}: {err:?}"
        );
        let bad = Tensor::from_vec_u32(&dev, vec![3; 12], &[12]).unwrap();
        let err = graph.run(&[x, &bad]).unwrap_err();
        assert!(
            matches!(
                err,
                Error::IndexOutOfRange {
                    op: "cross_entropy",
                    index: 3,
                    size: 3
                }
            ),
            "{dev}: {err:?}"
        );
        graph.run(&[x, y]).unwrap();
        drop(graph);
        if dev.is_cpu() {
            continue;
        }
        // A readback inside the step.
        let err = dev
            .capture(&[x], |io| {
                let s = io[0].sum_all()?;
                let v = s.to_vec()?;
                Ok(vec![s.add_scalar(v[0])?])
            })
            .unwrap_err();
        assert!(
            matches!(err, Error::Unsupported { op: "capture", .. }),
            "{dev}: {err:?}"
        );
        // Dropout in training mode (its masks are drawn on the host).
        let dropout = Dropout::new(0.5, 1).unwrap();
        let err = dev
            .capture(&[x], |io| Ok(vec![dropout.forward(&io[0])?]))
            .unwrap_err();
        assert!(
            matches!(err, Error::Unsupported { op: "capture", .. }),
            "{dev}: {err:?}"
        );
        // An optimizer step on a parameter the step keeps another handle to.
        let err = dev
            .capture(&[x, y], |io| {
                let keep = model.w1.detach();
                let loss = model.step(&mut opt, &io[0], &io[1]);
                drop(keep);
                Ok(vec![loss?])
            })
            .unwrap_err();
        assert!(
            matches!(err, Error::Unsupported { op: "capture", .. }),
            "{dev}: {err:?}"
        );
        // The device is still usable and captures again after the errors.
        let (mut graph, _) = dev
            .capture(&[x, y], |io| {
                Ok(vec![model.step(&mut opt, &io[0], &io[1])?])
            })
            .unwrap();
        let l = graph.run(&[x, y]).unwrap()[0].to_vec().unwrap()[0];
        assert!(l.is_finite(), "{dev}");
    }
}

#[test]
fn a_capture_keeps_only_its_own_threads_work() {
    for dev in gpus() {
        let x = Tensor::randn(&dev, &[64, 32], 1).unwrap();
        let w = Tensor::randn(&dev, &[16, 32], 2).unwrap();
        let step = |io: &[Tensor]| -> kiln::Result<Vec<Tensor>> {
            Ok(vec![
                io[0]
                    .linear(&w, None, Some(kiln::UnaryOp::Tanh))?
                    .sum_all()?,
            ])
        };
        let (alone, _) = dev.capture(&[&x], step).unwrap();
        // The same step, while another thread runs ops and reads back on the same device.
        let (busy, out) = dev
            .capture(&[&x], |io| {
                let other = std::thread::scope(|s| {
                    s.spawn(|| {
                        let t = Tensor::ones(&dev, &[1000]).unwrap();
                        t.mul_scalar(3.0)
                            .unwrap()
                            .sum_all()
                            .unwrap()
                            .to_vec()
                            .unwrap()[0]
                    })
                    .join()
                    .unwrap()
                });
                assert_eq!(other, 3000.0, "{dev}");
                step(io)
            })
            .unwrap();
        assert_eq!(busy.dispatches(), alone.dispatches(), "{dev}");
        let want = step(std::slice::from_ref(&x)).unwrap()[0].to_vec().unwrap();
        assert_eq!(out[0].to_vec().unwrap(), want, "{dev}");
    }
}

#[test]
fn a_parameter_used_twice_replays_like_an_ordinary_step() {
    // The weight is used twice, so its gradient is a sum made during backward (an elementwise
    // program that the optimizer step runs first): only the optimizer's own dispatches may
    // take its per-step values at a replay.
    for dev in devices() {
        let x = Tensor::randn(&dev, &[8, 6], 3).unwrap();
        let y = Tensor::randn(&dev, &[8, 6], 4).unwrap();
        let init = || {
            Tensor::randn(&dev, &[6, 6], 5)
                .unwrap()
                .mul_scalar(0.3)
                .unwrap()
                .with_grad()
                .unwrap()
        };
        let step = |w: &mut Tensor, opt: &mut Adam, x: &Tensor| -> kiln::Result<Tensor> {
            let h = x.linear(w, None, Some(kiln::UnaryOp::Tanh))?;
            let out = h.linear(w, None, None)?;
            let loss = kiln::nn::mse_loss(&out, &y)?;
            loss.backward()?;
            opt.step(&mut [&mut *w])?;
            opt.zero_grad(&mut [&mut *w]);
            Ok(loss.detach())
        };
        let (mut we, mut oe) = (init(), Adam::new(0.05));
        let want: Vec<f64> = (0..8)
            .map(|_| f64::from(step(&mut we, &mut oe, &x).unwrap().to_vec().unwrap()[0]))
            .collect();
        let (mut w, mut o) = (init(), Adam::new(0.05));
        let mut got = Vec::new();
        {
            let (mut graph, out) = dev
                .capture(&[&x], |io| Ok(vec![step(&mut w, &mut o, &io[0])?]))
                .unwrap();
            got.push(out[0].to_vec().unwrap()[0]);
            for _ in 1..8 {
                got.push(graph.run(&[&x]).unwrap()[0].to_vec().unwrap()[0]);
            }
        }
        assert_close(
            &format!("{dev}: tied weight losses"),
            &got,
            &want,
            1e-5,
            1e-4,
        );
        let we: Vec<f64> = we.to_vec().unwrap().iter().map(|&v| f64::from(v)).collect();
        assert_close(
            &format!("{dev}: tied weight"),
            &w.to_vec().unwrap(),
            &we,
            1e-5,
            1e-4,
        );
    }
}
