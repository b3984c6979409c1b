//! Trains a small classifier data-parallel over MPI ranks, for `tests/mpi.rs`: each rank holds
//! one replica on the CPU backend, and rank 0 writes every step's loss and the final
//! parameters to `--out`.
//!
//! ```sh
//! mpirun -np 2 kiln-dist-check --steps 30 --batch 48 --out out.txt [--adam]
//!     [--fail-at STEP] [--panic-at STEP]     # rank 1 fails (an error, or a panic) at STEP
//!     [--hidden N]                           # a wider hidden layer (32 by default)
//!     [--bucket-bytes N]                     # the all-reduce's bucket size
//!     [--checkpoint FILE --stop-after STEP]  # rank 0 checkpoints after STEP steps, all stop
//!     [--resume FILE]                        # continue from such a checkpoint
//! ```
//!
//! Rank 0 prints the training's samples per second (the steps after the first, which
//! compiles nothing on the CPU but warms the caches).

use kiln::nn::{Activation, Adam, Linear, Module, Optimizer, Sequential, Sgd, cross_entropy};
use kiln::{Device, Error, Result, Tensor, UnaryOp};
use kiln_dist::{Collective, DataParallel, Mpi};
use std::fmt::Write as _;

const FEATURES: usize = 16;
const CLASSES: usize = 4;

struct Args {
    steps: usize,
    batch: usize,
    out: Option<String>,
    adam: bool,
    fail_at: Option<usize>,
    panic_at: Option<usize>,
    hidden: usize,
    checkpoint: Option<String>,
    stop_after: Option<usize>,
    resume: Option<String>,
    bucket_bytes: Option<usize>,
}

fn args() -> std::result::Result<Args, String> {
    let mut a = Args {
        steps: 30,
        batch: 48,
        out: None,
        adam: false,
        fail_at: None,
        panic_at: None,
        hidden: 32,
        checkpoint: None,
        stop_after: None,
        resume: None,
        bucket_bytes: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--steps" => a.steps = number(value()?)?,
            "--batch" => a.batch = number(value()?)?,
            "--out" => a.out = Some(value()?),
            "--adam" => a.adam = true,
            "--fail-at" => a.fail_at = Some(number(value()?)?),
            "--panic-at" => a.panic_at = Some(number(value()?)?),
            "--hidden" => a.hidden = number(value()?)?,
            "--checkpoint" => a.checkpoint = Some(value()?),
            "--stop-after" => a.stop_after = Some(number(value()?)?),
            "--resume" => a.resume = Some(value()?),
            "--bucket-bytes" => a.bucket_bytes = Some(number(value()?)?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

/// A seeded classification set of `rows` rows labelled by a random linear teacher (the same
/// on every rank).
fn data(rows: usize) -> (Vec<f32>, Vec<u32>) {
    let mut s = 2024u64;
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let teacher: Vec<f32> = (0..FEATURES * CLASSES).map(|_| next()).collect();
    let x: Vec<f32> = (0..rows * FEATURES).map(|_| next()).collect();
    let y = (0..rows)
        .map(|i| {
            let score = |c: usize| -> f32 {
                (0..FEATURES)
                    .map(|f| x[i * FEATURES + f] * teacher[f * CLASSES + c])
                    .sum()
            };
            (0..CLASSES)
                .max_by(|&a, &b| score(a).total_cmp(&score(b)))
                .unwrap_or(0) as u32
        })
        .collect();
    (x, y)
}

fn mlp(dev: &Device, hidden: usize) -> Result<Sequential> {
    Ok(Sequential::new()
        .push(Linear::new(dev, FEATURES, hidden, 7)?)
        .push(Activation(UnaryOp::Tanh))
        .push(Linear::new(dev, hidden, CLASSES, 8)?))
}

fn run(mpi: Mpi, a: &Args) -> Result<()> {
    let rank = mpi.rank();
    let optimizer: Box<dyn Optimizer + Send> = if a.adam {
        Box::new(Adam::new(0.01))
    } else {
        Box::new(Sgd::new(0.1).momentum(0.9))
    };
    let build = |d: &Device| mlp(d, a.hidden);
    let mut dp = DataParallel::across(&[Device::cpu()], build, optimizer, Box::new(mpi))?;
    if let Some(b) = a.bucket_bytes {
        dp.set_bucket_bytes(b);
    }
    // 256 rows (twice the batch when that is more), so that batches wrap around the data.
    let rows = 256.max(2 * a.batch);
    let (x, y) = data(rows);
    let mut losses: Vec<f32> = Vec::new();
    let mut first = 0;
    if let Some(path) = &a.resume {
        let progress = dp.load_checkpoint(path.as_ref())?;
        let bad = |what: &str| Error::InvalidArgument {
            op: "kiln-dist-check",
            reason: format!("the checkpoint has no {what}"),
        };
        first = progress
            .get("step")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad("step"))?;
        losses = progress
            .get("losses")
            .ok_or_else(|| bad("losses"))?
            .split(',')
            .filter(|v| !v.is_empty())
            .map(|v| v.parse().map_err(|_| bad("readable losses")))
            .collect::<Result<_>>()?;
    }
    let mut started = std::time::Instant::now();
    for step in first..a.steps {
        if step == first + 1 {
            started = std::time::Instant::now();
        }
        if Some(step) == a.stop_after
            && let Some(path) = &a.checkpoint
        {
            let list: Vec<String> = losses.iter().map(f32::to_string).collect();
            let progress = [("step", step.to_string()), ("losses", list.join(","))];
            dp.save_checkpoint(path.as_ref(), &progress)?;
            return Ok(());
        }
        let start = (step * a.batch) % (rows - a.batch + 1);
        let loss = dp.step(a.batch, |model, dev, rows| {
            if rank == 1 && a.fail_at == Some(step) {
                return Err(Error::InvalidArgument {
                    op: "kiln-dist-check",
                    reason: format!("rank 1 fails at step {step}, as asked"),
                });
            }
            if rank == 1 && a.panic_at == Some(step) {
                panic!("rank 1 panics at step {step}, as asked");
            }
            let (r0, r1) = (start + rows.start, start + rows.end);
            let xs = Tensor::from_vec(
                dev,
                x[r0 * FEATURES..r1 * FEATURES].to_vec(),
                &[r1 - r0, FEATURES],
            )?;
            let ys = Tensor::from_vec_u32(dev, y[r0..r1].to_vec(), &[r1 - r0])?;
            cross_entropy(&model.forward(&xs)?, &ys)
        })?;
        losses.push(loss);
    }
    if rank == 0 && a.steps > first + 1 {
        let timed = a.steps - first - 1;
        let rate = (a.batch * timed) as f64 / started.elapsed().as_secs_f64();
        println!(
            "kiln-dist-check: {} ranks: {rate:.0} samples/s over {timed} steps of {} rows",
            dp.collective().size(),
            a.batch
        );
    }
    if rank == 0
        && let Some(out) = &a.out
    {
        let mut text = String::new();
        let _ = writeln!(text, "ranks {}", dp.collective().size());
        let _ = writeln!(text, "losses {losses:?}");
        for (name, p) in dp.model().parameters() {
            let _ = writeln!(text, "{name} {:?}", p.to_vec()?);
        }
        std::fs::write(out, text).map_err(|e| Error::Io {
            path: out.clone(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("kiln-dist-check: {e}");
            std::process::exit(2);
        }
    };
    let mpi = match Mpi::init() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("kiln-dist-check: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(mpi, &a) {
        // A step that failed has aborted the job already; anything else ends here.
        eprintln!("kiln-dist-check: {e}");
        std::process::exit(1);
    }
}
