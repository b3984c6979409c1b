//! The main example: train an MLP (64 → 128 → ReLU → 10) on the 8×8 handwritten digits, on the
//! device `Device::from_env()` picks, report held-out accuracy, and save the weights
//! (safetensors) and the loss curve (PNG).
//!
//! ```sh
//! cargo run --release --example digits                       # train (KILN_DEVICE=cpu|software|gpu)
//! cargo run --release --example digits -- --eval out/digits.safetensors
//! cargo run --release --example digits -- --epochs 40 --out somewhere
//! cargo run --release --example digits -- --stop-after 10       # as if interrupted
//! cargo run --release --example digits -- --resume out/digits.ckpt.safetensors
//! cargo run --release --example digits -- --replay   # capture each epoch's step, replay it
//! ```
//!
//! After every epoch the model, the optimizer's state and the losses so far are checkpointed to
//! `<out>/digits.ckpt.safetensors`; `--resume` continues from such a file (on any device) and
//! ends with the same model an uninterrupted run gives.

mod common;

use common::data::{digits, split};
use common::models::digits_mlp;
use common::train::{accuracy, digits_lr, train_epoch};
use common::{plot, progress};
use kiln::Device;
use kiln::nn::{Adam, Module, load_checkpoint, save_checkpoint};
use std::path::PathBuf;
use std::time::Instant;

/// The held-out split: the same seed every run, so `--eval` sees the same 20%.
const SPLIT_SEED: u64 = 42;

struct Args {
    epochs: usize,
    out: PathBuf,
    eval: Option<PathBuf>,
    resume: Option<PathBuf>,
    stop_after: Option<usize>,
    replay: bool,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        epochs: 30,
        out: PathBuf::from("out"),
        eval: None,
        resume: None,
        stop_after: None,
        replay: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--epochs" => a.epochs = value()?.parse().map_err(|e| format!("--epochs: {e}"))?,
            "--out" => a.out = PathBuf::from(value()?),
            "--eval" => a.eval = Some(PathBuf::from(value()?)),
            "--resume" => a.resume = Some(PathBuf::from(value()?)),
            "--stop-after" => {
                a.stop_after = Some(value()?.parse().map_err(|e| format!("--stop-after: {e}"))?)
            }
            "--replay" => a.replay = true,
            other => return Err(format!("unknown argument {other}; see the file's header")),
        }
    }
    Ok(a)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("warn,wgpu_hal=off"),
    )
    .init();
    let args = args()?;
    let dev = Device::from_env()?;
    println!(
        "device: {} ({:?}, {}) — {}",
        dev.info().name,
        dev.info().kind,
        dev.info().backend,
        dev.info().reason
    );
    let (train, test) = split(&digits(), 0.2, SPLIT_SEED);
    println!(
        "digits: {} training and {} held-out 8x8 images",
        train.len(),
        test.len()
    );
    let mut model = digits_mlp(&dev, 128)?;

    if let Some(path) = &args.eval {
        model.load_safetensors(path)?;
        let acc = accuracy(&mut model, &test, &[64], &dev)?;
        println!(
            "held-out accuracy of {}: {:.2}% ({} images)",
            path.display(),
            100.0 * acc,
            test.len()
        );
        return Ok(());
    }

    println!(
        "model: 64-128-10 MLP, {} parameters; Adam (lr 3e-3, stepped down), batch 32, {} epochs",
        model.num_parameters(),
        args.epochs
    );
    let mut opt = Adam::new(3e-3);
    let mut losses = Vec::new();
    let mut first = 1;
    if let Some(path) = &args.resume {
        let progress = load_checkpoint(path, &mut model, &mut opt)?;
        let done: usize = progress
            .get("epoch")
            .ok_or("no epoch in the checkpoint")?
            .parse()?;
        losses = progress
            .get("losses")
            .map(|l| {
                l.split(',')
                    .filter(|v| !v.is_empty())
                    .map(str::parse)
                    .collect()
            })
            .transpose()?
            .unwrap_or_default();
        first = done + 1;
        println!("resumed from {} after epoch {done}", path.display());
    }
    std::fs::create_dir_all(&args.out)?;
    let checkpoint = args.out.join("digits.ckpt.safetensors");
    let start = Instant::now();
    let per_epoch = train.len().div_ceil(32);
    for epoch in first..=args.epochs {
        opt.lr = digits_lr(epoch, args.epochs);
        let label = format!("epoch {epoch:>2}/{}", args.epochs);
        let l = train_epoch(
            &mut model,
            &mut opt,
            &train,
            &[64],
            32,
            epoch as u64,
            args.replay,
            |i, n, loss| progress::bar(&label, i, n, loss),
        )?;
        let mean = l.iter().sum::<f32>() / l.len() as f32;
        losses.extend(l);
        let acc = accuracy(&mut model, &test, &[64], &dev)?;
        progress::finish(&format!("mean {mean:.4}  held-out {:.2}%", 100.0 * acc));
        let so_far: Vec<String> = losses.iter().map(f32::to_string).collect();
        save_checkpoint(
            &checkpoint,
            &model,
            &opt,
            &[("epoch", epoch.to_string()), ("losses", so_far.join(","))],
        )?;
        if args.stop_after == Some(epoch) {
            println!(
                "stopped after epoch {epoch}; continue with --resume {}",
                checkpoint.display()
            );
            return Ok(());
        }
    }
    let took = start.elapsed();
    let acc = accuracy(&mut model, &test, &[64], &dev)?;
    println!(
        "trained in {took:.2?} on {}: held-out accuracy {:.2}%",
        dev.info().name,
        100.0 * acc
    );

    let weights = args.out.join("digits.safetensors");
    model.save_safetensors(&weights)?;
    let png = args.out.join("digits_loss.png");
    plot::loss_png(&png, &losses, per_epoch)?;
    println!("saved {} and {}", weights.display(), png.display());
    println!(
        "check: cargo run --release --example digits -- --eval {}",
        weights.display()
    );
    Ok(())
}
