//! Element types: the arithmetic types (f32, and f16/bf16 computed through f32), indices (u32),
//! and the storage types that weights ship in (8-bit and 32-bit integers, GGUF's quantized
//! blocks, and the half floats as weights).

use std::fmt;

/// The element type of a tensor.
///
/// Arithmetic is f32; u32 tensors hold indices (for `index_select` and `embedding`) and the
/// results of `argmax`. The other types are *storage* types: their values are kept as the bytes
/// of their format (on a GPU, in 32-bit words), created with [`crate::Tensor::from_bytes`],
/// read with [`crate::Tensor::to_bytes`], cast with [`crate::Tensor::to_dtype`] and taken as
/// weights by [`crate::Tensor::linear`] and [`crate::Tensor::embedding`], which
/// decode them in registers. f16 and bf16 tensors are also taken by every arithmetic op, which
/// computes in f32 and rounds its result to the operands' type (operands of different float
/// types give f32). Other ops refuse the remaining types with `DTypeMismatch` (cast to f32
/// first).
///
/// The quantized types are GGUF's (llama.cpp's) block formats, byte for byte: a tensor's values
/// run row-major in blocks of [`DType::block_len`] values along the flattened order, so a
/// GGUF tensor's bytes upload as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DType {
    /// 32-bit IEEE float.
    F32,
    /// 32-bit unsigned integer.
    U32,
    /// 16-bit IEEE float (binary16).
    F16,
    /// bfloat16: the top 16 bits of an f32.
    BF16,
    /// 8-bit signed integer.
    I8,
    /// 8-bit unsigned integer.
    U8,
    /// 32-bit signed integer.
    I32,
    /// GGUF q8_0: blocks of 32 values, an f16 scale `d` then 32 i8 (value = d·q). 34 bytes.
    Q8_0,
    /// GGUF q4_0: blocks of 32 values, an f16 scale `d` then 16 bytes of nibbles; byte j holds
    /// values j (low nibble) and j + 16 (high), value = d·(q − 8). 18 bytes.
    Q4_0,
    /// GGUF q4_K: super-blocks of 256 values: f16 `d`, f16 `dmin`, 12 bytes of eight 6-bit
    /// scales and mins, 128 bytes of nibbles; value = d·sc·q − dmin·m. 144 bytes.
    Q4K,
    /// GGUF q6_K: super-blocks of 256 values: 128 bytes of low nibbles, 64 of high 2-bit pairs,
    /// sixteen i8 scales, f16 `d`; value = d·sc·(q − 32). 210 bytes.
    Q6K,
}

impl DType {
    /// Every element type.
    pub const ALL: [DType; 11] = [
        DType::F32,
        DType::U32,
        DType::F16,
        DType::BF16,
        DType::I8,
        DType::U8,
        DType::I32,
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4K,
        DType::Q6K,
    ];

    /// Values per block: 1 for the plain types, 32 or 256 for the quantized ones.
    pub fn block_len(self) -> usize {
        match self {
            DType::Q8_0 | DType::Q4_0 => 32,
            DType::Q4K | DType::Q6K => 256,
            _ => 1,
        }
    }

    /// Bytes per block (per value for the plain types).
    pub fn block_bytes(self) -> usize {
        match self {
            DType::F32 | DType::U32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::I8 | DType::U8 => 1,
            DType::Q8_0 => 34,
            DType::Q4_0 => 18,
            DType::Q4K => 144,
            DType::Q6K => 210,
        }
    }

    /// Whether values come in blocks with shared scales (GGUF's quantized types).
    pub fn is_quantized(self) -> bool {
        self.block_len() > 1
    }

    /// Whether values are kept as the bytes of their format (every type but f32 and u32, which
    /// the arithmetic ops take).
    pub fn is_packed(self) -> bool {
        !matches!(self, DType::F32 | DType::U32)
    }

    /// Bytes that `n` values take, or `None` when `n` is not a whole number of blocks.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_len()) {
            return None;
        }
        (n / self.block_len()).checked_mul(self.block_bytes())
    }

    /// GGUF's name for the type (`"q4_K"`, `"f16"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::U32 => "u32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::I32 => "i32",
            DType::Q8_0 => "q8_0",
            DType::Q4_0 => "q4_0",
            DType::Q4K => "q4_K",
            DType::Q6K => "q6_K",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
