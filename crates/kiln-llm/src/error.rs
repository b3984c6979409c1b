//! The one error type of this crate.

/// What can go wrong loading or running a language model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file is not a well-formed GGUF file (or ends early): `at` is the byte offset where
    /// reading stopped.
    #[error("malformed GGUF at byte {at}: {reason}")]
    Format {
        /// Byte offset in the file.
        at: u64,
        /// What is wrong there.
        reason: String,
    },
    /// The model's architecture (`general.architecture`) is not one this crate runs.
    #[error("unsupported architecture `{0}` (kiln-llm runs llama, mistral, qwen2, gpt2)")]
    UnknownArchitecture(String),
    /// A tensor the architecture needs is not in the file.
    #[error("tensor `{0}` is missing")]
    MissingTensor(String),
    /// A metadata key the architecture needs is missing or has the wrong type.
    #[error("metadata `{key}`: {reason}")]
    Metadata {
        /// The key.
        key: String,
        /// Missing, or of which type.
        reason: String,
    },
    /// A tensor's shape or type disagrees with the configuration.
    #[error("tensor `{name}`: {reason}")]
    BadTensor {
        /// The tensor.
        name: String,
        /// What disagrees.
        reason: String,
    },
    /// The tokenizer cannot be built or cannot encode/decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A request the model cannot serve (a context longer than the cache, an empty prompt, a
    /// token id outside the vocabulary).
    #[error("{0}")]
    InvalidRequest(String),
    /// An error from the engine.
    #[error(transparent)]
    Kiln(#[from] kiln::Error),
}

/// This crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
