//! `DataParallel` against one device training on the whole batch: the same parameters and
//! losses, replicas identical bit for bit, on CPU pairs and CPU + GPU (lavapipe in CI). With
//! `KILN_REQUIRE_GPU=1` a missing GPU fails the tests instead of skipping its cases.

use kiln::nn::{Activation, Adam, Linear, Module, Optimizer, Sequential, Sgd, cross_entropy};
use kiln::{Device, Error, Result, Tensor, UnaryOp};
use kiln_dist::DataParallel;
use std::ops::Range;

const FEATURES: usize = 16;
const CLASSES: usize = 4;

/// A GPU device, if there is one (a failure under `KILN_REQUIRE_GPU=1`).
fn gpu() -> Option<Device> {
    match Device::gpu() {
        Ok(d) => Some(d),
        Err(e) if std::env::var("KILN_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
            panic!("KILN_REQUIRE_GPU=1 but no GPU: {e}")
        }
        Err(e) => {
            eprintln!("!!!!! kiln-dist: NO GPU ({e}) — GPU cases SKIPPED !!!!!");
            None
        }
    }
}

/// A seeded classification set: `n` rows of [`FEATURES`] values, labelled by a random linear
/// teacher's argmax.
fn data(n: usize) -> (Vec<f32>, Vec<u32>) {
    let mut s = 12345u64;
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let teacher: Vec<f32> = (0..FEATURES * CLASSES).map(|_| next()).collect();
    let x: Vec<f32> = (0..n * FEATURES).map(|_| next()).collect();
    let y = (0..n)
        .map(|i| {
            let row = &x[i * FEATURES..(i + 1) * FEATURES];
            let score = |c: usize| -> f32 {
                row.iter()
                    .enumerate()
                    .map(|(f, v)| v * teacher[f * CLASSES + c])
                    .sum()
            };
            (0..CLASSES)
                .max_by(|&a, &b| score(a).total_cmp(&score(b)))
                .unwrap() as u32
        })
        .collect();
    (x, y)
}

fn mlp(dev: &Device) -> Result<Sequential> {
    Ok(Sequential::new()
        .push(Linear::new(dev, FEATURES, 32, 7)?)
        .push(Activation(UnaryOp::Tanh))
        .push(Linear::new(dev, 32, 32, 8)?)
        .push(Activation(UnaryOp::Relu))
        .push(Linear::new(dev, 32, CLASSES, 9)?))
}

/// The mean cross-entropy of rows `rows` of batch `b` of the data.
fn batch_loss(
    (x, y): &(Vec<f32>, Vec<u32>),
    start: usize,
    model: &Sequential,
    dev: &Device,
    rows: Range<usize>,
) -> Result<Tensor> {
    let (a, b) = (start + rows.start, start + rows.end);
    let xs = Tensor::from_vec(
        dev,
        x[a * FEATURES..b * FEATURES].to_vec(),
        &[b - a, FEATURES],
    )?;
    let ys = Tensor::from_vec_u32(dev, y[a..b].to_vec(), &[b - a])?;
    cross_entropy(&model.forward(&xs)?, &ys)
}

fn params(m: &Sequential) -> Vec<Vec<f32>> {
    m.parameters()
        .into_iter()
        .map(|(_, p)| p.to_vec().unwrap())
        .collect()
}

/// `steps` steps over consecutive batches of `batch` rows on one CPU device: the reference.
fn reference(
    data: &(Vec<f32>, Vec<u32>),
    optimizer: &mut dyn Optimizer,
    batch: usize,
    steps: usize,
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let dev = Device::cpu();
    let mut model = mlp(&dev).unwrap();
    let rows = data.1.len();
    let mut losses = Vec::new();
    for s in 0..steps {
        let start = first_row(s, batch, rows);
        let loss = batch_loss(data, start, &model, &dev, 0..batch).unwrap();
        loss.backward().unwrap();
        losses.push(loss.to_vec().unwrap()[0]);
        optimizer.step_module(&mut model).unwrap();
    }
    (losses, params(&model))
}

