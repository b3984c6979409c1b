//! Lazy elementwise fusion on GPU devices: chains of unary and binary ops (with broadcasting
//! operands) give the CPU's answers and the eager path's, in one dispatch where they fit one
//! kernel; intermediates that live tensors hold stay readable; dropped ones never run.

mod common;

use common::*;
use kiln::{BinaryOp, Device, Tensor, UnaryOp};

/// One step of a random chain: a unary op, or a binary op with a fresh operand of some shape.
#[derive(Clone, Debug)]
enum Step {
    Unary(UnaryOp),
    Binary(BinaryOp, Vec<usize>, Vec<f32>),
}

/// Unary ops that keep values finite and moderate on any finite input (so long chains stay
/// comparable), with their parameters.
const SAFE_UNARY: [UnaryOp; 10] = [
    UnaryOp::Relu,
    UnaryOp::LeakyRelu(0.1),
    UnaryOp::Gelu,
    UnaryOp::GeluTanh,
    UnaryOp::Sigmoid,
    UnaryOp::Tanh,
    UnaryOp::Silu,
    UnaryOp::Abs,
    UnaryOp::Neg,
    UnaryOp::Clamp(-2.0, 2.0),
];
const SAFE_BINARY: [BinaryOp; 7] = [
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Maximum,
    BinaryOp::Minimum,
    BinaryOp::Gt,
    BinaryOp::Le,
];

/// A random chain over `shape`: operands of the full shape, of its last dimension (a bias), a
/// scalar, or a column (broadcast along the last dimension: a strided leaf).
fn chain(rng: &mut Lcg, shape: &[usize], len: usize) -> Vec<Step> {
    let last = *shape.last().unwrap();
    let col: Vec<usize> = shape[..shape.len() - 1]
        .iter()
        .copied()
        .chain([1])
        .collect();
    (0..len)
        .map(|_| {
            if rng.next_u32().is_multiple_of(2) {
                Step::Unary(rng.pick(&SAFE_UNARY))
            } else {
                let op = rng.pick(&SAFE_BINARY);
                let s = match rng.next_u32() % 4 {
                    0 => shape.to_vec(),
                    1 => vec![last],
                    2 => vec![],
                    _ => col.clone(),
                };
                let n = s.iter().product();
                Step::Binary(op, s, rng.vec(n, -1.5, 1.5))
            }
        })
        .collect()
}

/// Run `steps` on `x`, returning every intermediate.
fn run(dev: &Device, x: &[f32], shape: &[usize], steps: &[Step]) -> Vec<Tensor> {
    let mut out = vec![Tensor::from_slice(dev, x, shape).unwrap()];
    for step in steps {
        let cur = out.last().unwrap();
        let next = match step {
            Step::Unary(op) => cur.unary(*op),
            Step::Binary(op, s, v) => cur.binary(&Tensor::from_slice(dev, v, s).unwrap(), *op),
        };
        out.push(next.unwrap());
    }
    out
}

fn close(what: &str, got: &[f32], want: &[f32]) {
    let want: Vec<f64> = want.iter().map(|&v| f64::from(v)).collect();
    assert_close(what, got, &want, 1e-5, 1e-5);
}

/// Random chains of 1 to 40 ops (past one kernel's instruction cap of 48 with the operands'
/// loads, so some split), on shapes with broadcast, scalar and strided operands: the final value
/// and some intermediates match the CPU, fused and eager.
#[test]
fn random_chains_match_the_cpu_fused_and_eager() {
    let cpu = Device::cpu();
    let mut rng = Lcg(41);
    let shapes: [&[usize]; 4] = [&[3, 5], &[4, 1, 7], &[64, 33], &[1000]];
    for dev in fresh_gpus() {
        for case in 0..24 {
            let shape = shapes[case % shapes.len()];
            let len = 1 + (rng.next_u32() % 40) as usize;
            let steps = chain(&mut rng, shape, len);
            let n: usize = shape.iter().product();
            let x = rng.vec(n, -2.0, 2.0);
            let want = run(&cpu, &x, shape, &steps);
            for fused in [true, false] {
                dev.set_fusion(fused);
                let got = run(&dev, &x, shape, &steps);
                let what = format!("case {case} {shape:?} fused={fused} on {dev}: {steps:?}");
                // The last value, and one intermediate that a live tensor holds.
                let mid = got.len() / 2;
                close(
                    &what,
                    &got[mid].to_vec().unwrap(),
                    &want[mid].to_vec().unwrap(),
                );
                close(
                    &what,
                    &got[len].to_vec().unwrap(),
                    &want[len].to_vec().unwrap(),
                );
            }
            dev.set_fusion(true);
        }
    }
}

