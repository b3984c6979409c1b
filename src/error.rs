//! The one error type of the crate.

use thiserror::Error;

/// Everything that can go wrong in kiln. Variants name the operation and carry the shapes or sizes
/// involved, so a message says what was asked for and why it was refused.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum Error {
    /// Two operands have shapes that the operation cannot combine.
    #[error("{op}: shape mismatch between {lhs:?} and {rhs:?}")]
    ShapeMismatch {
        /// The operation that refused the shapes.
        op: &'static str,
        /// Shape of the left operand.
        lhs: Vec<usize>,
        /// Shape of the right operand.
        rhs: Vec<usize>,
    },
    /// A shape (or a data length for a shape) that the operation cannot accept.
    #[error("{op}: invalid shape: {reason}")]
    InvalidShape {
        /// The operation that refused the shape.
        op: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// An operand has the wrong element type for the operation.
    #[error("{op}: expected a {expected} tensor, got {got}")]
    DTypeMismatch {
        /// The operation.
        op: &'static str,
        /// The element type the operation needs.
        expected: crate::DType,
        /// The element type it was given.
        got: crate::DType,
    },
    /// A scalar argument or a configuration value out of its domain: clamp bounds with
    /// `lo > hi`, a dropout probability outside [0, 1), a negative `eps`, a stride of 0, an
    /// unknown `KILN_DEVICE` or `KILN_MATMUL_CONFIG`.
    #[error("{op}: invalid argument: {reason}")]
    InvalidArgument {
        /// The operation or setting.
        op: &'static str,
        /// What is wrong with the value.
        reason: String,
    },
    /// The device or backend cannot do what was asked, though the request is valid: a capability
    /// it lacks (SHADER_F16) or a limit of a kernel (the GPU kernels' rank caps).
    #[error("{op}: not supported on this device: {reason}")]
    Unsupported {
        /// The operation.
        op: &'static str,
        /// What is missing.
        reason: String,
    },
    /// An index tensor holds a value outside the dimension it indexes.
    #[error("{op}: index {index} is out of range for a dimension of size {size}")]
    IndexOutOfRange {
        /// The operation.
        op: &'static str,
        /// The offending index.
        index: u32,
        /// The size of the indexed dimension.
        size: usize,
    },
    /// Operands live on different devices.
    #[error("{op}: operands are on different devices ({lhs} and {rhs})")]
    DeviceMismatch {
        /// The operation.
        op: &'static str,
        /// Name of the left operand's device.
        lhs: String,
        /// Name of the right operand's device.
        rhs: String,
    },
    /// No GPU adapter satisfies the request.
    #[error("no GPU adapter: {reason}")]
    NoAdapter {
        /// Why none was found (what was looked for, what exists).
        reason: String,
    },
    /// A buffer larger than the device allows.
    #[error("{op}: {requested} bytes requested, the device allows at most {limit}")]
    TooLarge {
        /// The operation.
        op: &'static str,
        /// Bytes requested.
        requested: u64,
        /// The device's limit in bytes.
        limit: u64,
    },
    /// Autograd was asked for something it cannot do: backward from a tensor that does not
    /// require gradients, from a non-scalar without an output gradient, through a graph already
    /// freed by an earlier backward, or through an op that has no backward.
    #[error("{op}: {reason}")]
    Autograd {
        /// The op or method.
        op: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// A weights file does not fit the model: a parameter is missing, or has another shape or
    /// element type than the model's.
    #[error("parameter `{name}`: {reason}")]
    Checkpoint {
        /// The parameter's name (as `Module::parameters` gives it).
        name: String,
        /// What does not match.
        reason: String,
    },
    /// Reading or writing a file failed, or its contents are not valid safetensors.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        reason: String,
    },
    /// The device (or the host, for the CPU backend) could not allocate memory.
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// The GPU device was lost (driver reset, removal); the `Device` cannot be used again.
    #[error("GPU device lost: {0}")]
    DeviceLost(String),
    /// Any other error reported by wgpu (validation, internal), with its message.
    #[error("GPU error: {0}")]
    Gpu(String),
}

/// `Result` with kiln's [`Error`](enum@Error).
pub type Result<T> = std::result::Result<T, Error>;
