//! The storage types (f16, bf16, i8, u8, i32 and GGUF's q8_0, q4_0, q4_K, q6_K) on every
//! device: bytes round-trip, casts, products with a packed weight (`linear`), embedding rows,
//! and their errors. The formats themselves are checked against the `gguf` package (llama.cpp's
//! Python reader and writer) through `scripts/gguf_blocks.py`: kiln's quantizers write the
//! bytes it writes, and kiln decodes what it decodes.

#[macro_use]
mod common;

use common::*;
use kiln::{DType, Device, Error, Tensor, UnaryOp};
use std::path::PathBuf;

/// Every storage type (all but f32 and u32).
fn packed() -> Vec<DType> {
    DType::ALL.into_iter().filter(|d| d.is_packed()).collect()
}

/// Bytes of `blocks` valid blocks of `dtype` (finite scales), from `rng`.
fn random_blocks(dtype: DType, blocks: usize, rng: &mut Lcg) -> Vec<u8> {
    let f16 = |v: f32| half::f16::from_f32(v).to_bits().to_le_bytes();
    let mut out = Vec::new();
    for _ in 0..blocks {
        let mut b: Vec<u8> = (0..dtype.block_bytes())
            .map(|_| rng.next_u32() as u8)
            .collect();
        match dtype {
            DType::Q8_0 | DType::Q4_0 => b[..2].copy_from_slice(&f16(rng.uniform(-0.05, 0.05))),
            DType::Q4K => {
                b[..2].copy_from_slice(&f16(rng.uniform(0.0, 0.01)));
                b[2..4].copy_from_slice(&f16(rng.uniform(0.0, 0.01)));
            }
            DType::Q6K => b[208..].copy_from_slice(&f16(rng.uniform(-0.005, 0.005))),
            DType::F16 => b.copy_from_slice(&f16(rng.uniform(-4.0, 4.0))),
            DType::BF16 => {
                let v = half::bf16::from_f32(rng.uniform(-4.0, 4.0));
                b.copy_from_slice(&v.to_bits().to_le_bytes())
            }
            DType::I32 => b.copy_from_slice(&(rng.next_u32() as i32 % 1000).to_le_bytes()),
            _ => {}
        }
        out.extend(b);
    }
    out
}

/// The values of `bytes` of `dtype`, decoded on the CPU backend (the reference for the GPU).
fn decoded(bytes: &[u8], dtype: DType, shape: &[usize]) -> Vec<f32> {
    Tensor::from_bytes(&Device::cpu(), bytes, dtype, shape)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec()
        .unwrap()
}

/// Bytes and f32 values round-trip on every device, and a GPU decodes exactly what the CPU
/// does; `to_device` keeps the bytes.
#[test]
fn packed_tensors_round_trip_and_decode_alike_on_every_device() {
    let mut rng = Lcg(7);
    for dtype in packed() {
        // 19 rows: the CPU keeps q4_0 rows in groups of eight (two groups, three
        // rows after them), and reads the file's order back.
        let shape = [19, 2 * dtype.block_len().max(4)];
        let n: usize = shape.iter().product();
        let bytes = random_blocks(dtype, n / dtype.block_len(), &mut rng);
        let want = decoded(&bytes, dtype, &shape);
        assert!(want.iter().all(|v| v.is_finite()), "{dtype}");
        for dev in devices() {
            let t = Tensor::from_bytes(&dev, &bytes, dtype, &shape).unwrap();
            assert_eq!(t.dtype(), dtype);
            assert_eq!(t.to_bytes().unwrap(), bytes, "{dtype} on {dev}: bytes");
            // The same from an owned buffer, and its checks: one byte short is refused.
            let owned = Tensor::from_byte_vec(&dev, bytes.clone(), dtype, &shape).unwrap();
            assert_eq!(
                owned.to_bytes().unwrap(),
                bytes,
                "{dtype} on {dev}: owned bytes"
            );
            let short = bytes[..bytes.len() - 1].to_vec();
            assert!(
                matches!(
                    Tensor::from_byte_vec(&dev, short, dtype, &shape),
                    Err(Error::InvalidShape { .. })
                ),
                "{dtype} on {dev}: a short buffer"
            );
            let f = t.to_dtype(DType::F32).unwrap();
            let got = f.to_vec().unwrap();
            let want64: Vec<f64> = want.iter().map(|&v| f64::from(v)).collect();
            assert_close(
                &format!("{dtype} on {dev}: decode"),
                &got,
                &want64,
                0.0,
                1e-6,
            );
            // Back to the type: the decoded values are representable, so the bytes return
            // (for the quantized types, only where the quantizer picks the same scales: not
            // promised, so those compare values).
            let back = f.to_dtype(dtype).unwrap();
            if dtype.is_quantized() {
                let again = back.to_dtype(DType::F32).unwrap().to_vec().unwrap();
                // One step of the coarsest grid: q4_0's quantizer clamps a value opposite
                // its block's largest from 16 to 15, 1/8 of that largest.
                let amax = want.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
                assert_close(
                    &format!("{dtype} on {dev}: requantized"),
                    &again,
                    &want64,
                    amax * 0.126,
                    0.0,
                );
            } else {
                assert_eq!(
                    back.to_bytes().unwrap(),
                    bytes,
                    "{dtype} on {dev}: re-encoded"
                );
            }
            let moved = t.to_device(&Device::cpu()).unwrap();
            assert_eq!(
                moved.to_bytes().unwrap(),
                bytes,
                "{dtype} from {dev} to the CPU"
            );
            let back = moved.to_device(&dev).unwrap();
            assert_eq!(
                back.to_bytes().unwrap(),
                bytes,
                "{dtype} from the CPU to {dev}"
            );
        }
    }
}