/// A chain of 16 elementwise ops is one dispatch when fused and 16 when eager, and a program
/// that a dropped tensor held never runs.
#[test]
fn a_fused_chain_is_one_dispatch() {
    for dev in fresh_gpus() {
        let x = Tensor::rand(&dev, &[1 << 12], 3).unwrap();
        let b = Tensor::rand(&dev, &[1 << 12], 4).unwrap();
        dev.synchronize().unwrap();
        for fused in [true, false] {
            dev.set_fusion(fused);
            let before = dev.stats();
            let mut y = x.clone();
            for k in 0..8 {
                y = y.mul_scalar(1.0 + k as f32 / 64.0).unwrap();
                y = y.add(&b).unwrap();
            }
            dev.synchronize().unwrap();
            let after = dev.stats();
            let dispatches = after.dispatches - before.dispatches;
            if fused {
                assert_eq!(dispatches, 1, "{dev}: {before:?} -> {after:?}");
                assert_eq!(after.fused_kernels - before.fused_kernels, 1);
                assert_eq!(after.fused_ops - before.fused_ops, 16);
            } else {
                assert_eq!(dispatches, 16, "{dev}: {before:?} -> {after:?}");
                assert_eq!(after.fused_kernels, before.fused_kernels);
            }
            // flush runs what live tensors hold (without waiting), and only once.
            let before = dev.stats();
            let z = x.add(&b).unwrap().relu().unwrap();
            dev.flush().unwrap();
            dev.flush().unwrap();
            let ran = dev.stats().dispatches - before.dispatches;
            assert_eq!(ran, if fused { 1 } else { 2 }, "{dev} fused={fused}: flush");
            let want: Vec<f32> = x
                .to_vec()
                .unwrap()
                .iter()
                .zip(b.to_vec().unwrap())
                .map(|(p, q)| (p + q).max(0.0))
                .collect();
            assert_eq!(z.to_vec().unwrap(), want, "{dev} fused={fused}");
            // A dropped program never runs: synchronize finds nothing to do.
            let before = dev.stats();
            drop(x.relu().unwrap().exp().unwrap());
            dev.synchronize().unwrap();
            let ran = dev.stats().dispatches - before.dispatches;
            assert_eq!(ran, if fused { 0 } else { 2 }, "{dev} fused={fused}");
        }
        dev.set_fusion(true);
    }
}

/// Sums of many distinct tensors (more leaves than one kernel binds) and a long chain (past the
/// instruction cap) split into several kernels and stay exact.
#[test]
fn programs_past_the_caps_split_and_stay_exact() {
    for dev in fresh_gpus() {
        let parts: Vec<Tensor> = (0..13)
            .map(|k| Tensor::full(&dev, &[5, 3], k as f32).unwrap())
            .collect();
        let mut sum = parts[0].clone();
        for p in &parts[1..] {
            sum = sum.add(p).unwrap();
        }
        assert_eq!(sum.to_vec().unwrap(), vec![78.0; 15], "{dev}");
        let mut y = Tensor::zeros(&dev, &[7]).unwrap();
        for _ in 0..200 {
            y = y.add_scalar(1.0).unwrap();
        }
        assert_eq!(y.to_vec().unwrap(), vec![200.0; 7], "{dev}");
    }
}

