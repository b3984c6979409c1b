//! Differential fuzzing (proptest): every op of the table on inputs it was not written for
//! (dimensions set to 0, 1 or 2; non-contiguous views; NaN, infinities, signed zeros; values
//! scaled by 1e15) gives on every GPU what it gives on the CPU: the same typed error, or the same
//! shape, element type and values. Byte-mutated safetensors files load or fail with a typed
//! error. Nothing may panic. `PROPTEST_CASES` sets the number of cases (default below).

#[macro_use]
mod common;
mod optable;

use common::*;
use kiln::{DType, Device, Tensor};
use optable::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::sync::OnceLock;

/// Cases per property when `PROPTEST_CASES` is not set.
const CASES: u32 = 400;

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CASES);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// How a sample is changed before it is run.
#[derive(Debug, Clone)]
enum Mutation {
    /// Unchanged values, but every input of rank >= 1 built as a non-contiguous view.
    Views,
    /// A fraction (in 1/8ths) of the values replaced by NaN, ±inf or ±0.
    Extremes { eighths: u8, seed: u64 },
    /// Every value multiplied by 1e15.
    Large,
    /// One dimension of one input set to `size` (0, 1 or 2), values refilled.
    Dim {
        input: usize,
        dim: usize,
        size: usize,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        Just(Mutation::Views),
        (1u8..=8, any::<u64>()).prop_map(|(eighths, seed)| Mutation::Extremes { eighths, seed }),
        Just(Mutation::Large),
        (0usize..3, 0usize..4, 0usize..3).prop_map(|(input, dim, size)| Mutation::Dim {
            input,
            dim,
            size
        }),
    ]
}

const SPECIAL: [f32; 5] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0];

/// An input: its shape and values.
type Input = (Vec<usize>, Vec<f32>);

/// The sample's inputs after `m` (and whether to build them as views).
fn mutate(inputs: &[Input], m: &Mutation) -> (Vec<Input>, bool) {
    let mut out = inputs.to_vec();
    match *m {
        Mutation::Views => return (out, true),
        Mutation::Extremes { eighths, seed } => {
            let mut rng = Lcg(seed);
            for (_, v) in &mut out {
                for x in v.iter_mut() {
                    if rng.next_u32() % 8 < u32::from(eighths) {
                        *x = SPECIAL[(rng.next_u32() % 5) as usize];
                    }
                }
            }
        }
        Mutation::Large => {
            for (_, v) in &mut out {
                v.iter_mut().for_each(|x| *x *= 1e15);
            }
        }
        Mutation::Dim { input, dim, size } => {
            if let Some((shape, v)) = out.get_mut(input % inputs.len())
                && !shape.is_empty()
            {
                let d = dim % shape.len();
                shape[d] = size;
                let n = shape.iter().product();
                let mut rng = Lcg(n as u64 + 5);
                *v = rng.vec(n, -3.0, 3.0);
            }
        }
    }
    (out, false)
}

/// A tensor with `shape` and row-major `data`; with `view`, built as a non-contiguous view (a
/// transposed tensor transposed back, or a slice of a longer vector) holding the same values.
fn build(dev: &Device, shape: &[usize], data: &[f32], view: bool) -> kiln::Result<Tensor> {
    if !view || shape.is_empty() {
        return Tensor::from_slice(dev, data, shape);
    }
    let r = shape.len();
    if r == 1 {
        let mut padded = vec![7.0];
        padded.extend_from_slice(data);
        padded.push(7.0);
        return Tensor::from_vec(dev, padded, &[data.len() + 2])?.narrow(0, 1, data.len());
    }
    let (rows, cols) = (shape[r - 2], shape[r - 1]);
    let mut t_shape = shape.to_vec();
    t_shape.swap(r - 2, r - 1);
    let mut t = vec![0.0; data.len()];
    for (b, block) in data.chunks((rows * cols).max(1)).enumerate() {
        for i in 0..rows {
            for j in 0..cols {
                t[b * rows * cols + j * rows + i] = block[i * cols + j];
            }
        }
    }
    Tensor::from_vec(dev, t, &t_shape)?.transpose(-2, -1)
}

/// Values of a result as f32 (u32 results converted).
fn values(t: &Tensor) -> kiln::Result<Vec<f32>> {
    match t.dtype() {
        DType::U32 => Ok(t.to_vec_u32()?.into_iter().map(|v| v as f32).collect()),
        DType::F32 => t.to_vec(),
        _ => t.to_dtype(DType::F32)?.to_vec(),
    }
}

