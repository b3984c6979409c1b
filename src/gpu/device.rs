//! The GPU's device services ([`DeviceBackend`]): running pending work, counters, memory, the
//! fusion switch, timing, and loss.

use super::context::GpuContext;
use super::kernels::fused;
use crate::backend::{DeviceBackend, DeviceStats, MemoryStats};
use crate::error::Result;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

impl DeviceBackend for GpuContext {
    fn synchronize(&self) -> Result<()> {
        fused::materialize_pending(self)?;
        GpuContext::synchronize(self)
    }

    fn flush(&self) -> Result<()> {
        fused::materialize_pending(self)?;
        GpuContext::flush(self)
    }

    fn stats(&self) -> DeviceStats {
        let (fused_kernels, fused_ops) = fused::counters(self);
        let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DeviceStats {
            dispatches: count(&self.dispatches),
            fused_kernels,
            fused_ops,
            pipelines: GpuContext::pipeline_count(self),
            replayed: count(&self.replayed),
            submissions: count(&self.submissions),
        }
    }

    fn set_fusion(&self, on: bool) {
        fused::set_enabled(self, on);
    }

    fn time(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<Option<Duration>> {
        fused::materialize_pending(self)?;
        GpuContext::time(self, || {
            f()?;
            fused::materialize_pending(self)
        })
    }

    fn memory(&self) -> MemoryStats {
        GpuContext::memory(self)
    }

    fn trim(&self) {
        GpuContext::trim(self);
    }

    fn set_memory_budget(&self, bytes: Option<u64>) {
        GpuContext::set_memory_budget(self, bytes);
    }

    fn destroy(&self) {
        GpuContext::destroy(self);
    }

    fn is_lost(&self) -> bool {
        GpuContext::is_lost(self)
    }
}
