//! The op table's matrix products: matmul (plain and transposed operands) and linear.

use super::*;
use kiln::{Device, Error, Tensor};

/// The matmul entries of the op table.
pub fn table() -> Vec<OpInfo> {
    vec![
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "matmul",
            grad: || matmul_grad(false, false),
            samples: matmul_samples,
            run: |t| t[0].matmul(&t[1]),
            reference: matmul_ref,
            // f32 accumulation over k terms of |a·b| <= 1: the absolute error grows with k.
            tol: |r| (1e-6 * (1 + r[0].shape[r[0].shape.len() - 1]) as f64, 1e-5),
            errors: matmul_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "matmul(aᵀ, b)",
            grad: || matmul_grad(true, false),
            samples: || matmul_t_samples(true, false),
            run: |t| t[0].matmul_transposed(&t[1], true, false),
            reference: |r| matmul_ref(&[t_last(&r[0]), r[1].clone()]),
            tol: |r| (1e-6 * (1 + r[0].shape[r[0].shape.len() - 2]) as f64, 1e-5),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "matmul(a, bᵀ)",
            grad: || matmul_grad(false, true),
            samples: || matmul_t_samples(false, true),
            run: |t| t[0].matmul_transposed(&t[1], false, true),
            reference: |r| matmul_ref(&[r[0].clone(), t_last(&r[1])]),
            tol: |r| (1e-6 * (1 + r[0].shape[r[0].shape.len() - 1]) as f64, 1e-5),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "matmul(aᵀ, bᵀ)",
            grad: || matmul_grad(true, true),
            samples: || matmul_t_samples(true, true),
            run: |t| t[0].matmul_transposed(&t[1], true, true),
            reference: |r| matmul_ref(&[t_last(&r[0]), t_last(&r[1])]),
            tol: |r| (1e-6 * (1 + r[0].shape[r[0].shape.len() - 2]) as f64, 1e-5),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "linear+bias+gelu_tanh",
            grad: || Grad::wrt(THREE),
            samples: linear_samples,
            run: |t| t[0].linear(&t[1], Some(&t[2]), Some(kiln::UnaryOp::GeluTanh)),
            reference: |r| {
                linear_ref(r, |v| {
                    0.5 * v
                        * (1.0
                            + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v))
                                .tanh())
                })
            },
            tol: |r| (1e-6 * (2 + r[1].shape[1]) as f64, 1e-5),
            errors: linear_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            // Version 4's plain epilogue (a bias, then ReLU) on lavapipe.
            name: "linear+bias+relu",
            grad: || Grad::wrt(THREE),
            samples: linear_samples,
            run: |t| t[0].linear(&t[1], Some(&t[2]), Some(kiln::UnaryOp::Relu)),
            reference: |r| linear_ref(r, |v| v.max(0.0)),
            tol: |r| (1e-6 * (2 + r[1].shape[1]) as f64, 1e-5),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "linear",
            grad: || Grad::wrt(THREE),
            samples: linear_samples,
            run: |t| t[0].linear(&t[1], None, None),
            reference: |r| {
                let zero = Ref {
                    shape: r[2].shape.clone(),
                    data: vec![0.0; r[2].data.len()],
                };
                linear_ref(&[r[0].clone(), r[1].clone(), zero], |v| v)
            },
            tol: |r| (1e-6 * (1 + r[1].shape[1]) as f64, 1e-5),
            errors: no_errors,
        },
        packed_linear("linear(f16 weight)", kiln::DType::F16),
        packed_linear("linear(bf16 weight)", kiln::DType::BF16),
        packed_linear("linear(q8_0 weight)", kiln::DType::Q8_0),
        packed_linear("linear(q4_0 weight)", kiln::DType::Q4_0),
        packed_linear("linear(q4_K weight)", kiln::DType::Q4K),
        packed_linear("linear(q6_K weight)", kiln::DType::Q6K),
        packed_decode("to_dtype(f16 to f32)", &[(0, kiln::DType::F16)], |r| {
            round_trip_ref(r, kiln::DType::F16)
        }),
        packed_decode("to_dtype(bf16 to f32)", &[(0, kiln::DType::BF16)], |r| {
            round_trip_ref(r, kiln::DType::BF16)
        }),
        packed_decode("to_dtype(q8_0 to f32)", &[(0, kiln::DType::Q8_0)], |r| {
            round_trip_ref(r, kiln::DType::Q8_0)
        }),
        packed_decode("to_dtype(q4_0 to f32)", &[(0, kiln::DType::Q4_0)], |r| {
            round_trip_ref(r, kiln::DType::Q4_0)
        }),
        packed_decode("to_dtype(q4_K to f32)", &[(0, kiln::DType::Q4K)], |r| {
            round_trip_ref(r, kiln::DType::Q4K)
        }),
        packed_decode("to_dtype(q6_K to f32)", &[(0, kiln::DType::Q6K)], |r| {
            round_trip_ref(r, kiln::DType::Q6K)
        }),
        packed_rows("embedding(q6_K table)", &[(0, kiln::DType::Q6K)], |r| {
            rows_ref(r, kiln::DType::Q6K)
        }),
        packed_rows("embedding(q8_0 table)", &[(0, kiln::DType::Q8_0)], |r| {
            rows_ref(r, kiln::DType::Q8_0)
        }),
        packed_rows("embedding(f16 table)", &[(0, kiln::DType::F16)], |r| {
            rows_ref(r, kiln::DType::F16)
        }),
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "linear_add(w, b, residual)",
            grad: || Grad::wrt(&[0, 1, 2, 3]),
            samples: linear_residual_samples,
            run: |t| t[0].linear_add(&t[1], Some(&t[2]), &t[3]),
            reference: |r| {
                let mut out = linear_ref(&r[..3], |v| v);
                for (v, &x) in out.data.iter_mut().zip(&r[3].data) {
                    *v += x;
                }
                out
            },
            tol: |r| (1e-6 * (1 + r[1].shape[1]) as f64, 1e-5),
            errors: linear_residual_errors,
        },
    ]
}