/// f32 → each type → f32 stays within the type's promised precision, on every device, and
/// every device encodes the same bytes.
#[test]
fn casts_from_f32_keep_the_promised_precision() {
    let mut rng = Lcg(11);
    let x = rng.vec(4 * 512, -3.0, 3.0);
    for dtype in packed() {
        let mut reference: Option<Vec<u8>> = None;
        for dev in devices() {
            let t = Tensor::from_slice(&dev, &x, &[4, 512]).unwrap();
            let q = t.to_dtype(dtype).unwrap();
            let bytes = q.to_bytes().unwrap();
            match &reference {
                None => reference = Some(bytes),
                Some(r) => assert_eq!(&bytes, r, "{dtype}: {dev} encodes differently"),
            }
            let back = q.to_dtype(DType::F32).unwrap().to_vec().unwrap();
            for (block, (xs, ys)) in x.chunks(32).zip(back.chunks(32)).enumerate() {
                let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
                // Worst error per value: half a step of the type's grid, plus (for the block
                // types) the f16 rounding of the scale times the largest level.
                let tol = match dtype {
                    DType::F16 => amax / 2048.0,
                    DType::BF16 => amax / 256.0,
                    DType::I8 | DType::U8 | DType::I32 => 1.0,
                    DType::Q8_0 => amax / 254.0 + amax / 2048.0,
                    // q4_0's levels run −8..=7 steps: the end opposite the largest magnitude
                    // is clipped by up to a whole step.
                    DType::Q4_0 => amax / 8.0 + amax / 2048.0,
                    // K-quants fit their scales by least squares: bounded by their 4- or
                    // 6-bit grid over the super-block's range, with the scales' own rounding.
                    DType::Q4K => 6.0 / 15.0,
                    _ => 6.0 / 31.0,
                };
                for (i, (&a, &b)) in xs.iter().zip(ys).enumerate() {
                    let want = match dtype {
                        DType::U8 => a.max(0.0).trunc(),
                        DType::I8 | DType::I32 => a.trunc(),
                        _ => a,
                    };
                    assert!(
                        (want - b).abs() <= tol,
                        "{dtype} on {dev}: value {} is {a}, back {b} (tolerance {tol})",
                        block * 32 + i
                    );
                }
            }
        }
    }
}

/// f32 ↔ f16/bf16 casts give the CPU's bits (the `half` crate's) on every device, for every
/// half value and for the f32 inputs where rounding is hard: ties, overflow, values that become
/// half subnormals, f32 subnormals, NaN payloads, infinities, signed zeros; an odd count.
#[test]
fn half_casts_are_bit_exact_on_every_device() {
    let mut rng = Lcg(29);
    let mut x: Vec<f32> = vec![
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7f80_0001),
        f32::from_bits(0xffc1_2345),
        f32::MIN_POSITIVE,
        f32::from_bits(1),
        -f32::from_bits(0x0040_0000),
        f32::MAX,
        f32::MIN,
        65504.0,
        65519.0,
        65520.0,
        -65520.0,
        1e-8,
        5.96e-8,
        2.98e-8,
        2.9802326e-8,
        6.1e-5,
        1.0 + 1.0 / 2048.0,
        1.0 + 3.0 / 2048.0,
        1.0 + 1.0 / 256.0,
        1.0 + 3.0 / 256.0,
        3.3895314e38,
        3.4e38,
    ];
    // Ties and near-ties of both grids, and random bit patterns of every exponent.
    for _ in 0..2000 {
        let base = rng.next_u32() & 0xffff_e000;
        x.push(f32::from_bits(base | 0x1000));
        x.push(f32::from_bits(base | 0x0fff));
        x.push(f32::from_bits(rng.next_u32() & 0xffff_8000 | 0x8000));
        x.push(f32::from_bits(rng.next_u32()));
    }
    // Every f16 value's f32 (some are bf16 ties too).
    x.extend((0..=u16::MAX).map(|b| half::f16::from_bits(b).to_f32()));
    if x.len().is_multiple_of(2) {
        x.push(0.1);
    }
    let n = x.len();
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>();
    for dtype in [DType::F16, DType::BF16] {
        let encode = |v: f32| match dtype {
            DType::F16 => half::f16::from_f32(v).to_bits(),
            _ => half::bf16::from_f32(v).to_bits(),
        };
        let want: Vec<u8> = x.iter().flat_map(|&v| encode(v).to_le_bytes()).collect();
        let halves: Vec<u8> = (0..=u16::MAX)
            .chain([0])
            .flat_map(u16::to_le_bytes)
            .collect();
        let want_wide = bits(&decoded(&halves, dtype, &[halves.len() / 2]));
        for dev in devices() {
            let t = Tensor::from_slice(&dev, &x, &[n]).unwrap();
            let got = t.to_dtype(dtype).unwrap().to_bytes().unwrap();
            if let Some(i) = (0..n).find(|&i| got[2 * i..2 * i + 2] != want[2 * i..2 * i + 2]) {
                panic!(
                    "{dtype} on {dev}: {:e} ({:#010x}) encodes as {:#06x}, the CPU {:#06x}",
                    x[i],
                    x[i].to_bits(),
                    u16::from_le_bytes([got[2 * i], got[2 * i + 1]]),
                    u16::from_le_bytes([want[2 * i], want[2 * i + 1]]),
                );
            }
            let h = Tensor::from_bytes(&dev, &halves, dtype, &[halves.len() / 2]).unwrap();
            let wide = bits(&h.to_dtype(DType::F32).unwrap().to_vec().unwrap());
            if let Some(i) = (0..wide.len()).find(|&i| wide[i] != want_wide[i]) {
                panic!(
                    "{dtype} on {dev}: value {i:#06x} decodes as {:#010x}, the CPU {:#010x}",
                    wide[i], want_wide[i]
                );
            }
            // f16 <-> bf16 goes through f32 on every device.
            let other = if dtype == DType::F16 {
                DType::BF16
            } else {
                DType::F16
            };
            let cross = h.to_dtype(other).unwrap().to_bytes().unwrap();
            let cpu = Tensor::from_bytes(&Device::cpu(), &halves, dtype, &[halves.len() / 2])
                .unwrap()
                .to_dtype(other)
                .unwrap()
                .to_bytes()
                .unwrap();
            assert!(cross == cpu, "{dtype} -> {other} on {dev}");
        }
    }
}

