//! `shaders/attention.wgsl`: scaled dot-product attention, forward and backward, one
//! invocation per (batch, head, row), reading the heads in place through views.

use super::Family;
use crate::attention::{AttnDims, View};
use crate::error::{Error, Result};
use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::{KernelSpec, Shader, shader};
use crate::gpu::pool::PooledBuffer;
use bytemuck::{Pod, Zeroable};

/// The 1-D kernels' workgroup size, shared with `GpuContext::dispatch_1d`.
use crate::gpu::context::WG_1D as WG;

/// The largest head dimension the kernels hold in registers (`MAXD` in the shader).
pub(crate) const MAX_HEAD_DIM: usize = 128;

/// The shader with its register arrays (`MAXD`) at 16, 32, 64 and 128 values: a problem uses
/// the smallest that holds both head dimensions (on lavapipe the 16-wide backward compiles in
/// 0.17 s, the 128-wide in 0.74 s).
const SIZES: [Shader; 4] = [
    Shader::derived("attention_16.wgsl", || sized(16)),
    Shader::derived("attention_32.wgsl", || sized(32)),
    Shader::derived("attention_64.wgsl", || sized(64)),
    Shader::derived("attention_128.wgsl", || sized(128)),
];

fn sized(maxd: usize) -> String {
    const FILE: Shader = shader!("attention.wgsl");
    FILE.body().replace(
        "const MAXD: u32 = 128u;",
        &format!("const MAXD: u32 = {maxd}u;"),
    )
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct ViewParams {
    off: u32,
    sb: u32,
    st: u32,
    sh: u32,
}

impl From<View> for ViewParams {
    fn from(v: View) -> ViewParams {
        ViewParams {
            off: v.off as u32,
            sb: v.sb as u32,
            st: v.st as u32,
            sh: v.sh as u32,
        }
    }
}

/// The uniform of `attention.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct AttnParams {
    batch: u32,
    heads: u32,
    tq: u32,
    tk: u32,
    causal: u32,
    scale: f32,
    rows: u32,
    splits: u32,
    q: ViewParams,
    k: ViewParams,
    v: ViewParams,
    limited: u32,
    _pad: [u32; 3],
}

impl AttnParams {
    fn new(a: &AttnDims, rows: usize) -> AttnParams {
        let [q, k, v] = a.views();
        AttnParams {
            batch: a.batch as u32,
            heads: a.heads as u32,
            tq: a.tq as u32,
            tk: a.tk as u32,
            causal: a.causal.into(),
            scale: a.scale,
            rows: rows as u32,
            splits: splits(a) as u32,
            q: q.into(),
            k: k.into(),
            v: v.into(),
            limited: a.limited.into(),
            _pad: [0; 3],
        }
    }
}

/// Keys per chunk of a split forward (`CHUNK` in the shader).
const CHUNK: usize = 64;

/// Query rows from which a forward is not split: enough invocations without it.
const SPLIT_BELOW_ROWS: usize = 1024;

/// The chunks of [`CHUNK`] keys a forward splits each query row into, for few rows (a decode
/// step's) of more than `CHUNK` keys: they then spread over many invocations, and a row's walk
/// is one chunk, which fits llvmpipe's loop limit. 1 (no split) otherwise: many rows fill the
/// device as they are (on lavapipe, a prompt's long rows go to products and a softmax, faster
/// there than a split: 256-token prefill 52–59 tokens/s split against 67–77).
fn splits(a: &AttnDims) -> usize {
    match a.rows() < SPLIT_BELOW_ROWS {
        true => a.tk.div_ceil(CHUNK).max(1),
        false => 1,
    }
}

fn spec(entry: &'static str, d: usize, dv: usize) -> KernelSpec {
    let class = d.max(dv).max(1).next_power_of_two().clamp(16, MAX_HEAD_DIM);
    KernelSpec {
        shader: SIZES[class.trailing_zeros() as usize - 4],
        entry,
        constants: vec![("WG", f64::from(WG)), ("D", d as f64), ("DV", dv as f64)],
        unchecked: false,
    }
}

/// `Unsupported` where the kernels cannot take the problem on this device (head dimensions over
/// [`MAX_HEAD_DIM`], a loop past llvmpipe's limit, indices past u32): the caller composes
/// attention from products and a softmax instead.
pub(crate) fn check(ctx: &GpuContext, a: &AttnDims) -> Result<()> {
    check_forward(ctx, a)?;
    if a.inference {
        return Ok(());
    }
    ctx.check_walk("attention", a.tq.max(a.tk) * (2 * a.d + 2 * a.dv + 2))
}

/// [`check`] of the forward alone: its walks are a chunk of keys and the merge of the chunks
/// when split, else every key.
fn check_forward(ctx: &GpuContext, a: &AttnDims) -> Result<()> {
    const OP: &str = "attention";
    if a.d > MAX_HEAD_DIM || a.dv > MAX_HEAD_DIM {
        return Err(Error::Unsupported {
            op: OP,
            reason: format!(
                "head dimensions {} and {} (the kernel holds {MAX_HEAD_DIM})",
                a.d, a.dv
            ),
        });
    }
    let longest = a.sizes().into_iter().max().unwrap_or(0);
    if longest.max(a.batch * a.tq * a.heads * a.dv) > u32::MAX as usize {
        return Err(Error::Unsupported {
            op: OP,
            reason: format!("{longest} values are past the kernels' u32 indices"),
        });
    }
    let keys = if splits(a) > 1 { CHUNK } else { a.tk };
    ctx.check_walk(OP, keys * (2 * a.d + 2 * a.dv + 2))?;
    ctx.check_walk(OP, splits(a) * (a.dv + 3))
}

