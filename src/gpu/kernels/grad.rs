//! Backward kernels: `shaders/unary_grad.wgsl` (dx = g · f'(x)) and `shaders/scatter_add.wgsl`
//! (the gradient of gather; its `rows` entry point is index_select's and embedding's).

use super::Family;
use super::elementwise::UnaryParams;
use crate::error::{Error, Result};
use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::{KernelSpec, shader};
use crate::gpu::pool::PooledBuffer;
use crate::op::UnaryOp;
use bytemuck::{Pod, Zeroable};

/// The 1-D kernels' workgroup size, shared with `GpuContext::dispatch_1d`.
use crate::gpu::context::WG_1D as WG;

/// Largest rank `scatter_add.wgsl` takes.
pub(crate) const MAX_SCATTER_RANK: usize = 8;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct ScatterParams {
    pub n: u32,
    pub rank: u32,
    pub dim: u32,
    pub count: u32,
    pub out_dims: [u32; MAX_SCATTER_RANK],
    pub g_dims: [u32; MAX_SCATTER_RANK],
    pub g_strides: [u32; MAX_SCATTER_RANK],
}

fn unary_grad_spec(op: UnaryOp) -> KernelSpec {
    KernelSpec {
        shader: shader!("unary_grad.wgsl"),
        entry: "main",
        constants: vec![("OP", f64::from(op.shader_id())), ("WG", f64::from(WG))],
        unchecked: false,
    }
}

fn scatter_spec() -> KernelSpec {
    KernelSpec {
        shader: shader!("scatter_add.wgsl"),
        entry: "main",
        constants: vec![("WG", f64::from(WG))],
        unchecked: false,
    }
}

/// index_select's backward: `rows` (indices grouped on the host) or `rows_scan`.
fn rows_spec(entry: &'static str) -> KernelSpec {
    KernelSpec {
        shader: shader!("scatter_add.wgsl"),
        entry,
        constants: vec![("WG", f64::from(WG))],
        unchecked: false,
    }
}

pub(crate) fn specs() -> Vec<KernelSpec> {
    let mut specs: Vec<KernelSpec> = UnaryOp::ALL.iter().map(|&op| unary_grad_spec(op)).collect();
    specs.push(scatter_spec());
    specs.push(rows_spec("rows"));
    specs.push(rows_spec("rows_scan"));
    specs
}

/// The rows kernel's parameters (`RowParams` in `shaders/scatter_add.wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct RowParams {
    pub n: u32,
    pub len: u32,
    pub inner: u32,
    pub count: u32,
}

/// index_select's backward from a row-grouped index (`starts`, `order`: see the shader): the
/// source is `[outer, len, inner]`, g is `[outer, count, inner]`; non-empty.
pub(crate) fn index_select_grad(
    ctx: &GpuContext,
    g: &PooledBuffer,
    starts: &PooledBuffer,
    order: &PooledBuffer,
    dims: (usize, usize, usize),
    count: usize,
) -> Result<PooledBuffer> {
    rows(ctx, "rows", &[g, starts, order], dims, count)
}

/// index_select's backward from the indices on the device, ungrouped (each source element
/// scans all `count` picks; for a captured step, whose indices the host may not read): the
/// source is `[outer, len, inner]`, g is `[outer, count, inner]`; non-empty.
pub(crate) fn index_select_grad_scan(
    ctx: &GpuContext,
    g: &PooledBuffer,
    idx: &PooledBuffer,
    dims: (usize, usize, usize),
    count: usize,
) -> Result<PooledBuffer> {
    ctx.check_walk("index_select backward", count)?;
    rows(ctx, "rows_scan", &[g, idx], dims, count)
}

