//! Prefill and decode speed of a GGUF model, as JSON lines (scripts/bench_llm.sh runs it beside
//! llama.cpp's `llama-peer bench`, which takes the same arguments and the same token ids):
//!
//! ```text
//! cargo run --release -p kiln-llm --example llm_bench -- MODEL PROMPT_TOKENS DECODE_TOKENS REPS [BATCH]
//! ```
//!
//! With BATCH above 1, BATCH sequences are prefilled together (`Model::prefill_batch`) and then
//! decoded together (`Model::forward_batch`): tokens/s counts every sequence's tokens.
//!
//! Each rep clears the cache, runs the prompt in one pass, then decodes greedily (argmax on the
//! device, one id read back per token). The device is `KILN_DEVICE` or the best one found.
//! `KILN_REPLAY=0` runs every decode step op by op (no captured step on a GPU), to compare.

use std::time::Instant;

use kiln::Device;
use kiln_llm::{Gguf, Logits, Model, Sampler, Sampling};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !(4..=5).contains(&args.len()) {
        return Err("usage: llm_bench MODEL PROMPT_TOKENS DECODE_TOKENS REPS [BATCH]".into());
    }
    let batch: usize = args.get(4).map_or(Ok(1), |b| b.parse())?;
    let (p, n, reps): (usize, usize, usize) =
        (args[1].parse()?, args[2].parse()?, args[3].parse()?);
    let device = Device::from_env()?;
    let file_mb = std::fs::metadata(&args[0])?.len() as f64 / 1048576.0;
    let file = Gguf::open(&args[0])?;
    let model = Model::from_gguf(&file, &device)?;
    let vocab = model.config.vocab;
    // The token ids llama-peer bench uses.
    let prompt: Vec<u32> = (0..p).map(|i| ((i * 7919 + 13) % vocab) as u32).collect();
    let mut sampler = Sampler::new(Sampling::default())?;
    for _ in 0..reps {
        let mut caches: Vec<_> = (0..batch).map(|_| model.cache(p + n + 8)).collect();
        let replay = std::env::var("KILN_REPLAY").map_or(true, |v| v != "0");
        caches.iter_mut().for_each(|c| c.set_replay(replay));
        let t0 = Instant::now();
        let mut next = if batch == 1 {
            let logits = model.forward(&prompt, &mut caches[0], Logits::Last)?;
            vec![sampler.next(&logits, &prompt)?]
        } else {
            let prompts = vec![prompt.as_slice(); batch];
            let mut refs: Vec<&mut kiln_llm::Cache> = caches.iter_mut().collect();
            let logits = model.prefill_batch(&prompts, &mut refs)?;
            logits.argmax(-1, false)?.to_vec_u32()?
        };
        let t1 = Instant::now();
        let before = device.stats();
        for _ in 0..n {
            if batch == 1 {
                let logits = model.forward(&next, &mut caches[0], Logits::Last)?;
                next[0] = sampler.next(&logits, &prompt)?;
            } else {
                let mut refs: Vec<&mut kiln_llm::Cache> = caches.iter_mut().collect();
                let logits = model.forward_batch(&next, &mut refs)?;
                next = logits.argmax(-1, false)?.to_vec_u32()?;
            }
        }
        let t2 = Instant::now();
        let after = device.stats();
        let per_token = |a: u64, b: u64| (a - b) as f64 / n.max(1) as f64;
        println!(
            "{{\"prefill_tok_s\": {:.3}, \"decode_tok_s\": {:.3}, \"device\": \"{}\", \"peak_rss_mb\": {}, \"file_mb\": {:.1}, \"dispatches_per_token\": {:.1}, \"submissions_per_token\": {:.1}}}",
            (batch * p) as f64 / (t1 - t0).as_secs_f64(),
            (batch * n) as f64 / (t2 - t1).as_secs_f64(),
            device.info().name,
            peak_rss_mb().map_or("null".into(), |v| format!("{v:.1}")),
            file_mb,
            per_token(after.dispatches, before.dispatches),
            per_token(after.submissions, before.submissions)
        );
    }
    Ok(())
}

/// The process's peak resident memory (Linux's `VmHWM`), in MiB.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
