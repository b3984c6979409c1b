//! `shaders/conv2d.wgsl` and `shaders/pool2d.wgsl`, forward and backward entry points.

use super::Family;
use crate::conv::Window;
use crate::error::Result;
use crate::gpu::context::GpuContext;
use crate::gpu::kernels::matmul::{self, Epilogue};
use crate::gpu::pipelines::{KernelSpec, shader};
use crate::gpu::pool::PooledBuffer;
use crate::matmul_plan::MatmulPlan;
use crate::shape::Shape;
use bytemuck::{Pod, Zeroable};

/// The 1-D kernels' workgroup size, shared with `GpuContext::dispatch_1d`.
use crate::gpu::context::WG_1D as WG;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct ConvParams {
    pub n_out: u32,
    pub c_in: u32,
    pub h: u32,
    pub w: u32,
    pub c_out: u32,
    pub kh: u32,
    pub kw: u32,
    pub oh: u32,
    pub ow: u32,
    pub sh: u32,
    pub sw: u32,
    pub ph: u32,
    pub pw: u32,
    pub dh: u32,
    pub dw: u32,
    /// Batch size (read by the backward kernels only).
    pub batch: u32,
    /// Channel groups.
    pub groups: u32,
    pub _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct PoolParams {
    pub n_out: u32,
    pub h: u32,
    pub w: u32,
    pub kh: u32,
    pub kw: u32,
    pub oh: u32,
    pub ow: u32,
    pub sh: u32,
    pub sw: u32,
    pub ph: u32,
    pub pw: u32,
    pub _pad: u32,
}

fn conv_spec(bias: bool) -> KernelSpec {
    KernelSpec {
        shader: shader!("conv2d.wgsl"),
        entry: "main",
        constants: vec![
            ("WG", f64::from(WG)),
            ("HAS_BIAS", f64::from(u8::from(bias))),
        ],
        unchecked: false,
    }
}

fn pool_spec(max: bool) -> KernelSpec {
    KernelSpec {
        shader: shader!("pool2d.wgsl"),
        entry: "main",
        constants: vec![("WG", f64::from(WG)), ("MAX", f64::from(u8::from(max)))],
        unchecked: false,
    }
}

fn conv_grad_spec(entry: &'static str) -> KernelSpec {
    KernelSpec {
        shader: shader!("conv2d.wgsl"),
        entry,
        constants: vec![("WG", f64::from(WG))],
        unchecked: false,
    }
}

fn pool_grad_spec(max: bool) -> KernelSpec {
    KernelSpec {
        shader: shader!("pool2d.wgsl"),
        entry: "grad",
        constants: vec![("WG", f64::from(WG)), ("MAX", f64::from(u8::from(max)))],
        unchecked: false,
    }
}

/// An entry point of `conv_gemm.wgsl` (the data movement around the GEMM form).
fn gemm_spec(entry: &'static str) -> KernelSpec {
    KernelSpec {
        shader: shader!("conv_gemm.wgsl"),
        entry,
        constants: vec![("WG", f64::from(WG))],
        unchecked: false,
    }
}

pub(crate) fn specs() -> Vec<KernelSpec> {
    vec![
        gemm_spec("im2col"),
        gemm_spec("col2im"),
        gemm_spec("add_bias"),
        gemm_spec("sum_batches"),
        conv_spec(false),
        conv_spec(true),
        pool_spec(false),
        pool_spec(true),
        conv_grad_spec("grad_input"),
        conv_grad_spec("grad_weight"),
        pool_grad_spec(false),
        pool_grad_spec(true),
    ]
}

fn conv_params(g: &Window, n_out: usize) -> ConvParams {
    let u = |v: usize| v as u32;
    ConvParams {
        n_out: u(n_out),
        c_in: u(g.c_in),
        h: u(g.h),
        w: u(g.w),
        c_out: u(g.c_out),
        kh: u(g.kh),
        kw: u(g.kw),
        oh: u(g.oh),
        ow: u(g.ow),
        sh: u(g.opts.stride.0),
        sw: u(g.opts.stride.1),
        ph: u(g.opts.padding.0),
        pw: u(g.opts.padding.1),
        dh: u(g.opts.dilation.0),
        dw: u(g.opts.dilation.1),
        batch: u(g.n),
        groups: u(g.opts.groups),
        _pad: [0; 3],
    }
}

fn pool_params(g: &Window, n_out: usize) -> PoolParams {
    let u = |v: usize| v as u32;
    PoolParams {
        n_out: u(n_out),
        h: u(g.h),
        w: u(g.w),
        kh: u(g.kh),
        kw: u(g.kw),
        oh: u(g.oh),
        ow: u(g.ow),
        sh: u(g.opts.stride.0),
        sw: u(g.opts.stride.1),
        ph: u(g.opts.padding.0),
        pw: u(g.opts.padding.1),
        _pad: 0,
    }
}

/// Whether the convolution runs as matrix products: whenever the column buffer
/// (`batch · c_in · kh · kw · oh · ow` values) fits in one buffer of at most 256 MiB and a
/// quarter of the memory budget, if one is set; the direct kernels take the rest. On lavapipe
/// the products won even for 9 taps (digits_cnn's first layer: 18 s to 11–12 s for the whole
/// training run).
fn use_gemm(ctx: &GpuContext, g: &Window) -> bool {
    let cols = (g.n * g.c_in * g.kh * g.kw * g.oh * g.ow) as u64 * 4;
    let budget = ctx.memory_budget().map_or(u64::MAX, |b| b / 4);
    cols <= ctx.max_tensor_bytes().min(1 << 28).min(budget)
}

/// One `conv_gemm.wgsl` entry with `n_out` invocations (see the shader for what each does).
fn move_data(
    ctx: &GpuContext,
    entry: &'static str,
    src: &PooledBuffer,
    dst: &PooledBuffer,
    g: &Window,
    n_out: usize,
) -> Result<()> {
    ctx.dispatch_1d(
        "conv2d",
        &gemm_spec(entry),
        &[&src.buffer, &dst.buffer],
        bytemuck::bytes_of(&conv_params(g, n_out)),
        n_out,
    )
}

/// The column buffer of `x` (see `conv_gemm.wgsl`): `[batch, groups, taps, pixels]`.
fn im2col(ctx: &GpuContext, x: &PooledBuffer, g: &Window) -> Result<PooledBuffer> {
    let rows = g.n * g.c_in * g.kh * g.kw * g.oh;
    ctx.check_walk("conv2d", g.ow)?;
    let cols = ctx.alloc("conv2d", rows * g.ow)?;
    move_data(ctx, "im2col", x, &cols, g, rows)?;
    Ok(cols)
}

/// The matrices a grouped product reads, one block per group (the weight) or per image and
/// group (the columns, the output gradient), stored row-major.
#[derive(Clone, Copy)]
enum Blocks {
    /// `w[g]`: `[c_out / groups, taps]`.
    Weight,
    /// `cols[b, g]`: `[taps, pixels]`.
    Cols,
    /// `dy[b, g]`: `[c_out / groups, pixels]`.
    Grad,
}

impl Blocks {
    /// (rows, columns) of one block.
    fn dims(self, g: &Window) -> (usize, usize) {
        let (cog, kg, np) = (
            g.c_out / g.opts.groups,
            g.c_in_group() * g.kh * g.kw,
            g.oh * g.ow,
        );
        match self {
            Blocks::Weight => (cog, kg),
            Blocks::Cols => (kg, np),
            Blocks::Grad => (cog, np),
        }
    }

    /// Offset of the block of image `b`, group `gi`.
    fn offset(self, g: &Window, b: usize, gi: usize) -> usize {
        let (r, c) = self.dims(g);
        match self {
            Blocks::Weight => gi * r * c,
            Blocks::Cols | Blocks::Grad => (b * g.opts.groups + gi) * r * c,
        }
    }
}

/// One product per (image, group), `op(A) · op(B)` with `op` transposing where asked (read
/// through strides): `[batch · groups, m, n]`.
fn grouped_product(
    ctx: &GpuContext,
    (a, a_blocks, ta): (&PooledBuffer, Blocks, bool),
    (b, b_blocks, tb): (&PooledBuffer, Blocks, bool),
    g: &Window,
) -> Result<PooledBuffer> {
    // A stored `[r, c]` block read as is, or transposed: (rows, columns, strides).
    let view = |blocks: Blocks, t: bool| {
        let (r, c) = blocks.dims(g);
        if t { (c, r, (1, c)) } else { (r, c, (c, 1)) }
    };
    let ((m, k, a_strides), (_, n, b_strides)) = (view(a_blocks, ta), view(b_blocks, tb));
    let groups = g.opts.groups;
    let offsets = (0..g.n * groups)
        .map(|i| {
            let (bi, gi) = (i / groups, i % groups);
            (a_blocks.offset(g, bi, gi), b_blocks.offset(g, bi, gi))
        })
        .collect();
    let plan = MatmulPlan {
        m,
        k,
        n,
        offsets,
        a_strides,
        b_strides,
        out_shape: Shape::new(&[g.n * groups, m, n])?,
    };
    matmul::matmul(ctx, a, b, &plan, Epilogue::default())
}

/// The forward pass as matrix products: `y[b, g] = w[g] · cols[b, g]` (already NCHW).
fn conv2d_gemm(
    ctx: &GpuContext,
    x: &PooledBuffer,
    wt: &PooledBuffer,
    bias: Option<&PooledBuffer>,
    g: &Window,
) -> Result<PooledBuffer> {
    let cols = im2col(ctx, x, g)?;
    let y = grouped_product(
        ctx,
        (wt, Blocks::Weight, false),
        (&cols, Blocks::Cols, false),
        g,
    )?;
    if let Some(bias) = bias {
        ctx.check_walk("conv2d", g.ow)?;
        move_data(ctx, "add_bias", bias, &y, g, g.n * g.c_out * g.oh)?;
    }
    Ok(y)
}

/// The input gradient as matrix products: `dcols[b, g] = w[g]ᵀ · dy[b, g]`, then col2im.
fn grad_input_gemm(
    ctx: &GpuContext,
    dy: &PooledBuffer,
    wt: &PooledBuffer,
    g: &Window,
) -> Result<PooledBuffer> {
    let dcols = grouped_product(
        ctx,
        (wt, Blocks::Weight, true),
        (dy, Blocks::Grad, false),
        g,
    )?;
    let rows = g.n * g.c_in * g.h;
    ctx.check_walk("conv2d backward", g.w + g.kh * (1 + g.kw * (1 + g.ow)))?;
    let dx = ctx.alloc("conv2d backward", rows * g.w)?;
    move_data(ctx, "col2im", &dcols, &dx, g, rows)?;
    Ok(dx)
}

/// The weight gradient as matrix products: `dw[g] = Σ_b dy[b, g] · cols[b, g]ᵀ` (one product
/// per image and group, then a sum over the images).
fn grad_weight_gemm(
    ctx: &GpuContext,
    dy: &PooledBuffer,
    x: &PooledBuffer,
    g: &Window,
) -> Result<PooledBuffer> {
    let cols = im2col(ctx, x, g)?;
    let partial = grouped_product(
        ctx,
        (dy, Blocks::Grad, false),
        (&cols, Blocks::Cols, true),
        g,
    )?;
    if g.n == 1 {
        return Ok(partial);
    }
    ctx.check_walk("conv2d backward", g.n)?;
    let n = g.c_out * g.c_in_group() * g.kh * g.kw;
    let dw = ctx.alloc("conv2d backward", n)?;
    move_data(ctx, "sum_batches", &partial, &dw, g, n)?;
    Ok(dw)
}

/// Gradient of the convolution's input (`weight = true`: of its weight) from the output
/// gradient `grad`; `other` is the weight (the input). Non-empty operands.
pub(crate) fn conv2d_grad(
    ctx: &GpuContext,
    grad: &PooledBuffer,
    other: &PooledBuffer,
    g: &Window,
    weight: bool,
) -> Result<PooledBuffer> {
    if use_gemm(ctx, g) {
        return if weight {
            grad_weight_gemm(ctx, grad, other, g)
        } else {
            grad_input_gemm(ctx, grad, other, g)
        };
    }
    let (n_out, entry, walk) = if weight {
        let (oh, ow) = (g.out_dims()[2], g.out_dims()[3]);
        let walk = g.n * (1 + oh * (1 + ow));
        (g.c_out * g.c_in_group() * g.kh * g.kw, "grad_weight", walk)
    } else {
        let walk = g.c_out * (1 + g.kh * (1 + g.kw));
        (g.n * g.c_in * g.h * g.w, "grad_input", walk)
    };
    ctx.check_walk("conv2d backward", walk)?;
    let out = ctx.alloc("conv2d backward", n_out)?;
    ctx.dispatch_1d(
        "conv2d backward",
        &conv_grad_spec(entry),
        &[&grad.buffer, &other.buffer, &out.buffer],
        bytemuck::bytes_of(&conv_params(g, n_out)),
        n_out,
    )?;
    Ok(out)
}

/// Gradient of a pooling's input from its output gradient (non-empty).
pub(crate) fn pool2d_grad(
    ctx: &GpuContext,
    x: &PooledBuffer,
    grad: &PooledBuffer,
    g: &Window,
    max: bool,
) -> Result<PooledBuffer> {
    let n_out = g.n * g.c_out * g.h * g.w;
    let out = ctx.alloc("pool2d backward", n_out)?;
    ctx.dispatch_1d(
        "pool2d backward",
        &pool_grad_spec(max),
        &[&x.buffer, &grad.buffer, &out.buffer],
        bytemuck::bytes_of(&pool_params(g, n_out)),
        n_out,
    )?;
    Ok(out)
}

/// Convolution with a non-empty output and non-empty operands.
pub(crate) fn conv2d(
    ctx: &GpuContext,
    x: &PooledBuffer,
    wt: &PooledBuffer,
    bias: Option<&PooledBuffer>,
    g: &Window,
) -> Result<PooledBuffer> {
    if use_gemm(ctx, g) {
        return conv2d_gemm(ctx, x, wt, bias, g);
    }
    let n_out = g.out_dims().iter().product::<usize>();
    ctx.check_walk("conv2d", g.c_in * (1 + g.kh * (1 + g.kw)))?;
    let out = ctx.alloc("conv2d", n_out)?;
    let params = conv_params(g, n_out);
    let b = bias.unwrap_or(wt);
    ctx.dispatch_1d(
        "conv2d",
        &conv_spec(bias.is_some()),
        &[&x.buffer, &wt.buffer, &b.buffer, &out.buffer],
        bytemuck::bytes_of(&params),
        n_out,
    )?;
    Ok(out)
}

/// Pooling with a non-empty output (`g.c_out` = channels).
pub(crate) fn pool2d(
    ctx: &GpuContext,
    x: &PooledBuffer,
    g: &Window,
    max: bool,
) -> Result<PooledBuffer> {
    let op = if max { "max_pool2d" } else { "avg_pool2d" };
    let n_out = g.out_dims().iter().product::<usize>();
    let out = ctx.alloc(op, n_out)?;
    let params = pool_params(g, n_out);
    ctx.dispatch_1d(
        op,
        &pool_spec(max),
        &[&x.buffer, &out.buffer],
        bytemuck::bytes_of(&params),
        n_out,
    )?;
    Ok(out)
}

/// This family's specializations and uniform params structs (see `kernels::Family`).
pub(crate) const FAMILY: Family = Family {
    specs,
    params: &[
        ("conv2d.wgsl", "Params", size_of::<ConvParams>()),
        ("conv_gemm.wgsl", "Params", size_of::<ConvParams>()),
        ("pool2d.wgsl", "Params", size_of::<PoolParams>()),
    ],
};
