//! The main example: train an MLP (64 → 128 → ReLU → 10) on the 8×8 handwritten digits, on the
//! device `Device::from_env()` picks, report held-out accuracy, and save the weights
//! (safetensors) and the loss curve (PNG).
//!
//! ```sh
//! cargo run --release --example digits                       # train (KILN_DEVICE=cpu|software|gpu)
//! cargo run --release --example digits -- --eval out/digits.safetensors
//! cargo run --release --example digits -- --epochs 40 --out somewhere
//! ```

mod common;

use common::data::{digits, split};
use common::models::digits_mlp;
use common::train::{accuracy, digits_lr, train_epoch};
use common::{plot, progress};
use kiln::Device;
use kiln::nn::{Adam, Module};
use std::path::PathBuf;
use std::time::Instant;

/// The held-out split: the same seed every run, so `--eval` sees the same 20%.
const SPLIT_SEED: u64 = 42;

struct Args {
    epochs: usize,
    out: PathBuf,
    eval: Option<PathBuf>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        epochs: 30,
        out: PathBuf::from("out"),
        eval: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--epochs" => a.epochs = value()?.parse().map_err(|e| format!("--epochs: {e}"))?,
            "--out" => a.out = PathBuf::from(value()?),
            "--eval" => a.eval = Some(PathBuf::from(value()?)),
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
    let start = Instant::now();
    let mut per_epoch = 0;
    for epoch in 1..=args.epochs {
        opt.lr = digits_lr(epoch, args.epochs);
        let label = format!("epoch {epoch:>2}/{}", args.epochs);
        let l = train_epoch(
            &mut model,
            &mut opt,
            &train,
            &[64],
            32,
            epoch as u64,
            |i, n, loss| progress::bar(&label, i, n, loss),
        )?;
        per_epoch = l.len();
        let mean = l.iter().sum::<f32>() / l.len() as f32;
        losses.extend(l);
        let acc = accuracy(&mut model, &test, &[64], &dev)?;
        progress::finish(&format!("mean {mean:.4}  held-out {:.2}%", 100.0 * acc));
    }
    let took = start.elapsed();
    let acc = accuracy(&mut model, &test, &[64], &dev)?;
    println!(
        "trained in {took:.2?} on {}: held-out accuracy {:.2}%",
        dev.info().name,
        100.0 * acc
    );

    std::fs::create_dir_all(&args.out)?;
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