/// Whether `got` matches `want` (the CPU's): NaN where NaN, the same infinities, finite values
/// within `atol + rtol·|want|` plus `scale·1e-4` (the magnitude of the inputs, for `Large`).
fn same_values(got: &[f32], want: &[f32], atol: f64, rtol: f64, scale: f64) -> Option<String> {
    if got.len() != want.len() {
        return Some(format!("{} values vs {}", got.len(), want.len()));
    }
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_nan() || g.is_nan() {
            w.is_nan() && g.is_nan()
        } else if w.is_infinite() || g.is_infinite() {
            g == w
        } else {
            let (g, w) = (f64::from(g), f64::from(w));
            (g - w).abs() <= atol + rtol * w.abs() + 1e-4 * scale
        };
        if !ok {
            return Some(format!("at {i}: {g} vs {w}"));
        }
    }
    None
}

fn gpu_list() -> &'static Vec<Device> {
    static GPUS: OnceLock<Vec<Device>> = OnceLock::new();
    GPUS.get_or_init(gpus)
}

/// One fuzz case: op `op` of the table on its sample `sample` after `m`, on the CPU and on every
/// GPU (with views where asked), compared.
fn check_case(op: &OpInfo, sample: usize, m: &Mutation) -> Result<(), TestCaseError> {
    // sin and cos are accurate on a GPU for |x| up to about 1e4 only (README, Numerics).
    if matches!(m, Mutation::Large) && matches!(op.name, "sin" | "cos") {
        return Ok(());
    }
    let samples = (op.samples)();
    let base = &samples[sample % samples.len()];
    let (inputs, view) = mutate(&base.inputs, m);
    let refs: Vec<Ref> = inputs
        .iter()
        .map(|(s, v)| Ref {
            shape: s.clone(),
            data: v.iter().map(|&x| f64::from(x)).collect(),
        })
        .collect();
    // A resized dimension leaves the table's tolerance behind (it is for the samples' shapes),
    // except where the devices' arithmetic differs by design (the CPU's 8-bit activations
    // against a quantized weight): that tolerance is computed from the values as they are.
    let (atol, rtol) = match m {
        Mutation::Dim { .. } if op.packed_inputs.is_empty() => (1e-4, 1e-4),
        Mutation::Dim { .. } => {
            let (a, r) = (op.tol)(&refs);
            (a.max(1e-4), r.max(1e-4))
        }
        _ => (op.tol)(&refs),
    };
    let scale = match m {
        Mutation::Large => inputs
            .iter()
            .flat_map(|(_, v)| v.iter())
            .fold(0f64, |a, &x| a.max(f64::from(x).abs()))
            .powi(2),
        _ => 0.0,
    };
    let run = |dev: &Device, view: bool| -> kiln::Result<Tensor> {
        // Index inputs are u32 tensors, made as every runner makes them; the rest may be views.
        let ts = inputs
            .iter()
            .enumerate()
            .map(|(k, (s, v))| {
                if op.index_inputs.contains(&k) || op.packed_inputs.iter().any(|p| p.0 == k) {
                    input(op, k, dev, s, v)
                } else {
                    build(dev, s, v, view)
                }
            })
            .collect::<kiln::Result<Vec<_>>>()?;
        (op.run)(&ts)
    };
    let what = format!(
        "{} sample {sample} {:?} after {m:?}",
        op.name,
        inputs.iter().map(|i| &i.0).collect::<Vec<_>>()
    );
    let want = run(&Device::cpu(), false).and_then(|t| Ok((t.shape().to_vec(), values(&t)?)));
    let mut devices = vec![(Device::cpu(), true)];
    devices.extend(gpu_list().iter().map(|d| (d.clone(), view)));
    for (dev, view) in devices {
        if dev.is_cpu() && !view {
            continue;
        }
        let got = run(&dev, view).and_then(|t| Ok((t.shape().to_vec(), values(&t)?)));
        match (&got, &want) {
            (Err(g), Err(w)) => prop_assert_eq!(
                std::mem::discriminant(g),
                std::mem::discriminant(w),
                "{} on {}: error {:?}, the CPU's {:?}",
                what,
                dev,
                g,
                w
            ),
            (Ok((gs, gv)), Ok((ws, wv))) => {
                prop_assert_eq!(gs, ws, "{} on {}: shape", what, dev);
                if let Some(diff) = same_values(gv, wv, atol, rtol, scale) {
                    return Err(TestCaseError::fail(format!("{what} on {dev}: {diff}")));
                }
            }
            _ => {
                return Err(TestCaseError::fail(format!(
                    "{what} on {dev}: {:?}, the CPU: {:?}",
                    got.as_ref().map(|g| &g.0),
                    want.as_ref().map(|w| &w.0)
                )));
            }
        }
    }
    Ok(())
}