/// The linear samples with a residual of the output's shape.
/// `linear` with its weight in a storage type, made from the sample's f32 values by kiln's
/// encoder on the host (as a GGUF tensor arrives). The reference is the product with the
/// weight through ggml's reference quantizer and back ([`round_trip`]). The tolerance is what
/// the CPU promises for quantized weights: it quantizes activations to 8 bits per block of 32
/// as ggml does (an error of at most max|x|/254 per activation), so each output may be off by
/// Σ|w|·max|x|/254; the GPU keeps activations in f32. Half-precision weights take f32
/// activations everywhere.
fn packed_linear(name: &'static str, dtype: kiln::DType) -> OpInfo {
    let (reference, tol, samples, errors): PackedFns = match dtype {
        kiln::DType::F16 => (
            |r| packed_ref(r, kiln::DType::F16),
            |r| (1e-6 * (1 + width(&r[1])) as f64, 1e-5),
            half_samples,
            no_errors,
        ),
        kiln::DType::BF16 => (
            |r| packed_ref(r, kiln::DType::BF16),
            |r| (1e-6 * (1 + width(&r[1])) as f64, 1e-5),
            half_samples,
            no_errors,
        ),
        kiln::DType::Q8_0 => (
            |r| packed_ref(r, kiln::DType::Q8_0),
            quantized_tol,
            packed_samples,
            packed_errors,
        ),
        kiln::DType::Q4_0 => (
            |r| packed_ref(r, kiln::DType::Q4_0),
            quantized_tol,
            packed_samples,
            no_errors,
        ),
        kiln::DType::Q4K => (
            |r| packed_ref(r, kiln::DType::Q4K),
            quantized_tol,
            super_block_samples,
            super_block_errors,
        ),
        _ => (
            |r| packed_ref(r, kiln::DType::Q6K),
            quantized_tol,
            super_block_samples,
            no_errors,
        ),
    };
    let packed_inputs: &'static [(usize, kiln::DType)] = match dtype {
        kiln::DType::F16 => &[(1, kiln::DType::F16)],
        kiln::DType::BF16 => &[(1, kiln::DType::BF16)],
        kiln::DType::Q8_0 => &[(1, kiln::DType::Q8_0)],
        kiln::DType::Q4_0 => &[(1, kiln::DType::Q4_0)],
        kiln::DType::Q4K => &[(1, kiln::DType::Q4K)],
        _ => &[(1, kiln::DType::Q6K)],
    };
    OpInfo {
        index_inputs: &[],
        packed_inputs,
        name,
        grad: || Grad::NoGrad("the weight is a constant in a storage type"),
        samples,
        run: |t| t[0].linear(&t[1], None, None),
        reference,
        tol,
        errors,
    }
}

