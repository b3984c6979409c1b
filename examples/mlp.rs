//! Inference demo: a random 3-layer MLP (batch 1024,
//! 64-256-256-10) run forward on the device `Device::from_env()` picks, checked against the CPU
//! backend, with timings.
//!
//! `cargo run --release --example mlp` (`KILN_DEVICE=software` for lavapipe, `gpu`, `cpu`).

use kiln::{Device, Tensor};
use std::time::Instant;

struct Mlp {
    layers: Vec<(Tensor, Tensor)>,
}

impl Mlp {
    fn new(dev: &Device, sizes: &[usize]) -> kiln::Result<Mlp> {
        let mut layers = Vec::new();
        for (i, w) in sizes.windows(2).enumerate() {
            let scale = Tensor::full(dev, &[1], (2.0 / w[0] as f32).sqrt())?;
            let weight = Tensor::randn(dev, &[w[0], w[1]], 100 + i as u64)?.mul(&scale)?;
            let bias = Tensor::zeros(dev, &[w[1]])?;
            layers.push((weight, bias));
        }
        Ok(Mlp { layers })
    }

    fn forward(&self, x: &Tensor) -> kiln::Result<Tensor> {
        let mut h = x.clone();
        for (i, (w, b)) in self.layers.iter().enumerate() {
            h = h.matmul(w)?.add(b)?;
            if i + 1 < self.layers.len() {
                h = h.relu()?;
            }
        }
        h.sigmoid()
    }
}

fn main() -> kiln::Result<()> {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("warn,kiln=info,wgpu_hal=off"),
    )
    .init();
    let dev = Device::from_env()?;
    println!(
        "device: {} ({:?}, {})",
        dev.info().name,
        dev.info().kind,
        dev.info().backend
    );
    println!("  why: {}", dev.info().reason);

    let sizes = [64, 256, 256, 10];
    let batch = 1024;
    let x = Tensor::randn(&dev, &[batch, sizes[0]], 1)?;
    let mlp = Mlp::new(&dev, &sizes)?;

    let start = Instant::now();
    let y = mlp.forward(&x)?.to_vec()?;
    println!(
        "first forward (includes pipeline compilation): {:.2?}",
        start.elapsed()
    );

    let runs = 20;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        mlp.forward(&x)?.to_vec()?;
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "forward + readback, batch {batch}, {sizes:?}: median {:.2?} over {runs} runs",
        times[runs / 2]
    );

    let cpu = Device::cpu();
    let want = Mlp::new(&cpu, &sizes)?
        .forward(&x.to_device(&cpu)?)?
        .to_vec()?;
    let max_err = y
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!("max |difference| from the CPU backend: {max_err:.2e}");
    let argmax = |row: &[f32]| {
        row.iter()
            .enumerate()
            .fold((0, f32::MIN), |m, (i, &v)| if v > m.1 { (i, v) } else { m })
            .0
    };
    println!(
        "first rows' predicted classes: {:?}",
        y.chunks(10).take(8).map(argmax).collect::<Vec<_>>()
    );
    if max_err > 1e-4 {
        eprintln!("mismatch with the CPU backend");
        std::process::exit(1);
    }
    Ok(())
}