#[test]
fn op_table_under_hostile_inputs_agrees_across_devices() {
    let table = table();
    let mut runner = TestRunner::new(config());
    let cases = runner.config().cases;
    let strategy = (0..table.len(), 0usize..8, mutation());
    runner
        .run(&strategy, |(op, sample, m)| {
            check_case(&table[op], sample, &m)
        })
        .unwrap();
    say!(
        "fuzz: {cases} op-table cases (of {} ops) agreed on the CPU and {} GPU(s)",
        table.len(),
        gpu_list().len()
    );
}

/// How a file's bytes are damaged.
#[derive(Debug, Clone)]
enum Damage {
    /// Bytes at fractions of the length (in 1/65536ths) set to values.
    Set(Vec<(u16, u8)>),
    /// Cut to a fraction of the length.
    Cut(u16),
    /// A byte run inserted at a fraction of the length.
    Insert(u16, Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        proptest::collection::vec((any::<u16>(), any::<u8>()), 1..8).prop_map(Damage::Set),
        any::<u16>().prop_map(Damage::Cut),
        (any::<u16>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, b)| Damage::Insert(at, b)),
    ]
}

fn apply(bytes: &[u8], d: &Damage) -> Vec<u8> {
    let at = |f: u16| (bytes.len() * usize::from(f)) >> 16;
    let mut out = bytes.to_vec();
    match d {
        Damage::Set(edits) => edits.iter().for_each(|&(f, v)| out[at(f)] = v),
        Damage::Cut(f) => out.truncate(at(*f)),
        Damage::Insert(f, b) => {
            let i = at(*f);
            out.splice(i..i, b.iter().copied());
        }
    }
    out
}

/// A checkpoint (a small model's weights and Adam's state) with its bytes damaged: loading it as
/// a checkpoint, as a model's weights or as plain tensors, on the CPU and every GPU, succeeds or
/// fails with a typed error (`Io` or `Checkpoint`), never panics; a refused load changes nothing.
#[test]
fn damaged_safetensors_files_are_errors_not_panics() {
    use kiln::nn::{Adam, Linear, Module, Optimizer, Sequential, load_checkpoint, save_checkpoint};
    let dir = std::env::temp_dir().join(format!("kiln-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let make = |dev: &Device| -> Sequential {
        Sequential::new()
            .push(Linear::new(dev, 6, 5, 1).unwrap())
            .push(Linear::new(dev, 5, 3, 2).unwrap())
    };
    let cpu = Device::cpu();
    let mut model = make(&cpu);
    let mut opt = Adam::new(1e-2);
    let x = Tensor::from_vec(&cpu, vec![0.5; 12], &[2, 6]).unwrap();
    model
        .forward(&x)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    opt.step_module(&mut model).unwrap();
    let good = dir.join("good.safetensors");
    save_checkpoint(&good, &model, &opt, &[("epoch", "1".into())]).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let mut devices = vec![cpu];
    devices.extend(gpu_list().iter().cloned());
    let bad = dir.join("bad.safetensors");
    let (loaded, refused) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
    let mut runner = TestRunner::new(config());
    runner
        .run(&damage(), |d| {
            std::fs::write(&bad, apply(&bytes, &d)).unwrap();
            for dev in &devices {
                let mut m = make(dev);
                let before: Vec<Vec<f32>> = m
                    .parameters()
                    .iter()
                    .map(|(_, p)| p.to_vec().unwrap())
                    .collect();
                let mut o = Adam::new(1e-2);
                let typed = |e: &kiln::Error| {
                    matches!(e, kiln::Error::Io { .. } | kiln::Error::Checkpoint { .. })
                };
                match load_checkpoint(&bad, &mut m, &mut o) {
                    Ok(_) => loaded.set(loaded.get() + 1),
                    Err(e) => {
                        prop_assert!(typed(&e), "{:?}: {:?}", d, e);
                        let after: Vec<Vec<f32>> = m
                            .parameters()
                            .iter()
                            .map(|(_, p)| p.to_vec().unwrap())
                            .collect();
                        prop_assert_eq!(&after, &before, "a refused checkpoint changed the model");
                        prop_assert!(o.state().tensors.is_empty());
                        refused.set(refused.get() + 1);
                    }
                }
                if let Err(e) = m.load_safetensors(&bad) {
                    prop_assert!(typed(&e), "{:?}: {:?}", d, e);
                }
                if let Err(e) = kiln::nn::load_safetensors(&bad, dev) {
                    prop_assert!(typed(&e), "{:?}: {:?}", d, e);
                }
            }
            Ok(())
        })
        .unwrap();
    say!(
        "fuzz: {} damaged checkpoints on {} device(s): {} loads, {} typed refusals, no panic",
        runner.config().cases,
        devices.len(),
        loaded.get(),
        refused.get()
    );
    std::fs::remove_dir_all(&dir).ok();
}
