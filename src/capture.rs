//! Capture a step once and replay it with new inputs: [`Device::capture`] and [`Graph`].
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
use std::cell::{Cell, RefCell};
use std::sync::Arc;

/// Rewrites part of a captured dispatch's uniform before each replay: `(byte offset, bytes)`.
/// Called once per replay however many dispatches share it.
pub(crate) type Refresh = dyn Fn() -> Patch + Send + Sync;

/// Bytes to write at an offset of a uniform buffer.
pub(crate) type Patch = (u64, Vec<u8>);

/// A step as [`Device::capture`] takes it.
type Step<'a> = Box<dyn FnMut(&[Tensor]) -> Result<Vec<Tensor>> + 'a>;

thread_local! {
    static REFRESH: RefCell<Option<Arc<Refresh>>> = const { RefCell::new(None) };
    static APPLY: Cell<bool> = const { Cell::new(false) };
}

/// Run `f` (an optimizer step) with `refresh` for the dispatches inside it that
/// [`refreshed`] marks: only those, not other work `f` causes (running a pending gradient
/// program, say), have their uniforms rewritten at a replay.
pub(crate) fn with_refresh<R>(refresh: Arc<Refresh>, f: impl FnOnce() -> R) -> R {
    let before = REFRESH.with(|r| r.replace(Some(refresh)));
    let out = f();
    REFRESH.with(|r| *r.borrow_mut() = before);
    out
}

/// Run `f`, whose dispatches take the enclosing [`with_refresh`]'s refresh (if any).
pub(crate) fn refreshed<R>(f: impl FnOnce() -> R) -> R {
    let before = APPLY.with(|a| a.replace(true));
    let out = f();
    APPLY.with(|a| a.set(before));
    out
}

/// The refresh for a dispatch recorded now: inside [`refreshed`] within [`with_refresh`].
pub(crate) fn current_refresh() -> Option<Arc<Refresh>> {
    if !APPLY.with(Cell::get) {
        return None;
    }
    REFRESH.with(|r| r.borrow().clone())
}

/// Run `f` (which makes state that must be made once, such as an optimizer's zero moments)
/// without keeping what it records in the step being captured on `device`, if any.
pub(crate) fn once<R>(device: &Device, f: impl FnOnce() -> Result<R>) -> Result<R> {
    let Some(ctx) = device.gpu_context() else {
        return f();
    };
    let Some(log) = ctx.end_capture() else {
        return f();
    };
    let out = f();
    ctx.resume_capture(log);
    out
}

/// Note that `op` checked the host values `idx` against `len`: if they are a graph input's,
/// a replay checks new values against the same bound.
pub(crate) fn note_index_bound(device: &Device, idx: &Arc<Vec<u32>>, op: &'static str, len: usize) {
    on_graph_input(device, idx, |log, key| {
        log.index_bounds.push((key, op, len))
    });
}

/// Whether a step is being captured on `device` and `idx` are a graph input's host values
/// (which an op must then not plan from: a replay brings new ones).
pub(crate) fn is_graph_input(device: &Device, idx: &Arc<Vec<u32>>) -> bool {
    on_graph_input(device, idx, |_, _| ()).is_some()
}

/// `f` on this thread's capture on `device` (with the values' key), if `idx` are the host
/// values of one of its graph inputs.
fn on_graph_input<R>(
    device: &Device,
    idx: &Arc<Vec<u32>>,
    f: impl FnOnce(&mut crate::gpu::capture::CaptureLog, usize) -> R,
) -> Option<R> {
    let key = Arc::as_ptr(idx) as usize;
    device
        .gpu_context()?
        .with_capture(|log| log.host_inputs.contains(&key).then(|| f(log, key)))
        .flatten()
}

/// `Unsupported` (with `reason`) if a step is being captured on `device`: for work that a
/// replay could not repeat faithfully.
pub(crate) fn refuse(device: &Device, reason: &str) -> Result<()> {
    match device.gpu_context() {
        Some(ctx) if ctx.capturing() => Err(Error::Unsupported {
            op: "capture",
            reason: reason.into(),
        }),
        _ => Ok(()),
    }
}

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
                if let Some((_, b)) = t.gpu_buffer("capture")? {
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
                o.gpu_buffer("capture")?;
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
            if let Some((_, b)) = o.gpu_buffer("capture")? {
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
                    if let (Some((_, src)), Some((_, dst))) =
                        (new.gpu_buffer("graph run")?, own.gpu_buffer("graph run")?)
                    {
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
