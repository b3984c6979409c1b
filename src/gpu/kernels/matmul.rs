//! `shaders/matmul.wgsl`: batched, strided matmul.

use crate::error::Result;
use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::KernelSpec;
use crate::gpu::pool::PooledBuffer;
use crate::matmul_plan::MatmulPlan;
use bytemuck::{Pod, Zeroable};

/// Output tile edge of `matmul.wgsl` (its `TILE` constant).
const TILE: u32 = 16;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct MatmulParams {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub batch0: u32,
    pub a_rs: u32,
    pub a_cs: u32,
    pub b_rs: u32,
    pub b_cs: u32,
    pub row_tile0: u32,
    pub _pad: [u32; 3],
}

fn spec() -> KernelSpec {
    KernelSpec {
        shader: "matmul.wgsl",
        entry: "main",
        constants: vec![],
    }
}

pub(crate) fn specs() -> Vec<KernelSpec> {
    vec![spec()]
}

/// `C = A x B` for a plan with `m, n, k > 0` and at least one batch.
pub(crate) fn matmul(
    ctx: &GpuContext,
    a: &PooledBuffer,
    b: &PooledBuffer,
    plan: &MatmulPlan,
) -> Result<PooledBuffer> {
    let out = ctx.alloc("matmul", plan.out_numel())?;
    let table: Vec<u32> = plan
        .offsets
        .iter()
        .flat_map(|&(oa, ob)| [oa as u32, ob as u32])
        .collect();
    let offsets = ctx.upload("matmul", bytemuck::cast_slice(&table))?;
    let max = ctx.limits.max_compute_workgroups_per_dimension;
    let col_tiles = (plan.n as u32).div_ceil(TILE);
    let row_tiles = (plan.m as u32).div_ceil(TILE);
    if col_tiles > max {
        return Err(crate::error::Error::TooLarge {
            op: "matmul",
            requested: plan.n as u64,
            limit: u64::from(max) * u64::from(TILE),
        });
    }
    let batches = plan.offsets.len() as u32;
    // Split grids past the per-dimension limit into several dispatches.
    let mut batch0 = 0;
    while batch0 < batches {
        let nb = (batches - batch0).min(max);
        let mut row0 = 0;
        while row0 < row_tiles {
            let nr = (row_tiles - row0).min(max);
            let params = MatmulParams {
                m: plan.m as u32,
                n: plan.n as u32,
                k: plan.k as u32,
                batch0,
                a_rs: plan.a_strides.0 as u32,
                a_cs: plan.a_strides.1 as u32,
                b_rs: plan.b_strides.0 as u32,
                b_cs: plan.b_strides.1 as u32,
                row_tile0: row0,
                _pad: [0; 3],
            };
            ctx.dispatch(
                &spec(),
                &[&a.buffer, &b.buffer, &out.buffer, &offsets.buffer],
                bytemuck::bytes_of(&params),
                [col_tiles, nr, nb],
            )?;
            row0 += nr;
        }
        batch0 += nb;
    }
    Ok(out)
}
