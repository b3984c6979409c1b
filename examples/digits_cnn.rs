//! A small convnet on the same digits: conv 3×3 (16) → ReLU → max-pool → conv 3×3 (32) → ReLU →
//! max-pool → linear, trained with Adam on the device `Device::from_env()` picks.
//!
//! ```sh
//! cargo run --release --example digits_cnn                  # KILN_DEVICE=cpu|software|gpu
//! cargo run --release --example digits_cnn -- --epochs 20
//! cargo run --release --example digits_cnn -- --stop-after 4      # as if interrupted
//! cargo run --release --example digits_cnn -- --resume out/digits_cnn.ckpt.safetensors
//! cargo run --release --example digits_cnn -- --replay   # capture each epoch's step, replay it
//! ```
//!
//! After every epoch the model and the optimizer's state are checkpointed to
//! `out/digits_cnn.ckpt.safetensors`; `--resume` continues from such a file, on any device.

mod common;

use common::data::{digits, split};
use common::models::digits_cnn;
use common::progress;
use common::train::{accuracy, train_epoch};
use kiln::Device;
use kiln::nn::{Adam, Module, load_checkpoint, save_checkpoint};
use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("warn,wgpu_hal=off"),
    )
    .init();
    let mut epochs = 12;
    let mut resume: Option<PathBuf> = None;
    let mut stop_after: Option<usize> = None;
    let mut replay = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--replay" {
            replay = true;
            continue;
        }
        match (flag.as_str(), it.next()) {
            ("--epochs", Some(v)) => epochs = v.parse()?,
            ("--resume", Some(v)) => resume = Some(PathBuf::from(v)),
            ("--stop-after", Some(v)) => stop_after = Some(v.parse()?),
            _ => {
                return Err(format!(
                    "unknown argument {flag}; try --epochs N, --stop-after N, --resume FILE, --replay"
                )
                .into());
            }
        }
    }
    let dev = Device::from_env()?;
    println!("device: {} — {}", dev.info().name, dev.info().reason);
    let (train, test) = split(&digits(), 0.2, 42);
    let mut model = digits_cnn(&dev)?;
    println!(
        "model: conv(16)-pool-conv(32)-pool-linear, {} parameters; {} epochs",
        model.num_parameters(),
        epochs
    );
    let mut opt = Adam::new(3e-3);
    let mut first = 1;
    if let Some(path) = &resume {
        let progress = load_checkpoint(path, &mut model, &mut opt)?;
        let done: usize = progress
            .get("epoch")
            .ok_or("no epoch in the checkpoint")?
            .parse()?;
        first = done + 1;
        println!("resumed from {} after epoch {done}", path.display());
    }
    std::fs::create_dir_all("out")?;
    let checkpoint = PathBuf::from("out/digits_cnn.ckpt.safetensors");
    let start = Instant::now();
    for epoch in first..=epochs {
        let label = format!("epoch {epoch:>2}/{epochs}");
        let l = train_epoch(
            &mut model,
            &mut opt,
            &train,
            &[1, 8, 8],
            32,
            epoch as u64,
            replay,
            |i, n, loss| progress::bar(&label, i, n, loss),
        )?;
        let acc = accuracy(&mut model, &test, &[1, 8, 8], &dev)?;
        let mean = l.iter().sum::<f32>() / l.len() as f32;
        progress::finish(&format!("mean {mean:.4}  held-out {:.2}%", 100.0 * acc));
        save_checkpoint(&checkpoint, &model, &opt, &[("epoch", epoch.to_string())])?;
        if stop_after == Some(epoch) {
            println!(
                "stopped after epoch {epoch}; continue with --resume {}",
                checkpoint.display()
            );
            return Ok(());
        }
    }
    let acc = accuracy(&mut model, &test, &[1, 8, 8], &dev)?;
    println!(
        "trained in {:.2?} on {}: held-out accuracy {:.2}%",
        start.elapsed(),
        dev.info().name,
        100.0 * acc
    );
    Ok(())
}
