//! Capture and replay on a GPU: while a step is captured, every dispatch it records is also
//! kept (pipeline, bind group, grid) and every buffer it binds is pinned in the pool, so that no
//! later tensor is handed one of them. A replay records the kept dispatches again: no op runs on
//! the host, nothing is planned, validated or allocated, and no bind group is made.
//!
//! Uniform values are the captured ones, except where the op that recorded them asked for a
//! refresh ([`refreshed`]): the optimizers' step-dependent values (Adam's bias correction, the
//! first momentum step) are rewritten before each replay.

use super::context::GpuContext;
use crate::optim_params::{OptimParams, Replayed};
use std::cell::RefCell;
use std::sync::Arc;

thread_local! {
    static REFRESH: RefCell<Option<Arc<Replayed>>> = const { RefCell::new(None) };
}

/// Run `f` (an optimizer's own dispatch, whose uniform starts with an [`OptimParams`]) so that
/// a capture keeps `replay` with what it dispatches: each replay then rewrites those
/// hyper-parameters (all but `n`) with `replay()`'s, computed once per replay however many
/// dispatches share it.
pub(crate) fn refreshed<R>(replay: Option<&Arc<Replayed>>, f: impl FnOnce() -> R) -> R {
    let before = REFRESH.with(|r| r.replace(replay.cloned()));
    let out = f();
    REFRESH.with(|r| *r.borrow_mut() = before);
    out
}

/// The refresh for a dispatch recorded now: inside [`refreshed`].
pub(crate) fn current_refresh() -> Option<Arc<Replayed>> {
    REFRESH.with(|r| r.borrow().clone())
}

/// Where a refresh starts writing: every field after `n` (which a dispatch sets for itself).
const REFRESHED_FROM: usize = std::mem::offset_of!(OptimParams, lr);

/// One kept dispatch.
pub(crate) struct Dispatch {
    pub(crate) pipeline: wgpu::ComputePipeline,
    pub(crate) bind_group: wgpu::BindGroup,
    pub(crate) workgroups: [u32; 3],
    /// Its uniform buffer and the refresh that rewrites its hyper-parameters before a replay,
    /// if any.
    pub(crate) refresh: Option<(wgpu::Buffer, Arc<Replayed>)>,
}

/// What a capture has kept so far.
pub(crate) struct CaptureLog {
    /// The thread whose recordings this capture keeps.
    pub(crate) thread: std::thread::ThreadId,
    pub(crate) dispatches: Vec<Dispatch>,
    /// Every buffer pinned for the graph (once each per pin).
    pub(crate) pinned: Vec<wgpu::Buffer>,
    /// Host uploads recorded while capturing: their values are constants of the graph.
    pub(crate) uploads: usize,
    /// The u32 graph inputs whose values ops read on the host, by the address of those
    /// values, with the smallest bound an op checked them against (and that op).
    pub(crate) index_bounds: Vec<(usize, &'static str, usize)>,
    /// Addresses of the host values of the graph's u32 inputs.
    pub(crate) host_inputs: Vec<usize>,
}

impl CaptureLog {
    /// An empty log for the calling thread.
    pub(crate) fn new() -> CaptureLog {
        CaptureLog {
            thread: std::thread::current().id(),
            dispatches: Vec::new(),
            pinned: Vec::new(),
            uploads: 0,
            index_bounds: Vec::new(),
            host_inputs: Vec::new(),
        }
    }

    /// Keep `buffers` for the graph (pinned in `ctx`'s pool).
    pub(crate) fn pin(&mut self, ctx: &GpuContext, buffers: &[&wgpu::Buffer]) {
        ctx.pin(buffers.iter().copied());
        self.pinned.extend(buffers.iter().map(|&b| b.clone()));
    }
}

/// A captured GPU step: the dispatches to record again, and the buffers they use.
pub(crate) struct Replay {
    pub(crate) ctx: Arc<GpuContext>,
    pub(crate) log: CaptureLog,
}

impl Replay {
    /// Record the captured dispatches again, after rewriting the uniforms that asked for it.
    pub(crate) fn record(&self) -> crate::error::Result<()> {
        let ctx = &self.ctx;
        // Each refresh runs once per replay, whatever number of dispatches share it.
        let mut done: Vec<(&Arc<Replayed>, OptimParams)> = Vec::new();
        let mut writes = Vec::new();
        for d in &self.log.dispatches {
            let Some((uniform, refresh)) = &d.refresh else {
                continue;
            };
            let params = match done.iter().find(|(k, _)| Arc::ptr_eq(k, refresh)) {
                Some((_, p)) => *p,
                None => {
                    let p = refresh();
                    done.push((refresh, p));
                    p
                }
            };
            writes.push((uniform, params));
        }
        if !writes.is_empty() {
            // A queue write lands before the next submission: submit what an earlier replay
            // recorded first, so that it keeps the values it was recorded with.
            ctx.flush()?;
            for (uniform, params) in writes {
                let bytes = &bytemuck::bytes_of(&params)[REFRESHED_FROM..];
                ctx.queue
                    .write_buffer(uniform, REFRESHED_FROM as u64, bytes);
            }
        }
        ctx.record_all(
            self.log
                .dispatches
                .iter()
                .map(|d| (&d.pipeline, &d.bind_group, d.workgroups)),
        )
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        self.ctx.unpin(&self.log.pinned);
    }
}
