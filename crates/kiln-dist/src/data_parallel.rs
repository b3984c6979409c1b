//! [`DataParallel`]: replicas on the devices of one process.

use kiln::nn::{Module, Optimizer};
use kiln::{Device, Error, Result, Tensor};
use std::ops::Range;

/// What a replica's share of a step gives back: its mean loss and its parameters' gradients,
/// read back, in parameter order.
type Part = (f32, Vec<Vec<f32>>);

/// One replica of a model on each of several devices; see the crate's documentation.
pub struct DataParallel<M> {
    /// `(device, replica)`, the first one's device holding the optimizer.
    replicas: Vec<(Device, M)>,
    optimizer: Box<dyn Optimizer + Send>,
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

    /// The rows of a batch of `batch` rows that each replica takes: contiguous shards, as
    /// equal as they can be (the first ones one row longer), in device order.
    pub fn shards(&self, batch: usize) -> Vec<Range<usize>> {
        let n = self.replicas.len();
        let mut start = 0;
        (0..n)
            .map(|i| {
                let len = batch / n + usize::from(i < batch % n);
                start += len;
                start - len..start
            })
            .collect()
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
            if let Some(part) = r? {
                parts.push((rows.len() as f64 / batch as f64, part));
            }
        }
        // The whole batch's mean loss and gradient: each shard's mean weighted by its rows.
        let mean_loss: f64 = parts.iter().map(|(w, (l, _))| w * f64::from(*l)).sum();
        let (device, model) = &mut self.replicas[0];
        let mut params: Vec<&mut Tensor> =
            model.parameters_mut().into_iter().map(|(_, p)| p).collect();
        for (i, p) in params.iter_mut().enumerate() {
            let mut sum = vec![0f64; p.numel()];
            for (w, (_, grads)) in &parts {
                for (s, g) in sum.iter_mut().zip(&grads[i]) {
                    *s += w * f64::from(*g);
                }
            }
            let avg: Vec<f32> = sum.into_iter().map(|v| v as f32).collect();
            let g = Tensor::from_vec(device, avg, p.shape())?;
            p.zero_grad();
            p.backward_with(&g)?;
        }
        self.optimizer.step(&mut params)?;
        for p in &mut params {
            p.zero_grad();
        }
        self.broadcast()?;
        Ok(mean_loss as f32)
    }

    /// Copies the first replica's parameters into every other replica.
    fn broadcast(&mut self) -> Result<()> {
        let (first, rest) = self.replicas.split_at_mut(1);
        let values: Vec<Vec<f32>> = first[0]
            .1
            .parameters()
            .into_iter()
            .map(|(_, p)| p.to_vec())
            .collect::<Result<_>>()?;
        for (dev, model) in rest {
            for ((_, p), v) in model.parameters_mut().into_iter().zip(&values) {
                *p = Tensor::from_vec(dev, v.clone(), p.shape())?.with_grad()?;
            }
        }
        Ok(())
    }
}
