//! [`DataParallel`]: replicas on the devices of one process.

use crate::collective::{Collective, Single};
use kiln::nn::{Module, Optimizer, load_checkpoint, save_checkpoint};
use kiln::{Device, Error, Result, Tensor};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::time::{Duration, Instant};

/// What a replica's share of a step gives back: its mean loss, and its parameters' gradients
/// (on its device), in parameter order.
type Part = (f32, Vec<Tensor>);

/// Bytes of gradient per bucket by default: 4 MiB (of f64 sums), as PyTorch DDP's default
/// bucket is a few MB.
pub const DEFAULT_BUCKET_BYTES: usize = 4 << 20;

/// Where the time of the steps so far went, summed over steps (wall-clock time of this
/// process).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepTimes {
    /// Steps timed.
    pub steps: usize,
    /// Forward and backward on every replica (concurrently).
    pub compute: Duration,
    /// Reading the gradients back and summing the replicas' shares on the host.
    pub gather: Duration,
    /// Waiting for the gradient sums over the processes, beyond what overlapped the
    /// gathering of later buckets (nothing for one process).
    pub reduce: Duration,
    /// The optimizer's step on the first replica.
    pub update: Duration,
    /// Giving every replica (of every process) the new parameters.
    pub broadcast: Duration,
}

impl StepTimes {
    /// All of it.
    pub fn total(&self) -> Duration {
        self.compute + self.gather + self.reduce + self.update + self.broadcast
    }

    /// The share of the steps' time spent communicating between processes: the gradient
    /// all-reduce and the parameters' broadcast.
    pub fn communication_share(&self) -> f64 {
        (self.reduce + self.broadcast).as_secs_f64() / self.total().as_secs_f64().max(1e-12)
    }
}

/// One replica of a model on each of several devices (of this process, and of every process
/// of a [`Collective`]); see the crate's documentation.
pub struct DataParallel<M> {
    /// `(device, replica)`, the first one's device holding the optimizer.
    replicas: Vec<(Device, M)>,
    optimizer: Box<dyn Optimizer + Send>,
    /// The processes taking part ([`Single`] for this one alone).
    collective: Box<dyn Collective>,
    /// Bytes of gradient sums per bucket of the all-reduce.
    bucket_bytes: usize,
    times: StepTimes,
}

impl<M: Module + Send> DataParallel<M> {
    /// Builds a replica on each of `devices` with `build`, then gives every replica the first
    /// one's parameters (so a randomly initialised model starts the same everywhere).
    /// `optimizer` runs on the first device. No devices, or replicas whose parameters differ
    /// in names or shapes, are `Error::InvalidArgument`.
    pub fn new(
        devices: &[Device],
        build: impl Fn(&Device) -> Result<M>,
        optimizer: Box<dyn Optimizer + Send>,
    ) -> Result<DataParallel<M>> {
        Self::across(devices, build, optimizer, Box::new(Single))
    }

    /// [`DataParallel::new`] on this process's `devices`, as one of the processes of
    /// `collective` (every process calls it with a model of the same parameters): every
    /// replica of every process starts from process 0's first replica, and each step splits
    /// the batch over all of their devices.
    pub fn across(
        devices: &[Device],
        build: impl Fn(&Device) -> Result<M>,
        optimizer: Box<dyn Optimizer + Send>,
        collective: Box<dyn Collective>,
    ) -> Result<DataParallel<M>> {
        if devices.is_empty() {
            return Err(Error::InvalidArgument {
                op: "DataParallel::new",
                reason: "no devices".into(),
            });
        }
        let replicas = devices
            .iter()
            .map(|d| Ok((d.clone(), build(d)?)))
            .collect::<Result<Vec<_>>>()?;
        let mut dp = DataParallel {
            replicas,
            optimizer,
            collective,
            bucket_bytes: DEFAULT_BUCKET_BYTES,
            times: StepTimes::default(),
        };
        let shape = |m: &M| -> Vec<(String, Vec<usize>)> {
            m.parameters()
                .into_iter()
                .map(|(n, p)| (n, p.shape().to_vec()))
                .collect()
        };
        let first = shape(&dp.replicas[0].1);
        if let Some((d, _)) = dp.replicas.iter().find(|(_, m)| shape(m) != first) {
            return Err(Error::InvalidArgument {
                op: "DataParallel::new",
                reason: format!("the replica on {d} has other parameters than the first"),
            });
        }
        dp.broadcast()?;
        Ok(dp)
    }

    /// The processes taking part.
    pub fn collective(&self) -> &dyn Collective {
        &*self.collective
    }

    /// The devices, in the order the batch is split among them.
    pub fn devices(&self) -> Vec<&Device> {
        self.replicas.iter().map(|(d, _)| d).collect()
    }

    /// The replica on the first device (the one the optimizer updates; the others hold the same
    /// values).
    pub fn model(&self) -> &M {
        &self.replicas[0].1
    }

