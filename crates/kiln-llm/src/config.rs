//! A model's hyperparameters, read from a GGUF file's metadata.

use crate::error::{Error, Result};
use crate::gguf::Gguf;

/// How RoPE pairs a head's dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Dimensions `2i` and `2i+1` rotate together (llama.cpp's `NORM`: Llama, Mistral as GGUF
    /// stores their q and k weights).
    Adjacent,
    /// Dimensions `i` and `i + d/2` rotate together (`NEOX`: Qwen2, GPT-NeoX, and Hugging Face's
    /// Llama layout).
    Halves,
}

/// The architectures kiln-llm runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3, Mistral, TinyLlama, SmolLM (GGUF `llama`).
    Llama,
    /// Qwen2 (GGUF `qwen2`): Llama with biases on q, k and v and RoPE on halves.
    Qwen2,
    /// GPT-2 (GGUF `gpt2`): LayerNorm with biases, learned positions, one fused q/k/v
    /// projection, GELU, biases everywhere, no RoPE.
    Gpt2,
}

/// A decoder-only transformer's hyperparameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The architecture.
    pub arch: Arch,
    /// Tokens in the vocabulary (rows of the embedding).
    pub vocab: usize,
    /// The residual stream's width.
    pub dim: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (fewer than `heads` for grouped-query attention).
    pub kv_heads: usize,
    /// Each head's width.
    pub head_dim: usize,
    /// The feed-forward network's hidden width.
    pub ffn: usize,
    /// RMSNorm's epsilon.
    pub eps: f32,
    /// RoPE's base frequency.
    pub rope_base: f32,
    /// How many of a head's dimensions RoPE rotates (the rest pass through).
    pub rope_dim: usize,
    /// Positions are divided by this before rotation (linear RoPE scaling; 1 for none).
    pub rope_scale: f32,
    /// How RoPE pairs dimensions.
    pub rope_style: RopeStyle,
    /// The context length the model was trained for.
    pub context: usize,
}

impl Config {
    /// The configuration of a GGUF model. Errors: [`Error::UnknownArchitecture`], and
    /// [`Error::Metadata`] for a missing key or values that do not fit together (heads that do
    /// not divide the width, key/value heads that do not divide the heads).
    pub fn from_gguf(g: &Gguf) -> Result<Config> {
        let name = g.str("general.architecture")?;
        let arch = match name {
            "llama" | "mistral" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "gpt2" => Arch::Gpt2,
            other => return Err(Error::UnknownArchitecture(other.into())),
        };
        let key = |k: &str| format!("{name}.{k}");
        let int = |k: &str| -> Result<usize> {
            let v = g.u64(&key(k))?;
            usize::try_from(v)
                .ok()
                .filter(|&v| v < 1 << 32)
                .ok_or_else(|| Error::Metadata {
                    key: key(k),
                    reason: format!("{v} is out of range"),
                })
        };
        let dim = int("embedding_length")?;
        let heads = int("attention.head_count")?;
        let kv_heads = match g.get(&key("attention.head_count_kv")) {
            Some(_) => int("attention.head_count_kv")?,
            None => heads,
        };
        let bad = |k: &str, reason: String| Error::Metadata {
            key: key(k),
            reason,
        };
        if heads == 0 || dim % heads != 0 {
            return Err(bad(
                "attention.head_count",
                format!("{heads} heads do not divide the width {dim}"),
            ));
        }
        if kv_heads == 0 || heads % kv_heads != 0 {
            return Err(bad(
                "attention.head_count_kv",
                format!("{kv_heads} key/value heads do not divide {heads} query heads"),
            ));
        }
        let head_dim = match g.get(&key("attention.key_length")) {
            Some(_) => int("attention.key_length")?,
            None => dim / heads,
        };
        let rope_dim = match g.get(&key("rope.dimension_count")) {
            _ if arch == Arch::Gpt2 => 0,
            Some(_) => int("rope.dimension_count")?,
            None => head_dim,
        };
        if rope_dim > head_dim || rope_dim % 2 != 0 {
            return Err(bad(
                "rope.dimension_count",
                format!("{rope_dim} for heads of {head_dim}"),
            ));
        }
        let num = |k: &str, default: f64| -> Result<f64> {
            match g.get(&key(k)) {
                Some(_) => g.f64(&key(k)),
                None => Ok(default),
            }
        };
        let rope_scale = match g.get(&key("rope.scaling.type")).and_then(|v| v.as_str()) {
            None | Some("none") => 1.0,
            Some("linear") => num("rope.scaling.factor", 1.0)? as f32,
            Some(other) => {
                return Err(bad(
                    "rope.scaling.type",
                    format!("`{other}` scaling is not supported (none, linear)"),
                ));
            }
        };
        let embd = g
            .info("token_embd.weight")
            .ok_or_else(|| Error::MissingTensor("token_embd.weight".into()))?;
        let vocab = embd.shape[0];
        // The sizes below are bounded by the file's own tensors, so damaged metadata cannot
        // ask for more memory than the file backs.
        if embd.shape.len() != 2 || embd.shape[1] != dim {
            return Err(Error::BadTensor {
                name: "token_embd.weight".into(),
                reason: format!("shape {:?}, the width is {dim}", embd.shape),
            });
        }
        if head_dim > 1 << 16 {
            return Err(bad("attention.key_length", format!("heads of {head_dim}")));
        }
        let layers = int("block_count")?;
        if layers > g.tensors.len() {
            return Err(bad(
                "block_count",
                format!("{layers} blocks in a file of {} tensors", g.tensors.len()),
            ));
        }
        let config = Config {
            arch,
            vocab,
            dim,
            layers,
            heads,
            kv_heads,
            head_dim,
            ffn: int("feed_forward_length")?,
            eps: match arch {
                Arch::Gpt2 => num("attention.layer_norm_epsilon", 1e-5)? as f32,
                _ => num("attention.layer_norm_rms_epsilon", 1e-5)? as f32,
            },
            rope_base: num("rope.freq_base", 10_000.0)? as f32,
            rope_dim,
            rope_scale,
            rope_style: match arch {
                Arch::Llama => RopeStyle::Adjacent,
                Arch::Qwen2 | Arch::Gpt2 => RopeStyle::Halves,
            },
            context: int("context_length")?,
        };
        if !(config.eps > 0.0 && config.rope_base > 0.0 && config.rope_scale > 0.0) {
            return Err(bad(
                "attention.layer_norm_rms_epsilon",
                format!("eps, rope base and scale must be positive: {config:?}"),
            ));
        }
        Ok(config)
    }
}
