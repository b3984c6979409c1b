//! burn 0.22 on kiln's peer benchmark shapes, printing one JSON object per line
//! (`{"op", "size", "seconds", ...}`), each time the median of `--reps` runs after two
//! warm-up runs, every run ending in a readback of the result to the host:
//!
//!   burn-peer --backend wgpu --matmul 256 512 1024 --mlp 1024 64 256 256 10 \
//!     --conv 32 16 32 32 32 --rows 1024 4096 --chain 1048576
//!   burn-peer --backend flex --conv 32 16 32 32 32
//!   burn-peer --backend wgpu --first 512     # one cold matmul: burn's first-use cost
//!
//! `--backend wgpu` is burn's wgpu backend (CubeCL compiling WGSL, with fusion) on the default
//! adapter (lavapipe on a machine without a GPU); `--backend flex` is its CPU backend.
//! burn 0.22's tensors carry their device instead of a backend type parameter.

use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, DeviceKind, Distribution, Tensor, activation};
use std::time::Instant;

struct Args {
    argv: Vec<String>,
}

impl Args {
    fn list(&self, flag: &str) -> Vec<usize> {
        let Some(i) = self.argv.iter().position(|a| a == flag) else {
            return vec![];
        };
        self.argv[i + 1..]
            .iter()
            .take_while(|a| !a.starts_with("--"))
            .map(|a| a.parse().expect("a number"))
            .collect()
    }
    fn value(&self, flag: &str) -> Option<String> {
        let i = self.argv.iter().position(|a| a == flag)?;
        self.argv.get(i + 1).cloned()
    }
}

fn median(reps: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..2 {
        f();
    }
    let mut ts: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    ts.sort_by(f64::total_cmp);
    ts[ts.len() / 2]
}

fn emit(op: &str, size: String, backend: &str, seconds: f64, extra: &str) {
    println!(
        r#"{{"op":"{op}","size":"{size}","config":"burn-{backend}","seconds":{seconds}{extra}}}"#
    );
}

/// Reads `t` back to the host. In burn 0.22 `into_data` alone can return before the values
/// are there (a 1024³ product "took" 0.09 ms on lavapipe); converting to a `Vec` waits for them.
fn read<const D: usize>(t: Tensor<D>) {
    let values = t.into_data().try_to_vec::<f32>().expect("f32 values");
    std::hint::black_box(values);
}

