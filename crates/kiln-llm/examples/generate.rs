//! Generates text from a language model (a GGUF file, or a Hugging Face directory with
//! `config.json`, safetensors weights and a byte-level BPE `tokenizer.json`), streaming it as it
//! comes, then prints prefill and decode speed.
//!
//! ```text
//! cargo run --release -p kiln-llm --example generate -- --model tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf \
//!     --prompt "The capital of France is" [--tokens 64] [--temperature 0.8 --top-k 40 --top-p 0.95 \
//!     --repeat-penalty 1.1 --seed 1] [--chat [--system "You are a helpful assistant."]]
//! ```
//!
//! `--chat` formats the prompt as a user turn with the model's chat template (and `--system` as
//! a system turn before it), and stops at the end of the assistant's turn.
//!
//! The device is `KILN_DEVICE` (cpu, gpu, software) or the best one found.

use std::io::Write;
use std::time::Instant;

use kiln::Device;
use kiln_llm::{Gguf, Logits, Message, Model, Sampler, Sampling, Template, TextStream, Tokenizer};

fn main() {
    env_logger::init();
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut model_path = None;
    let mut prompt = String::from("The quick brown fox");
    let mut tokens = 64usize;
    let mut sampling = Sampling::default();
    let (mut chat, mut system) = (false, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => model_path = Some(value()?),
            "--prompt" => prompt = value()?,
            "--tokens" => tokens = value()?.parse()?,
            "--temperature" => sampling.temperature = value()?.parse()?,
            "--top-k" => sampling.top_k = value()?.parse()?,
            "--top-p" => sampling.top_p = value()?.parse()?,
            "--repeat-penalty" => sampling.repetition_penalty = value()?.parse()?,
            "--seed" => sampling.seed = value()?.parse()?,
            "--chat" => chat = true,
            "--system" => system = Some(value()?),
            other => return Err(format!("unknown flag {other} (see the example's header)").into()),
        }
    }
    let path = model_path.ok_or("--model PATH (a .gguf file) is needed")?;
    let device = Device::from_env()?;
    let t0 = Instant::now();
    // A GGUF file, or a Hugging Face directory.
    let (model, tokenizer, template) = if std::path::Path::new(&path).is_dir() {
        let hf = kiln_llm::load_dir(&path, &device)?;
        (
            hf.model,
            hf.tokenizer,
            hf.template.ok_or("no chat template this crate recognises"),
        )
    } else {
        let file = Gguf::open(&path)?;
        let template =
            Template::from_gguf(&file).map_err(|_| "no chat template this crate recognises");
        (
            Model::from_gguf(&file, &device)?,
            Tokenizer::from_gguf(&file)?,
            template,
        )
    };
    eprintln!(
        "loaded {path} ({:?}, {} layers, width {}) on {} in {:.2} s",
        model.config.arch,
        model.config.layers,
        model.config.dim,
        device.info().name,
        t0.elapsed().as_secs_f64()
    );
    let mut stop = tokenizer.eos;
    let mut ids = if chat {
        let template = template?;
        let mut turns: Vec<Message> = system.iter().map(|s| Message::new("system", s)).collect();
        turns.push(Message::new("user", &prompt));
        if let Some(end) = template.end_of_turn().and_then(|t| tokenizer.token_id(t)) {
            stop = Some(end);
        }
        let text = template.apply(&turns, true);
        log::info!("chat prompt ({template:?}): {text:?}");
        tokenizer.encode_special(&text, true)?
    } else {
        tokenizer.encode(&prompt, true)?
    };
    let is_stop = |t: u32| tokenizer.is_eos(t) || Some(t) == stop;
    let mut cache = model.cache(ids.len() + tokens);
    let mut sampler = Sampler::new(sampling)?;
    let mut stream = TextStream::default();
    let mut out = std::io::stdout().lock();
    if !chat {
        write!(out, "{prompt}")?;
    }
    out.flush()?;
    let t1 = Instant::now();
    let mut logits = model.forward(&ids, &mut cache, Logits::Last)?;
    let mut next = sampler.next(&logits, &ids)?;
    let prefill = t1.elapsed().as_secs_f64();
    let prompt_len = ids.len();
    let t2 = Instant::now();
    let mut generated = 0;
    while generated < tokens && !is_stop(next) {
        write!(out, "{}", stream.push(&tokenizer, next)?)?;
        out.flush()?;
        ids.push(next);
        generated += 1;
        if generated == tokens {
            break;
        }
        logits = model.forward(&[next], &mut cache, Logits::Last)?;
        next = sampler.next(&logits, &ids)?;
    }
    let decode = t2.elapsed().as_secs_f64();
    writeln!(out)?;
    eprintln!(
        "prefill: {prompt_len} tokens in {:.3} s ({:.1} tokens/s); decode: {generated} tokens in {:.3} s ({:.1} tokens/s) on {}",
        prefill,
        prompt_len as f64 / prefill,
        decode,
        generated as f64 / decode.max(1e-9),
        device.info().name
    );
    Ok(())
}
