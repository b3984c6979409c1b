//! `shaders/optim.wgsl`: fused optimizer updates, in place.

use crate::error::Result;
use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::KernelSpec;
use crate::gpu::pool::PooledBuffer;
use bytemuck::{Pod, Zeroable};

/// The 1-D kernels' workgroup size, shared with `GpuContext::dispatch_1d`.
use crate::gpu::context::WG_1D as WG;

/// Hyper-parameters of one update, shared by every optimizer kernel.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default, Debug)]
pub(crate) struct OptimParams {
    pub n: u32,
    pub lr: f32,
    pub weight_decay: f32,
    pub momentum: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// `1 - beta1^step`.
    pub bc1: f32,
    /// `1 - beta2^step`.
    pub bc2: f32,
    /// Bit 0: nesterov; bit 1: first step (momentum buffer starts at the gradient); bit 2:
    /// decoupled weight decay (AdamW).
    pub flags: u32,
    pub _pad: [u32; 2],
}

pub(crate) const NESTEROV: u32 = 1;
pub(crate) const FIRST_STEP: u32 = 2;
pub(crate) const DECOUPLED: u32 = 4;

fn spec(entry: &'static str) -> KernelSpec {
    KernelSpec {
        shader: "optim.wgsl",
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
