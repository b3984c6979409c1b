//! The op table (`tests/optable`) walked on every available device: the CPU backend and every
//! GPU adapter wgpu can open (lavapipe in CI), as one test per op, device and configuration; and
//! the cases the table cannot express. A custom harness (libtest-mimic): the table's tests are
//! made at run time from the table itself, so it stays the single source of cases.

#[macro_use]
mod common;
mod optable;

use common::*;
use kiln::{Device, Error, Tensor};
use libtest_mimic::{Arguments, Trial};
use optable::*;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

/// One op's samples and error cases on `dev`: every sample's values against the op's f64
/// reference within its tolerance, and every error case's error.
fn run_op_on(op: &OpInfo, dev: &Device) {
    for (si, sample) in (op.samples)().into_iter().enumerate() {
        let what = format!(
            "{} sample {si} {:?} on {dev}",
            op.name,
            sample.inputs.iter().map(|i| &i.0).collect::<Vec<_>>()
        );
        let inputs: Vec<Tensor> = sample
            .inputs
            .iter()
            .enumerate()
            .map(|(k, (s, v))| input(op, k, dev, s, v).unwrap())
            .collect();
        let refs = sample.refs();
        let got = (op.run)(&inputs).unwrap_or_else(|e| panic!("{what}: {e}"));
        let want = (op.reference)(&refs);
        assert_eq!(got.shape(), want.shape.as_slice(), "{what}: shape");
        let (atol, rtol) = (op.tol)(&refs);
        let values = match got.dtype() {
            kiln::DType::U32 => got
                .to_vec_u32()
                .unwrap()
                .into_iter()
                .map(|v| v as f32)
                .collect(),
            kiln::DType::F32 => got.to_vec().unwrap(),
            other => panic!("{what}: an op of the table gave {other}"),
        };
        assert_close(&what, &values, &want.data, atol, rtol);
    }
    for (what, result, check) in (op.errors)(dev) {
        match result {
            Ok(t) => panic!("{} {what} on {dev}: expected an error, got {t:?}", op.name),
            Err(e) => assert!(
                check(&e),
                "{} {what} on {dev}: unexpected error {e:?}",
                op.name
            ),
        }
    }
}

/// One op's samples on `dev` with its float inputs in `dtype` (f16 or bf16), as
/// [`half_table`] describes: results of the half type (f32 for ops that decode to it, u32
/// for indices) within one step of its grid of the reference, or the typed refusal of an op
/// that does not take halves.
fn run_op_half_on(op: &OpInfo, dev: &Device, dtype: kiln::DType) {
    for (si, sample) in (op.samples)().into_iter().enumerate() {
        let what = format!(
            "{} sample {si} {:?} in {dtype} on {dev}",
            op.name,
            sample.inputs.iter().map(|i| &i.0).collect::<Vec<_>>()
        );
        let Some(sample) = half_table::sample(op, sample, dtype) else {
            return;
        };
        let inputs: Vec<Tensor> = (sample.inputs.iter().enumerate())
            .map(|(k, (s, v))| half_table::input_in(op, k, dev, s, v, dtype).unwrap())
            .collect();
        if half_table::REFUSES_HALF
            .iter()
            .any(|n| op.name.starts_with(n))
        {
            match (op.run)(&inputs) {
                Err(Error::Unsupported { reason, .. }) if reason.contains(dtype.name()) => {}
                other => panic!("{what}: expected Unsupported naming {dtype}, got {other:?}"),
            }
            continue;
        }
        let refs = sample.refs();
        let got = (op.run)(&inputs).unwrap_or_else(|e| panic!("{what}: {e}"));
        let want = (op.reference)(&refs);
        assert_eq!(got.shape(), want.shape.as_slice(), "{what}: shape");
        let values = match got.dtype() {
            kiln::DType::U32 => got
                .to_vec_u32()
                .unwrap()
                .into_iter()
                .map(|v| v as f32)
                .collect(),
            d if d == half_table::result_type(op, dtype) => {
                got.to_dtype(kiln::DType::F32).unwrap().to_vec().unwrap()
            }
            other => panic!("{what}: the result is {other}"),
        };
        let (want, atol, rtol) = half_table::reference(&want, dtype, (op.tol)(&refs));
        assert_close(&what, &values, &want, atol, rtol);
    }
}

/// A way to run the table on a GPU: the default kernel choice with fusion (each elementwise
/// op's result a generated kernel), fusion off (each op's own kernel), or one matmul kernel
/// configuration forced (`kiln::gpu::matmul_configs`: version 1, every autotuning candidate
/// and every shape of version 4 the heuristic may pick), so that every kernel the tuner may
/// pick, checked and unchecked, is held to the reference.
#[derive(Clone, Copy)]
enum GpuConfig {
    Fused,
    Eager,
    Matmul(kiln::gpu::MatmulConfig),
}

impl GpuConfig {
    fn all() -> Vec<GpuConfig> {
        let mut all = vec![GpuConfig::Fused, GpuConfig::Eager];
        all.extend(
            kiln::gpu::matmul_configs()
                .into_iter()
                .map(GpuConfig::Matmul),
        );
        all
    }

