//! ONNX's narrow element types: bfloat16, the 8-bit floats (E4M3FN, E4M3FNUZ, E5M2, E5M2FNUZ),
//! the 4-bit float E2M1, the exponent-only E8M0 (read, not cast to), and 4- and 2-bit
//! integers. kiln computes in f32 (and the host's i64):
//! a narrow float is held as the f32 of its value, and a cast to one rounds to its grid (to
//! nearest, ties to even) with ONNX's saturation rules.

/// A narrow type's layout.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Narrow {
    /// The upper half of an f32.
    Bf16,
    /// A small float: exponent and mantissa bits, bias, largest finite value, and its NaN and
    /// infinity conventions.
    Float {
        exp: u32,
        man: u32,
        bias: i32,
        max: f32,
        /// NaN is the all-ones pattern (E4M3FN), or 0x80 (the FNUZ types); E5M2 is IEEE-like.
        nan: Nan,
    },
    /// A 4- or 2-bit integer.
    Int { bits: u32, signed: bool },
    /// FLOAT8E8M0: eight exponent bits, `2^(e - 127)`, 0xFF is NaN (no sign, zero or
    /// infinity).
    E8m0,
}

/// Where a small float keeps NaN (and infinity).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Nan {
    /// Exponent and mantissa all ones (no infinities): E4M3FN.
    AllOnes,
    /// The negative-zero pattern (no infinities, no -0): the FNUZ types.
    NegativeZero,
    /// IEEE 754: exponent all ones, infinities with a zero mantissa: E5M2.
    Ieee,
    /// None at all: E2M1.
    None,
}

pub(crate) const FLOAT8E4M3FN: i32 = 17;
pub(crate) const FLOAT8E4M3FNUZ: i32 = 18;
pub(crate) const FLOAT8E5M2: i32 = 19;
pub(crate) const FLOAT8E5M2FNUZ: i32 = 20;
pub(crate) const UINT4: i32 = 21;
pub(crate) const INT4: i32 = 22;
pub(crate) const FLOAT4E2M1: i32 = 23;
pub(crate) const UINT2: i32 = 25;
pub(crate) const INT2: i32 = 26;
pub(crate) const FLOAT8E8M0: i32 = 24;
pub(crate) const BFLOAT16: i32 = 16;

impl Narrow {
    /// The layout of ONNX element type `elem`, if it is a narrow one kiln reads.
    pub(crate) fn of(elem: i32) -> Option<Narrow> {
        let float = |exp, man, bias, max, nan| Narrow::Float {
            exp,
            man,
            bias,
            max,
            nan,
        };
        Some(match elem {
            BFLOAT16 => Narrow::Bf16,
            FLOAT8E4M3FN => float(4, 3, 7, 448.0, Nan::AllOnes),
            FLOAT8E4M3FNUZ => float(4, 3, 8, 240.0, Nan::NegativeZero),
            FLOAT8E5M2 => float(5, 2, 15, 57344.0, Nan::Ieee),
            FLOAT8E5M2FNUZ => float(5, 2, 16, 57344.0, Nan::NegativeZero),
            FLOAT4E2M1 => float(2, 1, 1, 6.0, Nan::None),
            FLOAT8E8M0 => Narrow::E8m0,
            UINT4 => Narrow::Int {
                bits: 4,
                signed: false,
            },
            INT4 => Narrow::Int {
                bits: 4,
                signed: true,
            },
            UINT2 => Narrow::Int {
                bits: 2,
                signed: false,
            },
            INT2 => Narrow::Int {
                bits: 2,
                signed: true,
            },
            _ => return None,
        })
    }

    /// Bits per value in storage.
    pub(crate) fn bits(self) -> u32 {
        match self {
            Narrow::Bf16 => 16,
            Narrow::Float { exp, man, .. } => 1 + exp + man,
            Narrow::Int { bits, .. } => bits,
            Narrow::E8m0 => 8,
        }
    }

    /// Whether values are integers (held as `Value::Int`).
    /// Whether kiln casts to this type (every one but E8M0).
    pub(crate) fn castable(self) -> bool {
        !matches!(self, Narrow::E8m0)
    }

    pub(crate) fn is_int(self) -> bool {
        matches!(self, Narrow::Int { .. })
    }

    /// The value of one stored pattern.
    pub(crate) fn decode(self, bits: u32) -> f64 {
        match self {
            Narrow::E8m0 if bits & 0xff == 0xff => f64::NAN,
            Narrow::E8m0 => 2f64.powi((bits & 0xff) as i32 - 127),
            Narrow::Bf16 => f64::from(f32::from_bits(bits << 16)),
            Narrow::Int { bits: w, signed } => {
                let v = bits & ((1 << w) - 1);
                if signed && v >> (w - 1) == 1 {
                    f64::from(v) - f64::from(1u32 << w)
                } else {
                    f64::from(v)
                }
            }
            Narrow::Float {
                exp,
                man,
                bias,
                nan,
                ..
            } => {
                let sign = (bits >> (exp + man)) & 1;
                let e = (bits >> man) & ((1 << exp) - 1);
                let m = bits & ((1 << man) - 1);
                let all = (1 << exp) - 1;
                let is_nan = match nan {
                    Nan::AllOnes => e == all && m == (1 << man) - 1,
                    Nan::NegativeZero => sign == 1 && e == 0 && m == 0,
                    Nan::Ieee => e == all && m != 0,
                    Nan::None => false,
                };
                if is_nan {
                    return f64::NAN;
                }
                let mag = if nan == Nan::Ieee && e == all {
                    f64::INFINITY
                } else if e == 0 {
                    f64::from(m) * 2f64.powi(1 - bias - man as i32)
                } else {
                    (1.0 + f64::from(m) / f64::from(1u32 << man)) * 2f64.powi(e as i32 - bias)
                };
                if sign == 1 { -mag } else { mag }
            }
        }
    }

