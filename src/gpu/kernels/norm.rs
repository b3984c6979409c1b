//! `shaders/norm.wgsl`: layer_norm and rms_norm over the last dimension.

use super::Family;
use super::reduce::CHUNK;
use crate::error::{Error, Result};
use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::{KernelSpec, shader};
use crate::gpu::pool::PooledBuffer;
use bytemuck::{Pod, Zeroable};

/// The 1-D kernels' workgroup size, shared with `GpuContext::dispatch_1d`.
use crate::gpu::context::WG_1D as WG;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct NormParams {
    pub rows: u32,
    pub len: u32,
    pub eps: f32,
    pub _pad: u32,
}

impl NormParams {
    fn new(rows: usize, len: usize, eps: f32) -> NormParams {
        NormParams {
            rows: rows as u32,
            len: len as u32,
            eps,
            _pad: 0,
        }
    }
}

fn spec(rms: bool, weight: bool, bias: bool) -> KernelSpec {
    spec_of("main", rms, weight, bias)
}

fn spec_of(entry: &'static str, rms: bool, weight: bool, bias: bool) -> KernelSpec {
    KernelSpec {
        shader: shader!("norm.wgsl"),
        entry,
        constants: vec![
            ("WG", f64::from(WG)),
            ("RMS", f64::from(u8::from(rms))),
            ("HAS_WEIGHT", f64::from(u8::from(weight))),
            ("HAS_BIAS", f64::from(u8::from(bias))),
        ],
        unchecked: false,
    }
}

pub(crate) fn specs() -> Vec<KernelSpec> {
    let mut out = Vec::new();
    for rms in [false, true] {
        for weight in [false, true] {
            for bias in [false, true] {
                if !(rms && bias) {
                    out.push(spec(rms, weight, bias));
                }
            }
            out.push(spec_of("backward", rms, weight, false));
        }
    }
    out.push(param_grads_spec());
    out
}

fn param_grads_spec() -> KernelSpec {
    spec_of("param_grads", false, false, false)
}

/// The weight's and bias's gradients of layer_norm or rms_norm over `rows x len` values (both
/// positive) from `x`, the output gradient `g` and each row's mean and r (from [`backward`]):
/// `(Σ_rows g·x̂, Σ_rows g)`. `Unsupported` past one reduction pass's rows ([`CHUNK`]).
pub(crate) fn param_grads(
    ctx: &GpuContext,
    [x, g, mean, r]: [&PooledBuffer; 4],
    rows: usize,
    len: usize,
) -> Result<(PooledBuffer, PooledBuffer)> {
    const OP: &str = "layer_norm backward";
    if rows > CHUNK {
        return Err(Error::Unsupported {
            op: OP,
            reason: format!("{rows} rows: more than one reduction pass takes"),
        });
    }
    ctx.check_walk(OP, rows)?;
    let (dw, db) = (ctx.alloc(OP, len)?, ctx.alloc(OP, len)?);
    ctx.dispatch_1d(
        OP,
        &param_grads_spec(),
        &[
            &x.buffer,
            &g.buffer,
            &mean.buffer,
            &r.buffer,
            &dw.buffer,
            &db.buffer,
        ],
        bytemuck::bytes_of(&NormParams::new(rows, len, 0.0)),
        len,
    )?;
    Ok((dw, db))
}

/// The input gradient of layer_norm (rms_norm with `rms`) over `rows x len` values (both > 0)
/// from `x`, the optional weight and the output gradient `g`, with each row's mean and
/// `r = 1/sqrt(var + eps)`: (dx, mean, r).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    ctx: &GpuContext,
    x: &PooledBuffer,
    weight: Option<&PooledBuffer>,
    g: &PooledBuffer,
    rows: usize,
    len: usize,
    eps: f32,
    rms: bool,
) -> Result<(PooledBuffer, PooledBuffer, PooledBuffer)> {
    let op = if rms {
        "rms_norm backward"
    } else {
        "layer_norm backward"
    };
    ctx.check_walk(op, backward_walk(len))?;
    let dx = ctx.alloc(op, rows * len)?;
    let (mean, r) = (ctx.alloc(op, rows)?, ctx.alloc(op, rows)?);
    let params = NormParams::new(rows, len, eps);
    let w = weight.unwrap_or(x);
    ctx.dispatch_1d(
        op,
        &spec_of("backward", rms, weight.is_some(), false),
        &[
            &x.buffer,
            &w.buffer,
            &g.buffer,
            &dx.buffer,
            &mean.buffer,
            &r.buffer,
        ],
        bytemuck::bytes_of(&params),
        rows,
    )?;
    Ok((dx, mean, r))
}

/// Normalise `rows x len` values (both > 0).
#[allow(clippy::too_many_arguments)]
pub(crate) fn norm(
    ctx: &GpuContext,
    x: &PooledBuffer,
    weight: Option<&PooledBuffer>,
    bias: Option<&PooledBuffer>,
    rows: usize,
    len: usize,
    eps: f32,
    rms: bool,
) -> Result<PooledBuffer> {
    let op = if rms { "rms_norm" } else { "layer_norm" };
    ctx.check_walk(op, forward_walk(len))?;
    let out = ctx.alloc(op, rows * len)?;
    let params = NormParams::new(rows, len, eps);
    let w = weight.unwrap_or(x);
    let b = bias.unwrap_or(x);
    ctx.dispatch_1d(
        op,
        &spec(rms, weight.is_some(), bias.is_some()),
        &[&x.buffer, &w.buffer, &b.buffer, &out.buffer],
        bytemuck::bytes_of(&params),
        rows,
    )?;
    Ok(out)
}

/// This family's specializations and uniform params structs (see `kernels::Family`).
pub(crate) const FAMILY: Family = Family {
    specs,
    params: &[("norm.wgsl", "Params", size_of::<NormParams>())],
};

/// Loop iterations of one invocation of the forward kernel over rows of `len` values.
pub(crate) fn forward_walk(len: usize) -> usize {
    3 * len
}

/// Loop iterations of one invocation of the input-gradient kernel over rows of `len` values.
pub(crate) fn backward_walk(len: usize) -> usize {
    4 * len
}

/// Whether [`param_grads`] takes `rows` rows on this device: one reduction pass's rows, and
/// a walk over them within the driver's loop limit.
pub(crate) fn param_grads_takes(ctx: &GpuContext, rows: usize) -> bool {
    rows <= CHUNK && ctx.walks(rows)
}
