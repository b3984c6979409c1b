//! `shaders/reduce.wgsl`: reductions and softmax along one axis.

use super::Family;
use crate::error::Result;
use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::{KernelSpec, shader};
use crate::gpu::pool::PooledBuffer;
use crate::op::ReduceOp;
use bytemuck::{Pod, Zeroable};

/// The 1-D kernels' workgroup size, shared with `GpuContext::dispatch_1d`.
use crate::gpu::context::WG_1D as WG;

/// The uniform of `reduce.wgsl` (and of `argmax.wgsl`, which reads the first four words).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
pub(crate) struct ReduceParams {
    pub outer: u32,
    pub len: u32,
    pub inner: u32,
    pub n_out: u32,
    /// Chunks the axis is split into (1: the whole axis in one invocation).
    pub chunks: u32,
    /// Values per chunk (the last may hold fewer).
    pub chunk: u32,
    /// The divisor of a mean: the whole axis's length.
    pub count: u32,
    pub _pad: u32,
}

impl ReduceParams {
    /// One invocation per `[outer, inner]` position walks the whole axis.
    pub(crate) fn whole((outer, len, inner): (usize, usize, usize)) -> ReduceParams {
        ReduceParams {
            outer: outer as u32,
            len: len as u32,
            inner: inner as u32,
            n_out: (outer * inner) as u32,
            chunks: 1,
            chunk: len as u32,
            count: len as u32,
            _pad: 0,
        }
    }
}

/// The most values one invocation of `reduce` walks: a longer axis is reduced in chunks of this
/// many, then the partial results are reduced again. Keeps every invocation's loop far below
/// llvmpipe's 65,535 iterations (a Mesa limit that silently ends longer loops), and spreads a
/// long reduction (a `sum_all`) over many invocations on every GPU.
pub(crate) const CHUNK: usize = 4096;

fn reduce_spec(op: ReduceOp) -> KernelSpec {
    KernelSpec {
        shader: shader!("reduce.wgsl"),
        entry: "reduce",
        constants: vec![("OP", f64::from(op.shader_id())), ("WG", f64::from(WG))],
        unchecked: false,
    }
}

fn var_combine_spec() -> KernelSpec {
    KernelSpec {
        shader: shader!("reduce.wgsl"),
        entry: "var_combine",
        constants: vec![("WG", f64::from(WG))],
        unchecked: false,
    }
}

fn softmax_spec(log: bool) -> KernelSpec {
    KernelSpec {
        shader: shader!("reduce.wgsl"),
        entry: "softmax",
        constants: vec![("LOG", f64::from(u8::from(log))), ("WG", f64::from(WG))],
        unchecked: false,
    }
}

pub(crate) fn specs() -> Vec<KernelSpec> {
    let mut specs: Vec<KernelSpec> = ReduceOp::ALL.iter().map(|&op| reduce_spec(op)).collect();
    specs.push(var_combine_spec());
    specs.push(softmax_spec(false));
    specs.push(softmax_spec(true));
    specs
}

/// `[outer, len, inner] -> [outer, inner]`, for `outer * inner > 0` and `len > 0`.
pub(crate) fn reduce(
    ctx: &GpuContext,
    x: &PooledBuffer,
    dims: (usize, usize, usize),
    op: ReduceOp,
) -> Result<PooledBuffer> {
    chunked(ctx, dims, op, dims.1, &|p, op, n| pass(ctx, x, p, op, n))
}

/// `op` along the middle of `dims`, an axis longer than [`CHUNK`] in chunks. `first(params,
/// op, n)` runs the first pass (the eager kernel, or a fused program's) into `n` values; the
/// partial results are reduced by the eager kernel. A mean divides by `count`.
pub(crate) fn chunked(
    ctx: &GpuContext,
    (outer, len, inner): (usize, usize, usize),
    op: ReduceOp,
    count: usize,
    first: &dyn Fn(ReduceParams, ReduceOp, usize) -> Result<PooledBuffer>,
) -> Result<PooledBuffer> {
    let chunks = len.div_ceil(CHUNK);
    if chunks == 1 {
        let p = ReduceParams {
            count: count as u32,
            ..ReduceParams::whole((outer, len, inner))
        };
        return first(p, op, outer * inner);
    }
    let n = outer * chunks * inner;
    let p = ReduceParams {
        n_out: n as u32,
        chunks: chunks as u32,
        chunk: CHUNK as u32,
        count: count as u32,
        ..ReduceParams::whole((outer, len, inner))
    };
    let dims = (outer, chunks, inner);
    match op {
        ReduceOp::Var => {
            if chunks > CHUNK {
                return Err(crate::error::Error::Unsupported {
                    op: "var",
                    reason: format!(
                        "an axis of {len} values (the GPU variance takes at most {})",
                        CHUNK * CHUNK
                    ),
                });
            }
            let partial = first(p, op, 2 * n)?;
            let out = ctx.alloc("var", outer * inner)?;
            let p = ReduceParams {
                chunk: CHUNK as u32,
                count: len as u32,
                ..ReduceParams::whole(dims)
            };
            ctx.dispatch_1d(
                "var",
                &var_combine_spec(),
                &[&partial.buffer, &out.buffer],
                bytemuck::bytes_of(&p),
                outer * inner,
            )?;
            Ok(out)
        }
        ReduceOp::Sum | ReduceOp::Mean => {
            let partial = first(p, ReduceOp::Sum, n)?;
            chunked(ctx, dims, op, count, &|p, op, n| {
                pass(ctx, &partial, p, op, n)
            })
        }
        ReduceOp::Max | ReduceOp::Min => {
            let partial = first(p, op, n)?;
            chunked(ctx, dims, op, count, &|p, op, n| {
                pass(ctx, &partial, p, op, n)
            })
        }
    }
}

