//! `shaders/where.wgsl`: `where(mask, a, b)` with three-way broadcasting.

use super::Family;
use crate::error::{Error, Result};
use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::{KernelSpec, shader};
use crate::gpu::pool::PooledBuffer;
use bytemuck::{Pod, Zeroable};

/// The 1-D kernels' workgroup size, shared with `GpuContext::dispatch_1d`.
use crate::gpu::context::WG_1D as WG;
const MAX_RANK: usize = 8;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct WhereParams {
    pub n: u32,
    pub rank: u32,
    pub _pad: [u32; 2],
    pub dims: [u32; MAX_RANK],
    pub mask_strides: [u32; MAX_RANK],
    pub a_strides: [u32; MAX_RANK],
    pub b_strides: [u32; MAX_RANK],
}

pub(crate) fn spec() -> KernelSpec {
    KernelSpec {
        shader: shader!("where.wgsl"),
        entry: "main",
        constants: vec![("WG", f64::from(WG))],
        unchecked: false,
    }
}

/// `dims` with unit dimensions dropped, and the three operands' strides for them.
pub(crate) fn where_(
    ctx: &GpuContext,
    bufs: [&PooledBuffer; 3],
    dims: &[usize],
    strides: [&[usize]; 3],
) -> Result<PooledBuffer> {
    if dims.len() > MAX_RANK {
        return Err(Error::Unsupported {
            op: "where",
            reason: format!(
                "{} broadcast dimensions of extent > 1; the kernel handles {MAX_RANK}",
                dims.len()
            ),
        });
    }
    let n: usize = dims.iter().product();
    let out = ctx.alloc("where", n)?;
    let mut p = WhereParams {
        n: n as u32,
        rank: dims.len() as u32,
        _pad: [0; 2],
        dims: [1; MAX_RANK],
        mask_strides: [0; MAX_RANK],
        a_strides: [0; MAX_RANK],
        b_strides: [0; MAX_RANK],
    };
    for d in 0..dims.len() {
        p.dims[d] = dims[d] as u32;
        p.mask_strides[d] = strides[0][d] as u32;
        p.a_strides[d] = strides[1][d] as u32;
        p.b_strides[d] = strides[2][d] as u32;
    }
    ctx.dispatch_1d(
        "where",
        &spec(),
        &[
            &bufs[0].buffer,
            &bufs[1].buffer,
            &bufs[2].buffer,
            &out.buffer,
        ],
        bytemuck::bytes_of(&p),
        n,
    )?;
    Ok(out)
}

/// This family's specializations and uniform params structs (see `kernels::Family`).
pub(crate) const FAMILY: Family = Family {
    specs: || vec![spec()],
    params: &[("where.wgsl", "Params", size_of::<WhereParams>())],
};