    /// Every replica, with its device (to check that they agree, or to evaluate on each).
    pub fn replicas(&self) -> impl Iterator<Item = (&Device, &M)> {
        self.replicas.iter().map(|(d, m)| (d, m))
    }

    /// Sets the size of the gradient buckets that are summed over the processes one at a
    /// time, in bytes of f64 sums ([`DEFAULT_BUCKET_BYTES`] by default; at least one value):
    /// each bucket's all-reduce starts as soon as its gradients are read back, and overlaps
    /// the reading of the next ones.
    pub fn set_bucket_bytes(&mut self, bytes: usize) {
        self.bucket_bytes = bytes;
    }

    /// Where the steps' time went since the start (or the last [`DataParallel::reset_times`]).
    pub fn times(&self) -> StepTimes {
        self.times
    }

    /// Starts [`DataParallel::times`] again from zero.
    pub fn reset_times(&mut self) {
        self.times = StepTimes::default();
    }

    /// The optimizer, to change its learning rate between steps (`set_lr` where it has one).
    pub fn optimizer_mut(&mut self) -> &mut (dyn Optimizer + Send) {
        &mut *self.optimizer
    }

    /// The rows of a batch of `batch` rows that each of this process's replicas takes: the
    /// batch is cut into contiguous shards, as equal as they can be (the first ones one row
    /// longer), one per replica of every process in rank order (every process is assumed to
    /// hold as many replicas as this one), and this returns this process's shards, in device
    /// order, as rows of the whole batch (a `DistributedSampler`'s split).
    pub fn shards(&self, batch: usize) -> Vec<Range<usize>> {
        let local = self.replicas.len();
        let n = local * self.collective.size();
        let shard = |i: usize| {
            let start = i * (batch / n) + i.min(batch % n);
            start..start + batch / n + usize::from(i < batch % n)
        };
        let first = self.collective.rank() * local;
        (first..first + local).map(shard).collect()
    }