/// Step `s`'s first row: consecutive batches, wrapping before the data ends.
fn first_row(s: usize, batch: usize, rows: usize) -> usize {
    (s * batch) % (rows - batch + 1)
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// 40 steps of Adam and of SGD with momentum, batch 64 (and 37: uneven shards), on two CPU
/// replicas, CPU + GPU, GPU + CPU and two devices of one GPU: every step's loss and the final parameters agree with
/// one CPU device training on the whole batch (1e-5 on the CPU, 1e-4 with a GPU), and every
/// replica holds exactly the first one's parameters.
#[test]
fn replicas_train_as_one_device_on_the_whole_batch() {
    let data = data(256);
    let mut sets = vec![vec![Device::cpu(), Device::cpu()]];
    if let Some(g) = gpu() {
        sets.push(vec![Device::cpu(), g.clone()]);
        sets.push(vec![g.clone(), Device::cpu()]);
        // Two devices opened on the same adapter (two queues, as two GPUs would have).
        let second = gpu().expect("a second device on the adapter");
        assert!(
            !second.same(&g),
            "Device::gpu() opens a device of its own each time"
        );
        sets.push(vec![g, second]);
    }
    let steps = 40;
    for batch in [64, 37] {
        for adam in [true, false] {
            let make = || -> Box<dyn Optimizer + Send> {
                if adam {
                    Box::new(Adam::new(0.01))
                } else {
                    Box::new(Sgd::new(0.1).momentum(0.9))
                }
            };
            let (want_losses, want) = reference(&data, &mut *make(), batch, steps);
            for devices in &sets {
                let gpu_in = devices.iter().any(|d| !d.is_cpu());
                let tol = if gpu_in { 1e-4 } else { 1e-5 };
                let mut dp = DataParallel::new(devices, mlp, make()).unwrap();
                let mut losses = Vec::new();
                for s in 0..steps {
                    let start = first_row(s, batch, 256);
                    let loss = dp
                        .step(batch, |m, d, rows| batch_loss(&data, start, m, d, rows))
                        .unwrap();
                    losses.push(loss);
                }
                let what = format!("batch {batch}, adam {adam}, on {devices:?}");
                for (s, (a, b)) in losses.iter().zip(&want_losses).enumerate() {
                    assert!((a - b).abs() <= tol, "{what}: step {s} loss {a} vs {b}");
                }
                let got = params(dp.model());
                let diff = max_diff(&got, &want);
                assert!(diff <= tol, "{what}: parameters {diff} from one device's");
                for (dev, replica) in dp.replicas() {
                    assert_eq!(params(replica), got, "{what}: the replica on {dev} drifted");
                }
                assert!(
                    want_losses[steps - 1] < want_losses[0] * 0.7,
                    "{what}: did not learn"
                );
                eprintln!("kiln-dist: {what}: parameters within {diff:.1e} of one device's");
            }
        }
    }
}

/// The gradient buckets change nothing in the result: one value per bucket, a bucket that cuts
/// parameters in pieces, and one bucket for everything train to the same parameters, bit for
/// bit; the step's time is accounted for.
#[test]
fn bucket_sizes_give_the_same_training() {
    let data = data(256);
    let mut runs = Vec::new();
    for bytes in [8, 8 * 100, kiln_dist::DEFAULT_BUCKET_BYTES] {
        let devices = [Device::cpu(), Device::cpu()];
        let mut dp = DataParallel::new(&devices, mlp, Box::new(Adam::new(0.01))).unwrap();
        dp.set_bucket_bytes(bytes);
        for s in 0..10 {
            let start = first_row(s, 48, 256);
            dp.step(48, |m, d, rows| batch_loss(&data, start, m, d, rows))
                .unwrap();
        }
        let t = dp.times();
        assert_eq!(t.steps, 10);
        assert!(t.compute > std::time::Duration::ZERO && t.total() >= t.compute);
        assert!((0.0..=1.0).contains(&t.communication_share()));
        runs.push(params(dp.model()));
    }
    assert_eq!(runs[0], runs[2], "one value per bucket");
    assert_eq!(runs[1], runs[2], "100 values per bucket");
}

/// A GPU replica's gradients come back once per bucket, not once per parameter: with one
/// bucket a step submits the GPU's work about twice (the bucket's read-back and the loss's),
/// where buckets of one value read each of the six parameters on its own.
#[test]
fn a_gpu_replica_reads_its_gradients_back_once_per_bucket() {
    let Some(g) = gpu() else { return };
    let data = data(256);
    let mut per_step = Vec::new();
    for bytes in [kiln_dist::DEFAULT_BUCKET_BYTES, 8] {
        let devices = [Device::cpu(), g.clone()];
        let mut dp = DataParallel::new(&devices, mlp, Box::new(Adam::new(0.01))).unwrap();
        dp.set_bucket_bytes(bytes);
        let step = |dp: &mut DataParallel<Sequential>, s| {
            let start = first_row(s, 48, 256);
            dp.step(48, |m, d, rows| batch_loss(&data, start, m, d, rows))
                .unwrap();
        };
        step(&mut dp, 0);
        let before = g.stats().submissions;
        for s in 1..6 {
            step(&mut dp, s);
        }
        per_step.push((g.stats().submissions - before) as f64 / 5.0);
    }
    let params = mlp(&Device::cpu()).unwrap().parameters().len();
    eprintln!("kiln-dist: GPU submissions per step, one bucket and 1-value buckets: {per_step:?}");
    assert!(
        per_step[0] <= 3.0 && per_step[1] >= params as f64,
        "submissions per step: {per_step:?} ({params} parameters)"
    );
}

/// A batch smaller than the replicas leaves one idle and still matches the reference; an empty
/// batch, no devices and replicas of different shapes are typed errors; a replica whose loss
/// fails fails the step, and no parameter changes.
#[test]
fn idle_replicas_and_errors() {
    let data = data(16);
    let devices = vec![Device::cpu(), Device::cpu(), Device::cpu()];
    let mut dp = DataParallel::new(&devices, mlp, Box::new(Sgd::new(0.5))).unwrap();
    assert_eq!(dp.shards(2), vec![0..1, 1..2, 2..2]);
    assert_eq!(dp.shards(7), vec![0..3, 3..5, 5..7]);
    dp.step(2, |m, d, rows| batch_loss(&data, 0, m, d, rows))
        .unwrap();
    let (_, want) = reference(&data, &mut Sgd::new(0.5), 2, 1);
    assert!(max_diff(&params(dp.model()), &want) <= 1e-6);

    let err = dp.step(0, |m, d, rows| batch_loss(&data, 0, m, d, rows));
    assert!(matches!(err, Err(Error::InvalidArgument { .. })));
    let before = params(dp.model());
    let err = dp.step(6, |m, d, rows| {
        if rows.start >= 4 {
            return Err(Error::InvalidArgument {
                op: "test",
                reason: "the third replica's data is bad".into(),
            });
        }
        batch_loss(&data, 0, m, d, rows)
    });
    assert!(
        matches!(err, Err(Error::InvalidArgument { op: "test", .. })),
        "{err:?}"
    );
    assert_eq!(params(dp.model()), before);

    let none = DataParallel::new(&[], mlp, Box::new(Sgd::new(0.1)));
    assert!(matches!(none, Err(Error::InvalidArgument { .. })));
    let built = std::cell::Cell::new(0);
    let odd = DataParallel::new(
        &[Device::cpu(), Device::cpu()],
        |d| {
            built.set(built.get() + 1);
            let width = if built.get() == 1 { 8 } else { 4 };
            Ok(Sequential::new().push(Linear::new(d, FEATURES, width, 1)?))
        },
        Box::new(Sgd::new(0.1)),
    );
    assert!(matches!(odd, Err(Error::InvalidArgument { .. })));
}
