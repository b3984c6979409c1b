//! `shaders/copy.wgsl`: strided copies.

use super::Family;
use crate::error::Result;
use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::{KernelSpec, shader};
use crate::gpu::pool::PooledBuffer;
use crate::strided::{MAX_COPY_RANK, StridedCopy};
use bytemuck::{Pod, Zeroable};

/// The 1-D kernels' workgroup size, shared with `GpuContext::dispatch_1d`.
use crate::gpu::context::WG_1D as WG;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct CopyParams {
    pub n: u32,
    pub rank: u32,
    pub in_offset: u32,
    pub out_offset: u32,
    pub dims: [u32; MAX_COPY_RANK],
    pub in_strides: [u32; MAX_COPY_RANK],
    pub out_strides: [u32; MAX_COPY_RANK],
}

pub(crate) fn spec(rows: bool) -> KernelSpec {
    KernelSpec {
        shader: shader!("copy.wgsl"),
        entry: "main",
        constants: vec![("WG", f64::from(WG)), ("ROWS", f64::from(u8::from(rows)))],
        unchecked: false,
    }
}

/// Last dimensions walked in row mode: shorter rows gain little, longer ones would leave too
/// few invocations (and walk past what lavapipe's loop limit allows).
const ROW_LEN: std::ops::RangeInclusive<usize> = 8..=1024;
/// Fewest rows for row mode, so that the rows still spread over the CPU's threads.
const MIN_ROWS: usize = 256;

/// Record `copy` (already squeezed, non-empty) from `src` into `dst`.
pub(crate) fn copy(
    ctx: &GpuContext,
    src: &PooledBuffer,
    dst: &PooledBuffer,
    copy: &StridedCopy,
    op: &'static str,
) -> Result<()> {
    // Row mode on software adapters (see the shader); both forms run in the op table there,
    // since layouts with short last dimensions keep the per-element form.
    let last = copy.dims.last().copied().unwrap_or(1);
    let rows = ctx.software && ROW_LEN.contains(&last) && copy.numel() / last >= MIN_ROWS;
    // Invocations: elements, or rows in row mode.
    let n = if rows {
        copy.numel() / last
    } else {
        copy.numel()
    };
    let mut params = CopyParams {
        n: n as u32,
        rank: copy.dims.len() as u32,
        in_offset: copy.in_offset as u32,
        out_offset: copy.out_offset as u32,
        dims: [1; MAX_COPY_RANK],
        in_strides: [0; MAX_COPY_RANK],
        out_strides: [0; MAX_COPY_RANK],
    };
    for d in 0..copy.dims.len() {
        // Extents, strides and offsets index tensors that alloc bounded by u32::MAX elements.
        params.dims[d] = copy.dims[d] as u32;
        params.in_strides[d] = copy.in_strides[d] as u32;
        params.out_strides[d] = copy.out_strides[d] as u32;
    }
    ctx.dispatch_1d(
        op,
        &spec(rows),
        &[&src.buffer, &dst.buffer],
        bytemuck::bytes_of(&params),
        n,
    )
}

/// The uniform of `copy.wgsl`'s `pad` entry.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct PadParams {
    pub n: u32,
    pub rank: u32,
    pub value: u32,
    pub _pad: u32,
    pub dims: [u32; MAX_COPY_RANK],
    pub src_dims: [u32; MAX_COPY_RANK],
    pub before: [i32; MAX_COPY_RANK],
}

fn pad_spec() -> KernelSpec {
    KernelSpec {
        shader: shader!("copy.wgsl"),
        entry: "pad",
        constants: vec![("WG", f64::from(WG))],
        unchecked: false,
    }
}

/// `src` (contiguous, of `src_dims`) padded or cropped to `dims` (`before[d]`: output index
/// minus source index along d), the rest `value` (32-bit pattern): a new buffer of the
/// output's (non-zero) size. Rank at most [`MAX_COPY_RANK`]; the caller checked.
pub(crate) fn pad(
    ctx: &GpuContext,
    src: &PooledBuffer,
    src_dims: &[usize],
    dims: &[usize],
    before: &[isize],
    value: u32,
) -> Result<PooledBuffer> {
    const OP: &str = "pad";
    let n: usize = dims.iter().product();
    let out = ctx.alloc(OP, n)?;
    let mut p = PadParams {
        n: n as u32,
        rank: dims.len() as u32,
        value,
        _pad: 0,
        dims: [1; MAX_COPY_RANK],
        src_dims: [1; MAX_COPY_RANK],
        before: [0; MAX_COPY_RANK],
    };
    for d in 0..dims.len() {
        p.dims[d] = dims[d] as u32;
        p.src_dims[d] = src_dims[d] as u32;
        p.before[d] = before[d] as i32;
    }
    ctx.dispatch_1d(
        OP,
        &pad_spec(),
        &[&src.buffer, &out.buffer],
        bytemuck::bytes_of(&p),
        n,
    )?;
    Ok(out)
}

/// This family's specializations and uniform params structs (see `kernels::Family`).
pub(crate) const FAMILY: Family = Family {
    specs: || vec![spec(false), spec(true), pad_spec()],
    params: &[
        ("copy.wgsl", "Params", size_of::<CopyParams>()),
        ("copy.wgsl", "PadParams", size_of::<PadParams>()),
    ],
};