/// f16 and bf16 tensors in arithmetic: the result's type (the operands' half type; f32 where
/// float types meet; u32 for indices), a gradient reaching an f32 operand through an op with a
/// half one, typed errors for bad half input, and the storage types that are not arithmetic
/// (i8, q8_0) refused by layout ops on every device (a GPU once copied their bytes as f32
/// words).
#[test]
fn half_tensors_compute_through_f32_with_typed_errors() {
    let xs = [0.5f32, -1.25, 3.0, 7.5, -0.125, 2.0];
    for dev in devices() {
        let x = Tensor::from_slice(&dev, &xs, &[2, 3]).unwrap();
        let (h, b) = (
            x.to_dtype(DType::F16).unwrap(),
            x.to_dtype(DType::BF16).unwrap(),
        );
        assert_eq!(h.add(&h).unwrap().dtype(), DType::F16, "{dev}");
        assert_eq!(h.to_vec().unwrap(), xs, "{dev}: to_vec widens");
        assert_eq!(pollster::block_on(b.to_vec_async()).unwrap(), xs, "{dev}");
        assert_eq!(b.exp().unwrap().dtype(), DType::BF16, "{dev}");
        assert_eq!(h.add(&x).unwrap().dtype(), DType::F32, "{dev}: f16 + f32");
        assert_eq!(h.mul(&b).unwrap().dtype(), DType::F32, "{dev}: f16 * bf16");
        assert_eq!(h.argmax(1, false).unwrap().dtype(), DType::U32, "{dev}");
        let (v, i) = b.topk(2, 1, true).unwrap();
        assert_eq!((v.dtype(), i.dtype()), (DType::BF16, DType::U32), "{dev}");
        // f16 · f16ᵀ: the activation's type, the weight read as a weight.
        let y = h.linear(&h, None, None).unwrap();
        assert_eq!(y.dtype(), DType::F16, "{dev}");
        let want = x.linear(&x, None, None).unwrap().to_vec().unwrap();
        let got = y.to_dtype(DType::F32).unwrap().to_vec().unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(
                *g,
                half::f16::from_f32(*w).to_f32(),
                "{dev}: linear rounds once"
            );
        }
        // A softmax over f16 rounds once: the f32 softmax's values, rounded.
        let s = h
            .softmax(1)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec()
            .unwrap();
        let s32 = x.softmax(1).unwrap().to_vec().unwrap();
        for (g, w) in s.iter().zip(&s32) {
            assert_eq!(
                *g,
                half::f16::from_f32(*w).to_f32(),
                "{dev}: softmax rounds once"
            );
        }
        // Gradients: an f32 parameter times an f16 constant.
        let w = Tensor::from_slice(&dev, &[2.0, 3.0, 4.0], &[3])
            .unwrap()
            .with_grad()
            .unwrap();
        h.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
        let g = w.grad().unwrap().to_vec().unwrap();
        assert_eq!(
            g,
            vec![0.5 + 7.5, -1.25 - 0.125, 3.0 + 2.0],
            "{dev}: gradient"
        );
        assert!(
            matches!(h.clone().with_grad(), Err(Error::DTypeMismatch { .. })),
            "{dev}: with_grad on f16"
        );
        // Bad half input gets the error f32 input gets.
        let wrong = Tensor::zeros(&dev, &[4])
            .unwrap()
            .to_dtype(DType::F16)
            .unwrap();
        assert!(
            matches!(h.add(&wrong), Err(Error::ShapeMismatch { .. })),
            "{dev}"
        );
        assert!(
            matches!(h.matmul(&h), Err(Error::ShapeMismatch { .. })),
            "{dev}"
        );
        assert!(
            matches!(b.softmax(2), Err(Error::InvalidShape { .. })),
            "{dev}"
        );
        let empty = Tensor::zeros(&dev, &[0, 3])
            .unwrap()
            .to_dtype(DType::F16)
            .unwrap();
        assert_eq!(empty.relu().unwrap().shape(), &[0, 3], "{dev}: empty");
        // Storage types that are not arithmetic are refused, not copied as words.
        for dtype in [DType::I8, DType::Q8_0] {
            let t = Tensor::zeros(&dev, &[2, 32])
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            for (what, r) in [
                ("permute", t.transpose(0, 1)),
                ("narrow", t.narrow(0, 1, 1)),
                ("cat", Tensor::cat(&[&t, &t], 0)),
                (
                    "broadcast_to",
                    t.reshape(&[1, 64]).unwrap().broadcast_to(&[2, 64]),
                ),
                ("add", t.add(&t)),
            ] {
                match r {
                    Err(Error::DTypeMismatch { got, .. }) if got == dtype => {}
                    other => panic!("{dtype} {what} on {dev}: {other:?}"),
                }
            }
        }
    }
}

