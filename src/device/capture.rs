//! The hooks that ops call while a step is being captured ([`Device::capture`]): work made
//! once, work a replay could not repeat, and the host index values a replay must check again.
//! They sit at the device layer, below `tensor/`, so that ops and the optimizers reach them
//! without importing the capture API above them (`crate::graph`).

use super::Device;
use crate::error::{Error, Result};
use crate::gpu::capture::CaptureLog;
use std::sync::Arc;

impl Device {
    /// Run `f` (which makes state that must be made once, such as an optimizer's zero
    /// moments) without keeping what it records in the step being captured here, if any.
    pub(crate) fn capture_once<R>(&self, f: impl FnOnce() -> Result<R>) -> Result<R> {
        let Some(ctx) = self.gpu_context() else {
            return f();
        };
        let Some(log) = ctx.end_capture() else {
            return f();
        };
        let out = f();
        ctx.resume_capture(log);
        out
    }

    /// `Unsupported` (with `reason`) if a step is being captured here: for work that a replay
    /// could not repeat faithfully.
    pub(crate) fn refuse_in_capture(&self, reason: &str) -> Result<()> {
        match self.gpu_context() {
            Some(ctx) if ctx.capturing() => Err(Error::Unsupported {
                op: "capture",
                reason: reason.into(),
            }),
            _ => Ok(()),
        }
    }

    /// Note that `op` checked the host values `idx` against `len`: if they are a graph
    /// input's, a replay checks new values against the same bound.
    pub(crate) fn note_index_bound(&self, idx: &Arc<Vec<u32>>, op: &'static str, len: usize) {
        self.on_graph_input(idx, |log, key| log.index_bounds.push((key, op, len)));
    }

    /// Whether a step is being captured here and `idx` are a graph input's host values (which
    /// an op must then not plan from: a replay brings new ones).
    pub(crate) fn is_graph_input(&self, idx: &Arc<Vec<u32>>) -> bool {
        self.on_graph_input(idx, |_, _| ()).is_some()
    }

    /// `f` on this thread's capture here (with the values' key), if `idx` are the host values
    /// of one of its graph inputs.
    fn on_graph_input<R>(
        &self,
        idx: &Arc<Vec<u32>>,
        f: impl FnOnce(&mut CaptureLog, usize) -> R,
    ) -> Option<R> {
        let key = Arc::as_ptr(idx) as usize;
        self.gpu_context()?
            .with_capture(|log| log.host_inputs.contains(&key).then(|| f(log, key)))
            .flatten()
    }
}
