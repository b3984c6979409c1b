//! [`DataParallel`]: replicas on the devices of one process.

use crate::collective::{Collective, Single};
use kiln::nn::{Module, Optimizer, load_checkpoint, save_checkpoint};
use kiln::{Device, Error, Result, Tensor};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

/// What a replica's share of a step gives back: its mean loss and its parameters' gradients,
/// read back, in parameter order.
type Part = (f32, Vec<Vec<f32>>);

/// One replica of a model on each of several devices (of this process, and of every process
/// of a [`Collective`]); see the crate's documentation.
pub struct DataParallel<M> {
    /// `(device, replica)`, the first one's device holding the optimizer.
    replicas: Vec<(Device, M)>,
    optimizer: Box<dyn Optimizer + Send>,
    /// The processes taking part ([`Single`] for this one alone).
    collective: Box<dyn Collective>,
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
        // Forward and backward on every replica at once; each returns its loss and its
        // parameters' gradients, read back.
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
                            .map(|(name, p)| match p.grad() {
                                Some(g) => g.to_vec(),
                                None => Err(Error::Autograd {
                                    op: "DataParallel::step",
                                    reason: format!("parameter `{name}` got no gradient"),
                                }),
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
        // The whole batch's mean loss and gradient: each shard's mean weighted by its rows,
        // summed here, then over the processes. Layout: the loss, then every gradient.
        let sizes: Vec<usize> = self.replicas[0]
            .1
            .parameters()
            .iter()
            .map(|(_, p)| p.numel())
            .collect();
        let mut flat = vec![0f64; 1 + sizes.iter().sum::<usize>()];
        for (w, (loss, grads)) in &parts {
            flat[0] += w * f64::from(*loss);
            let mut at = 1;
            for g in grads {
                for (s, v) in flat[at..at + g.len()].iter_mut().zip(g) {
                    *s += w * f64::from(*v);
                }
                at += g.len();
            }
        }
        self.collective.sum(&mut flat)?;
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
        self.broadcast()?;
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