    /// One training step on a batch of `batch` rows: `loss(replica, device, rows)` gives the
    /// mean loss of `rows` (a one-element tensor on `device`, computed by `replica`); each
    /// replica runs it and its backward on its own thread, on its shard
    /// ([`DataParallel::shards`]; a replica with no rows sits the step out). The gradients are
    /// averaged on the host, weighted by the shards' rows, the optimizer steps once on the first
    /// device, and the new parameters are copied to the other replicas. Returns the batch's
    /// mean loss. An error on any replica fails the step before anything changes: the
    /// optimizer has not stepped and every replica's parameters are as they were (the
    /// gradients the other replicas computed are cleared by the next step).
    pub fn step<F>(&mut self, batch: usize, loss: F) -> Result<f32>
    where
        F: Fn(&M, &Device, Range<usize>) -> Result<Tensor> + Sync,
    {
        if batch == 0 {
            return Err(Error::InvalidArgument {
                op: "DataParallel::step",
                reason: "an empty batch".into(),
            });
        }
        let shards = self.shards(batch);
        let loss = &loss;
        let started = Instant::now();
        // Forward and backward on every replica at once; each gives back its loss and its
        // parameters' gradients (still on its device).
        let results: Vec<Result<Option<Part>>> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .replicas
                .iter_mut()
                .zip(&shards)
                .map(|((dev, model), rows)| {
                    let rows = rows.clone();
                    s.spawn(move || -> Result<Option<Part>> {
                        model.zero_grad();
                        if rows.is_empty() {
                            return Ok(None);
                        }
                        let l = loss(model, dev, rows)?;
                        l.backward()?;
                        let value = l.to_vec()?[0];
                        let grads = model
                            .parameters()
                            .into_iter()
                            .map(|(name, p)| {
                                p.grad().ok_or_else(|| Error::Autograd {
                                    op: "DataParallel::step",
                                    reason: format!("parameter `{name}` got no gradient"),
                                })
                            })
                            .collect::<Result<Vec<_>>>()?;
                        Ok(Some((value, grads)))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        let mut parts = Vec::new();
        for (r, rows) in results.into_iter().zip(&shards) {
            match r {
                Ok(Some(part)) => parts.push((rows.len() as f64 / batch as f64, part)),
                Ok(None) => {}
                Err(e) => {
                    // The other processes wait in the sum below: end the run (MPI), or return.
                    self.collective.fail(&e);
                    return Err(e);
                }
            }
        }
        let computed = Instant::now();
        // The whole batch's mean loss and gradient: each shard's mean weighted by its rows,
        // summed here, then over the processes, bucket by bucket. Layout: the loss, then
        // every gradient in parameter order.
        let sizes: Vec<usize> = self.replicas[0]
            .1
            .parameters()
            .iter()
            .map(|(_, p)| p.numel())
            .collect();
        let mut gather = Gather::new(&parts, &sizes);
        let mut gathering = Duration::ZERO;
        let bucket = (self.bucket_bytes / 8).max(1);
        let flat = self
            .collective
            .sum_buckets(gather.len(), bucket, &mut |range, out| {
                let t = Instant::now();
                let filled = gather.fill(range, out);
                gathering += t.elapsed();
                filled
            })?;
        let reduced = Instant::now();
        let (device, model) = &mut self.replicas[0];
        let mut params: Vec<&mut Tensor> =
            model.parameters_mut().into_iter().map(|(_, p)| p).collect();
        let mut at = 1;
        for p in params.iter_mut() {
            let n = p.numel();
            let avg: Vec<f32> = flat[at..at + n].iter().map(|&v| v as f32).collect();
            at += n;
            let g = Tensor::from_vec(device, avg, p.shape())?;
            p.zero_grad();
            p.backward_with(&g)?;
        }
        self.optimizer.step(&mut params)?;
        for p in &mut params {
            p.zero_grad();
        }
        let updated = Instant::now();
        self.broadcast()?;
        let t = &mut self.times;
        t.steps += 1;
        t.compute += computed - started;
        t.gather += gathering;
        t.reduce += (reduced - computed).saturating_sub(gathering);
        t.update += updated - reduced;
        t.broadcast += updated.elapsed();
        Ok(flat[0] as f32)
    }

    /// Writes a checkpoint (the model, the optimizer's state and `progress`, as
    /// `kiln::nn::save_checkpoint` does) from process 0; the other processes write nothing.
    pub fn save_checkpoint(&self, path: &Path, progress: &[(&str, String)]) -> Result<()> {
        if self.collective.rank() != 0 {
            return Ok(());
        }
        save_checkpoint(path, &self.replicas[0].1, &*self.optimizer, progress)
    }

    /// Continues from a checkpoint that [`DataParallel::save_checkpoint`] wrote, with any
    /// number of processes and devices: every process reads `path` (a shared file system, or
    /// a copy on each machine) into its first replica and its optimizer, then every replica
    /// takes process 0's parameters. Returns the checkpoint's progress entries.
    pub fn load_checkpoint(&mut self, path: &Path) -> Result<BTreeMap<String, String>> {
        let progress = load_checkpoint(path, &mut self.replicas[0].1, &mut *self.optimizer)?;
        self.broadcast()?;
        Ok(progress)
    }

    /// Gives every replica of every process process 0's first replica's parameters.
    fn broadcast(&mut self) -> Result<()> {
        let mut flat: Vec<f32> = Vec::new();
        for (_, p) in self.replicas[0].1.parameters() {
            flat.extend(p.to_vec()?);
        }
        self.collective.broadcast(&mut flat)?;
        let first = usize::from(self.collective.rank() == 0);
        for (dev, model) in &mut self.replicas[first..] {
            let mut at = 0;
            for (_, p) in model.parameters_mut() {
                let n = p.numel();
                *p = Tensor::from_vec(dev, flat[at..at + n].to_vec(), p.shape())?.with_grad()?;
                at += n;
            }
        }
        Ok(())
    }
}

/// The weighted sum of the replicas' shares (their losses and gradients), produced a range at a
/// time in the layout of the all-reduce: each parameter's gradients are read back from every
/// replica when the first bucket that holds part of them is filled.
struct Gather<'p> {
    parts: &'p [(f64, Part)],
    /// Each parameter's first position in the layout (the loss is at 0), and its length.
    spans: Vec<(usize, usize)>,
    len: usize,
    /// The parameter read last, and its weighted sum.
    current: Option<(usize, Vec<f64>)>,
}

impl<'p> Gather<'p> {
    fn new(parts: &'p [(f64, Part)], sizes: &[usize]) -> Gather<'p> {
        let mut at = 1;
        let spans = sizes
            .iter()
            .map(|&n| {
                at += n;
                (at - n, n)
            })
            .collect();
        Gather {
            parts,
            spans,
            len: at,
            current: None,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    /// Writes the values of `range` into `out` (ranges come in order).
    fn fill(&mut self, range: Range<usize>, out: &mut [f64]) -> Result<()> {
        let mut pos = range.start;
        while pos < range.end {
            if pos == 0 {
                out[0] = self.parts.iter().map(|(w, (l, _))| w * f64::from(*l)).sum();
                pos = 1;
                continue;
            }
            // The parameter holding `pos`: spans are sorted by their start.
            let j = self.spans.partition_point(|&(start, _)| start <= pos) - 1;
            let (start, n) = self.spans[j];
            if self.current.as_ref().is_none_or(|(k, _)| *k != j) {
                let mut sum = vec![0f64; n];
                for (w, (_, grads)) in self.parts {
                    for (s, v) in sum.iter_mut().zip(grads[j].to_vec()?) {
                        *s += w * f64::from(v);
                    }
                }
                self.current = Some((j, sum));
            }
            let end = range.end.min(start + n);
            if let Some((_, sum)) = &self.current {
                out[pos - range.start..end - range.start]
                    .copy_from_slice(&sum[pos - start..end - start]);
            }
            pos = end;
        }
        Ok(())
    }
}
