//! The digits classifier (64 → 128 → ReLU → 10, Adam) trained data-parallel: over several
//! devices of this process, or (feature `mpi`) over the ranks `mpirun` starts. Rank 0 prints
//! each epoch's mean loss and the held-out accuracy at the end.
//!
//! ```sh
//! cargo run --release -p kiln-dist --example digits -- --data-parallel cpu,gpu   # one process
//! cargo build --release -p kiln-dist --features mpi --example digits
//! mpirun -np 2 target/release/examples/digits --mpi                            # two ranks
//! ```
//!
//! `--data-parallel` takes `all` (every GPU adapter) or a comma-separated list of `cpu`, `gpu`
//! and `software` (each `gpu`
//! opens a device of its own). With `--mpi` every rank trains one CPU replica unless
//! `--data-parallel` says otherwise. `--epochs N` (default 20).

#[allow(dead_code)] // the engine's example data module; this example uses part of it
#[path = "../../../examples/common/data.rs"]
mod data;

use kiln::nn::{Activation, Adam, Linear, Module, Sequential, cross_entropy};
use kiln::{Device, Result, Tensor, UnaryOp};
use kiln_dist::DataParallel;

const BATCH: usize = 64;

fn mlp(dev: &Device) -> Result<Sequential> {
    Ok(Sequential::new()
        .push(Linear::new(dev, 64, 128, 1)?)
        .push(Activation(UnaryOp::Relu))
        .push(Linear::new(dev, 128, 10, 2)?))
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let (mut devices, mut epochs, mut mpi) = ("cpu".to_string(), 20usize, false);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--data-parallel" => devices = value()?,
            "--epochs" => epochs = value()?.parse()?,
            "--mpi" => mpi = true,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let collective = kiln_dist::collective_from_flag(mpi)?;
    let devices = kiln_dist::devices_from_list(&devices)?;
    let (train, test) = data::split(&data::digits(), 0.2, 42);
    let rank = collective.rank();
    let mut dp = DataParallel::across(&devices, mlp, Box::new(Adam::new(0.005)), collective)?;
    if rank == 0 {
        let names: Vec<String> = dp.devices().iter().map(|d| d.to_string()).collect();
        println!(
            "{} process(es) × [{}], {} training rows, batch {BATCH}",
            dp.collective().size(),
            names.join(", "),
            train.len()
        );
    }
    let start = std::time::Instant::now();
    for epoch in 0..epochs {
        // The same shuffle on every rank (seeded), so the shards of a batch are disjoint.
        let order = data::shuffled(train.len(), 1000 + epoch as u64);
        let mut losses = Vec::new();
        for batch in order.chunks(BATCH) {
            let loss = dp.step(batch.len(), |model, dev, rows| {
                let part = train.subset(&batch[rows.clone()]);
                let x = Tensor::from_vec(dev, part.x, &[rows.len(), 64])?;
                let y = Tensor::from_vec_u32(dev, part.y, &[rows.len()])?;
                cross_entropy(&model.forward(&x)?, &y)
            })?;
            losses.push(loss);
        }
        if rank == 0 {
            let mean = losses.iter().sum::<f32>() / losses.len() as f32;
            println!("epoch {:>2}: mean loss {mean:.4}", epoch + 1);
        }
    }
    if rank == 0 {
        let dev = dp.devices()[0].clone();
        let x = Tensor::from_vec(&dev, test.x.clone(), &[test.len(), 64])?;
        let predicted = dp.model().forward(&x)?.argmax(-1, false)?.to_vec_u32()?;
        let right = predicted
            .iter()
            .zip(&test.y)
            .filter(|(p, y)| p == y)
            .count();
        println!(
            "held-out accuracy {:.2}% ({right}/{}) after {epochs} epochs in {:.2?}",
            100.0 * right as f64 / test.len() as f64,
            test.len(),
            start.elapsed()
        );
    }
    Ok(())
}