/// x `[m, k]` and w `[n, k]` with k whole super-blocks of 256 (q4_K, q6_K): one row, several
/// rows over groups of eight weight rows and a ragged n, two super-blocks a row, no rows, the
/// lane kernel's shapes, and a weight with a zero super-block and large and tiny magnitudes
/// in one.
fn super_block_samples() -> Vec<Sample> {
    let mut rng = Lcg(173);
    let shapes = [
        (1, 256, 5),
        (3, 512, 7),
        (19, 256, 9),
        (0, 256, 3),
        (1, 256, 16),
        // The CPU's lane kernel (eight weight rows by bands of sixteen activation rows, from
        // six rows): its first row count, a band partly filled, a whole one and the rows after
        // the last eight, a prompt's 200 rows; five rows stay on the one-row kernels.
        (5, 512, 8),
        (6, 256, 8),
        (16, 768, 12),
        (200, 512, 8),
    ];
    let mut out: Vec<Sample> = shapes
        .iter()
        .map(|&(m, k, n)| Sample {
            inputs: vec![
                (vec![m, k], rng.vec(m * k, -2.0, 2.0)),
                (vec![n, k], rng.vec(n * k, -1.0, 1.0)),
            ],
        })
        .collect();
    let mut w = rng.vec(3 * 512, -1.0, 1.0);
    w[..256].fill(0.0);
    w[512] = 300.0;
    w[513] = -1e-3;
    out.push(Sample {
        inputs: vec![
            (vec![2, 512], rng.vec(2 * 512, -1.0, 1.0)),
            (vec![3, 512], w),
        ],
    });
    out
}

fn super_block_errors(d: &Device) -> Vec<ErrorCase> {
    vec![
        (
            "a row of 288 values in 256-value super-blocks",
            Tensor::zeros(d, &[2, 288]).and_then(|x| x.to_dtype(kiln::DType::Q4K)),
            |e| matches!(e, Error::InvalidShape { op: "to_dtype", .. }),
        ),
        (
            "an f32 activation against a q4_K weight of another width",
            Tensor::zeros(&Device::cpu(), &[3, 256])
                .and_then(|w| w.to_dtype(kiln::DType::Q4K)?.to_bytes())
                .and_then(|b| Tensor::from_bytes(d, &b, kiln::DType::Q4K, &[3, 256]))
                .and_then(|w| Tensor::zeros(d, &[2, 512])?.linear(&w, None, None)),
            |e| matches!(e, Error::ShapeMismatch { .. }),
        ),
    ]
}

/// A tensor in a storage type decoded to f32 on its device: exactly the reference round trip.
fn packed_decode(
    name: &'static str,
    packed_inputs: &'static [(usize, kiln::DType)],
    reference: fn(&[Ref]) -> Ref,
) -> OpInfo {
    OpInfo {
        index_inputs: &[],
        packed_inputs,
        name,
        grad: || Grad::NoGrad("a storage type"),
        samples: match packed_inputs[0].1.block_len() {
            256 => || weights_of(super_block_samples()),
            _ => || weights_of(packed_samples()),
        } as fn() -> Vec<Sample>,
        run: |t| t[0].to_dtype(kiln::DType::F32),
        reference,
        tol: |_| (0.0, 0.0),
        errors: no_errors,
    }
}

/// The weights (second inputs) of linear samples, as samples of their own.
fn weights_of(samples: Vec<Sample>) -> Vec<Sample> {
    samples
        .into_iter()
        .map(|s| Sample {
            inputs: vec![s.inputs[1].clone()],
        })
        .collect()
}

fn round_trip_ref(r: &[Ref], dtype: kiln::DType) -> Ref {
    Ref {
        shape: r[0].shape.clone(),
        data: round_trip(dtype, &r[0].data),
    }
}

