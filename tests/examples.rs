//! The examples' cores at a small size on every device (`examples/common` is compiled into this
//! test): the digits MLP learns, the convnet and the transformer train with the same loss curve
//! on the CPU and on every GPU, weights saved on one device give the same predictions on another.

#[macro_use]
mod common;
#[path = "../examples/common/mod.rs"]
mod ex;

use common::*;
use ex::data::{Rng, TEXT, digits, split};
use ex::models::{CharTransformer, TransformerConfig, digits_cnn, digits_mlp};
use ex::train::{
    SampleOptions, accuracy, digits_lr, encode, sample, text_batch, text_step, text_step_loss,
    train_epoch,
};
use kiln::Device;
use kiln::nn::{Adam, Module, Optimizer, Sgd, load_checkpoint, save_checkpoint};

/// Three epochs of the digits MLP (`replay`: each epoch's step captured and replayed): its
/// losses and held-out accuracy.
fn digits_run(dev: &Device, replay: bool) -> (Vec<f32>, f64, kiln::nn::Sequential) {
    let (train, test) = split(&digits(), 0.2, 42);
    let mut model = digits_mlp(dev, 128).unwrap();
    let mut opt = Adam::new(3e-3);
    let mut losses = Vec::new();
    for epoch in 1..=3 {
        losses.extend(
            train_epoch(
                &mut model,
                &mut opt,
                &train,
                &[64],
                32,
                epoch,
                replay,
                |_, _, _| {},
            )
            .unwrap(),
        );
    }
    let acc = accuracy(&mut model, &test, &[64], dev).unwrap();
    (losses, acc, model)
}

