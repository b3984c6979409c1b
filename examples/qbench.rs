//! Products with quantized and half-precision weights (`x · wᵀ`, the layers of a language
//! model), and the machine's memory read bandwidth, printed as one JSON object per line for
//! `scripts/bench_quant.py`.
//!
//! ```sh
//! cargo run --release --example qbench -- --device cpu --dtypes f32,f16,q8_0,q4_0,q4_K \
//!     --shapes 4096x4096,11008x4096 --m 1,16 --stream
//! ```
//!
//! A shape `NxK` is a weight of N rows of K values (`[out_features, in_features]`); `--m` lists
//! the activation rows (1: a decode step's GEMV; more: prefill's GEMM). Each time is the median
//! of `--reps` runs (default 9) after two warm-ups, every run ending in a readback of the
//! result. GB/s counts the weight's bytes in its own format, GFLOP/s `2·m·n·k`. `--stream`
//! adds the read bandwidth of a 512 MiB array summed by every core (STREAM-style), the
//! ceiling a decode-shaped GEMV can reach.

use kiln::{DType, Device, Tensor};
use std::time::{Duration, Instant};

fn main() -> kiln::Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| {
        argv.iter()
            .position(|a| a == name)
            .and_then(|i| argv.get(i + 1))
            .cloned()
    };
    let device = match arg("--device").as_deref() {
        Some("cpu") | None => Device::cpu(),
        Some("software") => Device::software()?,
        Some("gpu") => Device::gpu()?,
        Some(other) => panic!("--device cpu|software|gpu, not {other}"),
    };
    let dtypes: Vec<DType> = arg("--dtypes")
        .unwrap_or("f32,f16,q8_0,q4_0,q4_K".into())
        .split(',')
        .map(|s| {
            *DType::ALL
                .iter()
                .find(|d| d.name() == s)
                .unwrap_or_else(|| panic!("unknown dtype {s}"))
        })
        .collect();
    let shapes: Vec<(usize, usize)> = arg("--shapes")
        .unwrap_or("4096x4096".into())
        .split(',')
        .map(|s| {
            let (n, k) = s.split_once('x').expect("shapes are NxK");
            (n.parse().unwrap(), k.parse().unwrap())
        })
        .collect();
    let ms: Vec<usize> = arg("--m")
        .unwrap_or("1".into())
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    let reps: usize = arg("--reps").map_or(9, |s| s.parse().unwrap());
    let name = device.info().name.clone();

    if argv.iter().any(|a| a == "--stream") {
        let gbs = read_bandwidth();
        println!(r#"{{"engine":"stream","device":"cpu","read_gbs":{gbs:.2}}}"#);
    }
    for &(n, k) in &shapes {
        let w32 = Tensor::randn(&Device::cpu(), &[n, k], 1)?.mul_scalar(0.02)?;
        for &dtype in &dtypes {
            let w = w32.to_dtype(dtype)?.to_device(&device)?;
            let bytes = dtype.bytes_for(n * k).unwrap() as f64;
            for &m in &ms {
                let x = Tensor::randn(&device, &[m, k], 2)?;
                let run = || -> kiln::Result<()> {
                    x.linear(&w, None, None)?.to_vec()?;
                    Ok(())
                };
                let t = median(reps, run)?.as_secs_f64();
                let gflops = 2.0 * (m * n * k) as f64 / t / 1e9;
                println!(
                    r#"{{"engine":"kiln","device":"{name}","dtype":"{dtype}","m":{m},"n":{n},"k":{k},"ms":{:.4},"gbs":{:.2},"gflops":{gflops:.2}}}"#,
                    t * 1e3,
                    bytes / t / 1e9
                );
            }
        }
    }
    Ok(())
}

/// Median wall time of `reps` runs of `f` after two warm-ups.
fn median(reps: usize, f: impl Fn() -> kiln::Result<()>) -> kiln::Result<Duration> {
    f()?;
    f()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t0 = Instant::now();
        f()?;
        times.push(t0.elapsed());
    }
    times.sort();
    Ok(times[reps / 2])
}

/// GB/s of summing a 512 MiB array on every core at once (median of 7).
fn read_bandwidth() -> f64 {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let data: Vec<f32> = (0..(128usize << 20)).map(|i| (i % 7) as f32).collect();
    let chunk = data.len().div_ceil(threads);
    let mut times: Vec<f64> = (0..7)
        .map(|_| {
            let t0 = Instant::now();
            let total: f32 = std::thread::scope(|s| {
                let parts: Vec<_> = data
                    .chunks(chunk)
                    .map(|c| s.spawn(move || sum(c)))
                    .collect();
                parts.into_iter().map(|p| p.join().unwrap()).sum()
            });
            std::hint::black_box(total);
            t0.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (data.len() * 4) as f64 / times[3] / 1e9
}

/// A sum with 16 independent accumulators, so the loads, not the adds, bound it.
fn sum(c: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = c.chunks_exact(16);
    let rest: f32 = chunks.remainder().iter().sum();
    for v in chunks {
        for i in 0..16 {
            acc[i] += v[i];
        }
    }
    acc.iter().sum::<f32>() + rest
}
