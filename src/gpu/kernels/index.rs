//! `shaders/index.wgsl`: index_select with u32 indices.

use crate::error::Result;
use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::KernelSpec;
use crate::gpu::pool::PooledBuffer;
use bytemuck::{Pod, Zeroable};

const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct IndexParams {
    pub n: u32,
    pub len: u32,
    pub inner: u32,
    pub count: u32,
}

pub(crate) fn spec() -> KernelSpec {
    KernelSpec {
        shader: "index.wgsl",
        entry: "main",
        constants: vec![("WG", f64::from(WG))],
        unchecked: false,
    }
}

/// Select `count` slices along the middle axis of `[outer, len, inner]`; indices already checked.
pub(crate) fn index_select(
    ctx: &GpuContext,
    x: &PooledBuffer,
    idx: &PooledBuffer,
    (outer, len, inner): (usize, usize, usize),
    count: usize,
) -> Result<PooledBuffer> {
    let n = outer * count * inner;
    let out = ctx.alloc("index_select", n)?;
    let params = IndexParams {
        n: n as u32,
        len: len as u32,
        inner: inner as u32,
        count: count as u32,
    };
    let grid = ctx.grid_1d("index_select", (n as u64).div_ceil(u64::from(WG)))?;
    ctx.dispatch(
        &spec(),
        &[&x.buffer, &idx.buffer, &out.buffer],
        bytemuck::bytes_of(&params),
        grid,
    )?;
    Ok(out)
}
