//! `shaders/index.wgsl` (index_select, index_copy) and `shaders/gather.wgsl` (gather), with u32 indices.

use super::Family;
use crate::error::{Error, Result};
use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::{KernelSpec, shader};
use crate::gpu::pool::PooledBuffer;
use bytemuck::{Pod, Zeroable};

/// The 1-D kernels' workgroup size, shared with `GpuContext::dispatch_1d`.
use crate::gpu::context::WG_1D as WG;

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
        shader: shader!("index.wgsl"),
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
    ctx.dispatch_1d(
        "index_select",
        &spec(),
        &[&x.buffer, &idx.buffer, &out.buffer],
        bytemuck::bytes_of(&params),
        n,
    )?;
    Ok(out)
}

/// Write `src` (`[outer, count, inner]`) into the slices `idx` of the middle axis of `dst`
/// (`[outer, len, inner]`), in place.
pub(crate) fn index_copy(
    ctx: &GpuContext,
    dst: &PooledBuffer,
    src: &PooledBuffer,
    idx: &PooledBuffer,
    (outer, len, inner): (usize, usize, usize),
    count: usize,
) -> Result<()> {
    let n = outer * count * inner;
    if n == 0 {
        return Ok(());
    }
    let params = IndexParams {
        n: n as u32,
        len: len as u32,
        inner: inner as u32,
        count: count as u32,
    };
    let spec = KernelSpec {
        entry: "copy_in",
        ..spec()
    };
    ctx.dispatch_1d(
        "index_copy",
        &spec,
        &[&src.buffer, &idx.buffer, &dst.buffer],
        bytemuck::bytes_of(&params),
        n,
    )
}

/// The `n` u32 values of `x` as f32 (a cast on the device).
pub(crate) fn u32_to_f32(ctx: &GpuContext, x: &PooledBuffer, n: usize) -> Result<PooledBuffer> {
    let out = ctx.alloc("to_dtype", n)?;
    let params = IndexParams {
        n: n as u32,
        len: 0,
        inner: 0,
        count: 0,
    };
    let spec = KernelSpec {
        entry: "to_f32",
        ..spec()
    };
    ctx.dispatch_1d(
        "to_dtype",
        &spec,
        &[&x.buffer, &out.buffer],
        bytemuck::bytes_of(&params),
        n,
    )?;
    Ok(out)
}

/// Largest rank `gather.wgsl` takes.
pub(crate) const MAX_GATHER_RANK: usize = 8;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct GatherParams {
    pub n: u32,
    pub rank: u32,
    pub dim: u32,
    pub _pad: u32,
    pub dims: [u32; MAX_GATHER_RANK],
    pub x_strides: [u32; MAX_GATHER_RANK],
}

pub(crate) fn gather_spec() -> KernelSpec {
    KernelSpec {
        shader: shader!("gather.wgsl"),
        entry: "main",
        constants: vec![("WG", f64::from(WG))],
        unchecked: false,
    }
}

/// gather along `dim` with an index of shape `dims` (rank <= 8, non-empty); indices checked.
pub(crate) fn gather(
    ctx: &GpuContext,
    x: &PooledBuffer,
    idx: &PooledBuffer,
    dims: &[usize],
    x_strides: &[usize],
    dim: usize,
) -> Result<PooledBuffer> {
    if dims.len() > MAX_GATHER_RANK {
        return Err(Error::Unsupported {
            op: "gather",
            reason: format!(
                "rank {} is over the GPU kernel's {MAX_GATHER_RANK}",
                dims.len()
            ),
        });
    }
    let n: usize = dims.iter().product();
    let out = ctx.alloc("gather", n)?;
    let mut p = GatherParams {
        n: n as u32,
        rank: dims.len() as u32,
        dim: dim as u32,
        _pad: 0,
        dims: [1; MAX_GATHER_RANK],
        x_strides: [0; MAX_GATHER_RANK],
    };
    for d in 0..dims.len() {
        p.dims[d] = dims[d] as u32;
        p.x_strides[d] = x_strides[d] as u32;
    }
    ctx.dispatch_1d(
        "gather",
        &gather_spec(),
        &[&x.buffer, &idx.buffer, &out.buffer],
        bytemuck::bytes_of(&p),
        n,
    )?;
    Ok(out)
}

/// This family's specializations and uniform params structs (see `kernels::Family`).
pub(crate) const FAMILY: Family = Family {
    specs: || {
        let entry = |entry| KernelSpec { entry, ..spec() };
        vec![spec(), entry("copy_in"), entry("to_f32"), gather_spec()]
    },
    params: &[
        ("index.wgsl", "Params", size_of::<IndexParams>()),
        ("gather.wgsl", "Params", size_of::<GatherParams>()),
    ],
};
