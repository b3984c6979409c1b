//! [`DataParallel`]: replicas on the devices of one process.

use crate::collective::{Collective, Single};
use kiln::nn::{Module, Optimizer, load_checkpoint, save_checkpoint};
use kiln::{Device, Error, Result, Tensor};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::time::{Duration, Instant};

/// Bytes of gradient per bucket by default: 4 MiB (of f64 sums), as PyTorch DDP's default
/// bucket is a few MB.
pub const DEFAULT_BUCKET_BYTES: usize = 4 << 20;

/// Where the time of the steps so far went, summed over steps (wall-clock time of this
/// process).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepTimes {
    /// Steps timed.
    pub steps: usize,
    /// Waiting for the replicas' forward and backward (concurrently on their threads; what
    /// the gathering of completed gradients did not overlap).
    pub compute: Duration,
    /// Reading the gradients back and summing the replicas' shares on the host. On a GPU a
    /// read-back also waits for the device to finish the work queued before it, so most of
    /// a GPU replica's backward shows here, not in `compute` (which is the recording).
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
    /// ([`DataParallel::shards`]; a replica with no rows sits the step out). Each gradient is
    /// averaged on the host, weighted by the shards' rows, as soon as backward has completed it
    /// on every replica, and summed over the processes bucket by bucket while backward goes on;
    /// the optimizer steps once on the first device, and the new parameters are copied to the
    /// other replicas. Returns the batch's
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
        let sizes: Vec<usize> = self.replicas[0]
            .1
            .parameters()
            .iter()
            .map(|(_, p)| p.numel())
            .collect();
        let weights: Vec<f64> = shards
            .iter()
            .map(|r| r.len() as f64 / batch as f64)
            .collect();
        let DataParallel {
            replicas,
            collective,
            bucket_bytes,
            ..
        } = self;
        let bucket = (*bucket_bytes / 8).max(1);
        // Each replica runs forward and backward on its own thread and sends every gradient
        // the moment backward completes it; this thread sums the replicas' shares bucket by
        // bucket and starts each bucket's sum over the processes while backward goes on.
        let (tx, rx) = std::sync::mpsc::channel::<Msg>();
        let (flat, times) = std::thread::scope(|s| {
            for (r, ((dev, model), rows)) in replicas.iter_mut().zip(&shards).enumerate() {
                model.zero_grad();
                if rows.is_empty() {
                    continue;
                }
                let (tx, rows) = (tx.clone(), rows.clone());
                s.spawn(move || {
                    let sent = replica_step(r, model, dev, rows, loss, &tx);
                    let _ = tx.send(match sent {
                        Ok(value) => Msg::Loss(r, value),
                        Err(e) => Msg::Failed(e),
                    });
                });
            }
            drop(tx);
            let mut gather = Gather::new(&weights, &sizes, rx);
            let summed = collective.sum_buckets(gather.len(), bucket, &mut |range, out| {
                gather.fill(range, out)
            });
            (summed, (gather.waiting, gather.gathering))
        });
        let flat = flat?;
        let (waiting, gathering) = times;
        let reduced = Instant::now();
        let (device, model) = &mut self.replicas[0];
        let mut params: Vec<&mut Tensor> =
            model.parameters_mut().into_iter().map(|(_, p)| p).collect();
        // The layout is the parameters in reverse order, then the loss.
        let mut at = flat.len() - 1;
        for p in params.iter_mut() {
            let n = p.numel();
            at -= n;
            let avg: Vec<f32> = flat[at..at + n].iter().map(|&v| v as f32).collect();
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
        let summing = reduced - started;
        t.steps += 1;
        t.compute += waiting;
        t.gather += gathering;
        t.reduce += summing.saturating_sub(waiting + gathering);
        t.update += updated - reduced;
        t.broadcast += updated.elapsed();
        Ok(flat[flat.len() - 1] as f32)
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

/// What a replica's thread tells the summing thread.
enum Msg {
    /// Replica `.0`'s gradient of parameter `.1` is complete.
    Ready(usize, usize, Tensor),
    /// Replica `.0` finished its share, with this mean loss.
    Loss(usize, f32),
    /// A replica's share failed.
    Failed(Error),
}

/// Replica `r`'s forward and backward on `rows`, sending each parameter's gradient as soon as
/// backward completes it; returns its loss.
fn replica_step<M: Module, F>(
    r: usize,
    model: &M,
    dev: &Device,
    rows: Range<usize>,
    loss: &F,
    tx: &std::sync::mpsc::Sender<Msg>,
) -> Result<f32>
where
    F: Fn(&M, &Device, Range<usize>) -> Result<Tensor> + Sync,
{
    let l = loss(model, dev, rows)?;
    let params = model.parameters();
    let leaves: Vec<&Tensor> = params.iter().map(|(_, p)| *p).collect();
    let mut reported = vec![false; leaves.len()];
    l.backward_reporting(&leaves, &mut |j| {
        let grad = leaves[j].grad().ok_or_else(|| Error::Autograd {
            op: "DataParallel::step",
            reason: format!("parameter `{}` has no gradient", params[j].0),
        })?;
        reported[j] = true;
        // The summing thread may have stopped on another replica's error: nothing to do then.
        let _ = tx.send(Msg::Ready(r, j, grad));
        Ok(())
    })?;
    if let Some(j) = reported.iter().position(|&done| !done) {
        return Err(Error::Autograd {
            op: "DataParallel::step",
            reason: format!("parameter `{}` got no gradient", params[j].0),
        });
    }
    Ok(l.to_vec()?[0])
}

/// The weighted sum of the replicas' shares (their gradients and losses), produced a range at
/// a time in the layout of the all-reduce: the parameters in reverse order (about the order in
/// which backward completes them), then the loss. A range waits for the gradients it holds.
struct Gather<'w> {
    /// Each replica's weight (its share of the batch's rows; 0 for an idle one).
    weights: &'w [f64],
    /// Each parameter's first position in the layout, and its length.
    spans: Vec<(usize, usize)>,
    len: usize,
    rx: std::sync::mpsc::Receiver<Msg>,
    /// Gradients received and not yet summed, by parameter, with their replica.
    pending: Vec<Vec<(usize, Tensor)>>,
    /// Each parameter's weighted sum, once every replica's gradient is in.
    sums: Vec<Option<Vec<f64>>>,
    losses: Vec<Option<f32>>,
    /// Time spent waiting for the replicas, and reading and summing their gradients.
    waiting: Duration,
    gathering: Duration,
}