/// Rows of a table in a storage type (a language model's token embeddings), by u32 ids.
fn packed_rows(
    name: &'static str,
    packed_inputs: &'static [(usize, kiln::DType)],
    reference: fn(&[Ref]) -> Ref,
) -> OpInfo {
    OpInfo {
        index_inputs: &[1],
        packed_inputs,
        name,
        grad: || Grad::NoGrad("a storage type"),
        samples: match packed_inputs[0].1.block_len() {
            256 => || table_samples(&[(9, 256, 5), (3, 512, 2), (4, 256, 0)]),
            _ => || table_samples(&[(9, 64, 5), (3, 32, 1), (4, 96, 0)]),
        } as fn() -> Vec<Sample>,
        run: |t| Tensor::embedding(&t[0], &t[1]),
        reference,
        tol: |_| (0.0, 0.0),
        errors: no_errors,
    }
}

/// Tables `[rows, len]` and `n` ids into them.
fn table_samples(shapes: &[(usize, usize, usize)]) -> Vec<Sample> {
    let mut rng = Lcg(172);
    shapes
        .iter()
        .map(|&(rows, len, n)| Sample {
            inputs: vec![
                (vec![rows, len], rng.vec(rows * len, -2.0, 2.0)),
                (
                    vec![n],
                    (0..n).map(|i| ((i * 7 + 2) % rows) as f32).collect(),
                ),
            ],
        })
        .collect()
}

fn rows_ref(r: &[Ref], dtype: kiln::DType) -> Ref {
    let len = r[0].shape[1];
    let table = round_trip(dtype, &r[0].data);
    let ids: Vec<usize> = r[1].data.iter().map(|&i| i as usize).collect();
    Ref {
        shape: vec![ids.len(), len],
        data: ids
            .iter()
            .flat_map(|&i| table[i * len..(i + 1) * len].iter().copied())
            .collect(),
    }
}

/// A packed entry's reference, tolerance, samples and error cases.
type PackedFns = (
    fn(&[Ref]) -> Ref,
    fn(&[Ref]) -> (f64, f64),
    fn() -> Vec<Sample>,
    fn(&Device) -> Vec<ErrorCase>,
);

/// x `[m, k]` and w `[n, k]` with k whole blocks of 32: one row (a decode step's GEMV), rows
/// past the CPU's register tiles, n not a multiple of 4, a weight block of zeros, large and
/// tiny magnitudes in one row, and no rows; one row over whole groups of eight weight rows and
/// many rows over groups and a row after them (the CPU keeps q8_0/q4_0 rows grouped).
fn packed_samples() -> Vec<Sample> {
    let mut rng = Lcg(171);
    let shapes = [
        (1, 64, 5),
        (3, 96, 7),
        (19, 256, 9),
        (0, 32, 3),
        (1, 64, 16),
    ];
    let mut out: Vec<Sample> = shapes
        .iter()
        .map(|&(m, k, n)| Sample {
            inputs: vec![
                (vec![m, k], rng.vec(m * k, -2.0, 2.0)),
                (vec![n, k], rng.vec(n * k, -1.0, 1.0)),
            ],
        })
        .collect();
    let mut w = rng.vec(4 * 64, -1.0, 1.0);
    w[..32].fill(0.0);
    w[64] = 300.0;
    w[65] = -1e-3;
    out.push(Sample {
        inputs: vec![(vec![2, 64], rng.vec(2 * 64, -1.0, 1.0)), (vec![4, 64], w)],
    });
    out
}

/// [`packed_samples`] and rows of any length (half-precision weights have no blocks): a
/// length past the register tile's last whole vector (37 = 2·16 + 5), one shorter than a
/// vector, activation rows that fill no whole tile, and one activation row with rows long
/// enough for a decode step to take the tile (8,200 = 512·16 + 8), and a prompt's 200 rows
/// (where other storage types take the SGEMM).
fn half_samples() -> Vec<Sample> {
    let mut rng = Lcg(176);
    let mut out = packed_samples();
    out.extend(
        [
            (5, 37, 6),
            (2, 7, 4),
            (6, 53, 8),
            (1, 8200, 6),
            (200, 40, 9),
        ]
        .iter()
        .map(|&(m, k, n)| Sample {
            inputs: vec![
                (vec![m, k], rng.vec(m * k, -2.0, 2.0)),
                (vec![n, k], rng.vec(n * k, -1.0, 1.0)),
            ],
        }),
    );
    out
}

