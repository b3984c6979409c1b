//! A small transformer (token + position embeddings, 2 pre-norm blocks of causal multi-head
//! self-attention and a GELU MLP, layer norms, a linear head) trained to predict the next
//! character of `examples/data/kiln.txt`, then sampled.
//!
//! ```sh
//! cargo run --release --example char_transformer             # KILN_DEVICE=cpu|software|gpu
//! cargo run --release --example char_transformer -- --steps 600
//! cargo run --release --example char_transformer -- --stop-after 200   # as if interrupted
//! cargo run --release --example char_transformer -- --resume out/char_transformer.ckpt.safetensors
//! cargo run --release --example char_transformer -- --replay   # capture the step, replay it
//! ```
//!
//! Every 100 steps (and at a stop) the model, the optimizer's state, the step and the batch
//! sampler's state are checkpointed to `out/char_transformer.ckpt.safetensors`; `--resume`
//! continues from such a file, on any device, as if the run had not stopped.

mod common;

use common::data::{Rng, TEXT};
use common::models::{CharTransformer, TransformerConfig};
use common::progress;
use common::train::{SampleOptions, encode, sample, text_batch, text_step, text_step_loss};
use kiln::Device;
use kiln::nn::{Adam, Module, load_checkpoint, save_checkpoint};
use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("warn,wgpu_hal=off"),
    )
    .init();
    let mut steps = 400;
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
            ("--steps", Some(v)) => steps = v.parse()?,
            ("--resume", Some(v)) => resume = Some(PathBuf::from(v)),
            ("--stop-after", Some(v)) => stop_after = Some(v.parse()?),
            _ => {
                return Err(format!(
                    "unknown argument {flag}; try --steps N, --stop-after N, --resume FILE, --replay"
                )
                .into());
            }
        }
    }
    let dev = Device::from_env()?;
    println!("device: {} — {}", dev.info().name, dev.info().reason);
    let (vocab, ids) = encode(TEXT);
    let config = TransformerConfig {
        vocab: vocab.len(),
        dim: 64,
        heads: 4,
        layers: 2,
        context: 32,
    };
    let mut model = CharTransformer::new(&dev, &config)?;
    println!(
        "text: {} characters, vocabulary {}; model: {} parameters, context {}",
        ids.len(),
        vocab.len(),
        model.num_parameters(),
        config.context
    );
    let mut opt = Adam::new(3e-3);
    let mut rng = Rng(7);
    let mut first = 1;
    if let Some(path) = &resume {
        let progress = load_checkpoint(path, &mut model, &mut opt)?;
        let field = |k: &str| progress.get(k).ok_or(format!("no {k} in the checkpoint"));
        let done: usize = field("step")?.parse()?;
        rng = Rng(field("rng")?.parse()?);
        first = done + 1;
        println!("resumed from {} after step {done}", path.display());
    }
    let out = PathBuf::from("out");
    std::fs::create_dir_all(&out)?;
    let checkpoint = out.join("char_transformer.ckpt.safetensors");
    let start = Instant::now();
    let mut recent = Vec::new();
    let mut report = |step: usize, loss: f32| {
        recent.push(loss);
        progress::bar("training", step, steps, loss);
        if step.is_multiple_of(100) || step == steps {
            let mean = recent.iter().sum::<f32>() / recent.len() as f32;
            progress::finish(&format!(
                "steps {}..{step}: mean loss {mean:.3}",
                step + 1 - recent.len()
            ));
            recent.clear();
        }
    };
    let mut step = first;
    while step <= steps {
        // Steps run in segments that end where a checkpoint is written: every 100 steps and
        // at --stop-after. With --replay, a segment's first step is captured and the rest
        // replay it.
        let mut end = steps.min(step.div_ceil(100) * 100);
        if let Some(s) = stop_after.filter(|&s| s >= step) {
            end = end.min(s);
        }
        if replay {
            let (x, y) = text_batch(&ids, 16, config.context, &mut rng, &dev)?;
            let (mut graph, out) = dev.capture(&[&x, &y], |io| {
                Ok(vec![text_step_loss(
                    &mut model,
                    &mut opt,
                    &io[0],
                    &io[1],
                    vocab.len(),
                )?])
            })?;
            report(step, out[0].to_vec()?[0]);
            for s in step + 1..=end {
                let (x, y) = text_batch(&ids, 16, config.context, &mut rng, &dev)?;
                report(s, graph.run(&[&x, &y])?[0].to_vec()?[0]);
            }
        } else {
            for s in step..=end {
                let (x, y) = text_batch(&ids, 16, config.context, &mut rng, &dev)?;
                report(s, text_step(&mut model, &mut opt, &x, &y, vocab.len())?);
            }
        }
        step = end + 1;
        let stop = stop_after == Some(end);
        if end.is_multiple_of(100) || stop {
            let progress = [("step", end.to_string()), ("rng", rng.0.to_string())];
            save_checkpoint(&checkpoint, &model, &opt, &progress)?;
        }
        if stop {
            println!(
                "stopped after step {end}; continue with --resume {}",
                checkpoint.display()
            );
            return Ok(());
        }
    }
    let stats = dev.stats();
    let ran = (steps + 1).saturating_sub(first).max(1);
    println!(
        "trained steps {first}..={steps} in {:.2?} on {}",
        start.elapsed(),
        dev.info().name
    );
    if !dev.is_cpu() {
        println!(
            "GPU work per step: {:.0} dispatches, of which {:.0} fused kernels computing {:.0} elementwise ops",
            stats.dispatches as f64 / ran as f64,
            stats.fused_kernels as f64 / ran as f64,
            stats.fused_ops as f64 / ran as f64,
        );
    }
    let opts = SampleOptions {
        prompt: "the ",
        n: 240,
        temp: 0.6,
        seed: 1,
    };
    let text = sample(&model, &vocab, config.context, &opts)?;
    println!(
        "sample (temperature {}):\n{}{}",
        opts.temp, opts.prompt, text
    );
    Ok(())
}