impl<'w> Gather<'w> {
    fn new(weights: &'w [f64], sizes: &[usize], rx: std::sync::mpsc::Receiver<Msg>) -> Gather<'w> {
        let total: usize = sizes.iter().sum();
        let mut end = total;
        let spans = sizes
            .iter()
            .map(|&n| {
                end -= n;
                (end, n)
            })
            .collect();
        Gather {
            weights,
            spans,
            len: total + 1,
            rx,
            pending: vec![Vec::new(); sizes.len()],
            sums: vec![None; sizes.len()],
            losses: vec![None; weights.len()],
            waiting: Duration::ZERO,
            gathering: Duration::ZERO,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn active(&self) -> usize {
        self.weights.iter().filter(|&&w| w > 0.0).count()
    }

    /// Takes the next message from a replica.
    fn receive(&mut self) -> Result<()> {
        let t = Instant::now();
        let msg = self.rx.recv();
        self.waiting += t.elapsed();
        match msg {
            Ok(Msg::Ready(r, j, grad)) => {
                self.pending[j].push((r, grad));
                Ok(())
            }
            Ok(Msg::Loss(r, value)) => {
                self.losses[r] = Some(value);
                Ok(())
            }
            Ok(Msg::Failed(e)) => Err(e),
            Err(_) => Err(Error::Autograd {
                op: "DataParallel::step",
                reason: "a replica's thread ended without finishing its share".into(),
            }),
        }
    }

    /// The weighted sums over the replicas of the parameters `js`, waiting for their
    /// gradients: each replica's are read back together (one read-back per bucket and
    /// replica on a GPU, see [`read_back`]), and the replicas are added in device order,
    /// whatever order their gradients came in, so the sums are the same on every run.
    fn sum_params(&mut self, js: &[usize]) -> Result<()> {
        let js: Vec<usize> = js
            .iter()
            .copied()
            .filter(|&j| self.sums[j].is_none())
            .collect();
        while js.iter().any(|&j| self.pending[j].len() < self.active()) {
            self.receive()?;
        }
        if js.is_empty() {
            return Ok(());
        }
        let t = Instant::now();
        let mut sums: Vec<Vec<f64>> = js.iter().map(|&j| vec![0f64; self.spans[j].1]).collect();
        for (r, &w) in self.weights.iter().enumerate().filter(|(_, w)| **w > 0.0) {
            let grads: Vec<Tensor> = js
                .iter()
                .filter_map(|&j| {
                    let at = self.pending[j].iter().position(|(from, _)| *from == r)?;
                    Some(self.pending[j].swap_remove(at).1)
                })
                .collect();
            for (sum, values) in sums.iter_mut().zip(read_back(&grads)?) {
                for (s, v) in sum.iter_mut().zip(values) {
                    *s += w * f64::from(v);
                }
            }
        }
        for (j, sum) in js.into_iter().zip(sums) {
            self.sums[j] = Some(sum);
        }
        self.gathering += t.elapsed();
        Ok(())
    }

    /// Writes the values of `range` into `out`.
    fn fill(&mut self, range: Range<usize>, out: &mut [f64]) -> Result<()> {
        let mut pos = range.start;
        while pos < range.end {
            if pos == self.len - 1 {
                while self.losses.iter().filter(|l| l.is_some()).count() < self.active() {
                    self.receive()?;
                }
                out[pos - range.start] = self
                    .losses
                    .iter()
                    .zip(self.weights)
                    .map(|(l, w)| l.map_or(0.0, |l| w * f64::from(l)))
                    .sum();
                pos += 1;
                continue;
            }
            // The parameter holding `pos`: the spans run backwards from the layout's end.
            let j = self
                .spans
                .iter()
                .position(|&(start, n)| start <= pos && pos < start + n)
                .ok_or_else(|| Error::Autograd {
                    op: "DataParallel::step",
                    reason: format!("internal: no parameter holds position {pos}"),
                })?;
            if self.sums[j].is_none() {
                // Every parameter of the range at once: one read-back per replica.
                let (lo, hi) = (pos, range.end);
                let js: Vec<usize> = (0..self.spans.len())
                    .filter(|&k| {
                        let (start, n) = self.spans[k];
                        n > 0 && start < hi && start + n > lo
                    })
                    .collect();
                self.sum_params(&js)?;
            }
            let start = self.spans[j].0;
            let end = range.end.min(start + self.spans[j].1);
            let sum = self.sums[j].as_deref().unwrap_or_default();
            out[pos - range.start..end - range.start]
                .copy_from_slice(&sum[pos - start..end - start]);
            if end == start + self.spans[j].1 {
                self.sums[j] = Some(Vec::new()); // all of it copied out: free the values
            }
            pos = end;
        }
        Ok(())
    }
}

/// The values of `grads`, which live on one device: on a GPU flattened, joined and read back at
/// once (one staging buffer and one wait for all of them), on the CPU backend read each.
fn read_back(grads: &[Tensor]) -> Result<Vec<Vec<f32>>> {
    match grads.first() {
        Some(g) if !g.device().is_cpu() && grads.len() > 1 => {
            let flat = grads
                .iter()
                .map(|g| g.reshape(&[g.numel()]))
                .collect::<Result<Vec<_>>>()?;
            let all = Tensor::cat(&flat.iter().collect::<Vec<_>>(), 0)?.to_vec()?;
            let mut at = 0;
            Ok(grads
                .iter()
                .map(|g| {
                    at += g.numel();
                    all[at - g.numel()..at].to_vec()
                })
                .collect())
        }
        _ => grads.iter().map(Tensor::to_vec).collect(),
    }
}