    /// `x` cast to this type (to nearest, ties to even), as the value it becomes. With
    /// `saturate` (ONNX's default) values past the largest finite one, infinities included,
    /// become it; without, they become NaN (infinity for E5M2; E2M1, which has neither, always
    /// saturates, and takes NaN to -0). Integers wrap around, as ONNX's reference does.
    /// E8M0 has rounding modes of its own that kiln does not implement: `Cast` refuses it as
    /// a target ([`Narrow::castable`]), and here it gives NaN.
    pub(crate) fn round(self, x: f64, saturate: bool) -> f64 {
        match self {
            Narrow::E8m0 => f64::NAN,
            Narrow::Bf16 => f64::from(half::bf16::from_f64(x).to_f32()),
            Narrow::Int { bits, signed } => {
                let (lo, hi) = if signed {
                    (
                        -f64::from(1u32 << (bits - 1)),
                        f64::from((1u32 << (bits - 1)) - 1),
                    )
                } else {
                    (0.0, f64::from((1u32 << bits) - 1))
                };
                if !x.is_finite() {
                    return 0.0;
                }
                let span = hi - lo + 1.0;
                (x.round_ties_even() - lo).rem_euclid(span) + lo
            }
            Narrow::Float {
                man,
                bias,
                max,
                nan,
                ..
            } => {
                let max = f64::from(max);
                let overflow = |neg: bool| {
                    let v = if saturate || nan == Nan::None {
                        max
                    } else if nan == Nan::Ieee {
                        f64::INFINITY
                    } else {
                        return f64::NAN;
                    };
                    if neg { -v } else { v }
                };
                if x.is_nan() {
                    return if nan == Nan::None { -0.0 } else { f64::NAN };
                }
                if x.is_infinite() {
                    return overflow(x < 0.0);
                }
                let a = x.abs();
                let min_normal = 2f64.powi(1 - bias);
                let quantum = if a < min_normal {
                    2f64.powi(1 - bias - man as i32)
                } else {
                    2f64.powi(a.log2().floor() as i32 - man as i32)
                };
                let r = (a / quantum).round_ties_even() * quantum;
                let r = if r > max { return overflow(x < 0.0) } else { r };
                if x < 0.0 && !(nan == Nan::NegativeZero && r == 0.0) {
                    -r
                } else {
                    r
                }
            }
        }
    }

    /// Unpack `n` stored patterns from raw little-endian bytes (sub-byte types packed from the
    /// low bits up), or `None` if the length does not fit.
    pub(crate) fn unpack(self, raw: &[u8], n: usize) -> Option<Vec<u32>> {
        let w = self.bits() as usize;
        if raw.len() != (n * w).div_ceil(8) {
            return None;
        }
        Some(
            (0..n)
                .map(|i| {
                    let bit = i * w;
                    let mut v = 0u32;
                    for b in 0..w.div_ceil(8) {
                        v |= u32::from(raw[bit / 8 + b]) << (8 * b);
                    }
                    (v >> (bit % 8)) & ((1u64 << w) - 1) as u32
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_floats_round_trip_their_grids() {
        for elem in [
            FLOAT8E4M3FN,
            FLOAT8E4M3FNUZ,
            FLOAT8E5M2,
            FLOAT8E5M2FNUZ,
            FLOAT4E2M1,
        ] {
            let t = Narrow::of(elem).unwrap();
            for bits in 0..1u32 << t.bits() {
                let v = t.decode(bits);
                if v.is_finite() {
                    assert_eq!(t.round(v, true), v, "type {elem} pattern {bits:#x}");
                }
            }
        }
        let e4 = Narrow::of(FLOAT8E4M3FN).unwrap();
        assert_eq!(e4.decode(0x7e), 448.0);
        assert!(e4.decode(0x7f).is_nan());
        assert_eq!(e4.round(1000.0, true), 448.0);
        assert!(e4.round(1000.0, false).is_nan());
        assert_eq!(
            Narrow::of(FLOAT8E5M2).unwrap().round(1e6, false),
            f64::INFINITY
        );
        assert_eq!(Narrow::of(FLOAT4E2M1).unwrap().round(2.6, true), 3.0);
        assert_eq!(Narrow::of(INT4).unwrap().round(-9.0, true), 7.0);
        assert_eq!(Narrow::of(INT4).unwrap().round(-8.0, true), -8.0);
        assert_eq!(Narrow::of(UINT2).unwrap().round(-3.0, true), 1.0);
        assert_eq!(
            Narrow::of(FLOAT8E5M2).unwrap().round(f64::INFINITY, true),
            57344.0
        );
        assert_eq!(Narrow::of(INT4).unwrap().decode(0xf), -1.0);
        let e8m0 = Narrow::of(FLOAT8E8M0).unwrap();
        assert_eq!(e8m0.decode(127), 1.0);
        assert_eq!(e8m0.decode(0), 2f64.powi(-127));
        assert_eq!(e8m0.decode(254), 2f64.powi(127));
        assert!(e8m0.decode(255).is_nan());
        assert!(!e8m0.castable());
    }
}