/// The product with `r[1]` through `dtype` and back.
fn packed_ref(r: &[Ref], dtype: kiln::DType) -> Ref {
    let w = Ref {
        shape: r[1].shape.clone(),
        data: round_trip(dtype, &r[1].data),
    };
    let zero = Ref {
        shape: vec![w.shape[0]],
        data: vec![0.0; w.shape[0]],
    };
    linear_ref(&[r[0].clone(), w, zero], |v| v)
}

/// The last dimension of `r` (1 for a scalar): a weight's row width, whatever a fuzzer made of
/// its shape.
fn width(r: &Ref) -> usize {
    r.shape.last().copied().unwrap_or(1)
}

/// Per-output error bound of 8-bit activations (see [`packed_linear`]), with room for f32 sums.
fn quantized_tol(r: &[Ref]) -> (f64, f64) {
    let (x, w) = (&r[0], &r[1]);
    let k = width(w);
    let xmax = x.data.iter().fold(0f64, |a, v| a.max(v.abs()));
    let wsum = w
        .data
        .chunks(k.max(1))
        .map(|row| row.iter().map(|v| v.abs()).sum::<f64>())
        .fold(0f64, f64::max);
    (wsum * xmax / 254.0 * 1.05 + 1e-5 * k as f64, 1e-5)
}

fn packed_errors(d: &Device) -> Vec<ErrorCase> {
    let x = Tensor::zeros(d, &[2, 40]).unwrap();
    vec![
        (
            "a row of 40 values in 32-value blocks",
            x.to_dtype(kiln::DType::Q8_0),
            |e| matches!(e, Error::InvalidShape { op: "to_dtype", .. }),
        ),
        (
            "an f32 activation against a q8_0 weight of another width",
            // Encoded on the host, as the table's packed inputs are (a page cannot read back).
            Tensor::zeros(&Device::cpu(), &[3, 32])
                .and_then(|w| w.to_dtype(kiln::DType::Q8_0)?.to_bytes())
                .and_then(|b| Tensor::from_bytes(d, &b, kiln::DType::Q8_0, &[3, 32]))
                .and_then(|w| Tensor::zeros(d, &[2, 64])?.linear(&w, None, None)),
            |e| matches!(e, Error::ShapeMismatch { .. }),
        ),
    ]
}

/// `w` (rows of whole 32-value blocks for the quantized types) through `dtype`'s encoder and
/// decoder as ggml's reference code defines them (in f32): f16 and bf16 round to nearest even;
/// q8_0 keeps `round(x / d)` with `d = max|x| / 127` (stored as f16); q4_0 keeps
/// `min(15, trunc(x / d + 8.5)) − 8` with `d = m / −8`, m the block's value of largest
/// magnitude (its first).
pub fn round_trip(dtype: kiln::DType, w: &[f64]) -> Vec<f64> {
    use half::{bf16, f16};
    let f: Vec<f32> = w.iter().map(|&v| v as f32).collect();
    let mut out = Vec::with_capacity(f.len());
    match dtype {
        kiln::DType::F16 => out.extend(f.iter().map(|&v| f16::from_f32(v).to_f64())),
        kiln::DType::BF16 => out.extend(f.iter().map(|&v| bf16::from_f32(v).to_f64())),
        kiln::DType::Q8_0 => {
            for block in f.chunks(32) {
                let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let dh = f16::from_f32(d).to_f32();
                out.extend(block.iter().map(|&v| f64::from((v * id).round() * dh)));
            }
        }
        kiln::DType::Q4_0 => {
            for block in f.chunks(32) {
                let (mut amax, mut max) = (0f32, 0f32);
                for &v in block {
                    if amax < v.abs() {
                        amax = v.abs();
                        max = v;
                    }
                }
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let dh = f16::from_f32(d).to_f32();
                out.extend(block.iter().map(|&v| {
                    let q = ((v * id + 8.5) as i8).min(15);
                    f64::from(f32::from(q - 8) * dh)
                }));
            }
        }
        kiln::DType::Q4K | kiln::DType::Q6K => {
            // ggml's K-quant quantizers search their scales by weighted least squares, which
            // the table does not derive again: the bytes are kiln's quantizer's (held to the
            // `gguf` package's and ggml's byte for byte by tests/packed.rs), decoded here as
            // ggml's `dequantize_row_q4_K` / `dequantize_row_q6_K` do.
            let bytes = Tensor::from_slice(&Device::cpu(), &f, &[f.len()])
                .and_then(|t| t.to_dtype(dtype))
                .and_then(|t| t.to_bytes())
                .expect("whole super-blocks");
            out.extend(dequantize_k(dtype, &bytes));
        }
        other => panic!("no reference round trip for {other:?}"),
    }
    out
}

