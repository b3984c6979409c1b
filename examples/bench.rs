//! Benchmarks that print a table (and optionally JSON): matmul GFLOP/s, elementwise GB/s and an
//! MLP forward pass, on the device `KILN_DEVICE` picks (or `--device`), for machines where
//! criterion is too slow to run.
//!
//! ```sh
//! cargo run --release --example bench -- --device software --matmul 256 512 --configs tiled16,auto
//! cargo run --release --example bench -- --device cpu --matmul 256 512 1024 2048 --mlp 1024 64 256 256 10
//! cargo run --release --example bench -- --device gpu --elementwise 16777216 --json out.json
//! ```
//!
//! Times are wall-clock medians after warm-up, each run ending in `Device::synchronize` (the GPU
//! has finished); `--timer gpu` times matmuls with GPU timestamp queries where granted.
//! `--chain N` times a chain of 16 elementwise ops over N values, fused and eager.
//! `--half N` times `add`, `relu(x·y + x)` and a row softmax (rows of 4096) over N values in
//! f32, f16 and bf16 (halves compute in f32 and round once per op).
//! `--conv B CIN H W COUT` times a 3×3 convolution (stride 1, padding 1, with bias);
//! `--train B D H C` training steps of a D-H-C MLP (ReLU, cross-entropy, Adam) on a batch of
//! B, 20 per timed run ending in `Device::synchronize`: ordinary steps (fused, eager dispatch)
//! and the step captured once and replayed (`Device::capture`); the time is per step.
//! `--rows R C` softmax and layer norm over the last axis of an R × C matrix; `--first N` one
//! 512³-style first matmul in a fresh process (tuning, pipeline creation and all: run it with
//! an empty `KILN_CACHE_DIR`). `--readback` ends every timed matmul and chain run with a
//! readback of the result instead of `Device::synchronize` (conv, rows, MLP and first always
//! read back), the rule of the burn peer (`benches/peers/burn`).
//! `--configs` lists matmul kernels to compare in one run: `auto` (the tuned choice), `tiled16` (version 1), `blocked:BMxBNxBK`, `strip:RMxWG`, or `f16` (f16-storage
//! operands, f32 accumulation).

use kiln::{Device, Tensor, UnaryOp};
use std::time::{Duration, Instant};

struct Args {
    device: Option<String>,
    matmul: Vec<(usize, usize, usize)>,
    elementwise: Vec<usize>,
    half: Vec<usize>,
    chain: Vec<usize>,
    mlp: Vec<usize>,
    conv: Vec<usize>,
    rows: Vec<usize>,
    train: Vec<usize>,
    first: Option<usize>,
    readback: bool,
    configs: Vec<String>,
    reps: usize,
    json: Option<String>,
    gpu_timer: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        device: None,
        matmul: vec![],
        elementwise: vec![],
        half: vec![],
        chain: vec![],
        mlp: vec![],
        conv: vec![],
        rows: vec![],
        train: vec![],
        first: None,
        readback: false,
        configs: vec!["auto".into()],
        reps: 9,
        json: None,
        gpu_timer: false,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    let list = |i: &mut usize| {
        let mut v = vec![];
        while *i + 1 < argv.len() && !argv[*i + 1].starts_with("--") {
            *i += 1;
            v.push(argv[*i].clone());
        }
        v
    };
    while i < argv.len() {
        let flag = argv[i].clone();
        let vals = list(&mut i);
        let nums = || {
            vals.iter()
                .map(|v| v.parse().expect("a number"))
                .collect::<Vec<usize>>()
        };
        match flag.as_str() {
            "--device" => a.device = vals.first().cloned(),
            // N (square) or MxKxN
            "--matmul" => {
                a.matmul = vals
                    .iter()
                    .map(|v| {
                        let d: Vec<usize> =
                            v.split('x').map(|x| x.parse().expect("a size")).collect();
                        if d.len() == 3 {
                            (d[0], d[1], d[2])
                        } else {
                            (d[0], d[0], d[0])
                        }
                    })
                    .collect()
            }
            "--elementwise" => a.elementwise = nums(),
            "--half" => a.half = nums(),
            // N: a chain of 16 elementwise ops over N values, fused and eager.
            "--chain" => a.chain = nums(),
            "--mlp" => a.mlp = nums(),
            "--conv" => a.conv = nums(),
            "--rows" => a.rows = nums(),
            "--train" => a.train = nums(),
            "--first" => a.first = nums().first().copied(),
            "--readback" => a.readback = true,
            "--configs" => {
                a.configs = vals
                    .iter()
                    .flat_map(|v| v.split(','))
                    .map(String::from)
                    .collect()
            }
            "--reps" => a.reps = nums().first().copied().unwrap_or(9),
            "--json" => a.json = vals.first().cloned(),
            // Time matmuls with GPU timestamp queries where the device grants them.
            "--timer" => a.gpu_timer = vals.first().is_some_and(|v| v == "gpu"),
            other => panic!("unknown flag {other}"),
        }
        i += 1;
    }
    a
}