/// Loop iterations of one invocation of the first `reduce` pass over an axis of `len` values:
/// at most one chunk, walked twice (the variance's mean, then its deviations).
pub(crate) fn reduce_walk(len: usize) -> usize {
    2 * len.min(CHUNK)
}

/// Loop iterations of one invocation of the `softmax` entry: three walks along the axis.
pub(crate) fn softmax_walk(len: usize) -> usize {
    3 * len
}

/// One dispatch of the eager `reduce` kernel with `params`, into `n` values.
fn pass(
    ctx: &GpuContext,
    x: &PooledBuffer,
    params: ReduceParams,
    op: ReduceOp,
    n: usize,
) -> Result<PooledBuffer> {
    let out = ctx.alloc(op.name(), n)?;
    ctx.dispatch_1d(
        op.name(),
        &reduce_spec(op),
        &[&x.buffer, &out.buffer],
        bytemuck::bytes_of(&params),
        params.n_out as usize,
    )?;
    Ok(out)
}

/// Softmax (or log-softmax) along the middle axis of `[outer, len, inner]`, all extents > 0.
pub(crate) fn softmax(
    ctx: &GpuContext,
    x: &PooledBuffer,
    dims: (usize, usize, usize),
    log: bool,
) -> Result<PooledBuffer> {
    let (outer, len, inner) = dims;
    let op = if log { "log_softmax" } else { "softmax" };
    ctx.check_walk(op, softmax_walk(len))?;
    let out = ctx.alloc(op, outer * len * inner)?;
    let n_out = outer * inner;
    let params = ReduceParams::whole((outer, len, inner));
    ctx.dispatch_1d(
        op,
        &softmax_spec(log),
        &[&x.buffer, &out.buffer],
        bytemuck::bytes_of(&params),
        n_out,
    )?;
    Ok(out)
}

pub(crate) fn argmax_spec() -> KernelSpec {
    KernelSpec {
        shader: shader!("argmax.wgsl"),
        entry: "main",
        constants: vec![("WG", f64::from(WG))],
        unchecked: false,
    }
}

/// Subgroups (rows) per workgroup of the subgroup-per-row argmax: 64 invocations in all.
fn argmax_rows(sg: u32) -> u32 {
    (64 / sg).max(1)
}

/// The subgroup-per-row argmax (`argmax_rows.wgsl`) for subgroups of `sg` lanes.
pub(crate) fn argmax_rows_spec(sg: u32) -> KernelSpec {
    KernelSpec {
        shader: shader!("argmax_rows.wgsl"),
        entry: "main",
        constants: vec![("SG", f64::from(sg)), ("ROWS", f64::from(argmax_rows(sg)))],
        unchecked: false,
    }
}

/// argmax along the middle axis of `[outer, len, inner]` (`outer * inner > 0`, `len > 0`), as u32.
///
/// Contiguous rows whose length is a multiple of 4 take one subgroup per row where the driver's
/// subgroup size is fixed (`argmax_rows.wgsl`: the lanes read the row's vec4s in turn, then
/// subgroup reductions combine them; BENCHMARKS.md has the gain on lavapipe); the rest take one
/// invocation per output (`argmax.wgsl`).
pub(crate) fn argmax(
    ctx: &GpuContext,
    x: &PooledBuffer,
    (outer, len, inner): (usize, usize, usize),
) -> Result<PooledBuffer> {
    let n_out = outer * inner;
    let out = ctx.alloc("argmax", n_out)?;
    let params = ReduceParams::whole((outer, len, inner));
    let fixed_subgroups = ctx
        .subgroups
        .filter(|(min, max)| min == max && (4..=128).contains(min));
    match fixed_subgroups {
        Some((sg, _)) if inner == 1 && len % 4 == 0 => {
            // Each iteration of a lane reads two vec4s of its row.
            ctx.check_walk("argmax", len.div_ceil(8 * sg as usize))?;
            let rows = argmax_rows(sg) as usize;
            let grid = ctx.grid_1d("argmax", n_out.div_ceil(rows) as u64)?;
            ctx.dispatch(
                &argmax_rows_spec(sg),
                &[&x.buffer, &out.buffer],
                bytemuck::bytes_of(&params),
                grid,
            )?;
        }
        _ => {
            ctx.check_walk("argmax", len)?;
            ctx.dispatch_1d(
                "argmax",
                &argmax_spec(),
                &[&x.buffer, &out.buffer],
                bytemuck::bytes_of(&params),
                n_out,
            )?;
        }
    }
    Ok(out)
}

/// This family's specializations and uniform params structs (see `kernels::Family`).
pub(crate) const FAMILY: Family = Family {
    specs: || {
        let mut s = specs();
        s.push(argmax_spec());
        s.extend([4, 8, 16, 32, 64, 128].map(argmax_rows_spec));
        s
    },
    params: &[
        ("reduce.wgsl", "Params", size_of::<ReduceParams>()),
        ("argmax.wgsl", "Params", size_of::<ReduceParams>()),
        ("argmax_rows.wgsl", "Params", size_of::<ReduceParams>()),
    ],
};