    fn name(self) -> String {
        match self {
            GpuConfig::Fused => "fused".into(),
            GpuConfig::Eager => "eager".into(),
            GpuConfig::Matmul(c) => format!("matmul={c}"),
        }
    }

    fn apply(self, dev: &Device) {
        dev.set_fusion(!matches!(self, GpuConfig::Eager));
        dev.set_matmul_config(match self {
            GpuConfig::Matmul(c) => Some(c),
            _ => None,
        });
    }
}

/// The op table as one test per (op, device, configuration), named `<op>::cpu` and
/// `<op>::gpu<i>::<configuration>`, so that `cargo test --test ops -- softmax` runs one op's
/// cases everywhere and a failure's name says where. Each adapter is one device opened for
/// this binary (not shared with tests that read counters); its configuration is device state,
/// so its tests take turns on it.
fn op_table_trials() -> Vec<Trial> {
    let ops: Arc<Vec<OpInfo>> = Arc::new(table());
    let mut names = std::collections::HashSet::new();
    for op in ops.iter() {
        assert!(
            names.insert(op.name),
            "two op-table entries are named {}",
            op.name
        );
    }
    let mut trials = Vec::new();
    let gpus = match std::panic::catch_unwind(fresh_gpus) {
        Ok(gpus) => gpus,
        Err(e) => {
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "no GPU adapter".into());
            trials.push(Trial::test("op_table::gpus_present", move || {
                Err(why.clone().into())
            }));
            vec![]
        }
    };
    let gpus: Vec<(Device, Arc<Mutex<()>>)> = gpus
        .into_iter()
        .map(|d| (d, Arc::new(Mutex::new(()))))
        .collect();
    for i in 0..ops.len() {
        let name = ops[i].name;
        let table = ops.clone();
        trials.push(Trial::test(format!("{name}::cpu"), move || {
            run_op_on(&table[i], &Device::cpu());
            Ok(())
        }));
        for dtype in [kiln::DType::F16, kiln::DType::BF16] {
            let table = ops.clone();
            trials.push(Trial::test(format!("{name}::cpu::{dtype}"), move || {
                run_op_half_on(&table[i], &Device::cpu(), dtype);
                Ok(())
            }));
            for (g, (dev, turn)) in gpus.iter().enumerate() {
                let (table, dev, turn) = (ops.clone(), dev.clone(), turn.clone());
                trials.push(Trial::test(format!("{name}::gpu{g}::{dtype}"), move || {
                    let _turn = turn.lock().unwrap_or_else(|e| e.into_inner());
                    GpuConfig::Fused.apply(&dev);
                    run_op_half_on(&table[i], &dev, dtype);
                    Ok(())
                }));
            }
        }
        for (g, (dev, turn)) in gpus.iter().enumerate() {
            for config in GpuConfig::all() {
                let (table, dev, turn) = (ops.clone(), dev.clone(), turn.clone());
                let test = format!("{name}::gpu{g}::{}", config.name());
                trials.push(Trial::test(test, move || {
                    let _turn = turn.lock().unwrap_or_else(|e| e.into_inner());
                    config.apply(&dev);
                    run_op_on(&table[i], &dev);
                    Ok(())
                }));
            }
        }
    }
    trials
}

/// The tests of this binary besides the op table, by name.
macro_rules! plain_trials {
    ($($f:ident),* $(,)?) => {
        vec![$(Trial::test(stringify!($f), || {
            $f();
            Ok(())
        })),*]
    };
}

fn main() -> ExitCode {
    init_logging();
    let args = Arguments::from_args();
    let mut trials = op_table_trials();
    trials.extend(plain_trials![
        matmul_non_finite_at_tile_edges,
        conv2d_direct_and_gemm_forms_match_the_cpu,
        layout_copies_of_many_rows_match_the_cpu,
        unary_math_edges,
        nan_and_inf_propagate,
        nan_contract_for_composite_ops,
        matmul_f16_within_f16_tolerance,
        index_ops_take_device_made_indices,
        large_elementwise_ops_match_a_scalar_loop,
        long_axes_match_the_cpu_or_are_refused,
        long_walks_in_matmul_norm_and_cross_entropy_match_the_cpu,
    ]);
    libtest_mimic::run(&args, trials).exit_code()
}