/// Σ|x_i·w_i| per output, for tolerances.
fn abs_products(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k)
                .map(|l| f64::from(x[i * k + l]).abs() * f64::from(w[j * k + l]).abs())
                .sum();
        }
    }
    out
}

/// `linear` with a packed weight matches the product with the decoded weight (accumulated in
/// f64) on every device, for one row and several, ragged sizes, a bias and an activation.
/// The CPU quantizes the activations of the block types' products to 8 bits, as ggml does,
/// so those carry half a step of that grid per product.
#[test]
fn linear_with_a_packed_weight_matches_the_decoded_product() {
    let mut rng = Lcg(3);
    for dtype in packed() {
        // Plain types also take a row that is not a multiple of 4 (which a GPU's kernels do
        // not decode: it multiplies the weight in f32 instead).
        let unit = dtype.block_len().max(32);
        // (5, 9 rows: the CPU's register tiles and their remainders.) A row longer than one
        // lavapipe invocation may walk (the GPU then takes the workgroup-per-row layout). 200
        // rows: the CPU decodes the weight to f32 for its SGEMM.
        for &(m, kb, n) in &[
            (1, 2, 7),
            (3, 1, 5),
            (5, 3, 9),
            (9, 2, 33),
            (2, 0, 3),
            (1, 2048, 2),
            (200, 1, 3),
            // The CPU's groups of eight q4_0 rows: a decode step over whole groups, a
            // prompt through the decoded weight with a row after the groups.
            (1, 18, 24),
            (200, 1, 11),
        ] {
            let k = if kb == 0 && !dtype.is_quantized() {
                6
            } else {
                kb.max(1) * unit
            };
            let bytes = random_blocks(dtype, n * k / dtype.block_len(), &mut rng);
            let w = decoded(&bytes, dtype, &[n, k]);
            let x = rng.vec(m * k, -1.0, 1.0);
            let bias = rng.vec(n, -0.5, 0.5);
            let mut want = vec![0f64; m * n];
            for i in 0..m {
                for j in 0..n {
                    let dot: f64 = (0..k)
                        .map(|l| f64::from(x[i * k + l]) * f64::from(w[j * k + l]))
                        .sum();
                    want[i * n + j] = (dot + f64::from(bias[j])).max(0.0);
                }
            }
            let scale = abs_products(&x, &w, m, k, n);
            // The CPU quantizes the activations of the block types to 8 bits (per 32 values
            // for q8_0 and q4_0, per 256 for the K-quants, as ggml does): each product then
            // carries up to |w|·(half a step of that grid).
            let act_block = match dtype {
                DType::Q8_0 | DType::Q4_0 => 32,
                DType::Q4K | DType::Q6K => 256,
                _ => 0,
            };
            let act_err: Vec<f64> = (0..m * n)
                .map(|o| {
                    let (i, j) = (o / n, o % n);
                    if act_block == 0 {
                        return 0.0;
                    }
                    (0..k)
                        .map(|l| {
                            let b = l / act_block * act_block;
                            let amax = x[i * k + b..i * k + b + act_block]
                                .iter()
                                .fold(0f32, |a, v| a.max(v.abs()));
                            f64::from(w[j * k + l]).abs() * f64::from(amax) / 254.0
                        })
                        .sum()
                })
                .collect();
            for dev in devices() {
                let wt = Tensor::from_bytes(&dev, &bytes, dtype, &[n, k]).unwrap();
                let xt = Tensor::from_slice(&dev, &x, &[m, k]).unwrap();
                let bt = Tensor::from_slice(&dev, &bias, &[n]).unwrap();
                let y = xt.linear(&wt, Some(&bt), Some(UnaryOp::Relu)).unwrap();
                assert_eq!(y.shape(), [m, n]);
                let got = y.to_vec().unwrap();
                for (i, (&g, &wv)) in got.iter().zip(&want).enumerate() {
                    let quantized = if dev.is_cpu() { act_err[i] * 1.01 } else { 0.0 };
                    let tol = 1e-5 + 1e-5 * scale[i] + quantized;
                    assert!(
                        (f64::from(g) - wv).abs() <= tol,
                        "{dtype} m={m} k={k} n={n} on {dev}: [{i}] got {g}, want {wv} (tol {tol:.2e})"
                    );
                }
                // The same product through matmul_transposed, in a batch of rank 3.
                let x3 = xt.reshape(&[1, m, k]).unwrap();
                let y3 = x3.matmul_transposed(&wt, false, true).unwrap();
                assert_eq!(y3.shape(), [1, m, n]);
            }
        }
    }
}

