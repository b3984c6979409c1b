//! The storage types' formats, backend-neutral: decoding any packed dtype to f32
//! ([`decode`]), encoding f32 into one ([`encode`]), and checking a buffer's length
//! ([`byte_len`]). GGUF's block layouts are those of llama.cpp's `ggml-common.h`; the quantizers
//! are ggml's reference ("`quantize_row_*_ref`") algorithms, so the bytes match what
//! llama.cpp's tools write for the same values.

mod decode;
mod encode;
mod kquants;

pub(crate) use decode::{decode, scale_min_k4};
pub(crate) use encode::encode;

use crate::dtype::DType;
use crate::error::{Error, Result};

/// Values in a q4_K or q6_K super-block.
pub(crate) const QK_K: usize = 256;

/// The bytes that `n` values of `dtype` take; `InvalidShape` naming `op` when `n` is not a
/// whole number of blocks.
pub(crate) fn byte_len(op: &'static str, dtype: DType, n: usize) -> Result<usize> {
    dtype.bytes_for(n).ok_or_else(|| Error::InvalidShape {
        op,
        reason: format!(
            "{n} values are not a whole number of {dtype} blocks ({} values each)",
            dtype.block_len()
        ),
    })
}

/// Checks the scales of GGUF blocks (`bytes`, whole blocks of `dtype`): every f16 scale must be
/// finite (`InvalidArgument` naming the block otherwise), so that no product or decode of the
/// tensor meets a NaN or infinite scale. Other types are not checked (their NaNs are values).
pub(crate) fn check_scales(op: &'static str, dtype: DType, bytes: &[u8]) -> Result<()> {
    let offsets: &[usize] = match dtype {
        DType::Q8_0 | DType::Q4_0 => &[0],
        DType::Q4K => &[0, 2],
        DType::Q6K => &[208],
        _ => return Ok(()),
    };
    for (b, block) in bytes.chunks_exact(dtype.block_bytes()).enumerate() {
        for &o in offsets {
            let v = f16_at(block, o);
            if !v.is_finite() {
                return Err(Error::InvalidArgument {
                    op,
                    reason: format!("{dtype} block {b} has a scale of {v}"),
                });
            }
        }
    }
    Ok(())
}

/// An f16 from two little-endian bytes, as f32.
#[inline]
pub(crate) fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// ggml's `nearest_int`: round to nearest, ties to even, through the float adder (valid for
/// |x| ≤ 4,194,303, which every caller's values are within).
#[inline]
pub(crate) fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}