/// ggml's `dequantize_row_q4_K` (144-byte super-blocks: f16 d, f16 dmin, 12 bytes of 6-bit
/// scales and mins, 128 bytes of nibbles) and `dequantize_row_q6_K` (210 bytes: 128 of low
/// nibbles, 64 of high bit pairs, 16 i8 scales, f16 d), in f32 as ggml computes them.
fn dequantize_k(dtype: kiln::DType, bytes: &[u8]) -> Vec<f64> {
    let f16 = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
    let mut out = Vec::new();
    if dtype == kiln::DType::Q4K {
        for b in bytes.chunks_exact(144) {
            let (d, dmin, sc, mut q) = (f16(&b[0..]), f16(&b[2..]), &b[4..16], &b[16..]);
            // get_scale_min_k4
            let scale_min = |j: usize| -> (f32, f32) {
                if j < 4 {
                    (f32::from(sc[j] & 63), f32::from(sc[j + 4] & 63))
                } else {
                    (
                        f32::from((sc[j + 4] & 0xf) | ((sc[j - 4] >> 6) << 4)),
                        f32::from((sc[j + 4] >> 4) | ((sc[j] >> 6) << 4)),
                    )
                }
            };
            for pair in 0..4 {
                let (s1, m1) = scale_min(2 * pair);
                let (s2, m2) = scale_min(2 * pair + 1);
                let (d1, m1, d2, m2) = (d * s1, dmin * m1, d * s2, dmin * m2);
                out.extend(
                    q[..32]
                        .iter()
                        .map(|&v| f64::from(d1 * f32::from(v & 0xf) - m1)),
                );
                out.extend(
                    q[..32]
                        .iter()
                        .map(|&v| f64::from(d2 * f32::from(v >> 4) - m2)),
                );
                q = &q[32..];
            }
        }
    } else {
        for b in bytes.chunks_exact(210) {
            let d = f16(&b[208..]);
            for half in 0..2 {
                let ql = &b[64 * half..64 * half + 64];
                let qh = &b[128 + 32 * half..128 + 32 * half + 32];
                let sc = &b[192 + 8 * half..192 + 8 * half + 8];
                let mut y = [0f32; 128];
                for l in 0..32 {
                    let is = l / 16;
                    let q = |low: u8, shift: u32| {
                        f32::from((low | (((qh[l] >> shift) & 3) << 4)) as i8 - 32)
                    };
                    let s = |i: usize| d * f32::from(sc[is + i] as i8);
                    y[l] = s(0) * q(ql[l] & 0xf, 0);
                    y[l + 32] = s(2) * q(ql[l + 32] & 0xf, 2);
                    y[l + 64] = s(4) * q(ql[l] >> 4, 4);
                    y[l + 96] = s(6) * q(ql[l + 32] >> 4, 6);
                }
                out.extend(y.iter().map(|&v| f64::from(v)));
            }
        }
    }
    out
}

pub fn linear_residual_samples() -> Vec<Sample> {
    let mut rng = Lcg(45);
    linear_samples()
        .into_iter()
        .map(|mut s| {
            let mut out = s.inputs[0].0.clone();
            *out.last_mut().unwrap() = s.inputs[1].0[0];
            let n = out.iter().product();
            s.inputs.push((out, rng.vec(n, -1.0, 1.0)));
            s
        })
        .collect()
}

