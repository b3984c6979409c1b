//! Casts between f32 and the half-precision types (f16, bf16) of whole tensors, threaded over
//! the worker pool: f16 through F16C where the CPU has it (the `half` crate's slice
//! conversions, which give the bits of its scalar ones), bf16 with integer arithmetic the
//! compiler vectorizes. Round to nearest even, overflow to infinity, NaN kept (quieted).

use super::{Wide, par_chunks_mut, reserve, widest};
use crate::dtype::DType;
use crate::error::Result;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

/// Values per thread's piece, and per conversion through a buffer on the stack.
const PIECE: usize = 1 << 14;
const STEP: usize = 1024;

/// Whether `dtype` is one these conversions take.
pub(crate) fn is_half(dtype: DType) -> bool {
    matches!(dtype, DType::F16 | DType::BF16)
}

/// The values of `bytes`, little-endian `dtype` (f16 or bf16), as f32.
pub(crate) fn decode(op: &'static str, dtype: DType, bytes: &[u8]) -> Result<Vec<f32>> {
    let n = bytes.len() / 2;
    let mut out = reserve(op, n)?;
    par_chunks_mut(
        &mut out.spare_capacity_mut()[..n],
        PIECE,
        PIECE,
        &|p, out| {
            let bytes = &bytes[2 * p * PIECE..][..2 * out.len()];
            let (mut bits, mut wide) = ([0u16; STEP], [0f32; STEP]);
            for (o, b) in out.chunks_mut(STEP).zip(bytes.chunks(2 * STEP)) {
                let (bits, wide) = (&mut bits[..o.len()], &mut wide[..o.len()]);
                for (h, c) in bits.iter_mut().zip(b.chunks_exact(2)) {
                    *h = u16::from_le_bytes([c[0], c[1]]);
                }
                match dtype {
                    DType::F16 => bits
                        .reinterpret_cast::<half::f16>()
                        .convert_to_f32_slice(wide),
                    _ => widest(Bf16ToF32 { bits, out: wide }),
                }
                for (o, &w) in o.iter_mut().zip(wide.iter()) {
                    o.write(w);
                }
            }
        },
    );
    // SAFETY: every piece above wrote each of its values.
    unsafe { out.set_len(n) };
    Ok(out)
}

/// `values` as `dtype`'s (f16 or bf16) little-endian bytes.
pub(crate) fn encode(op: &'static str, dtype: DType, values: &[f32]) -> Result<Vec<u8>> {
    let n = 2 * values.len();
    let mut out = reserve(op, n)?;
    par_chunks_mut(
        &mut out.spare_capacity_mut()[..n],
        2 * PIECE,
        PIECE,
        &|p, bytes| {
            let values = &values[p * PIECE..][..bytes.len() / 2];
            let mut bits = [0u16; STEP];
            for (v, b) in values.chunks(STEP).zip(bytes.chunks_mut(2 * STEP)) {
                let bits = &mut bits[..v.len()];
                match dtype {
                    DType::F16 => {
                        bits.reinterpret_cast_mut::<half::f16>()
                            .convert_from_f32_slice(v);
                    }
                    _ => widest(F32ToBf16 { values: v, bits }),
                }
                for (h, c) in bits.iter().zip(b.chunks_exact_mut(2)) {
                    let [lo, hi] = h.to_le_bytes();
                    c[0].write(lo);
                    c[1].write(hi);
                }
            }
        },
    );
    // SAFETY: every piece above wrote each of its bytes.
    unsafe { out.set_len(n) };
    Ok(out)
}

struct Bf16ToF32<'a> {
    bits: &'a [u16],
    out: &'a mut [f32],
}

impl Wide for Bf16ToF32<'_> {
    type Out = ();
    #[inline(always)]
    fn run(self) {
        for (o, &h) in self.out.iter_mut().zip(self.bits) {
            *o = f32::from_bits(u32::from(h) << 16);
        }
    }
}

struct F32ToBf16<'a> {
    values: &'a [f32],
    bits: &'a mut [u16],
}

impl Wide for F32ToBf16<'_> {
    type Out = ();
    #[inline(always)]
    fn run(self) {
        for (h, &v) in self.bits.iter_mut().zip(self.values) {
            *h = bf16_bits(v.to_bits());
        }
    }
}

/// The bf16 nearest an f32's bits, as `half::bf16::from_f32` (round to nearest even: add
/// 0x7fff plus the kept part's last bit; a NaN keeps its top bits with the quiet bit set).
#[inline(always)]
fn bf16_bits(x: u32) -> u16 {
    let rounded = x.wrapping_add(0x7fff + ((x >> 16) & 1)) >> 16;
    let nan = (x >> 16) | 0x40;
    (if x & 0x7fff_ffff > 0x7f80_0000 {
        nan
    } else {
        rounded
    }) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every bf16 rounding case against the `half` crate: ties both ways, overflow, NaN.
    #[test]
    fn bf16_bits_match_the_half_crate() {
        let mut x = 0x1234_5678u32;
        let mut cases: Vec<u32> = vec![
            0x7f7f_ffff,
            0xff7f_ffff,
            0x7f80_0001,
            0x7fc0_0000,
            0x3f80_8000,
        ];
        cases.extend([
            0x3f81_8000,
            0x0000_8000,
            0x0001_8000,
            0x8000_0000,
            0x7f80_0000,
        ]);
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            cases.push(x);
            cases.push(x & 0xffff_8000 | 0x8000);
        }
        for c in cases {
            let want = half::bf16::from_f32(f32::from_bits(c)).to_bits();
            assert_eq!(bf16_bits(c), want, "{c:#010x}");
        }
    }
}
