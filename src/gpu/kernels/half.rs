//! `shaders/half.wgsl`: casts between f32 and the half-precision storage types (f16, bf16) on
//! the device, bit for bit as the CPU makes them, for any number of values.

use super::Family;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::{KernelSpec, shader};
use crate::gpu::pool::PooledBuffer;
use bytemuck::{Pod, Zeroable};

/// The 1-D kernels' workgroup size, shared with `GpuContext::dispatch_1d`.
use crate::gpu::context::WG_1D as WG;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    _pad: [u32; 3],
}

/// The shader's `DTYPE` for a half type.
fn code(dtype: DType) -> Option<u32> {
    match dtype {
        DType::F16 => Some(0),
        DType::BF16 => Some(1),
        _ => None,
    }
}

/// Whether `dtype` is one the kernels convert (f16, bf16).
pub(crate) fn is_half(dtype: DType) -> bool {
    code(dtype).is_some()
}

fn spec(entry: &'static str, code: u32) -> KernelSpec {
    KernelSpec {
        shader: shader!("half.wgsl"),
        entry,
        constants: vec![("WG", f64::from(WG)), ("DTYPE", f64::from(code))],
        unchecked: false,
    }
}

/// `n` values of `src` converted: f32 to `dtype` when `encode`, else `dtype` to f32. One
/// invocation per u32 word of the half values.
fn run(
    ctx: &GpuContext,
    op: &'static str,
    entry: &'static str,
    dtype: DType,
    src: &PooledBuffer,
    n: usize,
) -> Result<PooledBuffer> {
    let code = code(dtype)
        .ok_or_else(|| Error::Gpu(format!("{op}: internal error: {dtype} is not a half type")))?;
    if n > u32::MAX as usize {
        return Err(Error::TooLarge {
            op,
            requested: n as u64,
            limit: u64::from(u32::MAX),
        });
    }
    let words = n.div_ceil(2);
    let out = ctx.alloc(op, if entry == "encode" { words } else { n })?;
    let params = Params {
        n: n as u32,
        _pad: [0; 3],
    };
    ctx.dispatch_1d(
        op,
        &spec(entry, code),
        &[&src.buffer, &out.buffer],
        bytemuck::bytes_of(&params),
        words,
    )?;
    Ok(out)
}

/// `n` f32 values as `dtype` (f16 or bf16), rounded to nearest even.
pub(crate) fn encode(
    ctx: &GpuContext,
    op: &'static str,
    dtype: DType,
    src: &PooledBuffer,
    n: usize,
) -> Result<PooledBuffer> {
    run(ctx, op, "encode", dtype, src, n)
}

/// `n` values of `dtype` (f16 or bf16) as f32.
pub(crate) fn decode(
    ctx: &GpuContext,
    op: &'static str,
    dtype: DType,
    src: &PooledBuffer,
    n: usize,
) -> Result<PooledBuffer> {
    run(ctx, op, "decode", dtype, src, n)
}

pub(crate) const FAMILY: Family = Family {
    specs: || {
        [DType::F16, DType::BF16]
            .into_iter()
            .filter_map(code)
            .flat_map(|c| [spec("encode", c), spec("decode", c)])
            .collect()
    },
    params: &[("half.wgsl", "Params", size_of::<Params>())],
};