fn run(args: &Args, name: &str, dev: &Device) {
    let reps = args.list("--reps").first().copied().unwrap_or(9);
    let normal = Distribution::Normal(0.0, 1.0);
    if let Some(&n) = args.list("--first").first() {
        let t = Instant::now();
        let a = Tensor::<2>::random([n, n], normal, dev);
        let b = Tensor::<2>::random([n, n], normal, dev);
        read(a.matmul(b));
        emit("first_matmul", format!("{n}"), name, t.elapsed().as_secs_f64(), "");
        return;
    }
    // --check N: (i · ones(N, N)) · ones(N, N) read back must hold i·N everywhere, for
    // i = 1..4, each timed (the timings are only meaningful if the backend computes).
    if let Some(&n) = args.list("--check").first() {
        let a = Tensor::<2>::ones([n, n], dev);
        for i in 1..=4 {
            let t = Instant::now();
            let c = a.clone().mul_scalar(i as f32).matmul(a.clone());
            let c = c.into_data().try_to_vec::<f32>().expect("f32 data");
            let took = t.elapsed().as_secs_f64();
            let bad = c.iter().filter(|&&v| v != (n * i) as f32).count();
            println!(
                r#"{{"op":"check","size":"{n}","run":{i},"seconds":{took},"values":{},"wrong":{bad}}}"#,
                c.len()
            );
            assert_eq!(bad, 0, "burn's matmul gave wrong values");
        }
    }
    for n in args.list("--matmul") {
        let a = Tensor::<2>::random([n, n], normal, dev);
        let b = Tensor::<2>::random([n, n], normal, dev);
        let s = median(reps, || read(a.clone().matmul(b.clone())));
        let gflops = 2.0 * (n as f64).powi(3) / s / 1e9;
        emit("matmul", format!("{n}x{n}x{n}"), name, s, &format!(r#","GFLOP_per_s":{gflops}"#));
    }
    let mlp = args.list("--mlp");
    if mlp.len() >= 3 {
        let (batch, widths) = (mlp[0], &mlp[1..]);
        let x = Tensor::<2>::random([batch, widths[0]], normal, dev);
        let layers: Vec<_> = widths
            .windows(2)
            .map(|w| {
                let weight = Tensor::<2>::random([w[0], w[1]], normal, dev)
                    .div_scalar((w[0] as f32).sqrt());
                (weight, Tensor::<1>::zeros([w[1]], dev))
            })
            .collect();
        let s = median(reps, || {
            let mut h = x.clone();
            for (i, (w, b)) in layers.iter().enumerate() {
                h = h.matmul(w.clone()).add(b.clone().unsqueeze());
                if i + 1 < layers.len() {
                    h = activation::relu(h);
                }
            }
            read(h);
        });
        let flops: f64 = widths.windows(2).map(|w| 2.0 * (batch * w[0] * w[1]) as f64).sum();
        let size = format!("{batch}x{widths:?}").replace(' ', "");
        emit("mlp_forward", size, name, s, &format!(r#","GFLOP_per_s":{}"#, flops / s / 1e9));
    }
    // --conv BATCH CIN H W COUT: a 3×3 convolution, stride 1, padding 1, with bias.
    if let [batch, cin, h, w, cout] = args.list("--conv")[..] {
        let x = Tensor::<4>::random([batch, cin, h, w], normal, dev);
        let weight = Tensor::<4>::random([cout, cin, 3, 3], normal, dev);
        let bias = Tensor::<1>::random([cout], normal, dev);
        let opts = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        let s = median(reps, || {
            read(conv2d(x.clone(), weight.clone(), Some(bias.clone()), opts.clone()))
        });
        let flops = 2.0 * (batch * cout * h * w * cin * 9) as f64;
        let size = format!("{batch}x{cin}x{h}x{w}->{cout}");
        emit("conv2d_3x3", size, name, s, &format!(r#","GFLOP_per_s":{}"#, flops / s / 1e9));
    }
    // --rows R C: softmax, layer norm, argmax and cross-entropy over the last axis of an
    // R × C matrix.
    if let [r, c] = args.list("--rows")[..] {
        let x = Tensor::<2>::random([r, c], normal, dev);
        let gamma = Tensor::<1>::ones([c], dev);
        let beta = Tensor::<1>::zeros([c], dev);
        let s = median(reps, || read(activation::softmax(x.clone(), 1)));
        emit("softmax", format!("{r}x{c}"), name, s, "");
        let s = median(reps, || {
            // burn's LayerNorm module computes exactly this (mean, biased variance, eps 1e-5).
            let (var, mean) = x.clone().var_mean_bias(1);
            let y = x.clone().sub(mean).div(var.add_scalar(1e-5).sqrt());
            read(y.mul(gamma.clone().unsqueeze()).add(beta.clone().unsqueeze()));
        });
        emit("layer_norm", format!("{r}x{c}"), name, s, "");
        let s = median(reps, || {
            let i = x.clone().argmax(1).into_data().convert::<i64>();
            std::hint::black_box(i.try_to_vec::<i64>().expect("indices"));
        });
        emit("argmax", format!("{r}x{c}"), name, s, "");
        // The mean negative log-likelihood of targets i % c, as burn's CrossEntropyLoss
        // computes it (log_softmax, gather, mean).
        let targets: Vec<i64> = (0..r).map(|i| (i % c) as i64).collect();
        let y = Tensor::<1, burn::tensor::Int>::from_data(
            burn::tensor::TensorData::new(targets, [r]),
            dev,
        );
        let s = median(reps, || {
            let logp = activation::log_softmax(x.clone(), 1);
            let picked = logp.gather(1, y.clone().unsqueeze_dim(1));
            read(picked.mean().neg());
        });
        emit("cross_entropy", format!("{r}x{c}"), name, s, "");
    }
    // --chain N: kiln's 16-op arithmetic chain (4 × mul_scalar, add, relu, sub_scalar).
    for n in args.list("--chain") {
        let x = Tensor::<1>::random([n], normal, dev);
        let y = Tensor::<1>::random([n], Distribution::Default, dev);
        let s = median(reps, || {
            let mut h = x.clone();
            for k in 0..4 {
                h = activation::relu(h.mul_scalar(1.01).add(y.clone())).sub_scalar(0.1 * k as f32);
            }
            read(h);
        });
        emit("chain16_arith", format!("{n}"), name, s, "");
    }
}

fn main() {
    let args = Args { argv: std::env::args().skip(1).collect() };
    let name = args.value("--backend").unwrap_or_else(|| "wgpu".into());
    let dev = match name.as_str() {
        "wgpu" => Device::wgpu(DeviceKind::DefaultDevice),
        "flex" => Device::flex(),
        other => panic!("unknown backend {other} (wgpu or flex)"),
    };
    run(&args, &name, &dev);
}
