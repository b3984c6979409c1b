//! f32 to packed values: rounding casts for the plain types and ggml's reference quantizers
//! for the block types.

use super::kquants;
use crate::dtype::DType;
use crate::error::{Error, Result};

/// `values` encoded as `dtype` (the caller checked that they are whole blocks).
///
/// f16 and bf16 round to nearest even (NaN stays NaN). The integer types truncate toward zero
/// and saturate, NaN giving 0 (Rust's `as`; numpy leaves those cases undefined). The block
/// types follow ggml's `quantize_row_*_ref`: q8_0 and q4_0 scale by the block's largest
/// magnitude; q4_K and q6_K search scales by weighted least squares. Non-finite values make a
/// block's scale meaningless in ggml: here they are refused (`InvalidArgument` naming `op`).
pub(crate) fn encode(op: &'static str, dtype: DType, values: &[f32]) -> Result<Vec<u8>> {
    if dtype.is_quantized()
        && let Some(i) = values.iter().position(|v| !v.is_finite())
    {
        return Err(Error::InvalidArgument {
            op,
            reason: format!("{dtype} cannot hold {} (value {i})", values[i]),
        });
    }
    let mut out = Vec::with_capacity(dtype.bytes_for(values.len()).unwrap_or(0));
    match dtype {
        DType::F32 => values.iter().for_each(|v| out.extend(v.to_le_bytes())),
        DType::U32 => values
            .iter()
            .for_each(|&v| out.extend((v as u32).to_le_bytes())),
        DType::I32 => values
            .iter()
            .for_each(|&v| out.extend((v as i32).to_le_bytes())),
        DType::F16 => values
            .iter()
            .for_each(|&v| out.extend(half::f16::from_f32(v).to_bits().to_le_bytes())),
        DType::BF16 => values
            .iter()
            .for_each(|&v| out.extend(half::bf16::from_f32(v).to_bits().to_le_bytes())),
        DType::I8 => out.extend(values.iter().map(|&v| v as i8 as u8)),
        DType::U8 => out.extend(values.iter().map(|&v| v as u8)),
        DType::Q8_0 => values.chunks_exact(32).for_each(|b| q8_0(b, &mut out)),
        DType::Q4_0 => values.chunks_exact(32).for_each(|b| q4_0(b, &mut out)),
        DType::Q4K => values
            .chunks_exact(super::QK_K)
            .for_each(|b| kquants::q4_k(b, &mut out)),
        DType::Q6K => values
            .chunks_exact(super::QK_K)
            .for_each(|b| kquants::q6_k(b, &mut out)),
    }
    Ok(out)
}

/// An f32 as GGUF's f16 scale bytes.
pub(super) fn f16_bytes(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_bits().to_le_bytes()
}

/// ggml's `quantize_row_q8_0_ref` for one block of 32.
pub(crate) fn q8_0(x: &[f32], out: &mut Vec<u8>) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend(f16_bytes(d));
    // C's roundf (half away from zero), then the conversion to int8.
    out.extend(x.iter().map(|&v| (v * id).round() as i8 as u8));
}

/// ggml's `quantize_row_q4_0_ref` for one block of 32.
fn q4_0(x: &[f32], out: &mut Vec<u8>) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend(f16_bytes(d));
    // `(int8_t)(x + 8.5f)` truncates toward zero; MIN(15, ·) then keeps the low nibble.
    let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
    for j in 0..16 {
        out.push((q(x[j]) & 0x0f) | (q(x[j + 16]) << 4));
    }
}
