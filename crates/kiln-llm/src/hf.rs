//! Hugging Face model directories: `config.json`, the weights in `model.safetensors` (or shards
//! listed by `model.safetensors.index.json`), and a BPE `tokenizer.json`, byte-level (GPT-2,
//! Qwen2, Llama 3) or SentencePiece-style (Llama 2, Mistral, TinyLlama) (with
//! `tokenizer_config.json` for BOS/EOS and the chat template). Weights keep their stored type:
//! bf16 and f16 stay half-precision on the device and are widened in the products' registers.

use std::collections::HashMap;
use std::path::Path;

use kiln::{Device, Tensor};
use serde_json::Value;

use crate::bpe::{self, Bpe, Front, Prepend};
use crate::chat::Template;
use crate::config::{Arch, Config, RopeStyle};
use crate::error::{Error, Result};
use crate::model::{Model, Weight, stack_rows};
use crate::tokenizer::Tokenizer;

/// A model directory's parts.
pub struct HfModel {
    /// The model on its device.
    pub model: Model,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// Its chat template, when `tokenizer_config.json` has one this crate recognises.
    pub template: Option<Template>,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| Error::Metadata {
        key: path.display().to_string(),
        reason: format!("not JSON: {e}"),
    })
}

/// Loads a Hugging Face model directory onto `device`. Errors: a missing or malformed file
/// ([`Error::Io`], [`Error::Metadata`]), an architecture this crate does not run, a missing
/// tensor or one whose shape disagrees with `config.json`, a tokenizer that is not BPE
/// (byte-level or SentencePiece-style).
pub fn load_dir(dir: impl AsRef<Path>, device: &Device) -> Result<HfModel> {
    let dir = dir.as_ref();
    let cfg = read_json(&dir.join("config.json"))?;
    let config = config(&cfg)?;
    let mut weights: HashMap<String, Tensor> = HashMap::new();
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<String> = if index.exists() {
        let idx = read_json(&index)?;
        let map = idx["weight_map"]
            .as_object()
            .ok_or_else(|| Error::Metadata {
                key: "weight_map".into(),
                reason: "missing from model.safetensors.index.json".into(),
            })?;
        let mut files: Vec<String> = map
            .values()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        files.sort();
        files.dedup();
        files
    } else {
        vec!["model.safetensors".into()]
    };
    for f in files {
        if f.contains('/') || f.contains("..") {
            return Err(Error::Metadata {
                key: "weight_map".into(),
                reason: format!("`{f}` is not a file of the directory"),
            });
        }
        weights.extend(kiln::nn::load_safetensors(&dir.join(&f), device)?);
    }
    let source = |gguf_name: &str| -> Option<Weight<'_>> {
        let name = hf_name(gguf_name, &weights)?;
        let t = weights.get(&name)?.clone();
        Some((t.shape().to_vec(), Box::new(move || Ok(t))))
    };
    // The directory's weights are all loaded already: stacking copies them once more.
    let stack = |names: &[&str]| -> Result<Option<Tensor>> {
        let mut ws = Vec::with_capacity(names.len());
        for name in names {
            match hf_name(name, &weights).and_then(|n| weights.get(&n)) {
                Some(w) => ws.push(w),
                None => return Ok(None),
            }
        }
        stack_rows(&ws)
    };
    let model = Model::build(config, device, &source, &stack)?;
    let (tokenizer, tok_config) = dir_tokenizer(dir, &cfg)?;
    let template = tok_config
        .as_ref()
        .and_then(|t| t["chat_template"].as_str())
        .and_then(|t| Template::detect(t).ok());
    Ok(HfModel {
        model,
        tokenizer,
        template,
    })
}

/// The Hugging Face name of a weight under its GGUF name, where the directory has it.
fn hf_name(gguf: &str, weights: &HashMap<String, Tensor>) -> Option<String> {
    let name = match gguf {
        "token_embd.weight" => "model.embed_tokens.weight".to_string(),
        "output_norm.weight" => "model.norm.weight".to_string(),
        "output.weight" => "lm_head.weight".to_string(),
        _ => {
            let rest = gguf.strip_prefix("blk.")?;
            let (layer, part) = rest.split_once('.')?;
            let (module, kind) = part.rsplit_once('.')?;
            let hf = match module {
                "attn_norm" => "input_layernorm",
                "ffn_norm" => "post_attention_layernorm",
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                _ => return None,
            };
            format!("model.layers.{layer}.{hf}.{kind}")
        }
    };
    weights.contains_key(&name).then_some(name)
}