/// A packed weight reshaped to rows of another length multiplies as its new rows (the CPU
/// keeps q4_0 rows in groups of eight, ordered for the old length).
#[test]
fn a_reshaped_packed_weight_multiplies_by_its_new_rows() {
    let mut rng = Lcg(11);
    for dtype in [DType::Q8_0, DType::Q4_0, DType::F16] {
        let bytes = random_blocks(dtype, 16 * 64 / dtype.block_len(), &mut rng);
        let w = decoded(&bytes, dtype, &[32, 32]);
        let x = rng.vec(3 * 32, -1.0, 1.0);
        for dev in devices() {
            let wt = Tensor::from_bytes(&dev, &bytes, dtype, &[16, 64])
                .unwrap()
                .reshape(&[32, 32])
                .unwrap();
            let xt = Tensor::from_slice(&dev, &x, &[3, 32]).unwrap();
            let got = xt.linear(&wt, None, None).unwrap().to_vec().unwrap();
            for (o, &g) in got.iter().enumerate() {
                let (i, j) = (o / 32, o % 32);
                let want: f32 = (0..32).map(|l| x[i * 32 + l] * w[j * 32 + l]).sum();
                let scale: f32 = (0..32).map(|l| (x[i * 32 + l] * w[j * 32 + l]).abs()).sum();
                assert!(
                    (g - want).abs() <= 1e-2 * scale + 1e-5,
                    "{dtype} on {dev}: [{o}] got {g}, want {want}"
                );
            }
            assert_eq!(wt.to_bytes().unwrap(), bytes, "{dtype} on {dev}: bytes");
            // And as an embedding table of the new rows.
            let ids = Tensor::from_vec_u32(&dev, vec![31, 0, 17], &[3]).unwrap();
            let rows = Tensor::embedding(&wt, &ids).unwrap().to_vec().unwrap();
            for (n, &r) in [31usize, 0, 17].iter().enumerate() {
                assert_eq!(
                    rows[n * 32..(n + 1) * 32],
                    w[r * 32..(r + 1) * 32],
                    "{dtype} on {dev}: row {r}"
                );
            }
        }
    }
}

/// Gradients reach the activation through a packed weight (which stays frozen).
#[test]
fn gradients_flow_through_a_packed_weight() {
    let mut rng = Lcg(5);
    let (m, k, n) = (2, 64, 3);
    let bytes = random_blocks(DType::Q8_0, n * k / 32, &mut rng);
    let w = decoded(&bytes, DType::Q8_0, &[n, k]);
    let x = rng.vec(m * k, -1.0, 1.0);
    for dev in devices() {
        let wt = Tensor::from_bytes(&dev, &bytes, DType::Q8_0, &[n, k]).unwrap();
        let xt = Tensor::from_slice(&dev, &x, &[m, k])
            .unwrap()
            .with_grad()
            .unwrap();
        let loss = xt.linear(&wt, None, None).unwrap().sum_all().unwrap();
        loss.backward().unwrap();
        let g = xt.grad().unwrap().to_vec().unwrap();
        // d(sum(x·wᵀ))/dx[i, l] = Σ_j w[j, l].
        let want: Vec<f64> = (0..m * k)
            .map(|e| (0..n).map(|j| f64::from(w[j * k + e % k])).sum())
            .collect();
        assert_close(&format!("gradient on {dev}"), &g, &want, 1e-6, 1e-5);
    }
}

/// `embedding` from a packed table decodes the rows it picks.
#[test]
fn embedding_rows_of_a_packed_table() {
    let mut rng = Lcg(9);
    for dtype in packed() {
        // Rows in the CPU's groups of eight and after them.
        let (rows, len) = (18, 2 * dtype.block_len().max(4));
        let bytes = random_blocks(dtype, rows * len / dtype.block_len(), &mut rng);
        let table = decoded(&bytes, dtype, &[rows, len]);
        let ids = [17u32, 0, 9, 9, 6];
        let want: Vec<f64> = ids
            .iter()
            .flat_map(|&i| table[i as usize * len..(i as usize + 1) * len].to_vec())
            .map(f64::from)
            .collect();
        for dev in devices() {
            let t = Tensor::from_bytes(&dev, &bytes, dtype, &[rows, len]).unwrap();
            let idx = Tensor::from_vec_u32(&dev, ids.to_vec(), &[5]).unwrap();
            let e = Tensor::embedding(&t, &idx).unwrap();
            assert_eq!(e.shape(), [5, len]);
            assert_close(
                &format!("{dtype} rows on {dev}"),
                &e.to_vec().unwrap(),
                &want,
                0.0,
                1e-6,
            );
            let bad = Tensor::from_vec_u32(&dev, vec![18], &[1]).unwrap();
            let err = Tensor::embedding(&t, &bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::IndexOutOfRange {
                        index: 18,
                        size: 18,
                        ..
                    }
                ),
                "{err}"
            );
        }
    }
}

