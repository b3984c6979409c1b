//! Packed values to f32: the reference decoders (ggml's `dequantize_row_*`), which the CPU
//! backend runs and every other path is tested against.

use super::{QK_K, f16_at};
use crate::dtype::DType;

/// Decodes `out.len()` values of `dtype` from `bytes` (which hold exactly that many: the
/// caller checked with [`super::byte_len`]). f32 and u32 are read as their bits' values.
pub(crate) fn decode(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    match dtype {
        DType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::U32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32;
            }
        }
        DType::I32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32;
            }
        }
        DType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        DType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
            }
        }
        DType::I8 => {
            for (o, &b) in out.iter_mut().zip(bytes) {
                *o = b as i8 as f32;
            }
        }
        DType::U8 => {
            for (o, &b) in out.iter_mut().zip(bytes) {
                *o = b as f32;
            }
        }
        DType::Q8_0 | DType::Q4_0 | DType::Q4K | DType::Q6K => {
            let (len, size) = (dtype.block_len(), dtype.block_bytes());
            for (o, b) in out.chunks_exact_mut(len).zip(bytes.chunks_exact(size)) {
                decode_block_row(dtype, b, o);
            }
        }
    }
}

/// One block of a quantized `dtype` (`block`, its bytes) decoded into `out` (its values).
pub(crate) fn decode_block_row(dtype: DType, block: &[u8], out: &mut [f32]) {
    match dtype {
        DType::Q8_0 => {
            let d = f16_at(block, 0);
            for (o, &q) in out.iter_mut().zip(&block[2..34]) {
                *o = q as i8 as f32 * d;
            }
        }
        DType::Q4_0 => {
            let d = f16_at(block, 0);
            let qs = &block[2..18];
            for j in 0..16 {
                out[j] = ((qs[j] & 0x0f) as i32 - 8) as f32 * d;
                out[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
            }
        }
        DType::Q4K => {
            let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
            let scales = &block[4..16];
            let qs = &block[16..144];
            for chunk in 0..QK_K / 64 {
                let (s1, m1) = scale_min_k4(2 * chunk, scales);
                let (s2, m2) = scale_min_k4(2 * chunk + 1, scales);
                let (d1, m1) = (d * s1 as f32, dmin * m1 as f32);
                let (d2, m2) = (d * s2 as f32, dmin * m2 as f32);
                let q = &qs[32 * chunk..32 * chunk + 32];
                let o = &mut out[64 * chunk..64 * chunk + 64];
                for l in 0..32 {
                    o[l] = d1 * (q[l] & 0x0f) as f32 - m1;
                    o[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
                }
            }
        }
        DType::Q6K => {
            let (ql, qh, sc) = (&block[0..128], &block[128..192], &block[192..208]);
            let d = f16_at(block, 208);
            for half in 0..2 {
                let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
                let sc = &sc[8 * half..];
                let o = &mut out[128 * half..128 * half + 128];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    o[l] = d * (sc[is] as i8 as f32) * q1 as f32;
                    o[l + 32] = d * (sc[is + 2] as i8 as f32) * q2 as f32;
                    o[l + 64] = d * (sc[is + 4] as i8 as f32) * q3 as f32;
                    o[l + 96] = d * (sc[is + 6] as i8 as f32) * q4 as f32;
                }
            }
        }
        other => decode(other, block, out),
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a q4_K super-block (ggml's
/// `get_scale_min_k4`).
#[inline]
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}