/// Fused results feed every other kind of op (matmul, reductions, layout, indexing, backward)
/// and match the eager path.
#[test]
fn fused_results_feed_other_ops_and_autograd() {
    for dev in fresh_gpus() {
        let mut results = Vec::new();
        for fused in [true, false] {
            dev.set_fusion(fused);
            let x = Tensor::randn(&dev, &[6, 5], 1)
                .unwrap()
                .with_grad()
                .unwrap();
            let w = Tensor::randn(&dev, &[5, 4], 2)
                .unwrap()
                .with_grad()
                .unwrap();
            let h = x
                .mul_scalar(0.5)
                .unwrap()
                .tanh()
                .unwrap()
                .add_scalar(0.1)
                .unwrap();
            let y = h.matmul(&w).unwrap().gelu().unwrap();
            let loss = y.square().unwrap().sum_all().unwrap();
            loss.backward().unwrap();
            let t = h.transpose(0, 1).unwrap().sum(-1, false).unwrap();
            results.push((
                loss.to_vec().unwrap(),
                x.grad().unwrap().to_vec().unwrap(),
                w.grad().unwrap().to_vec().unwrap(),
                t.to_vec().unwrap(),
            ));
        }
        dev.set_fusion(true);
        let (a, b) = (&results[0], &results[1]);
        close("loss", &a.0, &b.0);
        close("dx", &a.1, &b.1);
        close("dw", &a.2, &b.2);
        close("transpose+sum", &a.3, &b.3);
    }
}

/// A reduction of an elementwise program runs the program as its prologue: `sum(a * b + c)`
/// along any axis is one dispatch, and every reduction matches the CPU (NaN included).
#[test]
fn reductions_take_programs_as_prologues() {
    let cpu = Device::cpu();
    let mut rng = Lcg(5);
    let (a, b, c) = (
        rng.vec(60, -2.0, 2.0),
        rng.vec(60, -2.0, 2.0),
        rng.vec(5, -1.0, 1.0),
    );
    let mut a_nan = a.clone();
    a_nan[7] = f32::NAN;
    for dev in fresh_gpus() {
        for (label, av) in [("finite", &a), ("with NaN", &a_nan)] {
            let make = |d: &Device| {
                let ta = Tensor::from_slice(d, av, &[3, 4, 5]).unwrap();
                let tb = Tensor::from_slice(d, &b, &[3, 4, 5]).unwrap();
                let tc = Tensor::from_slice(d, &c, &[5]).unwrap();
                // A column operand too: a strided leaf.
                let col = Tensor::from_slice(d, &c[..4], &[4, 1]).unwrap();
                ta.mul(&tb)
                    .unwrap()
                    .add(&tc)
                    .unwrap()
                    .tanh()
                    .unwrap()
                    .sub(&col)
                    .unwrap()
            };
            let (x, want) = (make(&dev), make(&cpu));
            for op in kiln::ReduceOp::ALL {
                for dim in [0, 1, -1] {
                    let before = dev.stats();
                    let got = x.reduce(op, dim, false).unwrap();
                    let got = got.to_vec().unwrap();
                    let dispatches = dev.stats().dispatches - before.dispatches;
                    assert_eq!(dispatches, 1, "{op:?}({dim}) {label} on {dev}");
                    let w = want.reduce(op, dim, false).unwrap().to_vec().unwrap();
                    close(&format!("{op:?}({dim}) {label} on {dev}"), &got, &w);
                }
            }
        }
    }
}

/// softmax and log_softmax of an elementwise program (attention's `softmax(scores * s + mask)`)
/// run the program as their prologue: one dispatch, the CPU's values, NaN rows stay NaN.
#[test]
fn softmax_takes_programs_as_prologues() {
    let cpu = Device::cpu();
    let mut rng = Lcg(9);
    let mut scores = rng.vec(2 * 6 * 6, -3.0, 3.0);
    scores[40] = f32::NAN;
    let mask: Vec<f32> = (0..36)
        .map(|k| if k % 6 > k / 6 { -1e9 } else { 0.0 })
        .collect();
    for dev in fresh_gpus() {
        let make = |d: &Device| {
            let s = Tensor::from_slice(d, &scores, &[2, 6, 6]).unwrap();
            let m = Tensor::from_slice(d, &mask, &[6, 6]).unwrap();
            s.mul_scalar(0.4).unwrap().add(&m).unwrap()
        };
        let (x, want) = (make(&dev), make(&cpu));
        for log in [false, true] {
            for dim in [-1, 1, 0] {
                let before = dev.stats();
                let got = if log {
                    x.log_softmax(dim)
                } else {
                    x.softmax(dim)
                };
                let got = got.unwrap().to_vec().unwrap();
                assert_eq!(dev.stats().dispatches - before.dispatches, 1, "{dev}");
                let w = if log {
                    want.log_softmax(dim)
                } else {
                    want.softmax(dim)
                };
                close(
                    &format!("log={log} dim {dim} on {dev}"),
                    &got,
                    &w.unwrap().to_vec().unwrap(),
                );
            }
        }
    }
}