/// The configuration of `config.json`.
fn config(c: &Value) -> Result<Config> {
    let arch = match c["model_type"].as_str() {
        Some("llama" | "mistral") => Arch::Llama,
        Some("qwen2") => Arch::Qwen2,
        Some(other) => return Err(Error::UnknownArchitecture(other.into())),
        None => return Err(Error::UnknownArchitecture("(no model_type)".into())),
    };
    let int = |k: &str| -> Result<usize> {
        c[k].as_u64()
            .filter(|&v| v > 0 && v < 1 << 32)
            .map(|v| v as usize)
            .ok_or_else(|| Error::Metadata {
                key: k.into(),
                reason: format!("expected a positive integer, got {}", c[k]),
            })
    };
    let (dim, heads) = (int("hidden_size")?, int("num_attention_heads")?);
    let kv_heads = if c["num_key_value_heads"].is_null() {
        heads
    } else {
        int("num_key_value_heads")?
    };
    let head_dim = if c["head_dim"].is_null() {
        dim / heads
    } else {
        int("head_dim")?
    };
    if dim % heads != 0 || heads % kv_heads != 0 || head_dim % 2 != 0 {
        return Err(Error::Metadata {
            key: "num_attention_heads".into(),
            reason: format!("{heads} heads, {kv_heads} key/value heads and width {dim} do not fit"),
        });
    }
    let rope_scale = match &c["rope_scaling"] {
        Value::Null => 1.0,
        s if s["type"] == "linear" || s["rope_type"] == "linear" => {
            s["factor"].as_f64().unwrap_or(1.0) as f32
        }
        s => {
            return Err(Error::Metadata {
                key: "rope_scaling".into(),
                reason: format!("{s} is not supported (none, linear)"),
            });
        }
    };
    let float = |k: &str, default: f64| c[k].as_f64().unwrap_or(default) as f32;
    Ok(Config {
        arch,
        vocab: int("vocab_size")?,
        dim,
        layers: int("num_hidden_layers")?,
        heads,
        kv_heads,
        head_dim,
        ffn: int("intermediate_size")?,
        eps: float("rms_norm_eps", 1e-6),
        rope_base: float("rope_theta", 10_000.0),
        rope_dim: head_dim,
        rope_scale,
        // Hugging Face's checkpoints rotate the halves of each head (`rotate_half`); GGUF
        // files of Llama permute q and k to adjacent pairs instead.
        rope_style: RopeStyle::Halves,
        context: int("max_position_embeddings")?,
    })
}

/// The tokenizer of a Hugging Face directory alone: `tokenizer.json`, with
/// `tokenizer_config.json` (BOS/EOS, whether BOS is added) and `config.json` (BOS/EOS ids)
/// where present. Errors: a missing or malformed file, a tokenizer kind this crate does not run
/// (BPE, byte-level or SentencePiece-style, is).
pub fn load_tokenizer(dir: impl AsRef<Path>) -> Result<Tokenizer> {
    let dir = dir.as_ref();
    let cfg = dir.join("config.json");
    let cfg = match cfg.exists() {
        true => read_json(&cfg)?,
        false => Value::Null,
    };
    Ok(dir_tokenizer(dir, &cfg)?.0)
}

/// The directory's tokenizer and its `tokenizer_config.json`, if any.
fn dir_tokenizer(dir: &Path, cfg: &Value) -> Result<(Tokenizer, Option<Value>)> {
    let tok_config = dir.join("tokenizer_config.json");
    let tok_config = if tok_config.exists() {
        Some(read_json(&tok_config)?)
    } else {
        None
    };
    let t = tokenizer(
        &read_json(&dir.join("tokenizer.json"))?,
        tok_config.as_ref(),
        cfg,
    )?;
    Ok((t, tok_config))
}

/// How a SentencePiece-style `tokenizer.json` spells text, if it is one: a `Prepend("▁")` and
/// `Replace(" ", "▁")` normalizer (Llama 2's), or a `Metaspace` pre-tokenizer.
fn metaspace(t: &Value) -> Option<(Front, bool)> {
    const SPACE: &str = "\u{2581}";
    let norm = &t["normalizer"];
    let steps: Vec<&Value> = match norm["type"].as_str() {
        Some("Sequence") => norm["normalizers"].as_array()?.iter().collect(),
        Some(_) => vec![norm],
        None => vec![],
    };
    let replaces = steps
        .iter()
        .any(|s| s["type"] == "Replace" && s["pattern"]["String"] == " " && s["content"] == SPACE);
    if replaces {
        let prepends = steps
            .iter()
            .any(|s| s["type"] == "Prepend" && s["prepend"] == SPACE);
        let prepend = if prepends {
            Prepend::Always
        } else {
            Prepend::Never
        };
        let front = Front {
            prepend,
            unless_space: false,
        };
        return Some((front, false));
    }
    let pre = &t["pre_tokenizer"];
    if pre["type"] == "Metaspace" && pre["replacement"] == SPACE {
        let prepend = match pre["prepend_scheme"].as_str() {
            Some("never") => Prepend::Never,
            Some("first") => Prepend::First,
            // Older files say `add_prefix_space` instead.
            Some("always") => Prepend::Always,
            _ if pre["add_prefix_space"] == false => Prepend::Never,
            _ => Prepend::Always,
        };
        let front = Front {
            prepend,
            unless_space: true,
        };
        return Some((front, pre["split"] == true));
    }
    None
}

