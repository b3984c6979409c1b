//! Trains a small classifier data-parallel over MPI ranks, for `tests/mpi.rs`: each rank holds
//! one replica on the CPU backend, and rank 0 writes every step's loss and the final
//! parameters to `--out`.
//!
//! ```sh
//! mpirun -np 2 kiln-dist-check --steps 30 --batch 48 --out out.txt [--adam]
//!     [--fail-at STEP] [--panic-at STEP]     # rank 1 fails (an error, or a panic) at STEP
//! ```

use kiln::nn::{Activation, Adam, Linear, Module, Optimizer, Sequential, Sgd, cross_entropy};
use kiln::{Device, Error, Result, Tensor, UnaryOp};
use kiln_dist::{Collective, DataParallel, Mpi};
use std::fmt::Write as _;

const FEATURES: usize = 16;
const CLASSES: usize = 4;
const ROWS: usize = 256;

struct Args {
    steps: usize,
    batch: usize,
    out: Option<String>,
    adam: bool,
    fail_at: Option<usize>,
    panic_at: Option<usize>,
}

fn args() -> std::result::Result<Args, String> {
    let mut a = Args {
        steps: 30,
        batch: 48,
        out: None,
        adam: false,
        fail_at: None,
        panic_at: None,
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
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

/// A seeded classification set labelled by a random linear teacher (the same on every rank).
fn data() -> (Vec<f32>, Vec<u32>) {
    let mut s = 2024u64;
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let teacher: Vec<f32> = (0..FEATURES * CLASSES).map(|_| next()).collect();
    let x: Vec<f32> = (0..ROWS * FEATURES).map(|_| next()).collect();
    let y = (0..ROWS)
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

fn mlp(dev: &Device) -> Result<Sequential> {
    Ok(Sequential::new()
        .push(Linear::new(dev, FEATURES, 32, 7)?)
        .push(Activation(UnaryOp::Tanh))
        .push(Linear::new(dev, 32, CLASSES, 8)?))
}

fn run(mpi: Mpi, a: &Args) -> Result<()> {
    let rank = mpi.rank();
    let optimizer: Box<dyn Optimizer + Send> = if a.adam {
        Box::new(Adam::new(0.01))
    } else {
        Box::new(Sgd::new(0.1).momentum(0.9))
    };
    let mut dp = DataParallel::across(&[Device::cpu()], mlp, optimizer, Box::new(mpi))?;
    let (x, y) = data();
    let mut losses = Vec::new();
    for step in 0..a.steps {
        let start = (step * a.batch) % (ROWS - a.batch + 1);
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