/// Wrong sizes, shapes and values give typed errors that name what is wrong; ops that do not
/// take a storage type say so with the dtype.
#[test]
fn packed_tensor_errors_are_typed() {
    for dev in devices() {
        // A truncated buffer, and one byte too many.
        let bytes = vec![0u8; 34 * 2];
        let err = Tensor::from_bytes(&dev, &bytes[..67], DType::Q8_0, &[2, 32]).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidShape { reason, .. } if reason.contains("67 bytes")),
            "{err}"
        );
        let err = Tensor::from_bytes(&dev, &[0u8; 69], DType::Q8_0, &[2, 32]).unwrap_err();
        assert!(matches!(err, Error::InvalidShape { .. }), "{err}");
        // Rows that are not whole blocks.
        let err = Tensor::from_bytes(&dev, &bytes, DType::Q8_0, &[4, 16]).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidShape { reason, .. } if reason.contains("multiple of 32")),
            "{err}"
        );
        let x = Tensor::from_slice(&dev, &[1.0; 48], &[2, 24]).unwrap();
        let err = x.to_dtype(DType::Q4_0).unwrap_err();
        assert!(matches!(err, Error::InvalidShape { .. }), "{err}");
        // NaN and infinity cannot be quantized.
        let mut v = vec![0.5f32; 64];
        v[40] = f32::NAN;
        let err = Tensor::from_slice(&dev, &v, &[2, 32])
            .unwrap()
            .to_dtype(DType::Q4K);
        assert!(err.is_err(), "q4_K needs 256 values per row");
        let err = Tensor::from_slice(&dev, &v, &[2, 32])
            .unwrap()
            .to_dtype(DType::Q8_0)
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument { reason, .. } if reason.contains("NaN")),
            "{err}"
        );
        v[40] = f32::INFINITY;
        let err = Tensor::from_slice(&dev, &v, &[2, 32])
            .unwrap()
            .to_dtype(DType::Q4_0)
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
        // A product whose inner sizes disagree.
        let w = Tensor::from_bytes(&dev, &bytes, DType::Q8_0, &[2, 32]).unwrap();
        let x = Tensor::from_slice(&dev, &[1.0; 64], &[1, 64]).unwrap();
        let err = x.linear(&w, None, None).unwrap_err();
        assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
        // Ops that take f32 name the storage type they were given.
        let err = w.exp().unwrap_err();
        assert!(
            matches!(
                err,
                Error::DTypeMismatch {
                    got: DType::Q8_0,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("q8_0"), "{err}");
        let err = w.to_vec().unwrap_err();
        assert!(matches!(err, Error::DTypeMismatch { .. }), "{err}");
        // A packed activation is refused (the activation is f32).
        let err = w.linear(&w, None, None).unwrap_err();
        assert!(matches!(err, Error::DTypeMismatch { .. }), "{err}");
    }
}

/// `target/gguf-blocks`, written by `scripts/gguf_blocks.py` with the `gguf` package (a
/// failure under `KILN_REQUIRE_PYTHON=1`, a loud skip otherwise).
fn gguf_fixtures() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target").join("gguf-blocks");
    let ok = dir.join("done").exists()
        || std::process::Command::new("python3")
            .arg(root.join("scripts").join("gguf_blocks.py"))
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var("KILN_REQUIRE_PYTHON").is_ok_and(|v| v == "1") {
            panic!("KILN_REQUIRE_PYTHON=1 but scripts/gguf_blocks.py failed (pip install gguf)");
        }
        say!("!!!!! kiln tests: scripts/gguf_blocks.py failed (pip install gguf) — SKIPPED !!!!!");
        return None;
    }
    Some(dir)
}

fn read_f32(path: PathBuf) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// kiln's encoders write, byte for byte, what the `gguf` package writes for the same values
/// (q8_0 and q4_0 through ggml's reference quantizers, f16 and bf16 by rounding); kiln decodes
/// every block type to exactly what `gguf` decodes from the same bytes.
#[test]
fn formats_match_the_gguf_package() {
    let Some(dir) = gguf_fixtures() else { return };
    let x = read_f32(dir.join("values.f32"));
    for (dtype, name) in [
        (DType::F16, "f16"),
        (DType::BF16, "bf16"),
        (DType::Q8_0, "q8_0"),
        (DType::Q4_0, "q4_0"),
    ] {
        let want = std::fs::read(dir.join(format!("{name}.quantized"))).unwrap();
        for dev in devices() {
            let t = Tensor::from_slice(&dev, &x, &[x.len() / 256, 256]).unwrap();
            let got = t.to_dtype(dtype).unwrap().to_bytes().unwrap();
            assert_eq!(got.len(), want.len(), "{name} on {dev}");
            if let Some(b) = got.iter().zip(&want).position(|(a, b)| a != b) {
                panic!(
                    "{name} on {dev}: byte {b} is {}, gguf wrote {}",
                    got[b], want[b]
                );
            }
        }
    }
    for (dtype, name) in [
        (DType::Q8_0, "q8_0"),
        (DType::Q4_0, "q4_0"),
        (DType::Q4K, "q4_K"),
        (DType::Q6K, "q6_K"),
    ] {
        let bytes = std::fs::read(dir.join(format!("{name}.blocks"))).unwrap();
        let want: Vec<f64> = read_f32(dir.join(format!("{name}.decoded")))
            .into_iter()
            .map(f64::from)
            .collect();
        for dev in devices() {
            let t = Tensor::from_bytes(&dev, &bytes, dtype, &[want.len() / 256, 256]).unwrap();
            let got = t.to_dtype(DType::F32).unwrap().to_vec().unwrap();
            assert_close(&format!("{name} decoded on {dev}"), &got, &want, 0.0, 1e-6);
        }
    }
}