#[test]
fn digits_mlp_learns_on_every_device_and_weights_move_between_devices() {
    let (cpu_losses, cpu_acc, cpu_model) = digits_run(&Device::cpu(), false);
    say!(
        "digits mlp, 3 epochs on cpu: held-out {:.1}%",
        100.0 * cpu_acc
    );
    assert!(cpu_acc > 0.9, "held-out accuracy {cpu_acc}");
    let dir = std::env::temp_dir().join(format!("kiln-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("digits.safetensors");
    cpu_model.save_safetensors(&path).unwrap();
    let (_, test) = split(&digits(), 0.2, 42);
    for dev in gpus() {
        let (losses, acc, gpu_model) = digits_run(&dev, false);
        say!(
            "digits mlp, 3 epochs on {dev}: held-out {:.1}%",
            100.0 * acc
        );
        let want: Vec<f64> = cpu_losses.iter().map(|&v| f64::from(v)).collect();
        assert_close(
            &format!("digits loss curve on {dev}"),
            &losses,
            &want,
            2e-3,
            2e-2,
        );
        assert!((acc - cpu_acc).abs() < 0.02, "{acc} vs {cpu_acc}");
        // CPU weights on the GPU (and GPU weights on the CPU) predict the same classes.
        let mut on_gpu = digits_mlp(&dev, 128).unwrap();
        on_gpu.load_safetensors(&path).unwrap();
        let moved = accuracy(&mut on_gpu, &test, &[64], &dev).unwrap();
        assert_eq!(moved, cpu_acc, "CPU weights evaluated on {dev}");
        let back = dir.join("from-gpu.safetensors");
        gpu_model.save_safetensors(&back).unwrap();
        let mut on_cpu = digits_mlp(&Device::cpu(), 128).unwrap();
        on_cpu.load_safetensors(&back).unwrap();
        let back_acc = accuracy(&mut on_cpu, &test, &[64], &Device::cpu()).unwrap();
        assert_eq!(back_acc, acc, "{dev} weights evaluated on the CPU");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Ten convnet steps on 320 digits (`replay`: captured once, replayed): the batch losses.
fn cnn_run(dev: &Device, replay: bool) -> Vec<f32> {
    let (train, _) = split(&digits(), 0.2, 42);
    let small = train.subset(&(0..320).collect::<Vec<_>>());
    let mut model = digits_cnn(dev).unwrap();
    let mut opt = Adam::new(3e-3);
    train_epoch(
        &mut model,
        &mut opt,
        &small,
        &[1, 8, 8],
        32,
        1,
        replay,
        |_, _, _| {},
    )
    .unwrap()
}

/// The examples' training steps captured and replayed (`Device::capture`) give the losses the
/// ordinary steps give, on every device: the digits MLP over three epochs (one capture per
/// epoch, a ragged last batch run eagerly), ten convnet steps and twelve char-transformer steps
/// (its embedding's gradient reads the replayed token ids on the device).
#[test]
fn replayed_example_steps_match_ordinary_ones() {
    for dev in devices() {
        let (eager, eager_acc, _) = digits_run(&dev, false);
        let (replayed, acc, _) = digits_run(&dev, true);
        let want: Vec<f64> = eager.iter().map(|&v| f64::from(v)).collect();
        assert_close(
            &format!("digits replayed on {dev}"),
            &replayed,
            &want,
            1e-5,
            1e-4,
        );
        assert!(
            (acc - eager_acc).abs() < 0.005,
            "{dev}: {acc} vs {eager_acc}"
        );
        let eager = cnn_run(&dev, false);
        let replayed = cnn_run(&dev, true);
        let want: Vec<f64> = eager.iter().map(|&v| f64::from(v)).collect();
        assert_close(
            &format!("convnet replayed on {dev}"),
            &replayed,
            &want,
            1e-5,
            1e-4,
        );
        let (eager, eager_text) = transformer_run_as(&dev, false);
        let (replayed, text) = transformer_run_as(&dev, true);
        let want: Vec<f64> = eager.iter().map(|&v| f64::from(v)).collect();
        assert_close(
            &format!("transformer replayed on {dev}"),
            &replayed,
            &want,
            1e-5,
            1e-4,
        );
        assert_eq!(
            text, eager_text,
            "{dev}: the replay-trained model samples the same text"
        );
        say!(
            "replayed digits, convnet and transformer steps on {dev}: the same losses as ordinary steps"
        );
    }
}

#[test]
fn digits_cnn_trains_with_the_same_curve_on_every_device() {
    let cpu = cnn_run(&Device::cpu(), false);
    let head: f32 = cpu[..3].iter().sum();
    let tail: f32 = cpu[cpu.len() - 3..].iter().sum();
    assert!(tail < head, "the loss falls: {cpu:?}");
    for dev in gpus() {
        let gpu = cnn_run(&dev, false);
        let want: Vec<f64> = cpu.iter().map(|&v| f64::from(v)).collect();
        assert_close(
            &format!("convnet loss curve on {dev}"),
            &gpu,
            &want,
            1e-3,
            1e-2,
        );
    }
}

/// A tiny transformer for 12 steps: its losses and a short sample.
fn transformer_run(dev: &Device) -> (Vec<f32>, String) {
    transformer_run_as(dev, false)
}

/// Twelve steps of a small char transformer (`replay`: the first captured, the rest replayed):
/// the losses and a sample from the trained model.
fn transformer_run_as(dev: &Device, replay: bool) -> (Vec<f32>, String) {
    let (vocab, ids) = encode(TEXT);
    let config = TransformerConfig {
        vocab: vocab.len(),
        dim: 32,
        heads: 2,
        layers: 1,
        context: 16,
    };
    let mut model = CharTransformer::new(dev, &config).unwrap();
    let mut opt = Adam::new(1e-2);
    let mut rng = Rng(3);
    let mut batch = || text_batch(&ids, 4, config.context, &mut rng, dev).unwrap();
    let losses = if replay {
        let (x, y) = batch();
        let (mut graph, out) = dev
            .capture(&[&x, &y], |io| {
                Ok(vec![text_step_loss(
                    &mut model,
                    &mut opt,
                    &io[0],
                    &io[1],
                    vocab.len(),
                )?])
            })
            .unwrap();
        let mut losses = vec![out[0].to_vec().unwrap()[0]];
        for _ in 1..12 {
            let (x, y) = batch();
            losses.push(graph.run(&[&x, &y]).unwrap()[0].to_vec().unwrap()[0]);
        }
        losses
    } else {
        (0..12)
            .map(|_| {
                let (x, y) = batch();
                text_step(&mut model, &mut opt, &x, &y, vocab.len()).unwrap()
            })
            .collect()
    };
    let opts = SampleOptions {
        prompt: "the ",
        n: 8,
        temp: 1.0,
        seed: 5,
    };
    let text = sample(&model, &vocab, config.context, &opts).unwrap();
    assert_eq!(text.chars().count(), 8);
    assert!(text.chars().all(|c| vocab.contains(&c)));
    (losses, text)
}

#[test]
fn transformer_trains_and_samples_on_every_device() {
    let (cpu, text) = transformer_run(&Device::cpu());
    assert!(cpu[11] < cpu[0], "the loss falls: {cpu:?}");
    say!(
        "transformer on cpu: loss {:.3} -> {:.3}, sample {text:?}",
        cpu[0],
        cpu[11]
    );
    for dev in gpus() {
        let (gpu, _) = transformer_run(&dev);
        let want: Vec<f64> = cpu.iter().map(|&v| f64::from(v)).collect();
        assert_close(
            &format!("transformer loss curve on {dev}"),
            &gpu,
            &want,
            1e-3,
            1e-2,
        );
    }
}

/// The main example's full run (30 epochs, its schedule): at least 95% held-out on the CPU and
/// on every GPU, the bar for `cargo run --release --example digits`.
#[test]
fn digits_example_reaches_95_percent_on_every_device() {
    for dev in devices() {
        let (train, test) = split(&digits(), 0.2, 42);
        let mut model = digits_mlp(&dev, 128).unwrap();
        let mut opt = Adam::new(3e-3);
        for epoch in 1..=30 {
            opt.lr = digits_lr(epoch, 30);
            train_epoch(
                &mut model,
                &mut opt,
                &train,
                &[64],
                32,
                epoch as u64,
                false,
                |_, _, _| {},
            )
            .unwrap();
        }
        let acc = accuracy(&mut model, &test, &[64], &dev).unwrap();
        say!(
            "digits example, 30 epochs on {dev}: held-out {:.2}%",
            100.0 * acc
        );
        assert!(acc >= 0.95, "held-out accuracy {acc} on {dev}");
    }
}

/// The examples' training steps give the same answers fused and eager: bit for bit on the CPU
/// (the same Rust formulas either way), within rounding on every GPU (a fused kernel may
/// contract differently), for the convnet and the transformer.
#[test]
fn examples_train_the_same_fused_and_eager() {
    let cpu = Device::cpu();
    let mut on_cpu = Vec::new();
    for fused in [true, false] {
        cpu.set_fusion(fused);
        on_cpu.push((cnn_run(&cpu, false), transformer_run(&cpu).0));
    }
    cpu.set_fusion(true);
    assert_eq!(on_cpu[0], on_cpu[1], "CPU: fused vs eager losses");
    for dev in fresh_gpus() {
        let mut runs = Vec::new();
        for fused in [true, false] {
            dev.set_fusion(fused);
            runs.push((cnn_run(&dev, false), transformer_run(&dev).0));
        }
        let close = |what: &str, a: &[f32], b: &[f32]| {
            let want: Vec<f64> = b.iter().map(|&v| f64::from(v)).collect();
            assert_close(
                &format!("{what} on {dev}, fused vs eager"),
                a,
                &want,
                1e-4,
                1e-3,
            );
        };
        close("convnet", &runs[0].0, &runs[1].0);
        close("transformer", &runs[0].1, &runs[1].1);
    }
}

/// Epochs `epochs` of the digits MLP on 320 images: the batch losses.
fn digits_epochs(
    model: &mut kiln::nn::Sequential,
    opt: &mut dyn Optimizer,
    epochs: std::ops::RangeInclusive<u64>,
) -> Vec<f32> {
    let (train, _) = split(&digits(), 0.2, 42);
    let small = train.subset(&(0..320).collect::<Vec<_>>());
    epochs
        .flat_map(|e| train_epoch(model, opt, &small, &[64], 32, e, false, |_, _, _| {}).unwrap())
        .collect()
}

fn values(model: &dyn Module) -> Vec<Vec<f32>> {
    model
        .parameters()
        .iter()
        .map(|(_, p)| p.to_vec().unwrap())
        .collect()
}

/// Training stopped after 2 of 4 epochs, checkpointed (weights and optimizer state) and resumed
/// in a new model and optimizer gives the losses of an uninterrupted run: bit for bit on the
/// CPU, for Adam and for SGD with momentum; resumed on every GPU from the CPU's checkpoint,
/// within rounding. A checkpoint that does not fit changes nothing.
#[test]
fn a_resumed_run_matches_an_uninterrupted_one() {
    let cpu = Device::cpu();
    let dir = std::env::temp_dir().join(format!("kiln-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("digits.ckpt.safetensors");
    type MakeOpt = fn() -> Box<dyn Optimizer>;
    let optimizers: [(&str, MakeOpt); 2] = [
        ("adam", || Box::new(Adam::new(3e-3))),
        ("sgd", || {
            Box::new(Sgd::new(0.05).momentum(0.9).nesterov(true))
        }),
    ];
    for (name, make) in optimizers {
        let mut model = digits_mlp(&cpu, 32).unwrap();
        let mut opt = make();
        let full = digits_epochs(&mut model, opt.as_mut(), 1..=4);

        let mut model = digits_mlp(&cpu, 32).unwrap();
        let mut opt = make();
        let mut resumed = digits_epochs(&mut model, opt.as_mut(), 1..=2);
        save_checkpoint(&path, &model, opt.as_ref(), &[("epoch", "2".into())]).unwrap();
        for dev in devices() {
            let mut model = digits_mlp(&dev, 32).unwrap();
            let mut opt = make();
            let progress = load_checkpoint(&path, &mut model, opt.as_mut()).unwrap();
            assert_eq!(progress.get("epoch").map(String::as_str), Some("2"));
            let mut losses = resumed.clone();
            losses.extend(digits_epochs(&mut model, opt.as_mut(), 3..=4));
            if dev.is_cpu() {
                assert_eq!(losses, full, "{name}: resumed on the CPU");
            } else {
                let want: Vec<f64> = full.iter().map(|&v| f64::from(v)).collect();
                assert_close(
                    &format!("{name}: resumed on {dev}"),
                    &losses,
                    &want,
                    1e-3,
                    1e-2,
                );
            }
            say!("{name}: 2 epochs on cpu, checkpoint, 2 more on {dev}: the uninterrupted losses");
        }
        resumed.clear();
    }

    // Adam's state into SGD, a model of another size, a cut file: errors, and nothing changes.
    let mut model = digits_mlp(&cpu, 32).unwrap();
    let mut adam = Adam::new(3e-3);
    digits_epochs(&mut model, &mut adam, 1..=1);
    save_checkpoint(&path, &model, &adam, &[]).unwrap();
    let mut other = digits_mlp(&cpu, 32).unwrap();
    let before = values(&other);
    let mut sgd = Sgd::new(0.1).momentum(0.9);
    let e = load_checkpoint(&path, &mut other, &mut sgd).unwrap_err();
    assert!(matches!(e, kiln::Error::Checkpoint { .. }), "{e:?}");
    assert_eq!(
        values(&other),
        before,
        "a refused checkpoint changed the model"
    );
    let mut wider = digits_mlp(&cpu, 64).unwrap();
    let e = load_checkpoint(&path, &mut wider, &mut Adam::new(1e-3)).unwrap_err();
    assert!(matches!(e, kiln::Error::Checkpoint { .. }), "{e:?}");
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_checkpoint(&cut, &mut other, &mut Adam::new(1e-3)).unwrap_err();
    assert!(matches!(e, kiln::Error::Io { .. }), "{e:?}");
    assert_eq!(values(&other), before);
    std::fs::remove_dir_all(&dir).ok();
}

/// One memory sample of a long run.
#[derive(Debug, Clone, Copy)]
struct MemSample {
    step: usize,
    live: usize,
    live_bytes: u64,
    pooled_bytes: u64,
    rss: u64,
}

/// The process's resident memory in bytes (Linux; 0 elsewhere).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// `steps` digits training steps (the main example's model and optimizer) on `dev`, with a
/// memory sample every `every` steps.
fn digits_soak(dev: &Device, steps: usize, every: usize) -> Vec<MemSample> {
    let (train, _) = split(&digits(), 0.2, 42);
    let mut model = digits_mlp(dev, 128).unwrap();
    let mut opt = Adam::new(1e-3);
    let mut samples = Vec::new();
    let mut step = 0;
    let mut epoch = 0;
    while step < steps {
        epoch += 1;
        let budget = steps - step;
        let part = train.subset(&(0..train.len().min(budget * 32)).collect::<Vec<_>>());
        train_epoch(
            &mut model,
            &mut opt,
            &part,
            &[64],
            32,
            epoch,
            false,
            |_, _, _| {
                step += 1;
                if step % every == 0 {
                    let m = dev.memory();
                    samples.push(MemSample {
                        step,
                        live: m.live,
                        live_bytes: m.live_bytes,
                        pooled_bytes: m.pooled_bytes,
                        rss: rss_bytes(),
                    });
                }
            },
        )
        .unwrap();
    }
    samples
}

/// Flat after warm-up (the first sample): the same live buffers and bytes at every sample,
/// pooled bytes never above their first value, and (when `rss_slack` is given) resident memory
/// within that fraction of its first value.
fn assert_flat(what: &str, samples: &[MemSample], rss_slack: Option<f64>) {
    let first = samples[0];
    for s in &samples[1..] {
        assert_eq!(
            (s.live, s.live_bytes),
            (first.live, first.live_bytes),
            "{what}: live buffers grew: {s:?} after {first:?}"
        );
        assert!(
            s.pooled_bytes <= first.pooled_bytes,
            "{what}: pooled bytes grew: {s:?} after {first:?}"
        );
        if let Some(slack) = rss_slack {
            assert!(
                s.rss as f64 <= first.rss as f64 * (1.0 + slack),
                "{what}: resident memory grew: {s:?} after {first:?}"
            );
        }
    }
}

/// A fused training loop's memory stays flat over 1,000 steps on every GPU: live buffers and
/// bytes identical at every sample after warm-up, pooled bytes never growing.
#[test]
fn a_thousand_fused_training_steps_keep_gpu_memory_flat() {
    for dev in fresh_gpus() {
        let samples = digits_soak(&dev, 1000, 100);
        assert_flat(&format!("1,000 digits steps on {dev}"), &samples, None);
        let last = samples[samples.len() - 1];
        say!(
            "1,000 digits steps on {dev}: {} live buffers ({} KiB), {} KiB pooled, flat",
            last.live,
            last.live_bytes / 1024,
            last.pooled_bytes / 1024
        );
    }
}

/// The soak test (`scripts/soak.sh`): `KILN_SOAK_STEPS` (default 10,000) digits training steps
/// on every GPU with live buffers, pooled bytes and the process's resident memory flat (within
/// 5% after the first tenth of the run). Ignored by default: minutes on lavapipe.
#[test]
#[ignore = "long: run by scripts/soak.sh"]
fn soak_digits_training() {
    let steps: usize = std::env::var("KILN_SOAK_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let every = (steps / 10).max(1);
    for dev in fresh_gpus() {
        let start = std::time::Instant::now();
        let samples = digits_soak(&dev, steps, every);
        say!("soak on {dev}: {steps} steps in {:.1?}", start.elapsed());
        say!("  step   live  live KiB  pooled KiB  RSS MiB");
        for s in &samples {
            say!(
                "  {:>6} {:>5} {:>9} {:>11} {:>8.1}",
                s.step,
                s.live,
                s.live_bytes / 1024,
                s.pooled_bytes / 1024,
                s.rss as f64 / (1 << 20) as f64
            );
        }
        assert_flat(
            &format!("{steps} digits steps on {dev}"),
            &samples,
            Some(0.05),
        );
    }
}
