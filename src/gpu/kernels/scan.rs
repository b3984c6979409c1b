//! `shaders/scan.wgsl`: walks along one axis, one invocation per row: cumsum and topk.

use super::Family;
use crate::error::Result;
use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::{KernelSpec, shader};
use crate::gpu::pool::PooledBuffer;
use bytemuck::{Pod, Zeroable};

/// The 1-D kernels' workgroup size, shared with `GpuContext::dispatch_1d`.
use crate::gpu::context::WG_1D as WG;

/// The uniform of `scan.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
pub(crate) struct ScanParams {
    pub outer: u32,
    pub len: u32,
    pub inner: u32,
    pub n_rows: u32,
    pub exclusive: u32,
    pub reverse: u32,
    pub k: u32,
    pub largest: u32,
}

impl ScanParams {
    fn rows((outer, len, inner): (usize, usize, usize)) -> ScanParams {
        ScanParams {
            outer: outer as u32,
            len: len as u32,
            inner: inner as u32,
            n_rows: (outer * inner) as u32,
            ..ScanParams::default()
        }
    }
}

fn spec(entry: &'static str) -> KernelSpec {
    KernelSpec {
        shader: shader!("scan.wgsl"),
        entry,
        constants: vec![("WG", f64::from(WG))],
        unchecked: false,
    }
}

/// Running sums along the middle axis of `dims` (all extents > 0).
pub(crate) fn cumsum(
    ctx: &GpuContext,
    x: &PooledBuffer,
    dims: (usize, usize, usize),
    exclusive: bool,
    reverse: bool,
) -> Result<PooledBuffer> {
    const OP: &str = "cumsum";
    ctx.check_walk(OP, dims.1)?;
    let out = ctx.alloc(OP, dims.0 * dims.1 * dims.2)?;
    let p = ScanParams {
        exclusive: exclusive.into(),
        reverse: reverse.into(),
        ..ScanParams::rows(dims)
    };
    ctx.dispatch_1d(
        OP,
        &spec("cumsum"),
        &[&x.buffer, &out.buffer],
        bytemuck::bytes_of(&p),
        dims.0 * dims.2,
    )?;
    Ok(out)
}

/// The `k` first values along the middle axis of `dims` (see the shader) and their indices:
/// `[outer, k, inner]` each (all extents and k > 0, k ≤ len).
pub(crate) fn topk(
    ctx: &GpuContext,
    x: &PooledBuffer,
    dims: (usize, usize, usize),
    k: usize,
    largest: bool,
) -> Result<(PooledBuffer, PooledBuffer)> {
    const OP: &str = "topk";
    ctx.check_walk(OP, k.saturating_mul(dims.1))?;
    let n = dims.0 * k * dims.2;
    let (values, indices) = (ctx.alloc(OP, n)?, ctx.alloc(OP, n)?);
    let p = ScanParams {
        k: k as u32,
        largest: largest.into(),
        ..ScanParams::rows(dims)
    };
    ctx.dispatch_1d(
        OP,
        &spec("topk"),
        &[&x.buffer, &values.buffer, &indices.buffer],
        bytemuck::bytes_of(&p),
        dims.0 * dims.2,
    )?;
    Ok((values, indices))
}

/// This family's specializations and uniform params structs (see `kernels::Family`).
pub(crate) const FAMILY: Family = Family {
    specs: || vec![spec("cumsum"), spec("topk")],
    params: &[("scan.wgsl", "Params", size_of::<ScanParams>())],
};
