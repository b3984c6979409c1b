//! `shaders/optim.wgsl`: fused optimizer updates, in place.

use super::Family;
use crate::error::Result;
use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::{KernelSpec, shader};
use crate::gpu::pool::PooledBuffer;
use crate::optim_params::OptimParams;

/// The 1-D kernels' workgroup size, shared with `GpuContext::dispatch_1d`.
use crate::gpu::context::WG_1D as WG;

fn spec(entry: &'static str) -> KernelSpec {
    KernelSpec {
        shader: shader!("optim.wgsl"),
        entry,
        constants: vec![("WG", f64::from(WG))],
        unchecked: false,
    }
}

pub(crate) fn specs() -> Vec<KernelSpec> {
    ["sgd", "sgd_momentum", "adam"]
        .into_iter()
        .map(spec)
        .collect()
}

/// Update `param` in place from `grad` and the state buffers: none (plain SGD), the momentum
/// buffer, or Adam's first and second moments.
pub(crate) fn update(
    ctx: &GpuContext,
    param: &PooledBuffer,
    grad: &PooledBuffer,
    state: &[&PooledBuffer],
    params: &OptimParams,
) -> Result<()> {
    let entry = match state.len() {
        0 => "sgd",
        1 => "sgd_momentum",
        _ => "adam",
    };
    let mut buffers = vec![&param.buffer, &grad.buffer];
    buffers.extend(state.iter().map(|s| &s.buffer));
    ctx.dispatch_1d(
        "optimizer step",
        &spec(entry),
        &buffers,
        bytemuck::bytes_of(params),
        params.n as usize,
    )
}

/// This family's specializations and uniform params structs (see `kernels::Family`).
pub(crate) const FAMILY: Family = Family {
    specs,
    params: &[("optim.wgsl", "Params", size_of::<OptimParams>())],
};
