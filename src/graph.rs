//! Capture a step once and replay it with new inputs: [`Device::capture`] and [`Graph`]. This
//! is the API above the tensor layer; the hooks ops call while a step is captured are
//! `Device`'s (`device/capture.rs`), the GPU's log and replay are `gpu::capture`'s.
//!
//! On a GPU the step runs once while everything it records is kept; [`Graph::run`] then copies
//! the new inputs into the graph's input buffers and records the kept dispatches again. No op
//! runs on the host: no shape checks, no autograd graph, no fusion planning, no buffer
//! allocation, no bind groups, no pipeline lookups. On the CPU backend, where none of that is
//! worth skipping, a run calls the step again: the same API, the same answers.
//!
//! What a replay repeats is what the step recorded, so:
//! - Shapes and dtypes are fixed: every run takes inputs of the captured shapes.
//! - Values made on the host inside the step (`Tensor::from_vec`, `rand`, a scalar
//!   uploaded) are constants of the graph. Pass data that changes as an input.
//! - A step that reads values back (`to_vec`, `item`) cannot be captured (`Unsupported`):
//!   read the graph's outputs instead.
//! - Dropout draws its masks on the host: a step with dropout in training mode cannot be
//!   captured (`Unsupported`), since every replay would repeat one mask.
//! - u32 inputs may feed ops that check their values on the host (`cross_entropy`,
//!   `index_select`, `gather`): a run checks new values against the same bounds first.
//!   `index_select`'s gradient, which groups its indices on the host in an ordinary step,
//!   reads a graph input's indices on the device instead.
//! - Optimizer steps are replayed as steps: parameters and state update in place, Adam's bias
//!   correction and step count advance, SGD's momentum continues. Hyper-parameters (the
//!   learning rate) are those of the capture: capture again to change them.
//! - A capture keeps what its own thread records: other threads may use the device meanwhile
//!   (and capture steps of their own). Tensors the step stores outside its outputs, as
//!   results of ops (not in-place updates), are not refreshed by a replay: return them.

use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::capture::Replay;
use crate::gpu::kernels::fused::materialize_pending;
use crate::tensor::Tensor;
use std::sync::Arc;

/// A step as [`Device::capture`] takes it.
type Step<'a> = Box<dyn FnMut(&[Tensor]) -> Result<Vec<Tensor>> + 'a>;

/// A step captured by [`Device::capture`], to run again with new inputs.
pub struct Graph<'a> {
    device: Device,
    /// The shape and dtype of each input.
    signature: Vec<(Vec<usize>, DType)>,
    how: How<'a>,
}

enum How<'a> {
    /// CPU backend: the step itself, called again.
    Rerun(Step<'a>),
    /// GPU: the kept dispatches, the graph's own input tensors (runs copy new values into
    /// them) and the outputs (runs copy them out).
    Replay {
        replay: Replay,
        inputs: Vec<Tensor>,
        outputs: Vec<Tensor>,
        /// For each input, the bounds ops checked its host index values against.
        bounds: Vec<Vec<(&'static str, usize)>>,
    },
}

impl Device {
    /// Run `step` once on `inputs` and keep it as a [`Graph`] that [`Graph::run`] repeats on
    /// new inputs of the same shapes; returns the graph and this first run's outputs. On a GPU
    /// a run skips all host work (module docs: what a replay repeats, what cannot be captured);
    /// on the CPU backend it calls `step` again. `step` gets tensors holding the inputs'
    /// values (on a GPU, the graph's own copies) and returns the outputs; it may run
    /// `backward` and an optimizer step. Run the step once without capturing first where
    /// kernels are still being tuned: a capture keeps the tuned choice or the heuristic's.
    pub fn capture<'a>(
        &self,
        inputs: &[&Tensor],
        mut step: impl FnMut(&[Tensor]) -> Result<Vec<Tensor>> + 'a,
    ) -> Result<(Graph<'a>, Vec<Tensor>)> {
        for t in inputs {
            if !t.device().same(self) {
                return Err(Error::DeviceMismatch {
                    op: "capture",
                    lhs: self.to_string(),
                    rhs: t.device().to_string(),
                });
            }
        }
        let signature = inputs
            .iter()
            .map(|t| (t.shape().to_vec(), t.dtype()))
            .collect();
        let Some(ctx) = self.gpu_context() else {
            let owned: Vec<Tensor> = inputs.iter().map(|t| t.detach()).collect();
            let outputs = step(&owned)?;
            let graph = Graph {
                device: self.clone(),
                signature,
                how: How::Rerun(Box::new(step)),
            };
            return Ok((graph, outputs));
        };
        materialize_pending(ctx)?;
        let owned = inputs
            .iter()
            .map(|t| t.detached_copy("capture"))
            .collect::<Result<Vec<_>>>()?;
        let host_keys: Vec<Option<usize>> = owned
            .iter()
            .map(|t| {
                (t.dtype() == DType::U32)
                    .then(|| t.host_indices().map(|v| Arc::as_ptr(&v) as usize))
                    .flatten()
            })
            .collect();
        ctx.begin_capture()?;
        let ran = (|| {
            let mut bufs = Vec::new();
            for t in &owned {
                if let Some((_, b)) = t.storage().gpu_buffer("capture")? {
                    bufs.push(b.clone());
                }
            }
            ctx.with_capture(|log| {
                log.pin(ctx, &bufs.iter().collect::<Vec<_>>());
                log.host_inputs = host_keys.iter().flatten().copied().collect();
            });
            let outputs = step(&owned)?;
            for o in &outputs {
                if !o.device().same(self) {
                    return Err(Error::DeviceMismatch {
                        op: "capture",
                        lhs: self.to_string(),
                        rhs: o.device().to_string(),
                    });
                }
                o.storage().gpu_buffer("capture")?;
            }
            Ok(outputs)
        })();
        let log = ctx
            .end_capture()
            .ok_or_else(|| Error::Gpu("capture: internal error: the capture ended early".into()))?;
        let mut replay = Replay {
            ctx: ctx.clone(),
            log,
        };
        let outputs = ran?;
        let mut out_bufs = Vec::new();
        for o in &outputs {
            if let Some((_, b)) = o.storage().gpu_buffer("capture")? {
                out_bufs.push(b.clone());
            }
        }
        replay.log.pin(ctx, &out_bufs.iter().collect::<Vec<_>>());
        let bounds = host_keys
            .iter()
            .map(|key| {
                replay
                    .log
                    .index_bounds
                    .iter()
                    .filter(|(k, _, _)| Some(*k) == *key)
                    .map(|&(_, op, len)| (op, len))
                    .collect()
            })
            .collect();
        log::debug!(
            "capture: {} dispatches kept, {} buffers pinned, {} host uploads kept as constants",
            replay.log.dispatches.len(),
            replay.log.pinned.len(),
            replay.log.uploads
        );
        let first = outputs
            .iter()
            .map(|o| o.detached_copy("capture"))
            .collect::<Result<Vec<_>>>()?;
        let graph = Graph {
            device: self.clone(),
            signature,
            how: How::Replay {
                replay,
                inputs: owned,
                outputs,
                bounds,
            },
        };
        Ok((graph, first))
    }
}

