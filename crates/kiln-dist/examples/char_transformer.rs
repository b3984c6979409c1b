//! The character-level transformer of the engine's `char_transformer` example (2 blocks, width
//! 64, context 32) trained data-parallel: over several devices of this process, or (feature
//! `mpi`) over the ranks `mpirun` starts. Rank 0 prints the loss every 50 steps, then the
//! training's samples per second and where the steps' time went (compute, gathering the
//! gradients, the all-reduce, the optimizer, the parameters' broadcast).
//!
//! ```sh
//! cargo run --release -p kiln-dist --example char_transformer -- --data-parallel cpu,cpu
//! cargo build --release -p kiln-dist --features mpi --example char_transformer
//! RAYON_NUM_THREADS=1 mpirun -np 2 target/release/examples/char_transformer --mpi
//! ```
//!
//! `--data-parallel` takes `all` (every GPU adapter) or a comma-separated list of `cpu`, `gpu`
//! and `software`; `--steps N`
//! (default 300), `--batch N` windows of 32 characters per step (default 32), `--bucket-kib K`
//! the all-reduce's bucket size (default 4096).

#[allow(dead_code)] // the engine's example modules; this example uses part of them
#[path = "../../../examples/common/data.rs"]
mod data;
#[allow(dead_code)]
#[path = "../../../examples/common/models.rs"]
mod models;

use kiln::nn::{Adam, cross_entropy};
use kiln::{Device, Tensor};
use kiln_dist::DataParallel;
use models::{CharTransformer, TransformerConfig};

const CONTEXT: usize = 32;

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let (mut devices, mut steps, mut batch, mut bucket_kib, mut mpi) =
        ("cpu".to_string(), 300usize, 32usize, 4096usize, false);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--data-parallel" => devices = value()?,
            "--steps" => steps = value()?.parse()?,
            "--batch" => batch = value()?.parse()?,
            "--bucket-kib" => bucket_kib = value()?.parse()?,
            "--mpi" => mpi = true,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let collective = kiln_dist::collective_from_flag(mpi)?;
    let devices = kiln_dist::devices_from_list(&devices)?;
    let text: Vec<char> = data::TEXT.chars().collect();
    let mut vocab = text.clone();
    vocab.sort_unstable();
    vocab.dedup();
    let ids: Vec<u32> = text
        .iter()
        .map(|c| vocab.binary_search(c).unwrap_or(0) as u32)
        .collect();
    let config = TransformerConfig {
        vocab: vocab.len(),
        dim: 64,
        heads: 4,
        layers: 2,
        context: CONTEXT,
    };
    let rank = collective.rank();
    let build = |dev: &Device| CharTransformer::new(dev, &config);
    let mut dp = DataParallel::across(&devices, build, Box::new(Adam::new(3e-3)), collective)?;
    dp.set_bucket_bytes(bucket_kib << 10);
    let params: usize = kiln::nn::Module::num_parameters(dp.model());
    if rank == 0 {
        let names: Vec<String> = dp.devices().iter().map(|d| d.to_string()).collect();
        println!(
            "{} process(es) × [{}]; {params} parameters ({:.2} MB of f64 gradient sums per step, buckets of {bucket_kib} KiB); {batch} windows of {CONTEXT} characters per step",
            dp.collective().size(),
            names.join(", "),
            (params * 8) as f64 / 1e6
        );
    }
    // Every rank draws the same windows (the same seed), and each replica takes its shard.
    let mut rng = data::Rng(7);
    let warm = 5.min(steps);
    let mut start = std::time::Instant::now();
    let mut recent = Vec::new();
    for step in 1..=steps {
        if step == warm + 1 {
            start = std::time::Instant::now();
            dp.reset_times();
        }
        let starts: Vec<usize> = (0..batch)
            .map(|_| rng.below((ids.len() - CONTEXT - 1) as u64) as usize)
            .collect();
        let loss = dp.step(batch, |model, dev, rows| {
            let (mut x, mut y) = (Vec::new(), Vec::new());
            for &s in &starts[rows.clone()] {
                x.extend_from_slice(&ids[s..s + CONTEXT]);
                y.extend_from_slice(&ids[s + 1..s + CONTEXT + 1]);
            }
            let n = rows.len();
            let x = Tensor::from_vec_u32(dev, x, &[n, CONTEXT])?;
            let y = Tensor::from_vec_u32(dev, y, &[n * CONTEXT])?;
            let logits = kiln::nn::Module::forward(model, &x)?;
            cross_entropy(&logits.reshape(&[n * CONTEXT, vocab.len()])?, &y)
        })?;
        recent.push(loss);
        if rank == 0 && (step % 50 == 0 || step == steps) {
            let mean = recent.iter().sum::<f32>() / recent.len() as f32;
            println!(
                "steps {:>4}..{step:<4} mean loss {mean:.3}",
                step + 1 - recent.len()
            );
            recent.clear();
        }
    }
    if rank == 0 && steps > warm {
        let took = start.elapsed().as_secs_f64();
        let t = dp.times();
        let share = |d: std::time::Duration| 100.0 * d.as_secs_f64() / t.total().as_secs_f64();
        println!(
            "samples per second: {:.1} (steps {}..={steps}, {:.2} s)",
            ((steps - warm) * batch) as f64 / took,
            warm + 1,
            took
        );
        println!(
            "step time: compute {:.1}%, gather {:.1}%, all-reduce {:.1}%, optimizer {:.1}%, broadcast {:.1}%; communication {:.1}% ({:.2} ms per step)",
            share(t.compute),
            share(t.gather),
            share(t.reduce),
            share(t.update),
            share(t.broadcast),
            100.0 * t.communication_share(),
            (t.reduce + t.broadcast).as_secs_f64() * 1e3 / t.steps.max(1) as f64
        );
    }
    Ok(())
}