/// The output `[batch, tq, heads, dv]` and each query row's logsumexp (every extent > 0).
/// With `lens` (u32, one per batch element), batch element `b` sees its first `lens[b]` keys
/// (`forward_lens`).
pub(crate) fn forward(
    ctx: &GpuContext,
    [q, k, v]: [&PooledBuffer; 3],
    lens: Option<&PooledBuffer>,
    a: &AttnDims,
) -> Result<(PooledBuffer, PooledBuffer)> {
    const OP: &str = "attention";
    check_forward(ctx, a)?;
    let rows = a.rows();
    let (o, lse) = (ctx.alloc(OP, rows * a.dv)?, ctx.alloc(OP, rows)?);
    let params = AttnParams::new(a, rows);
    let s = splits(a);
    if s > 1 {
        // The chunks' partial states, then their merge.
        let part = ctx.alloc(OP, rows * s * (a.dv + 3))?;
        let params = bytemuck::bytes_of(&params);
        // Without lengths the shader does not read them: q is bound there.
        let lens = lens.unwrap_or(q);
        ctx.dispatch_1d(
            OP,
            &spec("forward_split", a.d, a.dv),
            &[&q.buffer, &k.buffer, &v.buffer, &part.buffer, &lens.buffer],
            params,
            rows * s,
        )?;
        ctx.dispatch_1d(
            OP,
            &spec("merge", a.d, a.dv),
            &[&part.buffer, &o.buffer, &lse.buffer],
            params,
            rows,
        )?;
        return Ok((o, lse));
    }
    let mut buffers = vec![&q.buffer, &k.buffer, &v.buffer, &o.buffer, &lse.buffer];
    let entry = match lens {
        Some(l) => {
            buffers.push(&l.buffer);
            "forward_lens"
        }
        None => "forward",
    };
    let params = bytemuck::bytes_of(&params);
    ctx.dispatch_1d(OP, &spec(entry, a.d, a.dv), &buffers, params, rows)?;
    Ok((o, lse))
}

/// The gradients of q, k and v, in their views: one buffer for a packed input, else three.
pub(crate) fn backward(
    ctx: &GpuContext,
    [q, k, v]: [&PooledBuffer; 3],
    [o, g, lse]: [&PooledBuffer; 3],
    a: &AttnDims,
) -> Result<Vec<PooledBuffer>> {
    const OP: &str = "attention backward";
    check(ctx, a)?;
    let sizes = a.sizes();
    let grads = if a.packed {
        vec![ctx.alloc(OP, sizes[0])?]
    } else {
        sizes
            .iter()
            .map(|&n| ctx.alloc(OP, n))
            .collect::<Result<Vec<_>>>()?
    };
    let pick = |i: usize| &grads[i.min(grads.len() - 1)].buffer;
    let delta = ctx.alloc(OP, a.rows())?;
    let rows = a.rows();
    ctx.dispatch_1d(
        OP,
        &spec("backward_q", a.d, a.dv),
        &[
            &q.buffer,
            &k.buffer,
            &v.buffer,
            &o.buffer,
            &g.buffer,
            &lse.buffer,
            pick(0),
            &delta.buffer,
        ],
        bytemuck::bytes_of(&AttnParams::new(a, rows)),
        rows,
    )?;
    let rows = a.batch * a.heads * a.tk;
    ctx.dispatch_1d(
        OP,
        &spec("backward_kv", a.d, a.dv),
        &[
            &q.buffer,
            &k.buffer,
            &v.buffer,
            &g.buffer,
            &lse.buffer,
            &delta.buffer,
            pick(1),
            pick(2),
        ],
        bytemuck::bytes_of(&AttnParams::new(a, rows)),
        rows,
    )?;
    Ok(grads)
}

fn specs() -> Vec<KernelSpec> {
    let mut out = Vec::new();
    for (d, dv) in [
        (16, 16),
        (8, 32),
        (64, 64),
        (MAX_HEAD_DIM, MAX_HEAD_DIM),
        (0, 0),
    ] {
        for entry in [
            "forward",
            "forward_lens",
            "forward_split",
            "merge",
            "backward_q",
            "backward_kv",
        ] {
            out.push(spec(entry, d, dv));
        }
    }
    out
}

/// This family's specializations and uniform params structs (see `kernels::Family`).
pub(crate) const FAMILY: Family = Family {
    specs,
    params: &[
        ("attention_16.wgsl", "Params", size_of::<AttnParams>()),
        ("attention_32.wgsl", "Params", size_of::<AttnParams>()),
        ("attention_64.wgsl", "Params", size_of::<AttnParams>()),
        ("attention_128.wgsl", "Params", size_of::<AttnParams>()),
    ],
};