impl std::fmt::Debug for Graph<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("device", &self.device.to_string())
            .field("inputs", &self.signature)
            .field("dispatches", &self.dispatches())
            .finish()
    }
}

impl Graph<'_> {
    /// Run the step again on `inputs` (the captured shapes and dtypes, on the graph's
    /// device) and return its outputs, new tensors each run. A u32 input is checked against
    /// the bounds the step's ops checked it against (`IndexOutOfRange`) before anything runs.
    pub fn run(&mut self, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        self.check(inputs)?;
        match &mut self.how {
            How::Rerun(step) => {
                let owned: Vec<Tensor> = inputs.iter().map(|t| t.detach()).collect();
                step(&owned)
            }
            How::Replay {
                replay,
                inputs: own,
                outputs,
                bounds,
            } => {
                for (t, bounds) in inputs.iter().zip(bounds.iter()) {
                    if let Some(&(op, len)) = bounds.iter().min_by_key(|b| b.1) {
                        t.checked_indices(op, len)?;
                    }
                }
                let ctx = &replay.ctx;
                for (new, own) in inputs.iter().zip(own.iter()) {
                    if let (Some((_, src)), Some((_, dst))) = (
                        new.storage().gpu_buffer("graph run")?,
                        own.storage().gpu_buffer("graph run")?,
                    ) {
                        ctx.copy(src, dst, new.numel() as u64 * 4)?;
                    }
                }
                replay.record()?;
                outputs
                    .iter()
                    .map(|o| o.detached_copy("graph run"))
                    .collect()
            }
        }
    }

    /// Dispatches one run records (0 on the CPU backend, which runs the step's ops again).
    pub fn dispatches(&self) -> usize {
        match &self.how {
            How::Rerun(_) => 0,
            How::Replay { replay, .. } => replay.log.dispatches.len(),
        }
    }

    /// The shapes and dtypes the inputs of every run must have.
    pub fn inputs(&self) -> &[(Vec<usize>, DType)] {
        &self.signature
    }

    fn check(&self, inputs: &[&Tensor]) -> Result<()> {
        if inputs.len() != self.signature.len() {
            return Err(Error::InvalidArgument {
                op: "graph run",
                reason: format!(
                    "the graph takes {} inputs, got {}",
                    self.signature.len(),
                    inputs.len()
                ),
            });
        }
        for (t, (shape, dtype)) in inputs.iter().zip(&self.signature) {
            if !t.device().same(&self.device) {
                return Err(Error::DeviceMismatch {
                    op: "graph run",
                    lhs: self.device.to_string(),
                    rhs: t.device().to_string(),
                });
            }
            if t.shape() != shape.as_slice() {
                return Err(Error::ShapeMismatch {
                    op: "graph run",
                    lhs: shape.clone(),
                    rhs: t.shape().to_vec(),
                });
            }
            t.expect(*dtype, "graph run")?;
        }
        Ok(())
    }
}