/// kiln's quantizers write, byte for byte, what ggml's reference quantizers
/// (`quantize_row_*_ref`, llama.cpp's C, built by `benches/peers/ggml/build.sh`) write for the
/// same values: every block type, K-quants included (which the `gguf` package cannot write).
/// Skipped loudly without the ggml build; a failure under `KILN_REQUIRE_GGML=1`.
#[test]
fn quantizers_match_ggml_byte_for_byte() {
    let Some(dir) = gguf_fixtures() else { return };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let ggml = root.join("benches/peers/ggml/build/ggml-peer");
    if !ggml.exists() {
        if std::env::var("KILN_REQUIRE_GGML").is_ok_and(|v| v == "1") {
            panic!(
                "KILN_REQUIRE_GGML=1 but {} is missing (run benches/peers/ggml/build.sh)",
                ggml.display()
            );
        }
        say!("!!!!! kiln tests: no ggml build (benches/peers/ggml/build.sh) — SKIPPED !!!!!");
        return;
    }
    let x = read_f32(dir.join("values.f32"));
    for (dtype, name) in [
        (DType::Q8_0, "q8_0"),
        (DType::Q4_0, "q4_0"),
        (DType::Q4K, "q4_K"),
        (DType::Q6K, "q6_K"),
    ] {
        let path = dir.join(format!("ggml_{name}.quantized"));
        let status = std::process::Command::new(&ggml)
            .args(["quantize", name])
            .arg(dir.join("values.f32"))
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success(), "ggml-peer quantize {name}");
        let want = std::fs::read(&path).unwrap();
        for dev in devices() {
            let t = Tensor::from_slice(&dev, &x, &[x.len() / 256, 256]).unwrap();
            let got = t.to_dtype(dtype).unwrap().to_bytes().unwrap();
            assert_eq!(got.len(), want.len(), "{name} on {dev}");
            if let Some(b) = got.iter().zip(&want).position(|(a, b)| a != b) {
                let block = b / dtype.block_bytes();
                panic!(
                    "{name} on {dev}: byte {b} (block {block}, offset {}) is {}, ggml wrote {}",
                    b % dtype.block_bytes(),
                    got[b],
                    want[b]
                );
            }
        }
    }
}

