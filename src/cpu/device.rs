//! The CPU backend's device services ([`DeviceBackend`]): its fused programs run when asked;
//! it has no counters, pool, timer or loss.

use super::fused;
use crate::backend::{DeviceBackend, DeviceStats, MemoryStats};
use crate::error::Result;
use std::time::Duration;

/// The CPU backend as a device: one for the process.
pub(crate) struct CpuDevice;

impl DeviceBackend for CpuDevice {
    fn synchronize(&self) -> Result<()> {
        fused::materialize_pending()
    }

    fn flush(&self) -> Result<()> {
        fused::materialize_pending()
    }

    fn stats(&self) -> DeviceStats {
        DeviceStats::default()
    }

    fn set_fusion(&self, on: bool) {
        fused::set_enabled(on);
    }

    fn time(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<Option<Duration>> {
        f().map(|()| None)
    }

    fn memory(&self) -> MemoryStats {
        MemoryStats::default()
    }

    fn trim(&self) {}

    fn set_memory_budget(&self, _bytes: Option<u64>) {}

    fn destroy(&self) {
        log::warn!("Device::destroy on the CPU backend does nothing");
    }

    fn is_lost(&self) -> bool {
        false
    }
}
