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

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct ReduceParams {
    pub outer: u32,
    pub len: u32,
    pub inner: u32,
    pub n_out: u32,
}

fn reduce_spec(op: ReduceOp) -> KernelSpec {
    KernelSpec {
        shader: shader!("reduce.wgsl"),
        entry: "reduce",
        constants: vec![("OP", f64::from(op.shader_id())), ("WG", f64::from(WG))],
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
    let (outer, len, inner) = dims;
    let n_out = outer * inner;
    let out = ctx.alloc(op.name(), n_out)?;
    let params = ReduceParams {
        outer: outer as u32,
        len: len as u32,
        inner: inner as u32,
        n_out: n_out as u32,
    };
    ctx.dispatch_1d(
        op.name(),
        &reduce_spec(op),
        &[&x.buffer, &out.buffer],
        bytemuck::bytes_of(&params),
        n_out,
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
    let out = ctx.alloc(op, outer * len * inner)?;
    let n_out = outer * inner;
    let params = ReduceParams {
        outer: outer as u32,
        len: len as u32,
        inner: inner as u32,
        n_out: n_out as u32,
    };
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

/// argmax along the middle axis of `[outer, len, inner]` (`outer * inner > 0`, `len > 0`), as u32.
pub(crate) fn argmax(
    ctx: &GpuContext,
    x: &PooledBuffer,
    (outer, len, inner): (usize, usize, usize),
) -> Result<PooledBuffer> {
    let n_out = outer * inner;
    let out = ctx.alloc("argmax", n_out)?;
    let params = ReduceParams {
        outer: outer as u32,
        len: len as u32,
        inner: inner as u32,
        n_out: n_out as u32,
    };
    ctx.dispatch_1d(
        "argmax",
        &argmax_spec(),
        &[&x.buffer, &out.buffer],
        bytemuck::bytes_of(&params),
        n_out,
    )?;
    Ok(out)
}

/// This family's specializations and uniform params structs (see `kernels::Family`).
pub(crate) const FAMILY: Family = Family {
    specs: || {
        let mut s = specs();
        s.push(argmax_spec());
        s
    },
    params: &[
        ("reduce.wgsl", "Params", size_of::<ReduceParams>()),
        ("argmax.wgsl", "Params", size_of::<ReduceParams>()),
    ],
};
