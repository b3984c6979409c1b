//! `shaders/unary.wgsl` (unary ops and fill) and `shaders/binary.wgsl` (broadcast binary ops).

use super::Family;
use crate::error::{Error, Result};
use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::{KernelSpec, shader};
use crate::gpu::pool::PooledBuffer;
use crate::op::{BinaryOp, UnaryOp};
use crate::shape::BroadcastLayout;
use bytemuck::{Pod, Zeroable};

/// The 1-D kernels' workgroup size, shared with `GpuContext::dispatch_1d`.
use crate::gpu::context::WG_1D as WG;
/// Largest coalesced rank `binary.wgsl` accepts.
pub(crate) const MAX_BINARY_RANK: usize = 8;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct UnaryParams {
    pub n: u32,
    pub alpha: f32,
    pub beta: f32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct BinaryParams {
    pub n: u32,
    pub rank: u32,
    pub _pad: [u32; 2],
    pub dims: [u32; MAX_BINARY_RANK],
    pub lhs_strides: [u32; MAX_BINARY_RANK],
    pub rhs_strides: [u32; MAX_BINARY_RANK],
}

fn unary_spec(op: UnaryOp) -> KernelSpec {
    KernelSpec {
        shader: shader!("unary.wgsl"),
        entry: "main",
        constants: vec![("OP", f64::from(op.shader_id())), ("WG", f64::from(WG))],
        unchecked: false,
    }
}

fn fill_spec() -> KernelSpec {
    KernelSpec {
        shader: shader!("unary.wgsl"),
        entry: "fill",
        constants: vec![("WG", f64::from(WG))],
        unchecked: false,
    }
}

fn binary_spec(op: BinaryOp) -> KernelSpec {
    KernelSpec {
        shader: shader!("binary.wgsl"),
        entry: "main",
        constants: vec![("OP", f64::from(op.shader_id())), ("WG", f64::from(WG))],
        unchecked: false,
    }
}

fn unary_vec4_spec(op: UnaryOp) -> KernelSpec {
    KernelSpec {
        shader: shader!("unary_vec4.wgsl"),
        entry: "main",
        constants: vec![("OP", f64::from(op.shader_id())), ("WG", f64::from(WG))],
        unchecked: false,
    }
}

fn binary_vec4_spec(op: BinaryOp) -> KernelSpec {
    KernelSpec {
        shader: shader!("binary_vec4.wgsl"),
        entry: "main",
        constants: vec![("OP", f64::from(op.shader_id())), ("WG", f64::from(WG))],
        unchecked: false,
    }
}

pub(crate) fn specs() -> Vec<KernelSpec> {
    let mut specs: Vec<KernelSpec> = UnaryOp::ALL.iter().map(|&op| unary_spec(op)).collect();
    specs.push(fill_spec());
    specs.extend(UnaryOp::ALL.iter().map(|&op| unary_vec4_spec(op)));
    specs.extend(BinaryOp::ALL.iter().map(|&op| binary_vec4_spec(op)));
    specs.extend(BinaryOp::ALL.iter().map(|&op| binary_spec(op)));
    specs
}

/// `y = op(x)` over `n > 0` elements.
pub(crate) fn unary(
    ctx: &GpuContext,
    x: &PooledBuffer,
    n: usize,
    op: UnaryOp,
) -> Result<PooledBuffer> {
    let out = ctx.alloc(op.name(), n)?;
    let (alpha, beta) = op.params();
    let params = UnaryParams {
        n: n as u32,
        alpha,
        beta,
        _pad: 0,
    };
    if n.is_multiple_of(4) {
        let params = UnaryParams {
            n: (n / 4) as u32,
            alpha,
            beta,
            _pad: 0,
        };
        ctx.dispatch_1d(
            op.name(),
            &unary_vec4_spec(op),
            &[&x.buffer, &out.buffer],
            bytemuck::bytes_of(&params),
            n / 4,
        )?;
        return Ok(out);
    }
    ctx.dispatch_1d(
        op.name(),
        &unary_spec(op),
        &[&x.buffer, &out.buffer],
        bytemuck::bytes_of(&params),
        n,
    )?;
    Ok(out)
}

/// A buffer of `n > 0` copies of `value`.
pub(crate) fn fill(ctx: &GpuContext, n: usize, value: f32) -> Result<PooledBuffer> {
    let out = ctx.alloc("fill", n)?;
    let params = UnaryParams {
        n: n as u32,
        alpha: value,
        beta: 0.0,
        _pad: 0,
    };
    ctx.dispatch_1d(
        "fill",
        &fill_spec(),
        &[&out.buffer],
        bytemuck::bytes_of(&params),
        n,
    )?;
    Ok(out)
}

/// `c = op(a, b)` over the `n > 0` elements of a broadcast described by `layout`.
pub(crate) fn binary(
    ctx: &GpuContext,
    a: &PooledBuffer,
    b: &PooledBuffer,
    layout: &BroadcastLayout,
    n: usize,
    op: BinaryOp,
) -> Result<PooledBuffer> {
    let rank = layout.dims.len();
    if rank > MAX_BINARY_RANK {
        return Err(Error::Unsupported {
            op: op.name(),
            reason: format!(
                "the broadcast needs {rank} dimensions after merging contiguous ones; the GPU kernel handles {MAX_BINARY_RANK}"
            ),
        });
    }
    let contiguous = rank == 1 && layout.lhs[0] == 1 && layout.rhs[0] == 1;
    if contiguous && n.is_multiple_of(4) {
        let out = ctx.alloc(op.name(), n)?;
        let params: [u32; 4] = [(n / 4) as u32, 0, 0, 0];
        ctx.dispatch_1d(
            op.name(),
            &binary_vec4_spec(op),
            &[&a.buffer, &b.buffer, &out.buffer],
            bytemuck::cast_slice(&params),
            n / 4,
        )?;
        return Ok(out);
    }
    let out = ctx.alloc(op.name(), n)?;
    let mut params = BinaryParams {
        n: n as u32,
        rank: rank as u32,
        _pad: [0; 2],
        dims: [1; MAX_BINARY_RANK],
        lhs_strides: [0; MAX_BINARY_RANK],
        rhs_strides: [0; MAX_BINARY_RANK],
    };
    for d in 0..rank {
        // Every extent and stride is below the element count, which alloc bounded by u32::MAX.
        params.dims[d] = layout.dims[d] as u32;
        params.lhs_strides[d] = layout.lhs[d] as u32;
        params.rhs_strides[d] = layout.rhs[d] as u32;
    }
    ctx.dispatch_1d(
        op.name(),
        &binary_spec(op),
        &[&a.buffer, &b.buffer, &out.buffer],
        bytemuck::bytes_of(&params),
        n,
    )?;
    Ok(out)
}

/// This family's specializations and uniform params structs (see `kernels::Family`).
pub(crate) const FAMILY: Family = Family {
    specs,
    params: &[
        ("unary.wgsl", "Params", size_of::<UnaryParams>()),
        ("unary.wgsl", "FillParams", size_of::<UnaryParams>()),
        ("binary.wgsl", "Params", size_of::<BinaryParams>()),
        ("unary_vec4.wgsl", "Params", size_of::<UnaryParams>()),
        ("binary_vec4.wgsl", "Params", size_of::<[u32; 4]>()),
    ],
};
