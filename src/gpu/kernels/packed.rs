//! `shaders/packed.wgsl`: values of a storage type decoded in registers, for casts to f32,
//! embedding rows, and products with a packed weight (`linear`).

use super::Family;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::{KernelSpec, shader};
use crate::gpu::pool::PooledBuffer;
use bytemuck::{Pod, Zeroable};

/// Invocations per workgroup.
const WG: u32 = 64;
/// Rows of the activation one `linear` workgroup multiplies (`MB` in the shader).
const MB: usize = 4;

/// Rows of the activation from which a product decodes the weight to f32 once and runs the
/// tuned f32 matmul (a prefill), instead of decoding it again for every `MB` rows.
pub(crate) const GEMM_ROWS: usize = 8;

/// Largest decoded weight (bytes) that path makes; larger ones take the packed kernel.
pub(crate) const DECODED_MAX: usize = 256 << 20;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    a: u32,
    b: u32,
    c: u32,
    d: u32,
}

/// The shader's number for `dtype` (its `DTYPE` constant), for the types it decodes.
fn code(dtype: DType) -> Option<u32> {
    Some(match dtype {
        DType::F16 => 0,
        DType::BF16 => 1,
        DType::I8 => 2,
        DType::U8 => 3,
        DType::I32 => 4,
        DType::Q8_0 => 5,
        DType::Q4_0 => 6,
        DType::Q4K => 7,
        DType::Q6K => 8,
        DType::F32 | DType::U32 => return None,
    })
}

fn spec(entry: &'static str, code: u32) -> KernelSpec {
    KernelSpec {
        shader: shader!("packed.wgsl"),
        entry,
        constants: vec![("WG", f64::from(WG)), ("DTYPE", f64::from(code))],
        unchecked: false,
    }
}

/// Whether the kernels take rows of `len` values of `dtype`: they decode four values at a
/// time, so a row must be a multiple of 4 (every block type's is).
pub(crate) fn takes(dtype: DType, len: usize) -> bool {
    code(dtype).is_some() && len.is_multiple_of(4)
}

fn code_of(op: &'static str, dtype: DType) -> Result<u32> {
    code(dtype).ok_or_else(|| Error::Gpu(format!("{op}: internal error: {dtype} is not packed")))
}

/// `TooLarge` unless `values` can be indexed in u32.
fn fits_u32(op: &'static str, values: usize) -> Result<()> {
    if values > u32::MAX as usize {
        return Err(Error::TooLarge {
            op,
            requested: values as u64,
            limit: u64::from(u32::MAX),
        });
    }
    Ok(())
}

/// Rows of `len` values of `dtype` (in `w`) decoded to f32: `rows` of them in order, or those
/// that the u32 indices in `idx` name (checked by the host). `takes(dtype, len)` holds.
pub(crate) fn decode(
    ctx: &GpuContext,
    op: &'static str,
    dtype: DType,
    w: &PooledBuffer,
    idx: Option<&PooledBuffer>,
    rows: usize,
    len: usize,
) -> Result<PooledBuffer> {
    let n = rows * len;
    // The shader indexes values (of the output and the table) in u32; a table holds at most
    // two values per byte (q4_0's 32 per 18 bytes is the densest format).
    let table = if idx.is_some() {
        2 * w.buffer.size() as usize
    } else {
        n
    };
    fits_u32(op, table.max(n))?;
    let out = ctx.alloc(op, n)?;
    let params = Params {
        a: len as u32,
        b: rows as u32,
        c: u32::from(idx.is_some()),
        d: n as u32,
    };
    // Without indices the shader does not read `x`: the source is bound there again.
    let x = idx.unwrap_or(w);
    let grid = ctx.grid_1d(op, (n as u64 / 4).div_ceil(u64::from(WG)))?;
    ctx.dispatch(
        &spec("decode", code_of(op, dtype)?),
        &[&w.buffer, &x.buffer, &out.buffer],
        bytemuck::bytes_of(&params),
        grid,
    )?;
    Ok(out)
}

/// How `linear` spreads a product over invocations.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Layout {
    /// A workgroup per weight row, its invocations striding the row, a tree over workgroup
    /// memory at the end: coalesced loads, for GPUs.
    Groups,
    /// An invocation per weight row: no barriers, the activation broadcast to every lane, for
    /// adapters that run invocations as a CPU's SIMD lanes (lavapipe, SwiftShader).
    Rows,
}

/// The layout for this device and a row of `k` values: `KILN_PACKED_KERNEL=groups|rows` if set
/// (tests run both), else rows on software adapters and groups elsewhere; groups wherever
/// one invocation could not walk a whole row (llvmpipe's loop cap).
fn layout(ctx: &GpuContext, k: usize) -> Layout {
    // The rows layout's loops: k/4 steps, each with up to MB inner ones.
    if !ctx.walks(k / 4 * (MB + 1)) {
        return Layout::Groups;
    }
    // The variable is read once per process: this runs on every product.
    static FORCED: std::sync::OnceLock<Option<Layout>> = std::sync::OnceLock::new();
    let forced = FORCED.get_or_init(|| match std::env::var("KILN_PACKED_KERNEL").as_deref() {
        Ok("rows") => Some(Layout::Rows),
        Ok("groups") => Some(Layout::Groups),
        _ => None,
    });
    match forced {
        Some(layout) => *layout,
        None if ctx.software => Layout::Rows,
        None => Layout::Groups,
    }
}

/// `x · wᵀ` for f32 `x` (`m × k`) and `w` (`n × k` values of `dtype`): `m × n` f32.
/// `takes(dtype, k)` holds.
pub(crate) fn linear(
    ctx: &GpuContext,
    dtype: DType,
    x: &PooledBuffer,
    w: &PooledBuffer,
    (m, k, n): (usize, usize, usize),
) -> Result<PooledBuffer> {
    const OP: &str = "linear";
    // The shader indexes the weight's values and the activation's in u32.
    fits_u32(OP, (n * k).max(m * k))?;
    let out = ctx.alloc(OP, m * n)?;
    let params = Params {
        a: m as u32,
        b: k as u32,
        c: n as u32,
        d: MB as u32,
    };
    let layout = layout(ctx, k);
    let groups = match layout {
        Layout::Groups => n as u64,
        Layout::Rows => (n as u64).div_ceil(u64::from(WG)),
    };
    let [gx, gy, _] = ctx.grid_1d(OP, groups)?;
    let gz = m.div_ceil(MB) as u32;
    let max = ctx.limits.max_compute_workgroups_per_dimension;
    if gz > max {
        return Err(Error::TooLarge {
            op: OP,
            requested: m as u64,
            limit: u64::from(max) * MB as u64,
        });
    }
    ctx.dispatch(
        &spec(
            match layout {
                Layout::Groups => "linear",
                Layout::Rows => "linear_rows",
            },
            code_of(OP, dtype)?,
        ),
        &[&w.buffer, &x.buffer, &out.buffer],
        bytemuck::bytes_of(&params),
        [gx, gy, gz],
    )?;
    Ok(out)
}

pub(crate) const FAMILY: Family = Family {
    specs: || {
        DType::ALL
            .into_iter()
            .filter_map(code)
            .flat_map(|c| [spec("decode", c), spec("linear", c), spec("linear_rows", c)])
            .collect()
    },
    params: &[("packed.wgsl", "Params", size_of::<Params>())],
};
