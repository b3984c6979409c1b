//! `shaders/rope.wgsl`: rotary position embedding over the last dimension.

use super::Family;
use crate::error::Result;
use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::{KernelSpec, shader};
use crate::gpu::pool::PooledBuffer;
use crate::rope::RopeDims;
use bytemuck::{Pod, Zeroable};

/// The 1-D kernels' workgroup size, shared with `GpuContext::dispatch_1d`.
use crate::gpu::context::WG_1D as WG;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RopeParams {
    total: u32,
    t: u32,
    heads: u32,
    d: u32,
    half: u32,
    _pad: [u32; 3],
}

fn spec(halves: bool) -> KernelSpec {
    KernelSpec {
        shader: shader!("rope.wgsl"),
        entry: "main",
        constants: vec![
            ("WG", f64::from(WG)),
            ("HALVES", f64::from(u8::from(halves))),
        ],
        unchecked: false,
    }
}

fn specs() -> Vec<KernelSpec> {
    vec![spec(false), spec(true)]
}

/// RoPE on the `r.total` values of `x` with the tables `cos` and `sin` (`[t, half]` each).
pub(crate) fn rope(
    ctx: &GpuContext,
    [x, cos, sin]: [&PooledBuffer; 3],
    r: &RopeDims,
) -> Result<PooledBuffer> {
    const OP: &str = "rope";
    let out = ctx.alloc(OP, r.total)?;
    let params = RopeParams {
        total: r.total as u32,
        t: r.t as u32,
        heads: r.heads as u32,
        d: r.d as u32,
        half: r.half as u32,
        _pad: [0; 3],
    };
    ctx.dispatch_1d(
        OP,
        &spec(r.halves),
        &[&x.buffer, &cos.buffer, &sin.buffer, &out.buffer],
        bytemuck::bytes_of(&params),
        r.total,
    )?;
    Ok(out)
}

/// This family's specializations and uniform params structs (see `kernels::Family`).
pub(crate) const FAMILY: Family = Family {
    specs,
    params: &[("rope.wgsl", "Params", size_of::<RopeParams>())],
};