/// A prologue whose leaves are read through strides costs loop iterations of its own on every
/// read (the unravelling of each strided leaf), on top of the kernel's walk along the axis; past
/// llvmpipe's loop limit the driver ended the kernel's loops early without an error, so the
/// tail of every row came out wrong (PP-OCRv4's recognizer: a bias-broadcast softmax over 6,625
/// classes, rows summing to 0.85). Softmax of such a program along a long axis, and a variance
/// of one with several broadcast leaves along a 4,096-value chunk, match the CPU on every device.
#[test]
fn long_walks_through_strided_prologues_match_the_cpu() {
    let cpu = Device::cpu();
    let mut rng = Lcg(31);
    let (rows, k, classes) = (20, 24, 6625);
    let x = rng.vec(rows * k, -1.0, 1.0);
    let w = rng.vec(k * classes, -1.0, 1.0);
    let b = rng.vec(classes, -2.0, 2.0);
    let cols: Vec<Vec<f32>> = (0..4).map(|_| rng.vec(4, -1.0, 1.0)).collect();
    let wide = rng.vec(4 * 4096, -1.0, 1.0);
    let softmax = |d: &Device| -> Vec<f32> {
        let x = Tensor::from_slice(d, &x, &[1, rows, k]).unwrap();
        let w = Tensor::from_slice(d, &w, &[k, classes]).unwrap();
        let b = Tensor::from_slice(d, &b, &[classes]).unwrap();
        let logits = x.matmul(&w).unwrap().add(&b).unwrap();
        logits.softmax(-1).unwrap().to_vec().unwrap()
    };
    let var = |d: &Device| -> Vec<f32> {
        let mut v = Tensor::from_slice(d, &wide, &[4, 4096]).unwrap();
        for c in &cols {
            let c = Tensor::from_slice(d, c, &[4, 1]).unwrap();
            v = v.mul(&c).unwrap().add(&c).unwrap();
        }
        v.var(1, false).unwrap().to_vec().unwrap()
    };
    let (want_softmax, want_var) = (softmax(&cpu), var(&cpu));
    for dev in gpus() {
        close(&format!("softmax on {dev}"), &softmax(&dev), &want_softmax);
        close(&format!("var on {dev}"), &var(&dev), &want_var);
    }
}

/// The CPU backend fuses too (one pass over blocks): its fused results are bit-identical to its
/// eager ones (the same Rust formulas), for random broadcast chains and intermediates, and a
/// reduction of a fused value matches.
#[test]
fn cpu_fusion_is_bit_identical_to_eager() {
    let cpu = Device::cpu();
    let mut rng = Lcg(77);
    let shapes: [&[usize]; 4] = [&[3, 5], &[4, 1, 7], &[64, 33], &[3000]];
    for case in 0..24 {
        let shape = shapes[case % shapes.len()];
        let len = 1 + (rng.next_u32() % 60) as usize;
        let steps = chain(&mut rng, shape, len);
        let n: usize = shape.iter().product();
        let x = rng.vec(n, -2.0, 2.0);
        let mut runs = Vec::new();
        for fused in [true, false] {
            cpu.set_fusion(fused);
            let got = run(&cpu, &x, shape, &steps);
            let mid = got.len() / 2;
            let bits = |t: &Tensor| -> Vec<u32> {
                t.to_vec().unwrap().iter().map(|v| v.to_bits()).collect()
            };
            let sum = got[len].sum(-1, false).unwrap();
            runs.push((bits(&got[mid]), bits(&got[len]), bits(&sum)));
        }
        cpu.set_fusion(true);
        assert_eq!(runs[0], runs[1], "case {case} {shape:?}: {steps:?}");
    }
}