/// safetensors files keep each tensor's element type: f16, bf16, i8, u8 and i32 round-trip
/// byte for byte through `kiln::nn::save_safetensors`/`load_safetensors` (the format's own crate writes and reads
/// them), an f16 checkpoint loads into f32 parameters converted, and GGUF's block types, which
/// safetensors cannot hold, are refused with a typed error naming the type.
#[test]
fn safetensors_keep_the_storage_types() {
    let mut rng = Lcg(21);
    let dir = std::env::temp_dir().join(format!("kiln-packed-st-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("w.safetensors");
    for dev in devices() {
        let plain = [DType::F16, DType::BF16, DType::I8, DType::U8, DType::I32];
        let tensors: Vec<(String, Tensor)> = plain
            .iter()
            .map(|&d| {
                let bytes = random_blocks(d, 12, &mut rng);
                (
                    d.name().to_string(),
                    Tensor::from_bytes(&dev, &bytes, d, &[3, 4]).unwrap(),
                )
            })
            .collect();
        let named: Vec<(String, &Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
        kiln::nn::save_safetensors(&path, &named).unwrap();
        let back = kiln::nn::load_safetensors(&path, &dev).unwrap();
        for (name, t) in &tensors {
            let b = &back[name];
            assert_eq!(b.dtype(), t.dtype(), "{name} on {dev}");
            assert_eq!(b.shape(), t.shape());
            assert_eq!(
                b.to_bytes().unwrap(),
                t.to_bytes().unwrap(),
                "{name} on {dev}"
            );
        }
        // An f16 checkpoint into an f32 layer: converted on load.
        use kiln::nn::Module;
        let layer = kiln::nn::Linear::new(&dev, 4, 3, 1).unwrap();
        let halves: Vec<(String, Tensor)> = layer
            .parameters()
            .iter()
            .map(|(n, p)| (n.clone(), p.to_dtype(DType::F16).unwrap()))
            .collect();
        let named: Vec<(String, &Tensor)> = halves.iter().map(|(n, t)| (n.clone(), t)).collect();
        kiln::nn::save_safetensors(&path, &named).unwrap();
        let mut loaded = kiln::nn::Linear::new(&dev, 4, 3, 2).unwrap();
        loaded.load_safetensors(&path).unwrap();
        for ((_, p), (_, h)) in loaded.parameters().iter().zip(&halves) {
            assert_eq!(p.dtype(), DType::F32);
            assert_eq!(
                p.to_vec().unwrap(),
                h.to_dtype(DType::F32).unwrap().to_vec().unwrap()
            );
        }
        // GGUF blocks have no safetensors type.
        let q = Tensor::from_bytes(
            &dev,
            &random_blocks(DType::Q4_0, 1, &mut rng),
            DType::Q4_0,
            &[1, 32],
        )
        .unwrap();
        let err = kiln::nn::save_safetensors(&path, &[("q".to_string(), &q)]).unwrap_err();
        assert!(
            matches!(&err, Error::Unsupported { reason, .. } if reason.contains("q4_0")),
            "{err}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Hostile bytes: a NaN or infinite block scale is refused when the tensor is made, naming
/// the block; random bytes of random lengths for every type give a tensor or a typed error,
/// never a panic, and whatever loads decodes and multiplies alike on every device (NaN where
/// NaN).
#[test]
fn hostile_bytes_give_typed_errors() {
    let nan = half::f16::NAN.to_bits().to_le_bytes();
    let inf = half::f16::INFINITY.to_bits().to_le_bytes();
    let mut rng = Lcg(99);
    for dev in devices() {
        let mut q = random_blocks(DType::Q8_0, 4, &mut rng);
        q[34 * 2..34 * 2 + 2].copy_from_slice(&nan);
        let err = Tensor::from_bytes(&dev, &q, DType::Q8_0, &[4, 32]).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument { reason, .. } if reason.contains("block 2")),
            "{err}"
        );
        let mut k = random_blocks(DType::Q4K, 1, &mut rng);
        k[2..4].copy_from_slice(&inf);
        let err = Tensor::from_bytes(&dev, &k, DType::Q4K, &[256]).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
        let mut k = random_blocks(DType::Q6K, 1, &mut rng);
        k[208..210].copy_from_slice(&nan);
        assert!(Tensor::from_bytes(&dev, &k, DType::Q6K, &[1, 256]).is_err());
    }
    let gpus = gpus();
    for case in 0..300 {
        let dtype = rng.pick(&packed());
        let rows = 1 + rng.next_u32() as usize % 3;
        let len = dtype.block_len().max(4) * (1 + rng.next_u32() as usize % 3);
        let exact = dtype.bytes_for(rows * len).unwrap();
        // Mostly the right length, sometimes a few bytes short or long.
        let n = match rng.next_u32() % 4 {
            0 => exact.saturating_sub(1 + rng.next_u32() as usize % 5),
            1 => exact + 1 + rng.next_u32() as usize % 5,
            _ => exact,
        };
        let bytes: Vec<u8> = (0..n).map(|_| rng.next_u32() as u8).collect();
        let what = format!("case {case}: {dtype} [{rows}, {len}] from {n} bytes");
        let cpu = Tensor::from_bytes(&Device::cpu(), &bytes, dtype, &[rows, len]);
        let cpu = match cpu {
            Ok(t) => t,
            Err(Error::InvalidShape { .. } | Error::InvalidArgument { .. }) => continue,
            Err(e) => panic!("{what}: {e}"),
        };
        let xs = rng.vec(len, -1.0, 1.0);
        let x = Tensor::from_slice(&Device::cpu(), &xs, &[1, len]).unwrap();
        let want_values = cpu.to_dtype(DType::F32).unwrap().to_vec().unwrap();
        // Per output: Σ|x·w| (f32 rounding) and Σ|w| (the CPU's 8-bit activations, |x| ≤ 1).
        let tol: Vec<f64> = want_values
            .chunks(len)
            .map(|w| {
                let abs: f64 = w
                    .iter()
                    .zip(&xs)
                    .map(|(a, b)| f64::from(*a).abs() * f64::from(*b).abs())
                    .sum();
                let sum: f64 = w.iter().map(|a| f64::from(*a).abs()).sum();
                1e-6 + 1e-5 * abs + sum / 254.0 * 1.01
            })
            .collect();
        let want_product = x.linear(&cpu, None, None).unwrap().to_vec().unwrap();
        for dev in &gpus {
            let t = Tensor::from_bytes(dev, &bytes, dtype, &[rows, len]).unwrap();
            let got = t.to_dtype(DType::F32).unwrap().to_vec().unwrap();
            for (i, (g, w)) in got.iter().zip(&want_values).enumerate() {
                assert!(
                    g.to_bits() == w.to_bits()
                        || (g.is_nan() && w.is_nan())
                        || (g - w).abs() <= 1e-6 * w.abs(),
                    "{what} on {dev}: value {i} is {g}, the CPU's {w}"
                );
            }
            let xg = x.to_device(dev).unwrap();
            let got = xg.linear(&t, None, None).unwrap().to_vec().unwrap();
            for (i, (g, w)) in got.iter().zip(&want_product).enumerate() {
                // Non-finite where the CPU's is (inf − inf may be NaN in one order and not
                // another), else within the bound of the CPU's 8-bit activations.
                let ok = if !w.is_finite() || !tol[i].is_finite() {
                    !g.is_finite() || !tol[i].is_finite()
                } else {
                    f64::from((g - w).abs()) <= tol[i]
                };
                assert!(
                    ok,
                    "{what} on {dev}: product {i} is {g}, the CPU's {w} (tolerance {:.2e})",
                    tol[i]
                );
            }
        }
    }
}
