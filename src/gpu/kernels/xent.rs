//! `shaders/xent.wgsl`: fused cross-entropy from logits, forward and backward.

use super::Family;
use crate::error::Result;
use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::{KernelSpec, shader};
use crate::gpu::pool::PooledBuffer;
use bytemuck::{Pod, Zeroable};

/// The 1-D kernels' workgroup size, shared with `GpuContext::dispatch_1d`.
use crate::gpu::context::WG_1D as WG;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct XentParams {
    pub rows: u32,
    pub classes: u32,
    pub _pad: [u32; 2],
}

fn spec(entry: &'static str) -> KernelSpec {
    KernelSpec {
        shader: shader!("xent.wgsl"),
        entry,
        constants: vec![("WG", f64::from(WG))],
        unchecked: false,
    }
}

pub(crate) fn specs() -> Vec<KernelSpec> {
    vec![spec("forward"), spec("backward")]
}

fn params(rows: usize, classes: usize) -> XentParams {
    XentParams {
        rows: rows as u32,
        classes: classes as u32,
        _pad: [0; 2],
    }
}

/// (per-row losses, per-row logsumexp) of `[rows, classes]` logits; non-empty, classes > 0.
pub(crate) fn forward(
    ctx: &GpuContext,
    x: &PooledBuffer,
    t: &PooledBuffer,
    rows: usize,
    classes: usize,
) -> Result<(PooledBuffer, PooledBuffer)> {
    ctx.check_walk("cross_entropy", walk(classes))?;
    let loss = ctx.alloc("cross_entropy", rows)?;
    let lse = ctx.alloc("cross_entropy", rows)?;
    ctx.dispatch_1d(
        "cross_entropy",
        &spec("forward"),
        &[&x.buffer, &t.buffer, &loss.buffer, &lse.buffer],
        bytemuck::bytes_of(&params(rows, classes)),
        rows,
    )?;
    Ok((loss, lse))
}

/// The logits' gradient from the per-row loss gradient `g`.
pub(crate) fn backward(
    ctx: &GpuContext,
    [x, t, lse, g]: [&PooledBuffer; 4],
    rows: usize,
    classes: usize,
) -> Result<PooledBuffer> {
    let dx = ctx.alloc("cross_entropy backward", rows * classes)?;
    ctx.dispatch_1d(
        "cross_entropy backward",
        &spec("backward"),
        &[&x.buffer, &t.buffer, &lse.buffer, &g.buffer, &dx.buffer],
        bytemuck::bytes_of(&params(rows, classes)),
        rows * classes,
    )?;
    Ok(dx)
}

/// This family's specializations and uniform params structs (see `kernels::Family`).
pub(crate) const FAMILY: Family = Family {
    specs,
    params: &[("xent.wgsl", "Params", size_of::<XentParams>())],
};

/// Loop iterations of one invocation of the forward kernel over rows of `classes` logits.
pub(crate) fn walk(classes: usize) -> usize {
    2 * classes
}