/// One dispatch of index_select's backward `entry` reading `inputs`, into a new buffer.
fn rows(
    ctx: &GpuContext,
    entry: &'static str,
    inputs: &[&PooledBuffer],
    (outer, len, inner): (usize, usize, usize),
    count: usize,
) -> Result<PooledBuffer> {
    const OP: &str = "index_select backward";
    let n = outer * len * inner;
    let out = ctx.alloc(OP, n)?;
    let p = RowParams {
        n: n as u32,
        len: len as u32,
        inner: inner as u32,
        count: count as u32,
    };
    let mut buffers: Vec<&wgpu::Buffer> = inputs.iter().map(|b| &b.buffer).collect();
    buffers.push(&out.buffer);
    ctx.dispatch_1d(OP, &rows_spec(entry), &buffers, bytemuck::bytes_of(&p), n)?;
    Ok(out)
}

/// `dx = g · op'(x)` over `n > 0` elements.
pub(crate) fn unary_grad(
    ctx: &GpuContext,
    x: &PooledBuffer,
    g: &PooledBuffer,
    n: usize,
    op: UnaryOp,
) -> Result<PooledBuffer> {
    let out = ctx.alloc("unary backward", n)?;
    let (alpha, beta) = op.params();
    let params = UnaryParams {
        n: n as u32,
        alpha,
        beta,
        _pad: 0,
    };
    ctx.dispatch_1d(
        "unary backward",
        &unary_grad_spec(op),
        &[&x.buffer, &g.buffer, &out.buffer],
        bytemuck::bytes_of(&params),
        n,
    )?;
    Ok(out)
}

/// What a scatter-add adds back: the source shape, the gradient's shape and the axis.
pub(crate) struct Scatter<'a> {
    pub out_dims: &'a [usize],
    pub g_dims: &'a [usize],
    pub axis: usize,
}

/// The scatter-add of `g` through `idx` into a zeroed tensor of `s.out_dims` (non-empty, rank
/// <= 8; indices already checked by the forward op).
pub(crate) fn scatter_add(
    ctx: &GpuContext,
    g: &PooledBuffer,
    idx: &PooledBuffer,
    s: &Scatter,
) -> Result<PooledBuffer> {
    if s.out_dims.len() > MAX_SCATTER_RANK {
        return Err(Error::Unsupported {
            op: "scatter_add",
            reason: format!(
                "rank {} is over the GPU kernel's {MAX_SCATTER_RANK}",
                s.out_dims.len()
            ),
        });
    }
    let n: usize = s.out_dims.iter().product();
    ctx.check_walk("scatter_add", s.g_dims[s.axis] + MAX_SCATTER_RANK)?;
    let out = ctx.alloc("scatter_add", n)?;
    let mut p = ScatterParams {
        n: n as u32,
        rank: s.out_dims.len() as u32,
        dim: s.axis as u32,
        count: s.g_dims[s.axis] as u32,
        out_dims: [1; MAX_SCATTER_RANK],
        g_dims: [1; MAX_SCATTER_RANK],
        g_strides: [0; MAX_SCATTER_RANK],
    };
    let mut stride = 1;
    for d in (0..s.out_dims.len()).rev() {
        p.out_dims[d] = s.out_dims[d] as u32;
        p.g_dims[d] = s.g_dims[d] as u32;
        p.g_strides[d] = stride as u32;
        stride *= s.g_dims[d];
    }
    ctx.dispatch_1d(
        "scatter_add",
        &scatter_spec(),
        &[&g.buffer, &idx.buffer, &out.buffer],
        bytemuck::bytes_of(&p),
        n,
    )?;
    Ok(out)
}

/// This family's specializations and uniform params structs (see `kernels::Family`).
pub(crate) const FAMILY: Family = Family {
    specs,
    params: &[
        (
            "unary_grad.wgsl",
            "Params",
            size_of::<super::elementwise::UnaryParams>(),
        ),
        ("scatter_add.wgsl", "Params", size_of::<ScatterParams>()),
        ("scatter_add.wgsl", "RowParams", size_of::<RowParams>()),
    ],
};
