//! candle's CPU backend on kiln's CPU benchmark shapes, printing one JSON object per line in
//! the format of `../shared/bench/numpy_ref.py`:
//!
//!   cargo run --release -- --matmul 256 512 1024 2048 --mlp 1024 64 256 256 10

use candle_core::{DType, Device, Result, Tensor};
use std::time::Instant;

fn median_time(mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..2 {
        f()?;
    }
    let mut ts = Vec::new();
    for _ in 0..9 {
        let t = Instant::now();
        f()?;
        ts.push(t.elapsed().as_secs_f64());
    }
    ts.sort_by(f64::total_cmp);
    Ok(ts[ts.len() / 2])
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let list = |flag: &str| -> Vec<usize> {
        let Some(i) = args.iter().position(|a| a == flag) else {
            return vec![];
        };
        args[i + 1..]
            .iter()
            .take_while(|a| !a.starts_with("--"))
            .map(|a| a.parse().expect("a number"))
            .collect()
    };
    let dev = Device::Cpu;
    for n in list("--matmul") {
        let a = Tensor::randn(0f32, 1f32, (n, n), &dev)?;
        let b = Tensor::randn(0f32, 1f32, (n, n), &dev)?;
        let s = median_time(|| a.matmul(&b).map(drop))?;
        let gflops = 2.0 * (n as f64).powi(3) / s / 1e9;
        println!(r#"{{"op": "matmul", "n": {n}, "seconds": {s}, "gflops": {gflops}}}"#);
    }
    let mlp = list("--mlp");
    if mlp.len() >= 3 {
        let (batch, widths) = (mlp[0], &mlp[1..]);
        let mut layers = Vec::new();
        for w in widths.windows(2) {
            let weight = (Tensor::randn(0f32, 1f32, (w[0], w[1]), &dev)? / (w[0] as f64).sqrt())?;
            layers.push((weight, Tensor::zeros(w[1], DType::F32, &dev)?));
        }
        let x = Tensor::randn(0f32, 1f32, (batch, widths[0]), &dev)?;
        let s = median_time(|| {
            let mut h = x.clone();
            for (i, (w, b)) in layers.iter().enumerate() {
                h = h.matmul(w)?.broadcast_add(b)?;
                if i + 1 < layers.len() {
                    h = h.relu()?;
                }
            }
            Ok(())
        })?;
        let flops: f64 = widths
            .windows(2)
            .map(|w| 2.0 * (batch * w[0] * w[1]) as f64)
            .sum();
        println!(
            r#"{{"op": "mlp_forward", "batch": {batch}, "seconds": {s}, "gflops": {}, "samples_per_s": {}}}"#,
            flops / s / 1e9,
            batch as f64 / s
        );
    }
    Ok(())
}
