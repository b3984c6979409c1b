//! candle's CPU backend on kiln's CPU benchmark shapes, printing one JSON object per line in
//! the format of `../shared/bench/numpy_ref.py`:
//!
//!   cargo run --release -- --matmul 256 512 1024 2048 --mlp 1024 64 256 256 10
//!
//! and, for `scripts/bench_quant.py`, candle's quantized products (`QMatMul` on GGUF block
//! types, its ggml-derived CPU kernels) in the format of kiln's `examples/qbench.rs`:
//!
//!   cargo run --release -- --qmatmul f32,f16,q8_0,q4_0,q4_K 4096x4096,11008x4096 1,16
//!
//! and, for `scripts/bench_llm.sh`, candle's quantized Llama (candle-transformers'
//! `quantized_llama`, the model of its `quantized` example) on a GGUF file: a prompt of P tokens
//! (the ids `llama-peer bench` uses) in one pass, then N greedy tokens, REPS times:
//!
//!   cargo run --release -- --llm MODEL.gguf P N REPS

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
    if let Some(i) = args.iter().position(|a| a == "--llm") {
        let n = |j: usize| args[i + j].parse::<usize>().expect("a number");
        return llm(&args[i + 1], n(2), n(3), n(4));
    }
    if let Some(i) = args.iter().position(|a| a == "--qmatmul") {
        qmatmul(&args[i + 1], &args[i + 2], &args[i + 3])?;
    }
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

/// `x · wᵀ` through `QMatMul` for each weight type, shape `NxK` and number of rows.
fn qmatmul(types: &str, shapes: &str, ms: &str) -> Result<()> {
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::Module;
    let dev = Device::Cpu;
    for shape in shapes.split(',') {
        let (n, k) = shape.split_once('x').expect("NxK");
        let (n, k): (usize, usize) = (n.parse().unwrap(), k.parse().unwrap());
        let w = (Tensor::randn(0f32, 1f32, (n, k), &dev)? * 0.02)?;
        for ty in types.split(',') {
            let dtype = match ty {
                "f32" => GgmlDType::F32,
                "f16" => GgmlDType::F16,
                "q8_0" => GgmlDType::Q8_0,
                "q4_0" => GgmlDType::Q4_0,
                "q4_K" => GgmlDType::Q4K,
                "q6_K" => GgmlDType::Q6K,
                other => panic!("unknown type {other}"),
            };
            let q = QTensor::quantize(&w, dtype)?;
            let bytes = q.storage_size_in_bytes() as f64;
            let wd = q.dequantize(&dev)?;
            let mm = QMatMul::from_qtensor(q)?;
            for m in ms.split(',') {
                let m: usize = m.parse().unwrap();
                let x = Tensor::randn(0f32, 1f32, (m, k), &dev)?;
                let s = median_time(|| mm.forward(&x).map(drop))?;
                // The product against the dequantized weight in f32: the worst difference,
                // relative to the largest output (a check that the timed path computes it all).
                let y = mm.forward(&x)?;
                let want = x.matmul(&wd.t()?)?;
                let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
                let err = (y - want)?.abs()?.max_all()?.to_scalar::<f32>()? / scale;
                println!(
                    r#"{{"engine":"candle","device":"cpu","dtype":"{ty}","m":{m},"n":{n},"k":{k},"ms":{:.4},"gbs":{:.2},"gflops":{:.2},"max_rel_err":{err:.2e}}}"#,
                    s * 1e3,
                    bytes / s / 1e9,
                    2.0 * (m * n * k) as f64 / s / 1e9
                );
            }
        }
    }
    Ok(())
}

/// Prefill and decode tokens/s of candle's quantized Llama, one JSON line per rep.
fn llm(path: &str, p: usize, n: usize, reps: usize) -> Result<()> {
    use candle_transformers::models::quantized_llama::ModelWeights;
    let dev = Device::Cpu;
    for _ in 0..reps {
        let mut file = std::fs::File::open(path)?;
        let content = candle_core::quantized::gguf_file::Content::read(&mut file)?;
        let vocab = content
            .tensor_infos
            .get("token_embd.weight")
            .map(|t| t.shape.dims()[0])
            .expect("token_embd.weight");
        let mut model = ModelWeights::from_gguf(content, &mut file, &dev)?;
        let prompt: Vec<u32> = (0..p).map(|i| ((i * 7919 + 13) % vocab) as u32).collect();
        let t0 = Instant::now();
        let logits = model.forward(&Tensor::new(prompt.as_slice(), &dev)?.unsqueeze(0)?, 0)?;
        let mut next = logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?;
        let t1 = Instant::now();
        for i in 0..n {
            let input = Tensor::new(&[next], &dev)?.unsqueeze(0)?;
            let logits = model.forward(&input, p + i)?;
            next = logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?;
        }
        let t2 = Instant::now();
        println!(
            "{{\"prefill_tok_s\": {:.3}, \"decode_tok_s\": {:.3}}}",
            p as f64 / (t1 - t0).as_secs_f64(),
            n as f64 / (t2 - t1).as_secs_f64()
        );
    }
    Ok(())
}