/// Matmul keeps IEEE's answers at the edges of every kernel's tiles: a k that no k step
/// divides (version 4 pads its last step with zeros, which must not meet an infinity), an
/// infinity in the last row of B, a NaN in the first; under every configuration on every GPU.
fn matmul_non_finite_at_tile_edges() {
    let (m, k, n) = (3, 9, 5);
    let mut b = vec![0.5f32; k * n];
    b[(k - 1) * n..].fill(f32::INFINITY);
    b[0] = f32::NAN;
    let check = |dev: &Device, what: &str| {
        let a = Tensor::ones(dev, &[m, k]).unwrap();
        let bt = Tensor::from_vec(dev, b.clone(), &[k, n]).unwrap();
        let c = a.matmul(&bt).unwrap().to_vec().unwrap();
        for i in 0..m {
            assert!(
                c[i * n].is_nan(),
                "{what} on {dev}: C[{i}, 0] = {}",
                c[i * n]
            );
            for j in 1..n {
                assert_eq!(c[i * n + j], f32::INFINITY, "{what} on {dev}: C[{i}, {j}]");
            }
        }
    };
    check(&Device::cpu(), "default");
    for dev in fresh_gpus() {
        check(&dev, "default");
        for config in kiln::gpu::matmul_configs() {
            dev.set_matmul_config(Some(config));
            check(&dev, &config.to_string());
        }
        dev.set_matmul_config(None);
    }
}

