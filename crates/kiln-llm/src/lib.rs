//! Language models on any kiln device: GGUF checkpoints (llama.cpp's format) loaded with their
//! weights kept in their storage types (f16, bf16, q8_0, q4_0, q4_K, q6_K), and Hugging Face
//! directories; the Llama family's blocks (Llama 2/3, Mistral, TinyLlama, SmolLM, Qwen2) and
//! GPT-2's; tokenizers, chat templates, a KV cache, and token-by-token generation.
//!
//! ```no_run
//! use kiln_llm::{Gguf, Logits, Model, Sampler, Sampling, Tokenizer};
//! # fn main() -> kiln_llm::Result<()> {
//! let file = Gguf::open("tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf")?;
//! let device = kiln::Device::auto()?;
//! let model = Model::from_gguf(&file, &device)?;
//! let tokenizer = Tokenizer::from_gguf(&file)?;
//! let mut cache = model.cache(512);
//! let mut ids = tokenizer.encode("The capital of France is", true)?;
//! let mut sampler = Sampler::new(Sampling::default())?; // greedy
//! let mut logits = model.forward(&ids, &mut cache, Logits::Last)?;
//! for _ in 0..16 {
//!     let next = sampler.next(&logits, &ids)?;
//!     if tokenizer.is_eos(next) {
//!         break;
//!     }
//!     ids.push(next);
//!     logits = model.forward(&[next], &mut cache, Logits::Last)?;
//! }
//! println!("{}", tokenizer.decode(&ids)?);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod bpe;
pub mod chat;
pub mod config;
pub mod error;
pub mod gguf;
pub mod hf;
pub mod model;
pub mod sample;
pub mod tokenizer;

pub use chat::{Message, Template};
pub use config::{Arch, Config, RopeStyle};
pub use error::{Error, Result};
pub use gguf::Gguf;
pub use hf::{HfModel, load_dir, load_tokenizer};
pub use model::{Cache, Logits, Model};
pub use sample::{Sampler, Sampling};
pub use tokenizer::{TextStream, Tokenizer};