fn linear_residual_errors(d: &Device) -> Vec<ErrorCase> {
    let x = Tensor::zeros(d, &[2, 3]).unwrap();
    let w = Tensor::zeros(d, &[4, 3]).unwrap();
    vec![(
        "residual [4, 2] for a [2, 4] output",
        x.linear_add(&w, None, &Tensor::zeros(d, &[4, 2]).unwrap()),
        |e| matches!(e, Error::ShapeMismatch { op: "linear", .. }),
    )]
}

pub fn matmul_samples() -> Vec<Sample> {
    let mut rng = Lcg(33);
    let shapes: Vec<(Vec<usize>, Vec<usize>)> = vec![
        (vec![300, 257], vec![257, 129]), // the named case: no dimension divides the tile
        (vec![16, 16], vec![16, 16]),
        (vec![15, 17], vec![17, 31]),
        (vec![17, 33], vec![33, 15]),
        (vec![300, 200], vec![200, 9]), // many weight rows, few columns: the CPU's row dots
        (vec![1, 64], vec![64, 1]),
        (vec![1, 1], vec![1, 1]),
        (vec![64, 1], vec![1, 64]),
        (vec![5, 0], vec![0, 7]), // k = 0: zeros
        (vec![0, 4], vec![4, 3]),
        (vec![4, 3], vec![3, 0]),
        (vec![2, 3, 17, 5], vec![5, 9]),
        (vec![4, 1, 8, 16], vec![3, 16, 7]),
        (vec![3, 33, 32], vec![3, 32, 33]),
        (vec![2, 0, 3, 4], vec![4, 5]),
        // Shapes every candidate tile divides: these run the unchecked kernel variants.
        (vec![128, 64], vec![64, 128]),
        (vec![2, 64, 32], vec![32, 64]),
    ];
    shapes
        .into_iter()
        .map(|(a, b)| {
            let na = a.iter().product();
            let nb = b.iter().product();
            Sample {
                inputs: vec![(a, rng.vec(na, -1.0, 1.0)), (b, rng.vec(nb, -1.0, 1.0))],
            }
        })
        .collect()
}

pub fn matmul_ref(r: &[Ref]) -> Ref {
    let (a, b) = (&r[0], &r[1]);
    let (ar, br) = (a.shape.len(), b.shape.len());
    let (m, k, n) = (a.shape[ar - 2], a.shape[ar - 1], b.shape[br - 1]);
    let batch = broadcast(&a.shape[..ar - 2], &b.shape[..br - 2]).unwrap();
    let nb: usize = batch.iter().product();
    let mut data = Vec::with_capacity(nb * m * n);
    for bi in 0..nb {
        let idx = unravel(bi, &batch);
        let oa = bcast_index(&a.shape[..ar - 2], &batch, &idx) * m * k;
        let ob = bcast_index(&b.shape[..br - 2], &batch, &idx) * k * n;
        for i in 0..m {
            for j in 0..n {
                data.push(
                    (0..k)
                        .map(|p| a.data[oa + i * k + p] * b.data[ob + p * n + j])
                        .sum(),
                );
            }
        }
    }
    let mut shape = batch;
    shape.extend([m, n]);
    Ref { shape, data }
}

/// Transpose the last two dimensions of a reference.
pub fn t_last(r: &Ref) -> Ref {
    let n = r.shape.len();
    let mut perm: Vec<usize> = (0..n).collect();
    perm.swap(n - 2, n - 1);
    permute_ref(r, &perm)
}

/// Samples for `op(a) x op(b)`, stored already transposed where the op transposes.
pub fn matmul_t_samples(ta: bool, tb: bool) -> Vec<Sample> {
    let cases: &[(&[usize], &[usize])] = &[
        (&[300, 257], &[257, 129]),
        (&[17, 33], &[33, 15]),
        (&[1, 64], &[64, 1]),
        (&[128, 64], &[64, 128]),
        (&[2, 3, 17, 5], &[5, 9]),
        (&[5, 0], &[0, 7]),
    ];
    transposed_pairs(cases, ta, tb, 90)
}