/// Median wall time of `f` (which must leave the device idle) after two warm-up runs.
fn time<F: FnMut() -> kiln::Result<()>>(reps: usize, mut f: F) -> kiln::Result<Duration> {
    for _ in 0..2 {
        f()?;
    }
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok(times[reps / 2])
}

fn main() -> kiln::Result<()> {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("warn,kiln=info,wgpu_hal=off"),
    )
    .init();
    let args = parse_args();
    if let Some(d) = &args.device {
        // SAFETY: set before any thread that could read the environment is started.
        unsafe { std::env::set_var("KILN_DEVICE", d) };
    }
    let dev = Device::from_env()?;
    let info = dev.info();
    println!(
        "device: {} ({:?}, {}, driver {})",
        info.name, info.kind, info.backend, info.driver
    );
    println!(
        "{:<12} {:>22} {:<20} {:>12} {:>12}",
        "op", "size", "config", "median", "rate"
    );
    let mut rows = Vec::new();
    let mut report = |op: &str, size: String, config: &str, t: Duration, rate: f64, unit: &str| {
        println!(
            "{op:<12} {size:>22} {config:<20} {:>10.3}ms {rate:>8.1} {unit}",
            t.as_secs_f64() * 1e3
        );
        rows.push(format!(
            r#"{{"op":"{op}","size":"{size}","config":"{config}","device":"{}","seconds":{},"{}":{rate}}}"#,
            info.name.replace('"', "'"),
            t.as_secs_f64(),
            unit.replace('/', "_per_")
        ));
    };

    // Ends a timed run: a readback of `t` with `--readback`, else waiting for the device.
    let finish = |t: Tensor| -> kiln::Result<()> {
        if args.readback {
            t.to_vec()?;
        } else {
            dev.synchronize()?;
        }
        Ok(())
    };

    if let Some(n) = args.first {
        let t = Instant::now();
        let a = Tensor::randn(&dev, &[n, n], 1)?;
        let b = Tensor::randn(&dev, &[n, n], 2)?;
        a.matmul(&b)?.to_vec()?;
        let t = t.elapsed();
        let gflops = 2.0 * (n as f64).powi(3) / t.as_secs_f64() / 1e9;
        report("first_matmul", format!("{n}"), "auto", t, gflops, "GFLOP/s");
    }

    for &(m, k, n) in &args.matmul {
        let a = Tensor::randn(&dev, &[m, k], 1)?;
        let b = Tensor::randn(&dev, &[k, n], 2)?;
        for config in &args.configs {
            // `f16`: the f16-storage matmul (f32 accumulation), with the default kernel choice.
            let f16 = config == "f16";
            let forced = if config == "auto" || f16 {
                None
            } else {
                Some(config.parse()?)
            };
            if dev.is_cpu() && forced.is_some() {
                continue;
            }
            dev.set_matmul_config(forced);
            // Settle the online autotuner first, so that no trial run is timed.
            dev.tune_matmul(m, k, n)?;
            let reps = if m * k * n >= 1 << 33 && !dev.is_cpu() {
                args.reps.min(5)
            } else {
                args.reps
            };
            let run = || -> kiln::Result<()> {
                let c = if f16 {
                    a.matmul_f16(&b)?
                } else {
                    a.matmul(&b)?
                };
                finish(c)
            };
            let mut t = time(reps, run)?;
            if args.gpu_timer {
                // Median of GPU timestamps (where granted) instead of wall time.
                let mut ts = Vec::new();
                for _ in 0..reps {
                    if let Some(g) = dev.time_gpu(|| {
                        let c = if f16 {
                            a.matmul_f16(&b)?
                        } else {
                            a.matmul(&b)?
                        };
                        drop(c);
                        Ok(())
                    })? {
                        ts.push(g);
                    }
                }
                ts.sort();
                if let Some(g) = ts.get(ts.len() / 2) {
                    t = *g;
                }
            }
            let gflops = 2.0 * (m * k * n) as f64 / t.as_secs_f64() / 1e9;
            report(
                "matmul",
                format!("{m}x{k}x{n}"),
                config,
                t,
                gflops,
                "GFLOP/s",
            );
        }
        dev.set_matmul_config(None);
    }

    for &n in &args.elementwise {
        let x = Tensor::randn(&dev, &[n], 3)?;
        let y = Tensor::randn(&dev, &[n], 4)?;
        let t = time(args.reps, || {
            let r = x.relu()?;
            dev.synchronize()?;
            drop(r);
            Ok(())
        })?;
        report(
            "relu",
            format!("{n}"),
            "-",
            t,
            8.0 * n as f64 / t.as_secs_f64() / 1e9,
            "GB/s",
        );
        let t = time(args.reps, || {
            let r = x.add(&y)?;
            dev.synchronize()?;
            drop(r);
            Ok(())
        })?;
        report(
            "add",
            format!("{n}"),
            "-",
            t,
            12.0 * n as f64 / t.as_secs_f64() / 1e9,
            "GB/s",
        );
    }

    for &n in &args.half {
        let rows = [n.div_ceil(4096), 4096];
        let x = Tensor::randn(&dev, &rows, 3)?;
        let y = Tensor::randn(&dev, &rows, 4)?;
        for dtype in [kiln::DType::F32, kiln::DType::F16, kiln::DType::BF16] {
            let (a, b) = (x.to_dtype(dtype)?, y.to_dtype(dtype)?);
            let cases: [(&str, &dyn Fn() -> kiln::Result<Tensor>); 3] = [
                ("add", &|| a.add(&b)),
                ("mul_add_relu", &|| a.mul(&b)?.add(&a)?.relu()),
                ("softmax", &|| a.softmax(-1)),
            ];
            for (op, f) in cases {
                let t = time(args.reps, || {
                    let r = f()?;
                    dev.synchronize()?;
                    drop(r);
                    Ok(())
                })?;
                let values = n as f64 / t.as_secs_f64() / 1e9;
                report(op, format!("{n}"), dtype.name(), t, values, "Gvalues/s");
            }
        }
    }

    for &n in &args.chain {
        let x = Tensor::randn(&dev, &[n], 6)?;
        let y = Tensor::rand(&dev, &[n], 7)?;
        // Mixed: transcendental activations between arithmetic (compute-heavy per element).
        let mixed = || -> kiln::Result<Tensor> {
            let h = x.add_scalar(0.5)?.mul(&y)?.relu()?.mul_scalar(0.9)?;
            let h = h.sub(&y)?.tanh()?.add(&y)?.sigmoid()?;
            let h = h.mul_scalar(1.1)?.add_scalar(-0.2)?.maximum(&y)?.abs()?;
            h.mul(&y)?.add_scalar(0.1)?.silu()?.div_scalar(2.0)
        };
        // Arithmetic only (memory- and dispatch-bound: what fusion removes).
        let arith = || -> kiln::Result<Tensor> {
            let mut h = x.clone();
            for k in 0..4 {
                h = h
                    .mul_scalar(1.01)?
                    .add(&y)?
                    .relu()?
                    .sub_scalar(0.1 * k as f32)?;
            }
            Ok(h)
        };
        let modes: &[(&str, bool)] = &[("fused", true), ("eager", false)];
        type Chain<'c> = &'c dyn Fn() -> kiln::Result<Tensor>;
        let chains: [(&str, Chain); 2] = [("chain16_mixed", &mixed), ("chain16_arith", &arith)];
        for (name, chain) in chains {
            for &(label, fused) in modes {
                dev.set_fusion(fused);
                let t = time(args.reps, || finish(chain()?))?;
                report(
                    name,
                    format!("{n}"),
                    label,
                    t,
                    16.0 * n as f64 / t.as_secs_f64() / 1e9,
                    "Gop/s",
                );
            }
        }
        dev.set_fusion(true);
    }

    if args.mlp.len() >= 3 {
        let (batch, widths) = (args.mlp[0], &args.mlp[1..]);
        let x = Tensor::randn(&dev, &[batch, widths[0]], 5)?;
        let mut layers = Vec::new();
        for (i, w) in widths.windows(2).enumerate() {
            let weight = Tensor::randn(&dev, &[w[1], w[0]], 10 + i as u64)?;
            layers.push((weight, Tensor::zeros(&dev, &[w[1]])?));
        }
        let flops: f64 = widths
            .windows(2)
            .map(|w| 2.0 * (batch * w[0] * w[1]) as f64)
            .sum();
        for w in widths.windows(2) {
            dev.tune_matmul(batch, w[0], w[1])?;
        }
        let t = time(args.reps, || {
            let mut h = x.clone();
            for (i, (w, b)) in layers.iter().enumerate() {
                let act = (i + 1 < layers.len()).then_some(UnaryOp::Relu);
                h = h.linear(w, Some(b), act)?;
            }
            h.to_vec()?;
            Ok(())
        })?;
        report(
            "mlp_forward",
            format!("{batch}x{widths:?}").replace(' ', ""),
            "fused linear",
            t,
            flops / t.as_secs_f64() / 1e9,
            "GFLOP/s",
        );
    }

    if let [batch, cin, h, w, cout] = args.conv[..] {
        let x = Tensor::randn(&dev, &[batch, cin, h, w], 20)?;
        let weight = Tensor::randn(&dev, &[cout, cin, 3, 3], 21)?;
        let bias = Tensor::randn(&dev, &[cout], 22)?;
        let opts = kiln::Conv2dOptions {
            padding: (1, 1),
            ..Default::default()
        };
        // The convolution's products are tuned online like any matmul: let their classes
        // settle (10 calls on lavapipe) before timing, as `tune_matmul` does for matmuls.
        if !dev.is_cpu() {
            for _ in 0..12 {
                x.conv2d(&weight, Some(&bias), opts)?.to_vec()?;
            }
        }
        let t = time(args.reps, || {
            x.conv2d(&weight, Some(&bias), opts)?.to_vec()?;
            Ok(())
        })?;
        let flops = 2.0 * (batch * cout * h * w * cin * 9) as f64;
        report(
            "conv2d_3x3",
            format!("{batch}x{cin}x{h}x{w}->{cout}"),
            "-",
            t,
            flops / t.as_secs_f64() / 1e9,
            "GFLOP/s",
        );
    }

    if let [r, c] = args.rows[..] {
        let x = Tensor::randn(&dev, &[r, c], 23)?;
        let gamma = Tensor::ones(&dev, &[c])?;
        let beta = Tensor::zeros(&dev, &[c])?;
        let bytes = 8.0 * (r * c) as f64;
        let t = time(args.reps, || {
            x.softmax(-1)?.to_vec()?;
            Ok(())
        })?;
        let gbs = bytes / t.as_secs_f64() / 1e9;
        report("softmax", format!("{r}x{c}"), "-", t, gbs, "GB/s");
        let t = time(args.reps, || {
            x.layer_norm(Some(&gamma), Some(&beta), 1e-5)?.to_vec()?;
            Ok(())
        })?;
        let gbs = bytes / t.as_secs_f64() / 1e9;
        report("layer_norm", format!("{r}x{c}"), "-", t, gbs, "GB/s");
        // Row reductions to one value per row: bytes read.
        let read_bytes = 4.0 * (r * c) as f64;
        let t = time(args.reps, || {
            x.argmax(-1, false)?.to_vec_u32()?;
            Ok(())
        })?;
        let gbs = read_bytes / t.as_secs_f64() / 1e9;
        report("argmax", format!("{r}x{c}"), "-", t, gbs, "GB/s");
        let targets: Vec<u32> = (0..r).map(|i| (i % c) as u32).collect();
        let y = Tensor::from_vec_u32(&dev, targets, &[r])?;
        let t = time(args.reps, || {
            kiln::nn::cross_entropy(&x, &y)?.to_vec()?;
            Ok(())
        })?;
        let gbs = read_bytes / t.as_secs_f64() / 1e9;
        report("cross_entropy", format!("{r}x{c}"), "-", t, gbs, "GB/s");
    }

    if let [b, d, h, c] = args.train[..] {
        const STEPS: u32 = 20;
        let x = Tensor::randn(&dev, &[b, d], 24)?;
        let y = Tensor::from_vec_u32(&dev, (0..b).map(|i| (i % c) as u32).collect(), &[b])?;
        let size = format!("{b}x{d}-{h}-{c}");
        for replay in [false, true] {
            let init = |shape: &[usize], seed| {
                Tensor::randn(&dev, shape, seed)?
                    .mul_scalar(0.1)?
                    .with_grad()
            };
            let mut p = [
                init(&[h, d], 25)?,
                init(&[h], 26)?,
                init(&[c, h], 27)?,
                init(&[c], 28)?,
            ];
            let mut opt = kiln::nn::Adam::new(1e-3);
            let mut step = |x: &Tensor, y: &Tensor| -> kiln::Result<Tensor> {
                use kiln::nn::Optimizer;
                let hidden = x.linear(&p[0], Some(&p[1]), Some(UnaryOp::Relu))?;
                let loss = kiln::nn::cross_entropy(&hidden.linear(&p[2], Some(&p[3]), None)?, y)?;
                loss.backward()?;
                let mut params: Vec<&mut Tensor> = p.iter_mut().collect();
                opt.step(&mut params)?;
                opt.zero_grad(&mut params);
                Ok(loss.detach())
            };
            let t = if replay {
                step(&x, &y)?; // kernels settle before the capture
                let (mut graph, _) =
                    dev.capture(&[&x, &y], |io| Ok(vec![step(&io[0], &io[1])?]))?;
                time(args.reps, || {
                    for _ in 0..STEPS {
                        graph.run(&[&x, &y])?;
                    }
                    dev.synchronize()
                })?
            } else {
                time(args.reps, || {
                    for _ in 0..STEPS {
                        step(&x, &y)?;
                    }
                    dev.synchronize()
                })?
            };
            let per = t / STEPS;
            let config = if replay { "replayed" } else { "ordinary" };
            report(
                "train_step",
                size.clone(),
                config,
                per,
                1.0 / per.as_secs_f64(),
                "steps/s",
            );
        }
    }

    if let Some(path) = args.json {
        std::fs::write(&path, format!("[\n{}\n]\n", rows.join(",\n")))
            .expect("writing the JSON file");
        println!("wrote {path}");
    }
    Ok(())
}