/// GPU convolution has two forms: matrix products around im2col/col2im (the default) and
/// direct kernels, taken when the column buffer would not fit (here: a memory budget whose
/// quarter is smaller than it). Both forms, forward and both gradients, match the CPU for
/// plain, strided and dilated, grouped and depthwise convolutions, with finite operands and
/// with infinities meeting the padding (NaN there: the padding is zeros); the dispatch counts
/// show which form ran.
fn conv2d_direct_and_gemm_forms_match_the_cpu() {
    use kiln::Conv2dOptions;
    let cases: [(&[usize], &[usize], Conv2dOptions); 4] = [
        (
            &[2, 4, 12, 12],
            &[6, 4, 3, 3],
            Conv2dOptions {
                padding: (1, 1),
                ..Default::default()
            },
        ),
        (
            &[2, 4, 12, 11],
            &[5, 4, 3, 2],
            Conv2dOptions {
                stride: (2, 1),
                padding: (1, 0),
                dilation: (2, 1),
                groups: 1,
            },
        ),
        (
            &[2, 4, 12, 12],
            &[6, 2, 3, 3],
            Conv2dOptions {
                padding: (1, 1),
                groups: 2,
                ..Default::default()
            },
        ),
        (
            &[2, 4, 16, 16],
            &[4, 1, 3, 3],
            Conv2dOptions {
                stride: (2, 2),
                padding: (1, 1),
                groups: 4,
                ..Default::default()
            },
        ),
    ];
    // y, dL/dx, dL/dw, dL/db for L = Σ y·r, and the dispatches the forward pass took.
    // `poison`: the first weight and the first upstream gradient are +inf, so the padding's
    // zeros meet infinities in the forward pass and in the weight gradient.
    let run = |dev: &Device, xs: &[usize], ws: &[usize], opts: Conv2dOptions, poison: bool| {
        let n = |s: &[usize]| s.iter().product::<usize>();
        let poisoned = |t: Tensor| {
            let mut v = t.to_vec().unwrap();
            if poison {
                v[0] = f32::INFINITY;
            }
            Tensor::from_vec(dev, v, t.shape()).unwrap()
        };
        let x = Tensor::randn(dev, xs, 1).unwrap().with_grad().unwrap();
        let w = poisoned(Tensor::randn(dev, ws, 2).unwrap())
            .with_grad()
            .unwrap();
        let b = Tensor::randn(dev, &[ws[0]], 3)
            .unwrap()
            .with_grad()
            .unwrap();
        let before = dev.stats().dispatches;
        let y = x.conv2d(&w, Some(&b), opts).unwrap();
        dev.synchronize().unwrap();
        let forward = dev.stats().dispatches - before;
        let r = poisoned(Tensor::randn(dev, y.shape(), 4).unwrap());
        y.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
        let v = |t: &Tensor| t.to_vec().unwrap();
        let out = [
            v(&y),
            v(&x.grad().unwrap()),
            v(&w.grad().unwrap()),
            v(&b.grad().unwrap()),
        ];
        assert_eq!(out[1].len(), n(xs));
        (out, forward)
    };
    for ((xs, ws, opts), poison) in cases.into_iter().flat_map(|c| [(c, false), (c, true)]) {
        let (want, _) = run(&Device::cpu(), xs, ws, opts, poison);
        // The column buffer: batch · c_in · kh · kw · oh · ow values; a budget whose quarter
        // is one byte short of it.
        let pixels = want[0].len() / (xs[0] * ws[0]);
        let cols = (xs[0] * xs[1] * ws[2] * ws[3] * pixels * 4) as u64;
        for dev in fresh_gpus() {
            for budget in [None, Some(4 * cols - 4)] {
                dev.set_memory_budget(budget);
                let (got, forward) = run(&dev, xs, ws, opts, poison);
                let form = if budget.is_some() { "direct" } else { "gemm" };
                // Direct: the convolution alone; GEMM: im2col, the product, the bias.
                assert_eq!(
                    forward,
                    if budget.is_some() { 1 } else { 3 },
                    "{form} on {dev} ({xs:?} * {ws:?})"
                );
                for (what, (g, w)) in ["y", "dx", "dw", "db"].iter().zip(got.iter().zip(&want)) {
                    for (i, (a, b)) in g.iter().zip(w).enumerate() {
                        assert!(
                            (a.is_nan() && b.is_nan())
                                || a == b
                                || (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                            "{form} {what}[{i}] on {dev} ({xs:?} * {ws:?}, {opts:?}, poison {poison}): {a} vs {b}"
                        );
                    }
                }
            }
            dev.set_memory_budget(None);
        }
    }
}

/// Layout copies with hundreds of rows of 8 to 1,024 values: on software adapters these run
/// the copy kernel's row mode (one invocation per row), which the op table's small samples do
/// not reach. Bit-for-bit the CPU's values.
fn layout_copies_of_many_rows_match_the_cpu() {
    let run = |dev: &Device| -> Vec<Vec<f32>> {
        let x = Tensor::randn(dev, &[16, 32, 24], 5).unwrap();
        let y = Tensor::randn(dev, &[16, 8, 24], 6).unwrap();
        [
            x.permute(&[1, 0, 2]).unwrap(),
            x.permute(&[0, 2, 1]).unwrap(),
            x.permute(&[2, 1, 0]).unwrap(),
            x.transpose(0, 1).unwrap(),
            x.narrow(2, 3, 16).unwrap(),
            x.narrow(1, 1, 30).unwrap(),
            Tensor::cat(&[&x, &y], 1).unwrap(),
            x.broadcast_to(&[2, 16, 32, 24]).unwrap(),
        ]
        .iter()
        .map(|t| t.to_vec().unwrap())
        .collect()
    };
    let want = run(&Device::cpu());
    for dev in fresh_gpus() {
        for (i, (g, w)) in run(&dev).iter().zip(&want).enumerate() {
            assert!(g == w, "layout case {i} on {dev}");
        }
    }
}

/// Every unary op maps NaN to NaN; domain edges give IEEE's answers; clamp refuses bad bounds.
fn unary_math_edges() {
    for dev in devices() {
        let nan = Tensor::from_vec(&dev, vec![f32::NAN; 3], &[3]).unwrap();
        for op in kiln::UnaryOp::ALL {
            let v = nan.unary(op).unwrap().to_vec().unwrap();
            assert!(
                v.iter().all(|x| x.is_nan()),
                "{}(NaN) on {dev}: {v:?}",
                op.name()
            );
        }
        let x = Tensor::from_vec(
            &dev,
            vec![-1.0, 0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY],
            &[5],
        )
        .unwrap();
        let log = x.log().unwrap().to_vec().unwrap();
        assert!(
            log[0].is_nan() && log[1] == f32::NEG_INFINITY && log[3] == f32::INFINITY,
            "log on {dev}: {log:?}"
        );
        let sqrt = x.sqrt().unwrap().to_vec().unwrap();
        assert!(
            sqrt[0].is_nan() && sqrt[1] == 0.0 && sqrt[3] == f32::INFINITY,
            "sqrt on {dev}: {sqrt:?}"
        );
        let rsqrt = x.rsqrt().unwrap().to_vec().unwrap();
        assert!(
            rsqrt[1] == f32::INFINITY && rsqrt[3] == 0.0,
            "rsqrt on {dev}: {rsqrt:?}"
        );
        let recip = x.recip().unwrap().to_vec().unwrap();
        assert_eq!(
            &recip[1..],
            &[f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0],
            "recip on {dev}"
        );
        let exp = x.exp().unwrap().to_vec().unwrap();
        assert_eq!((exp[3], exp[4]), (f32::INFINITY, 0.0), "exp on {dev}");
        let pow = x.powf(0.5).unwrap().to_vec().unwrap();
        assert!(
            pow[0].is_nan() && pow[3] == f32::INFINITY,
            "powf(0.5) on {dev}: {pow:?}"
        );
        let sp = x.softplus().unwrap().to_vec().unwrap();
        assert_eq!((sp[3], sp[4]), (f32::INFINITY, 0.0), "softplus on {dev}");
        for (lo, hi) in [(1.0, -1.0), (f32::NAN, 1.0)] {
            let e = x.clamp(lo, hi).unwrap_err();
            assert!(
                matches!(e, Error::InvalidArgument { op: "clamp", .. }),
                "{e:?}"
            );
        }
    }
}

/// NaN and ±Inf propagate as IEEE says: checked by bit pattern class, on every device.
fn nan_and_inf_propagate() {
    for dev in devices() {
        let x =
            Tensor::from_vec(&dev, vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY], &[3]).unwrap();
        for (name, t) in [
            ("relu", x.relu()),
            ("leaky_relu", x.leaky_relu(0.1)),
            ("sigmoid", x.sigmoid()),
            ("tanh", x.tanh()),
        ] {
            let v = t.unwrap().to_vec().unwrap();
            assert!(
                v[0].is_nan(),
                "{name}(NaN) on {dev} = {:#x}",
                v[0].to_bits()
            );
            let (p, n) = match name {
                "relu" => (f32::INFINITY, 0.0),
                "leaky_relu" => (f32::INFINITY, f32::NEG_INFINITY),
                "sigmoid" => (1.0, 0.0),
                _ => (1.0, -1.0),
            };
            assert_eq!((v[1], v[2]), (p, n), "{name}(±inf) on {dev}");
        }
        let z = Tensor::from_vec(&dev, vec![1.0, -1.0, 0.0], &[3]).unwrap();
        let zero = Tensor::zeros(&dev, &[1]).unwrap();
        let q = z.div(&zero).unwrap().to_vec().unwrap();
        assert_eq!(
            (q[0], q[1]),
            (f32::INFINITY, f32::NEG_INFINITY),
            "x/0 on {dev}"
        );
        assert!(q[2].is_nan(), "0/0 on {dev}");
        let one = Tensor::ones(&dev, &[3]).unwrap();
        for (name, t, want) in [
            ("maximum", x.maximum(&one), [f32::NAN, f32::INFINITY, 1.0]),
            (
                "minimum",
                x.minimum(&one),
                [f32::NAN, 1.0, f32::NEG_INFINITY],
            ),
            ("eq", x.eq(&x), [0.0, 1.0, 1.0]),
            ("ne", x.ne(&x), [1.0, 0.0, 0.0]),
            ("lt", x.lt(&one), [0.0, 0.0, 1.0]),
            ("ge", x.ge(&one), [0.0, 1.0, 0.0]),
        ] {
            let v = t.unwrap().to_vec().unwrap();
            for (g, w) in v.iter().zip(want) {
                assert!(
                    g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                    "{name} on {dev}: {v:?}"
                );
            }
        }
        let row = Tensor::from_vec(&dev, vec![1.0, f32::NAN, 2.0, 3.0, 4.0, 5.0], &[2, 3]).unwrap();
        for (name, t) in [
            ("max", row.max(-1, false)),
            ("min", row.min(-1, false)),
            ("sum", row.sum(-1, false)),
        ] {
            let v = t.unwrap().to_vec().unwrap();
            assert!(
                v[0].is_nan() && !v[1].is_nan(),
                "{name} with a NaN on {dev}: {v:?}"
            );
        }
        let sm = row.softmax(-1).unwrap().to_vec().unwrap();
        assert!(
            sm[..3].iter().all(|v| v.is_nan()) && sm[3..].iter().all(|v| !v.is_nan()),
            "softmax on {dev}: {sm:?}"
        );
        let img = Tensor::from_vec(
            &dev,
            vec![1.0, f32::NAN, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
            &[1, 2, 2, 2],
        )
        .unwrap();
        let mp = img
            .max_pool2d((2, 2), (2, 2), (0, 0))
            .unwrap()
            .to_vec()
            .unwrap();
        assert!(
            mp[0].is_nan() && mp[1] == 7.0,
            "max_pool2d with a NaN on {dev}: {mp:?}"
        );
        let s = x.add(&x).unwrap().to_vec().unwrap();
        assert!(
            s[0].is_nan() && s[1] == f32::INFINITY && s[2] == f32::NEG_INFINITY,
            "add on {dev}"
        );
        let m = Tensor::from_vec(&dev, vec![f32::NAN, 1.0], &[1, 2])
            .unwrap()
            .matmul(&Tensor::ones(&dev, &[2, 1]).unwrap())
            .unwrap()
            .to_vec()
            .unwrap();
        assert!(m[0].is_nan(), "NaN through matmul on {dev}");
    }
}

/// The NaN contract for the ops not covered above, on every device: a NaN input gives NaN exactly
/// where the README says (checked by bit pattern class), and copies keep a NaN's payload bits.
fn nan_contract_for_composite_ops() {
    for dev in devices() {
        let nan = f32::NAN;
        // One NaN in the first row of a [2, 4] tensor.
        let x =
            Tensor::from_vec(&dev, vec![nan, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], &[2, 4]).unwrap();
        let row_nan = |name: &str, v: Vec<f32>, width: usize| {
            assert!(
                v[..width].iter().all(|x| x.is_nan()),
                "{name} on {dev}: first row {v:?}"
            );
            assert!(
                v[width..].iter().all(|x| !x.is_nan()),
                "{name} on {dev}: second row {v:?}"
            );
        };
        row_nan(
            "layer_norm",
            x.layer_norm(None, None, 1e-5).unwrap().to_vec().unwrap(),
            4,
        );
        row_nan(
            "rms_norm",
            x.rms_norm(None, 1e-5).unwrap().to_vec().unwrap(),
            4,
        );
        row_nan(
            "log_softmax",
            x.log_softmax(-1).unwrap().to_vec().unwrap(),
            4,
        );
        row_nan("mean", x.mean(-1, false).unwrap().to_vec().unwrap(), 1);
        row_nan("var", x.var(-1, false).unwrap().to_vec().unwrap(), 1);
        let w = Tensor::ones(&dev, &[3, 4]).unwrap();
        row_nan(
            "linear",
            x.linear(&w, None, Some(kiln::UnaryOp::Relu))
                .unwrap()
                .to_vec()
                .unwrap(),
            3,
        );
        let a = x.argmax(-1, false).unwrap().to_vec_u32().unwrap();
        assert_eq!(a, vec![0, 3], "argmax picks the NaN on {dev}");
        // Convolution and average pooling: the NaN reaches exactly the outputs whose window holds it.
        let img = x.reshape(&[1, 1, 2, 4]).unwrap();
        let k = Tensor::ones(&dev, &[1, 1, 1, 2]).unwrap();
        let c = img
            .conv2d(
                &k,
                None,
                kiln::Conv2dOptions {
                    stride: (1, 2),
                    ..Default::default()
                },
            )
            .unwrap()
            .to_vec()
            .unwrap();
        assert!(
            c[0].is_nan() && c[1..].iter().all(|v| !v.is_nan()),
            "conv2d on {dev}: {c:?}"
        );
        let p = img
            .avg_pool2d((1, 2), (1, 2), (0, 0))
            .unwrap()
            .to_vec()
            .unwrap();
        assert!(
            p[0].is_nan() && p[1..].iter().all(|v| !v.is_nan()),
            "avg_pool2d on {dev}: {p:?}"
        );
        // Layout and index ops move bits: a NaN with a payload comes back with the same payload.
        let payload = f32::from_bits(0x7fc0_1234);
        let t = Tensor::from_vec(&dev, vec![payload, 1.0, 2.0, 3.0], &[2, 2]).unwrap();
        let moved = [
            t.transpose(0, 1).unwrap().transpose(0, 1).unwrap(),
            Tensor::cat(
                &[&t.narrow(0, 0, 1).unwrap(), &t.narrow(0, 1, 1).unwrap()],
                0,
            )
            .unwrap(),
            t.index_select(0, &Tensor::from_vec_u32(&dev, vec![0, 1], &[2]).unwrap())
                .unwrap(),
        ];
        for m in moved {
            assert_eq!(
                m.to_vec().unwrap()[0].to_bits(),
                0x7fc0_1234,
                "NaN payload through a copy on {dev}"
            );
        }
    }
}

/// f16-storage matmul: on the CPU and on every GPU that grants SHADER_F16 it matches the f64
/// reference of the f32 inputs within an f16 tolerance (and the CPU twin to f32 rounding); on a
/// GPU without SHADER_F16 it is `Error::Unsupported`.
fn matmul_f16_within_f16_tolerance() {
    let mut rng = Lcg(130);
    let cases: &[(&[usize], &[usize])] = &[
        (&[64, 128], &[128, 64]),
        (&[300, 257], &[257, 129]),
        (&[2, 17, 33], &[33, 15]),
        (&[5, 0], &[0, 3]),
    ];
    for dev in devices() {
        let f16 = dev.is_cpu() || dev.info().features.iter().any(|f| f == "shader-f16");
        for (sa, sb) in cases {
            let (na, nb) = (sa.iter().product(), sb.iter().product());
            let (va, vb) = (rng.vec(na, -1.0, 1.0), rng.vec(nb, -1.0, 1.0));
            let a = Tensor::from_slice(&dev, &va, sa).unwrap();
            let b = Tensor::from_slice(&dev, &vb, sb).unwrap();
            let r = a.matmul_f16(&b);
            if !f16 {
                assert!(
                    matches!(
                        r,
                        Err(Error::Unsupported {
                            op: "matmul_f16",
                            ..
                        })
                    ),
                    "{r:?} on {dev}"
                );
                continue;
            }
            let got = r.unwrap();
            let refs = [
                Ref {
                    shape: sa.to_vec(),
                    data: va.iter().map(|&x| f64::from(x)).collect(),
                },
                Ref {
                    shape: sb.to_vec(),
                    data: vb.iter().map(|&x| f64::from(x)).collect(),
                },
            ];
            let want = matmul_ref(&refs);
            assert_eq!(got.shape(), want.shape.as_slice());
            let k = sa[sa.len() - 1] as f64;
            // Each input carries a relative rounding error of at most 2^-11.
            assert_close(
                &format!("matmul_f16 {sa:?}x{sb:?} on {dev}"),
                &got.to_vec().unwrap(),
                &want.data,
                1e-3 * (k + 1.0),
                2e-3,
            );
            // It really rounds: it matches the CPU's f16-rounded product to f32 precision, and
            // differs from the plain f32 product by more than that.
            let got = got.to_vec().unwrap();
            let cpu = Device::cpu();
            let twin = Tensor::from_slice(&cpu, &va, sa)
                .unwrap()
                .matmul_f16(&Tensor::from_slice(&cpu, &vb, sb).unwrap())
                .unwrap()
                .to_vec()
                .unwrap();
            let exact = a.matmul(&b).unwrap().to_vec().unwrap();
            let diff = |x: &[f32], y: &[f32]| {
                x.iter()
                    .zip(y)
                    .map(|(p, q)| (p - q).abs())
                    .fold(0.0f32, f32::max)
            };
            assert!(
                diff(&got, &twin) <= 1e-5 * (k as f32 + 1.0),
                "f16 GPU vs CPU twin on {dev}: {}",
                diff(&got, &twin)
            );
            if k > 0.0 && !got.is_empty() {
                assert!(
                    diff(&got, &exact) > 1e-5,
                    "matmul_f16 did not round its inputs on {dev}"
                );
            }
        }
    }
}

/// Index ops accept indices computed on the device (no host copy to check against: they are
/// read back) as well as uploaded ones, with the same results and the same range errors.
fn index_ops_take_device_made_indices() {
    for dev in devices() {
        let x = Tensor::from_vec(&dev, vec![3.0, 1.0, 2.0, 0.0, 5.0, 4.0], &[2, 3]).unwrap();
        let picked = x.argmax(-1, false).unwrap(); // [0, 1], made on the device
        let rows = Tensor::from_vec(&dev, (0..12).map(|v| v as f32).collect(), &[4, 3]).unwrap();
        let got = rows.index_select(0, &picked).unwrap().to_vec().unwrap();
        assert_eq!(got, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "{dev}");
        let short = Tensor::from_vec(&dev, vec![0.0; 3], &[1, 3]).unwrap();
        assert_eq!(
            short.index_select(0, &picked).unwrap_err(),
            Error::IndexOutOfRange {
                op: "index_select",
                index: 1,
                size: 1
            },
            "{dev}"
        );
    }
}

/// Elementwise ops large enough for the CPU backend to split them over its worker threads,
/// in shapes whose pieces start and end inside rows (one long row, a few long rows with a
/// broadcast row vector, a broadcast column, a scalar), against a plain loop of the op's
/// scalar formula, on every device.
fn large_elementwise_ops_match_a_scalar_loop() {
    let mut rng = Lcg(7);
    let cases: &[(&[usize], &[usize])] = &[
        (&[300_001], &[300_001]),
        (&[3, 100_003], &[100_003]),
        (&[100_003, 3], &[100_003, 1]),
        (&[2, 150_001], &[1]),
    ];
    for dev in devices() {
        for (sa, sb) in cases {
            let (na, nb): (usize, usize) = (sa.iter().product(), sb.iter().product());
            let (va, vb) = (rng.vec(na, -2.0, 2.0), rng.vec(nb, -2.0, 2.0));
            let a = Tensor::from_slice(&dev, &va, sa).unwrap();
            let b = Tensor::from_slice(&dev, &vb, sb).unwrap();
            // Index of b's value for output value i, under numpy broadcasting.
            let cols = *sa.last().unwrap();
            let bi = |i: usize| match (sb.len(), nb) {
                (_, 1) => 0,
                (1, _) => i % cols,
                _ => i / cols,
            };
            type Want<'a> = Box<dyn Fn(usize) -> f32 + 'a>;
            let checks: [(&str, Tensor, Want); 4] = [
                ("add", a.add(&b).unwrap(), Box::new(|i| va[i] + vb[bi(i)])),
                ("mul", a.mul(&b).unwrap(), Box::new(|i| va[i] * vb[bi(i)])),
                (
                    "maximum",
                    a.maximum(&b).unwrap(),
                    Box::new(|i| va[i].max(vb[bi(i)])),
                ),
                (
                    "leaky_relu",
                    a.leaky_relu(0.1).unwrap(),
                    Box::new(|i| if va[i] < 0.0 { 0.1 * va[i] } else { va[i] }),
                ),
            ];
            for (name, got, want) in checks {
                let got = got.to_vec().unwrap();
                assert_eq!(got.len(), na, "{name} {sa:?} {sb:?} on {dev}");
                for (i, g) in got.iter().enumerate() {
                    let w = want(i);
                    assert!(
                        (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                        "{name} {sa:?} {sb:?} on {dev} at {i}: {g} vs {w}"
                    );
                }
            }
        }
    }
}

/// Reductions along axes longer than one invocation may walk (lavapipe ends every shader loop
/// after 65,535 iterations: a sum of 100,000 ones was 65,535 before reductions were chunked)
/// match the CPU, eager and with a fused prologue; ops that still walk an axis in one
/// invocation either match or refuse with `Error::Unsupported`, never a wrong value.
fn long_axes_match_the_cpu_or_are_refused() {
    let mut rng = Lcg(11);
    let cases: &[(&[usize], isize)] = &[
        (&[100_003], 0),
        (&[2, 70_001], 1),
        (&[70_001, 3], 0),
        (&[2, 9_000, 2], 1),
        // Rows of vec4s: argmax takes one subgroup per row where subgroups have a fixed size.
        (&[2, 70_004], 1),
    ];
    let cpu = Device::cpu();
    for (shape, axis) in cases {
        let n: usize = shape.iter().product();
        let mut v = rng.vec(n, -1.0, 1.0);
        let len = shape[*axis as usize] as f32;
        for dev in gpus() {
            for nan in [false, true] {
                if nan {
                    v[n / 2] = f32::NAN;
                }
                let x_cpu = Tensor::from_slice(&cpu, &v, shape).unwrap();
                let x_gpu = Tensor::from_slice(&dev, &v, shape).unwrap();
                for op in kiln::ReduceOp::ALL {
                    let want = x_cpu.reduce(op, *axis, false).unwrap().to_vec().unwrap();
                    let prologue = |x: &Tensor| x.mul_scalar(2.0).unwrap().add_scalar(1.0).unwrap();
                    let want_fused = prologue(&x_cpu).reduce(op, *axis, false).unwrap();
                    let got = x_gpu.reduce(op, *axis, false).unwrap().to_vec().unwrap();
                    let got_fused = prologue(&x_gpu).reduce(op, *axis, false).unwrap();
                    let tol = |w: f32| 2e-6 * len + 1e-4 * w.abs();
                    for (what, g, w) in [
                        ("eager", got, want.clone()),
                        (
                            "fused",
                            got_fused.to_vec().unwrap(),
                            want_fused.to_vec().unwrap(),
                        ),
                    ] {
                        for (i, (g, w)) in g.iter().zip(&w).enumerate() {
                            assert!(
                                (g.is_nan() && w.is_nan()) || (g - w).abs() <= tol(*w),
                                "{} {what} of {shape:?} along {axis} (NaN {nan}) on {dev} at {i}: {g} vs {w}",
                                op.name()
                            );
                        }
                    }
                }
                type Run = fn(&Tensor, isize) -> kiln::Result<Vec<f32>>;
                let others: [(&str, Run); 3] = [
                    ("softmax", |x, a| x.softmax(a)?.to_vec()),
                    ("log_softmax", |x, a| x.log_softmax(a)?.to_vec()),
                    ("argmax", |x, a| {
                        let i = x.argmax(a, false)?.to_vec_u32()?;
                        Ok(i.into_iter().map(|i| i as f32).collect())
                    }),
                ];
                for (name, f) in others {
                    let want = f(&x_cpu, *axis).unwrap();
                    match f(&x_gpu, *axis) {
                        Ok(got) => {
                            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                                assert!(
                                    (g.is_nan() && w.is_nan())
                                        || (g - w).abs() <= 1e-5 + 1e-3 * w.abs(),
                                    "{name} of {shape:?} along {axis} (NaN {nan}) on {dev} at {i}: {g} vs {w}"
                                );
                            }
                        }
                        Err(Error::Unsupported { .. }) => {
                            say!("{name} of {shape:?} along {axis} refused on {dev}")
                        }
                        Err(e) => panic!("{name} of {shape:?} on {dev}: {e:?}"),
                    }
                }
            }
        }
    }
}

/// Matmul with a long K, layer_norm of long rows and cross_entropy over many classes match the
/// CPU on every GPU (on lavapipe through their composite forms: split-K, chunked reductions).
fn long_walks_in_matmul_norm_and_cross_entropy_match_the_cpu() {
    let mut rng = Lcg(12);
    let cpu = Device::cpu();
    let k = 70_001;
    let (va, vb) = (rng.vec(3 * k, -1.0, 1.0), rng.vec(k * 2, -1.0, 1.0));
    let classes = 70_003;
    let logits = rng.vec(2 * classes, -3.0, 3.0);
    for dev in gpus() {
        let run = |d: &Device| -> Vec<Vec<f32>> {
            let a = Tensor::from_slice(d, &va, &[3, k]).unwrap();
            let b = Tensor::from_slice(d, &vb, &[k, 2]).unwrap();
            let bt = Tensor::from_slice(d, &vb, &[2, k]).unwrap();
            let bias = Tensor::from_slice(d, &[0.5, -0.5], &[2]).unwrap();
            let x = Tensor::from_slice(d, &logits, &[2, classes])
                .unwrap()
                .with_grad()
                .unwrap();
            let t = Tensor::from_vec_u32(d, vec![5, classes as u32 - 1], &[2]).unwrap();
            let loss = kiln::nn::cross_entropy(&x, &t).unwrap();
            loss.backward().unwrap();
            vec![
                a.matmul(&b).unwrap().to_vec().unwrap(),
                a.linear(&bt, Some(&bias), Some(kiln::UnaryOp::Relu))
                    .unwrap()
                    .to_vec()
                    .unwrap(),
                x.detach()
                    .layer_norm(None, None, 1e-5)
                    .unwrap()
                    .to_vec()
                    .unwrap(),
                loss.to_vec().unwrap(),
                x.grad().unwrap().to_vec().unwrap(),
            ]
        };
        let (want, got) = (run(&cpu), run(&dev));
        for (what, (g, w)) in [
            "matmul",
            "linear",
            "layer_norm",
            "cross_entropy",
            "its gradient",
        ]
        .iter()
        .zip(got.iter().zip(&want))
        {
            assert_eq!(g.len(), w.len());
            for (i, (g, w)) in g.iter().zip(w).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-3 + 1e-4 * w.abs(),
                    "{what} on {dev} at {i}: {g} vs {w}"
                );
            }
        }
    }
}