/// Random operand pairs of the given shapes, each stored with its last two dimensions swapped
/// where `ta` / `tb` says.
pub fn transposed_pairs(
    cases: &[(&[usize], &[usize])],
    ta: bool,
    tb: bool,
    seed: u64,
) -> Vec<Sample> {
    let mut rng = Lcg(seed);
    let sw = |s: &[usize], t: bool| {
        let mut d = s.to_vec();
        let r = d.len();
        if t {
            d.swap(r - 2, r - 1);
        }
        d
    };
    cases
        .iter()
        .map(|(a, b)| {
            let (a, b) = (sw(a, ta), sw(b, tb));
            let (na, nb) = (a.iter().product(), b.iter().product());
            Sample {
                inputs: vec![(a, rng.vec(na, -1.0, 1.0)), (b, rng.vec(nb, -1.0, 1.0))],
            }
        })
        .collect()
}

pub fn linear_samples() -> Vec<Sample> {
    let mut rng = Lcg(44);
    // (x shape, out_features): weight is [out, in], bias [out].
    let cases: Vec<(Vec<usize>, usize)> = vec![
        (vec![300, 257], 129),
        (vec![1, 64], 10),
        (vec![5, 17], 1),
        (vec![2, 3, 33], 31),
        (vec![64, 32], 64),
        (vec![4, 0], 3),
        (vec![0, 8], 4),
    ];
    cases
        .into_iter()
        .map(|(x, n)| {
            let k = *x.last().unwrap();
            let nx = x.iter().product();
            Sample {
                inputs: vec![
                    (x, rng.vec(nx, -1.0, 1.0)),
                    (vec![n, k], rng.vec(n * k, -1.0, 1.0)),
                    (vec![n], rng.vec(n, -1.0, 1.0)),
                ],
            }
        })
        .collect()
}

/// x · wᵀ + b, then `act`.
pub fn linear_ref(r: &[Ref], act: fn(f64) -> f64) -> Ref {
    let (x, w, b) = (&r[0], &r[1], &r[2]);
    let (n, k) = (w.shape[0], w.shape[1]);
    let wt: Vec<f64> = (0..k * n).map(|i| w.data[(i % n) * k + i / n]).collect();
    let mut out = matmul_ref(&[
        x.clone(),
        Ref {
            shape: vec![k, n],
            data: wt,
        },
    ]);
    for (i, v) in out.data.iter_mut().enumerate() {
        *v = act(*v + b.data[i % n]);
    }
    out
}

pub fn linear_errors(d: &Device) -> Vec<ErrorCase> {
    let x = Tensor::zeros(d, &[2, 3]).unwrap();
    let w = Tensor::zeros(d, &[4, 5]).unwrap();
    let w3 = Tensor::zeros(d, &[4, 3]).unwrap();
    let b = Tensor::zeros(d, &[5]).unwrap();
    vec![
        ("x [2,3], w [4,5]", x.linear(&w, None, None), |e| {
            matches!(e, Error::ShapeMismatch { op: "linear", .. })
        }),
        (
            "bias [5] for 4 outputs",
            x.linear(&w3, Some(&b), None),
            |e| matches!(e, Error::ShapeMismatch { op: "linear", .. }),
        ),
        (
            "weight of rank 3",
            x.linear(&Tensor::zeros(d, &[1, 4, 3]).unwrap(), None, None),
            |e| matches!(e, Error::InvalidShape { op: "linear", .. }),
        ),
    ]
}

pub fn matmul_errors(d: &Device) -> Vec<ErrorCase> {
    let a = Tensor::zeros(d, &[2, 3]).unwrap();
    let b = Tensor::zeros(d, &[4, 5]).unwrap();
    let v = Tensor::zeros(d, &[3]).unwrap();
    let x = Tensor::zeros(d, &[2, 2, 3]).unwrap();
    let y = Tensor::zeros(d, &[3, 3, 4]).unwrap();
    vec![
        ("[2,3] x [4,5]", a.matmul(&b), |e| {
            matches!(e, Error::ShapeMismatch { op: "matmul", .. })
                && e.to_string().starts_with("matmul: shape mismatch")
        }),
        ("[2,3] x [3]", a.matmul(&v), |e| {
            matches!(e, Error::InvalidShape { op: "matmul", .. })
        }),
        ("batch 2 vs 3", x.matmul(&y), |e| {
            matches!(e, Error::ShapeMismatch { op: "matmul", .. })
        }),
    ]
}