/// A BPE tokenizer from `tokenizer.json`: byte-level, or SentencePiece-style.
fn tokenizer(t: &Value, tok_config: Option<&Value>, cfg: &Value) -> Result<Tokenizer> {
    let bad = |reason: &str| Error::Tokenizer(format!("tokenizer.json: {reason}"));
    let model = &t["model"];
    if model["type"] != "BPE" {
        return Err(bad(&format!(
            "model type {} (BPE, byte-level or SentencePiece-style, is supported)",
            model["type"]
        )));
    }
    let vocab = model["vocab"].as_object().ok_or_else(|| bad("no vocab"))?;
    let merges: Vec<String> = model["merges"]
        .as_array()
        .ok_or_else(|| bad("no merges"))?
        .iter()
        .map(|m| match m {
            Value::String(s) => Some(s.clone()),
            Value::Array(p) => Some(format!("{} {}", p.first()?.as_str()?, p.get(1)?.as_str()?)),
            _ => None,
        })
        .collect::<Option<_>>()
        .ok_or_else(|| bad("a merge is neither \"a b\" nor [a, b]"))?;
    let spm = metaspace(t);
    // The pre-tokenizer: ByteLevel (with GPT-2's regex), or Split(regex) then ByteLevel.
    let pre = &t["pre_tokenizer"];
    let byte_level = |p: &Value| p["type"] == "ByteLevel";
    let exprs: Vec<String> = match pre["type"].as_str() {
        _ if spm.is_some() => vec![],
        Some("ByteLevel") if pre["use_regex"] != false => vec![bpe::GPT2.to_string()],
        Some("Sequence") => {
            let steps = pre["pretokenizers"]
                .as_array()
                .ok_or_else(|| bad("empty Sequence"))?;
            let mut exprs = Vec::new();
            for s in steps {
                match s["type"].as_str() {
                    Some("Split") if s["behavior"] == "Isolated" => {
                        let re = s["pattern"]["Regex"]
                            .as_str()
                            .ok_or_else(|| bad("Split without a Regex"))?;
                        exprs.push(re.to_string());
                    }
                    Some("ByteLevel") if s["use_regex"] == true => {
                        exprs.push(bpe::GPT2.to_string())
                    }
                    Some("ByteLevel") => {}
                    _ => return Err(bad(&format!("pre-tokenizer step {s} is not supported"))),
                }
            }
            if !steps.iter().any(byte_level) {
                return Err(bad("the pre-tokenizer has no ByteLevel step"));
            }
            exprs
        }
        _ => {
            return Err(bad(&format!(
                "pre-tokenizer {pre} is not supported (ByteLevel, Split + ByteLevel, Metaspace, \
                 or a normalizer replacing spaces by ▁)"
            )));
        }
    };
    let mut pieces: Vec<Option<String>> = Vec::new();
    let put = |id: u64, piece: &str, pieces: &mut Vec<Option<String>>| -> Result<()> {
        let id = usize::try_from(id)
            .ok()
            .filter(|&i| i < 1 << 24)
            .ok_or_else(|| bad("an id out of range"))?;
        if pieces.len() <= id {
            pieces.resize(id + 1, None);
        }
        pieces[id] = Some(piece.to_string());
        Ok(())
    };
    for (piece, id) in vocab {
        put(
            id.as_u64()
                .ok_or_else(|| bad("a vocab id is not an integer"))?,
            piece,
            &mut pieces,
        )?;
    }
    let mut special = Vec::new();
    for a in t["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(content)) = (a["id"].as_u64(), a["content"].as_str()) else {
            return Err(bad("an added token without id or content"));
        };
        put(id, content, &mut pieces)?;
        if a["special"] == true {
            special.push(id as u32);
        }
    }
    let exprs: Vec<&str> = exprs.iter().map(String::as_str).collect();
    let bpe = match spm {
        Some((front, split)) => Bpe::metaspace(&merges, front, split)?,
        None => Bpe::from_regexes(&exprs, &merges, model["ignore_merges"] == true)?,
    };
    // BOS/EOS: tokenizer_config.json's token texts, else config.json's ids.
    let id_of = |key: &str| -> Option<u32> {
        let text = tok_config.and_then(|c| match &c[key] {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o.get("content").and_then(|v| v.as_str()).map(String::from),
            _ => None,
        });
        match text {
            Some(s) => pieces
                .iter()
                .position(|p| p.as_deref() == Some(s.as_str()))
                .map(|i| i as u32),
            None => cfg[format!("{key}_id")].as_u64().map(|i| i as u32),
        }
    };
    let (bos, eos) = (id_of("bos_token"), id_of("eos_token"));
    let add_bos = tok_config
        .and_then(|c| c["add_bos_token"].as_bool())
        .unwrap_or(false);
    Ok(Tokenizer::from_bpe_parts(
        pieces,
        &special,
        bpe,
        (bos, eos, add_bos),
    ))
}
