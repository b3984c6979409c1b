//! The storage seam: where a tensor's values live, and the one module that matches on the
//! backend.
//!
//! A [`Storage`] is either CPU memory (typed: `Vec<f32>` or `Vec<u32>`) or a GPU buffer tagged
//! with its element type. Every op the tensor layer runs is one method here: it checks that the
//! operands share a backend and have the element types the op needs, handles empty GPU tensors
//! (which own no buffer), and calls the CPU loop in `cpu/` or the kernel in `gpu/kernels/`.
//! Shapes are validated by the caller (`tensor/`), which passes the derived sizes in; a third
//! element type is one new arm of [`CpuStorage`] and one more `DType` on [`GpuStorage`].

use crate::conv::Window;
use crate::cpu;
use crate::cpu::fused::CpuFused;
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::fusion::{self, LeafMap, Operand, Program};
use crate::gpu::context::GpuContext;
use crate::gpu::kernels::fused::{self, Fused};
use crate::gpu::kernels::matmul::Epilogue;
use crate::gpu::kernels::{conv, copy, elementwise, grad, index, matmul, norm, optim};
use crate::gpu::kernels::{reduce, scan, select, xent};
use crate::gpu::pool::PooledBuffer;
use crate::matmul_plan::MatmulPlan;
use crate::op::{BinaryOp, ReduceOp, UnaryOp};
use crate::optim_params::{OptimParams, Replayed};
use crate::shape::BroadcastLayout;
use crate::strided::StridedCopy;
use std::sync::Arc;

mod attention;

/// A tensor's values on one backend. Cloning shares them.
#[derive(Clone)]
pub(crate) enum Storage {
    /// Host memory of the CPU backend.
    Cpu(CpuStorage),
    /// A buffer on a wgpu device.
    Gpu(GpuStorage),
}

/// Host values, typed.
#[derive(Clone)]
pub(crate) enum CpuStorage {
    /// 32-bit floats.
    F32(Arc<Vec<f32>>),
    /// 32-bit unsigned integers.
    U32(Arc<Vec<u32>>),
    /// 32-bit floats that a fused elementwise program computes when they are read
    /// (`cpu/fused.rs`).
    Lazy(Arc<CpuFused>),
}

/// A GPU buffer of 32-bit values with their element type. A tensor with no elements has no
/// buffer (`buf` is `None`) and ops on it dispatch nothing. The result of an elementwise op may
/// be a fused program not yet run (`lazy`, see `gpu/kernels/fused.rs`): it runs when an op binds
/// it or it is read.
#[derive(Clone)]
pub(crate) struct GpuStorage {
    ctx: Arc<GpuContext>,
    buf: Option<Arc<PooledBuffer>>,
    lazy: Option<Arc<Fused>>,
    dtype: DType,
}

/// Most values [`Storage::full`] uploads on a GPU instead of dispatching a fill kernel.
const UPLOAD_FILL_MAX: usize = 64;

/// Dimensions `[outer, len, inner]` around one axis.
pub(crate) type Around = (usize, usize, usize);

/// Operands of a `where`: unit dimensions of the output dropped, and each operand's broadcast
/// strides for the dimensions kept.
pub(crate) struct WherePlan {
    /// The output's dimensions of extent > 1.
    pub dims: Vec<usize>,
    /// Strides of the mask, `a` and `b` over `dims` (0 where broadcast).
    pub strides: [Vec<usize>; 3],
}

impl CpuStorage {
    fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) | CpuStorage::Lazy(_) => DType::F32,
            CpuStorage::U32(_) => DType::U32,
        }
    }

    fn f32s(&self, op: &'static str) -> Result<&Arc<Vec<f32>>> {
        match self {
            CpuStorage::F32(v) => Ok(v),
            CpuStorage::Lazy(f) => f.materialized(),
            other => Err(mismatch(op, DType::F32, other.dtype())),
        }
    }

    /// This f32 operand as the input of a fused program, read through `map` (see
    /// `GpuStorage::operand`).
    fn operand(
        &self,
        op: &'static str,
        map: LeafMap,
        parts: usize,
    ) -> Result<Operand<'_, Arc<Vec<f32>>>> {
        if let CpuStorage::Lazy(f) = self
            && f.extendable(&map, parts)
        {
            return Ok(Operand::Program(f));
        }
        Ok(Operand::Buffer(self.f32s(op)?, map))
    }

    fn u32s(&self, op: &'static str) -> Result<&Arc<Vec<u32>>> {
        match self {
            CpuStorage::U32(v) => Ok(v),
            other => Err(mismatch(op, DType::U32, other.dtype())),
        }
    }
}

impl GpuStorage {
    /// The buffer of an operand the op reads, checked for its element type. An empty operand
    /// has none; the tensor layer handles empty inputs before an op needs their buffer, so
    /// reaching that is a bug reported as `Error::Gpu`, not a panic.
    fn bound(&self, op: &'static str, dtype: DType) -> Result<&PooledBuffer> {
        if self.dtype != dtype {
            return Err(mismatch(op, dtype, self.dtype));
        }
        if let Some(f) = &self.lazy {
            return Ok(f.materialized(&self.ctx)?);
        }
        self.buf.as_deref().ok_or_else(|| {
            Error::Gpu(format!(
                "{op}: internal error: an empty operand was bound to a kernel"
            ))
        })
    }

    /// The buffer to read back (`None` for an empty tensor), checked for its element type.
    fn readable(&self, op: &'static str, dtype: DType) -> Result<Option<&PooledBuffer>> {
        if self.dtype != dtype {
            return Err(mismatch(op, dtype, self.dtype));
        }
        if let Some(f) = &self.lazy {
            return Ok(Some(f.materialized(&self.ctx)?));
        }
        Ok(self.buf.as_deref())
    }

    /// This f32 operand as the input of a fused program, read through `map`: its program (to
    /// extend) where it has the output's shape and the program stays within one kernel's size
    /// (`parts` operands share it), else its buffer.
    fn operand(
        &self,
        op: &'static str,
        map: LeafMap,
        parts: usize,
    ) -> Result<Operand<'_, Arc<PooledBuffer>>> {
        if self.dtype != DType::F32 {
            return Err(mismatch(op, DType::F32, self.dtype));
        }
        if let Some(f) = &self.lazy
            && f.extendable(&map, parts)
        {
            return Ok(Operand::Program(f));
        }
        Ok(Operand::Buffer(self.materialized(op)?, map))
    }

    /// The fused program this is, if it has not run yet.
    fn program(&self) -> Option<&Arc<Fused>> {
        self.lazy.as_ref().filter(|f| !f.is_done())
    }

    /// The buffer (running a fused program if this is one), as a shareable `Arc`.
    fn materialized(&self, op: &'static str) -> Result<&Arc<PooledBuffer>> {
        match (&self.lazy, &self.buf) {
            (Some(f), _) => f.materialized(&self.ctx),
            (None, Some(b)) => Ok(b),
            (None, None) => Err(Error::Gpu(format!(
                "{op}: internal error: an empty operand was bound to a kernel"
            ))),
        }
    }

    /// Storage of `dtype` on `ctx` with no values yet: empty, or about to get `buf` or `lazy`.
    fn blank(ctx: &Arc<GpuContext>, dtype: DType) -> GpuStorage {
        GpuStorage {
            ctx: ctx.clone(),
            buf: None,
            lazy: None,
            dtype,
        }
    }

    /// A result that is the fused program `f`.
    fn lazy(&self, f: Arc<Fused>) -> Storage {
        Storage::Gpu(GpuStorage {
            lazy: Some(f),
            ..GpuStorage::blank(&self.ctx, DType::F32)
        })
    }

    /// A result held in `buf`, of `dtype`, on this device.
    fn filled(&self, buf: PooledBuffer, dtype: DType) -> Storage {
        Storage::Gpu(GpuStorage {
            buf: Some(Arc::new(buf)),
            ..GpuStorage::blank(&self.ctx, dtype)
        })
    }

    /// A tensor of `dtype` with no elements on this device.
    fn empty(&self, dtype: DType) -> Storage {
        Storage::Gpu(GpuStorage::blank(&self.ctx, dtype))
    }

    /// A result of `n` values of `dtype` on this device: no buffer when `n` is 0, else the
    /// buffer that `run` makes.
    fn output(
        &self,
        n: usize,
        dtype: DType,
        run: impl FnOnce(&GpuContext) -> Result<PooledBuffer>,
    ) -> Result<Storage> {
        if n == 0 {
            return Ok(self.empty(dtype));
        }
        Ok(self.filled(run(&self.ctx)?, dtype))
    }
}

fn mismatch(op: &'static str, expected: DType, got: DType) -> Error {
    Error::DTypeMismatch { op, expected, got }
}

fn backends(op: &'static str) -> Error {
    Error::DeviceMismatch {
        op,
        lhs: "a CPU tensor".into(),
        rhs: "a GPU tensor".into(),
    }
}

/// The host values of an operand that must be on the CPU too.
fn host<'s>(op: &'static str, s: &'s Storage) -> Result<&'s CpuStorage> {
    match s {
        Storage::Cpu(c) => Ok(c),
        Storage::Gpu(_) => Err(backends(op)),
    }
}

/// The f32 buffer of an operand that must be on the GPU too.
fn gpu_bound<'s>(op: &'static str, s: &'s Storage) -> Result<&'s PooledBuffer> {
    match s {
        Storage::Gpu(g) => g.bound(op, DType::F32),
        Storage::Cpu(_) => Err(backends(op)),
    }
}

/// [`gpu_bound`] of an optional operand.
fn gpu_f32<'s>(op: &'static str, s: Option<&'s Storage>) -> Result<Option<&'s PooledBuffer>> {
    s.map(|s| gpu_bound(op, s)).transpose()
}

/// `y` as the right operand of a binary program with left operand `x`, or, when the two
/// together would pass one program's caps, `y` run first (`as_buffer`).
fn within_caps<'a, B: fusion::Buffer>(
    x: &Operand<'a, B>,
    y: Operand<'a, B>,
    as_buffer: impl FnOnce() -> Result<Operand<'a, B>>,
) -> Result<Operand<'a, B>> {
    let ((xi, xl), (yi, yl)) = (Program::size(x), Program::size(&y));
    if xi + yi + 1 > fusion::MAX_INSTS || xl + yl > fusion::MAX_LEAVES {
        as_buffer()
    } else {
        Ok(y)
    }
}

fn cpu_f32(v: Vec<f32>) -> Storage {
    Storage::Cpu(CpuStorage::F32(Arc::new(v)))
}

impl Storage {
    // ---- making and reading ---------------------------------------------------------------

    /// `data` on `device`.
    pub(crate) fn from_f32(device: &Device, op: &'static str, data: &[f32]) -> Result<Storage> {
        match device.gpu_context() {
            None => Ok(cpu_f32(data.to_vec())),
            Some(ctx) => Self::upload(ctx, op, DType::F32, data),
        }
    }

    /// `data` (owned: the CPU backend keeps it without a copy) on `device`.
    pub(crate) fn from_f32_vec(
        device: &Device,
        op: &'static str,
        data: Vec<f32>,
    ) -> Result<Storage> {
        match device.gpu_context() {
            None => Ok(cpu_f32(data)),
            Some(ctx) => Self::upload(ctx, op, DType::F32, &data),
        }
    }

    /// u32 `data` on `device` (the CPU backend shares it).
    pub(crate) fn from_u32(
        device: &Device,
        op: &'static str,
        data: Arc<Vec<u32>>,
    ) -> Result<Storage> {
        match device.gpu_context() {
            None => Ok(Storage::Cpu(CpuStorage::U32(data))),
            Some(ctx) => Self::upload(ctx, op, DType::U32, bytemuck::cast_slice(&data)),
        }
    }

    /// 32-bit words uploaded to the GPU of `ctx` as `dtype`.
    fn upload(
        ctx: &Arc<GpuContext>,
        op: &'static str,
        dtype: DType,
        words: &[f32],
    ) -> Result<Storage> {
        GpuStorage::blank(ctx, dtype).output(words.len(), dtype, |ctx| ctx.upload(op, words))
    }

    /// `n` copies of `value` on `device`. On a GPU by a fill kernel, except for at most
    /// [`UPLOAD_FILL_MAX`] values (a backward pass's seed, a scalar): uploading those costs less
    /// than a dispatch.
    pub(crate) fn full(device: &Device, n: usize, value: f32) -> Result<Storage> {
        match device.gpu_context() {
            None => Ok(cpu_f32(cpu::fill(n, value)?)),
            Some(ctx) if n <= UPLOAD_FILL_MAX => {
                Self::upload(ctx, "full", DType::F32, &vec![value; n])
            }
            Some(ctx) => GpuStorage::blank(ctx, DType::F32)
                .output(n, DType::F32, |ctx| elementwise::fill(ctx, n, value)),
        }
    }

    /// The element type.
    pub(crate) fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(c) => c.dtype(),
            Storage::Gpu(g) => g.dtype,
        }
    }

    /// The `n` f32 values (a GPU submits its recorded work and waits).
    pub(crate) fn to_f32(&self, op: &'static str, n: usize) -> Result<Vec<f32>> {
        match self {
            Storage::Cpu(c) => Ok(c.f32s(op)?.as_ref().clone()),
            Storage::Gpu(g) => match g.readable(op, DType::F32)? {
                None => Ok(Vec::new()),
                Some(buf) => g.ctx.read(buf, n),
            },
        }
    }

    /// The GPU buffer holding these `n` values, running a pending program first: `None` for
    /// the CPU backend or an empty tensor.
    pub(crate) fn gpu_buffer(
        &self,
        op: &'static str,
    ) -> Result<Option<(&Arc<GpuContext>, &wgpu::Buffer)>> {
        match self {
            Storage::Cpu(_) => Ok(None),
            Storage::Gpu(g) => Ok(g.readable(op, g.dtype)?.map(|b| (&g.ctx, &b.buffer))),
        }
    }

    /// A copy of these `n` values in storage of their own (on a GPU, a new buffer and one
    /// recorded copy; the CPU backend shares its immutable values).
    pub(crate) fn duplicate(&self, op: &'static str, n: usize) -> Result<Storage> {
        match self {
            Storage::Cpu(_) => Ok(self.clone()),
            Storage::Gpu(g) => {
                let src = g.readable(op, g.dtype)?;
                GpuStorage::blank(&g.ctx, g.dtype).output(n, g.dtype, |ctx| {
                    let src = src.ok_or_else(|| {
                        Error::Gpu(format!("{op}: internal error: values without a buffer"))
                    })?;
                    let out = ctx.alloc(op, n)?;
                    ctx.copy(&src.buffer, &out.buffer, n as u64 * 4)?;
                    Ok(out)
                })
            }
        }
    }

    /// [`Storage::to_f32`] as a future.
    pub(crate) async fn to_f32_async(&self, op: &'static str, n: usize) -> Result<Vec<f32>> {
        match self {
            Storage::Cpu(c) => Ok(c.f32s(op)?.as_ref().clone()),
            Storage::Gpu(g) => match g.readable(op, DType::F32)? {
                None => Ok(Vec::new()),
                Some(buf) => g.ctx.clone().read_async(buf, n).await,
            },
        }
    }

    /// The `n` u32 values.
    pub(crate) fn to_u32(&self, op: &'static str, n: usize) -> Result<Vec<u32>> {
        match self {
            Storage::Cpu(c) => Ok(c.u32s(op)?.as_ref().clone()),
            Storage::Gpu(g) => match g.readable(op, DType::U32)? {
                None => Ok(Vec::new()),
                Some(buf) => Ok(g.ctx.read(buf, n)?.into_iter().map(f32::to_bits).collect()),
            },
        }
    }

    /// These `n` values on `device` (whatever their element type).
    pub(crate) fn to_device(&self, device: &Device, n: usize) -> Result<Storage> {
        match self.dtype() {
            DType::F32 => Self::from_f32_vec(device, "to_device", self.to_f32("to_device", n)?),
            DType::U32 => {
                Self::from_u32(device, "to_device", Arc::new(self.to_u32("to_device", n)?))
            }
        }
    }

    // ---- elementwise ----------------------------------------------------------------------

    /// `op` on each of the `n` values.
    pub(crate) fn unary(&self, op: UnaryOp, n: usize) -> Result<Storage> {
        match self {
            Storage::Cpu(c) if n > 0 && cpu::fused::enabled() => {
                let x = c.operand(op.name(), LeafMap::Contiguous, 1)?;
                Ok(Storage::Cpu(CpuStorage::Lazy(cpu::fused::fused_unary(
                    x, op, n,
                ))))
            }
            Storage::Cpu(c) => Ok(cpu_f32(cpu::unary(c.f32s(op.name())?, op)?)),
            Storage::Gpu(g) if n > 0 && fused::enabled(&g.ctx) => {
                let x = g.operand(op.name(), LeafMap::Contiguous, 1)?;
                Ok(g.lazy(fused::unary(&g.ctx, x, op, n)))
            }
            Storage::Gpu(g) => g.output(n, DType::F32, |ctx| {
                elementwise::unary(ctx, g.bound(op.name(), DType::F32)?, n, op)
            }),
        }
    }

    /// This one f32 value repeated `n` times as a fused program (extending this value's own
    /// program where it has not run), so that a broadcast scalar costs no pass of its own;
    /// `None` with fusion off (the caller copies).
    pub(crate) fn splat(&self, n: usize) -> Result<Option<Storage>> {
        const OP: &str = "broadcast_to";
        match self {
            Storage::Cpu(c) if n > 0 && cpu::fused::enabled() => {
                let x = match c {
                    CpuStorage::Lazy(f) if !f.is_done() => Operand::Splat(f),
                    _ => Operand::Buffer(c.f32s(OP)?, LeafMap::Scalar),
                };
                Ok(Some(Storage::Cpu(CpuStorage::Lazy(
                    cpu::fused::fused_splat(x, n),
                ))))
            }
            Storage::Gpu(g) if n > 0 && fused::enabled(&g.ctx) => {
                if g.dtype != DType::F32 {
                    return Err(mismatch(OP, DType::F32, g.dtype));
                }
                let x = match g.program() {
                    Some(f) => Operand::Splat(f),
                    None => Operand::Buffer(g.materialized(OP)?, LeafMap::Scalar),
                };
                Ok(Some(g.lazy(fused::splat(&g.ctx, x, n))))
            }
            _ => Ok(None),
        }
    }

    /// `self op rhs` over the `n` outputs of `layout`.
    pub(crate) fn binary(
        &self,
        rhs: &Storage,
        layout: &BroadcastLayout,
        n: usize,
        op: BinaryOp,
    ) -> Result<Storage> {
        let name = op.name();
        // With fusion on, both operands' maps within the generated code's reach: a program.
        let maps = (
            LeafMap::of(&layout.dims, &layout.lhs),
            LeafMap::of(&layout.dims, &layout.rhs),
        );
        let fusable = n > 0 && fusion::fits(&maps.0) && fusion::fits(&maps.1);
        match (self, rhs) {
            (Storage::Cpu(a), Storage::Cpu(b)) if fusable && cpu::fused::enabled() => {
                let (x, y) = (
                    a.operand(name, maps.0, 2)?,
                    b.operand(name, maps.1.clone(), 2)?,
                );
                let y = within_caps(&x, y, || Ok(Operand::Buffer(b.f32s(name)?, maps.1)))?;
                let f = cpu::fused::fused_binary(x, y, op, n);
                Ok(Storage::Cpu(CpuStorage::Lazy(f)))
            }
            (Storage::Cpu(a), Storage::Cpu(b)) => Ok(cpu_f32(cpu::binary(
                a.f32s(name)?,
                b.f32s(name)?,
                layout,
                n,
                op,
            )?)),
            (Storage::Gpu(a), Storage::Gpu(b)) if fusable && fused::enabled(&a.ctx) => {
                let (x, y) = (
                    a.operand(name, maps.0, 2)?,
                    b.operand(name, maps.1.clone(), 2)?,
                );
                let y = within_caps(&x, y, || Ok(Operand::Buffer(b.materialized(name)?, maps.1)))?;
                Ok(a.lazy(fused::binary(&a.ctx, x, y, op, n)))
            }
            (Storage::Gpu(a), Storage::Gpu(b)) => a.output(n, DType::F32, |ctx| {
                let (x, y) = (a.bound(name, DType::F32)?, b.bound(name, DType::F32)?);
                elementwise::binary(ctx, x, y, layout, n, op)
            }),
            _ => Err(backends(name)),
        }
    }

    /// `a` where `mask` is non-zero, else `b`, over `plan`.
    pub(crate) fn where_(
        mask: &Storage,
        a: &Storage,
        b: &Storage,
        plan: &WherePlan,
    ) -> Result<Storage> {
        const OP: &str = "where";
        let n: usize = plan.dims.iter().product();
        let [sm, sa, sb] = &plan.strides;
        match (mask, a, b) {
            (Storage::Cpu(m), Storage::Cpu(x), Storage::Cpu(y)) => Ok(cpu_f32(cpu::where_(
                [m.f32s(OP)?, x.f32s(OP)?, y.f32s(OP)?],
                &plan.dims,
                [sm, sa, sb],
            )?)),
            (Storage::Gpu(m), Storage::Gpu(x), Storage::Gpu(y)) => m.output(n, DType::F32, |ctx| {
                let bufs = [
                    m.bound(OP, DType::F32)?,
                    x.bound(OP, DType::F32)?,
                    y.bound(OP, DType::F32)?,
                ];
                // The kernel wants at least one dimension.
                let one =
                    |v: &[usize], unit: usize| if v.is_empty() { vec![unit] } else { v.to_vec() };
                let dims = one(&plan.dims, 1);
                let (sm, sa, sb) = (one(sm, 0), one(sa, 0), one(sb, 0));
                select::where_(ctx, bufs, &dims, [&sm, &sa, &sb])
            }),
            _ => Err(backends(OP)),
        }
    }

    // ---- reductions and normalisation ---------------------------------------------------------

    /// `op` along the middle of `dims` (`len > 0`: the tensor layer fills empty reductions).
    pub(crate) fn reduce(&self, dims: Around, op: ReduceOp) -> Result<Storage> {
        let n = dims.0 * dims.2;
        match self {
            Storage::Cpu(c) => Ok(cpu_f32(cpu::reduce(c.f32s(op.name())?, dims, op)?)),
            // An elementwise program not yet run becomes the reduction's prologue.
            Storage::Gpu(g) => g.output(n, DType::F32, |ctx| match g.program() {
                Some(f) => f.reduce(ctx, dims, op),
                None => reduce::reduce(ctx, g.bound(op.name(), DType::F32)?, dims, op),
            }),
        }
    }

    /// (log-)softmax along the middle of `dims`.
    pub(crate) fn softmax(&self, dims: Around, log: bool) -> Result<Storage> {
        let op = if log { "log_softmax" } else { "softmax" };
        let n = dims.0 * dims.1 * dims.2;
        match self {
            Storage::Cpu(c) => Ok(cpu_f32(cpu::softmax(c.f32s(op)?, dims, log)?)),
            // An elementwise program not yet run becomes the softmax's prologue.
            Storage::Gpu(g) => g.output(n, DType::F32, |ctx| match g.program() {
                Some(f) => f.softmax(ctx, dims, log),
                None => reduce::softmax(ctx, g.bound(op, DType::F32)?, dims, log),
            }),
        }
    }

    /// Index of the maximum along the middle of `dims` (`len > 0`), as u32.
    pub(crate) fn argmax(&self, dims: Around) -> Result<Storage> {
        const OP: &str = "argmax";
        let n = dims.0 * dims.2;
        match self {
            Storage::Cpu(c) => Ok(Storage::Cpu(CpuStorage::U32(Arc::new(cpu::argmax(
                c.f32s(OP)?,
                dims,
            )?)))),
            Storage::Gpu(g) => g.output(n, DType::U32, |ctx| {
                reduce::argmax(ctx, g.bound(OP, DType::F32)?, dims)
            }),
        }
    }

    /// Running sums along the middle axis of `dims` (all extents > 0; see `shaders/scan.wgsl`).
    pub(crate) fn cumsum(&self, dims: Around, exclusive: bool, reverse: bool) -> Result<Storage> {
        const OP: &str = "cumsum";
        match self {
            Storage::Cpu(c) => Ok(cpu_f32(cpu::cumsum(c.f32s(OP)?, dims, exclusive, reverse)?)),
            Storage::Gpu(g) => g.output(dims.0 * dims.1 * dims.2, DType::F32, |ctx| {
                scan::cumsum(ctx, g.bound(OP, DType::F32)?, dims, exclusive, reverse)
            }),
        }
    }

    /// The `k` first values along the middle axis of `dims` and their u32 indices (all
    /// extents and `k` > 0, `k` ≤ the axis; see `shaders/scan.wgsl`).
    pub(crate) fn topk(&self, dims: Around, k: usize, largest: bool) -> Result<(Storage, Storage)> {
        const OP: &str = "topk";
        match self {
            Storage::Cpu(c) => {
                let (v, i) = cpu::topk(c.f32s(OP)?, dims, k, largest)?;
                Ok((cpu_f32(v), Storage::Cpu(CpuStorage::U32(Arc::new(i)))))
            }
            Storage::Gpu(g) => {
                let (v, i) = scan::topk(&g.ctx, g.bound(OP, DType::F32)?, dims, k, largest)?;
                let blank = |d| GpuStorage::blank(&g.ctx, d);
                Ok((
                    blank(DType::F32).filled(v, DType::F32),
                    blank(DType::U32).filled(i, DType::U32),
                ))
            }
        }
    }

    /// The input gradient of layer_norm (rms_norm with `rms`) over `rows` rows of `len` values
    /// (both > 0) from the output gradient `g` and the optional weight: (dx, each row's mean,
    /// each row's `1/sqrt(var + eps)`). `Unsupported` where a row is too long for the device's
    /// kernel (the caller then composes it from reductions).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn norm_backward(
        &self,
        weight: Option<&Storage>,
        g: &Storage,
        rows: usize,
        len: usize,
        eps: f32,
        rms: bool,
    ) -> Result<(Storage, Storage, Storage)> {
        const OP: &str = "layer_norm backward";
        match (self, g) {
            (Storage::Cpu(x), Storage::Cpu(gc)) => {
                let w = weight.map(|w| host(OP, w)?.f32s(OP)).transpose()?;
                let (dx, m, r) = cpu::norm_backward(
                    x.f32s(OP)?,
                    w.map(|v| v.as_slice()),
                    gc.f32s(OP)?,
                    len,
                    eps,
                    rms,
                )?;
                Ok((cpu_f32(dx), cpu_f32(m), cpu_f32(r)))
            }
            (Storage::Gpu(x), Storage::Gpu(gg)) => {
                let wb = match weight {
                    Some(Storage::Gpu(w)) => Some(w.bound(OP, DType::F32)?),
                    Some(_) => return Err(backends(OP)),
                    None => None,
                };
                let (xb, gb) = (x.bound(OP, DType::F32)?, gg.bound(OP, DType::F32)?);
                let (dx, m, r) = norm::backward(&x.ctx, xb, wb, gb, rows, len, eps, rms)?;
                let f = |b| x.filled(b, DType::F32);
                Ok((f(dx), f(m), f(r)))
            }
            _ => Err(backends(OP)),
        }
    }

    /// A norm's weight and bias gradients from its input (`self`), the output gradient `g` and
    /// the row statistics [`Storage::norm_backward`] made: `(Σ_rows g·x̂, Σ_rows g)`.
    /// `Unsupported` where the rows are too many for one pass of the device's kernel.
    pub(crate) fn norm_param_grads(
        &self,
        [g, mean, r]: [&Storage; 3],
        rows: usize,
        len: usize,
    ) -> Result<(Storage, Storage)> {
        const OP: &str = "layer_norm backward";
        match self {
            Storage::Cpu(x) => {
                let f =
                    |s: &Storage| -> Result<Arc<Vec<f32>>> { Ok(host(OP, s)?.f32s(OP)?.clone()) };
                let (dw, db) = cpu::norm_param_grads(x.f32s(OP)?, &f(g)?, &f(mean)?, &f(r)?, len)?;
                Ok((cpu_f32(dw), cpu_f32(db)))
            }
            Storage::Gpu(x) => {
                let [gb, mb, rb] = [g, mean, r].map(|s| gpu_bound(OP, s));
                let (gb, mb, rb) = (gb?, mb?, rb?);
                let xb = x.bound(OP, DType::F32)?;
                let (dw, db) = norm::param_grads(&x.ctx, [xb, gb, mb, rb], rows, len)?;
                Ok((x.filled(dw, DType::F32), x.filled(db, DType::F32)))
            }
        }
    }

    /// layer_norm (`rms` false) or rms_norm over `rows` rows of `len` values, with optional
    /// weight and bias of `len` values.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn norm(
        &self,
        weight: Option<&Storage>,
        bias: Option<&Storage>,
        rows: usize,
        len: usize,
        eps: f32,
        rms: bool,
    ) -> Result<Storage> {
        let op = if rms { "rms_norm" } else { "layer_norm" };
        match self {
            Storage::Cpu(x) => {
                let host = |t: Option<&Storage>| -> Result<Option<Arc<Vec<f32>>>> {
                    match t {
                        None => Ok(None),
                        Some(Storage::Cpu(c)) => Ok(Some(c.f32s(op)?.clone())),
                        Some(Storage::Gpu(_)) => Err(backends(op)),
                    }
                };
                let (w, b) = (host(weight)?, host(bias)?);
                Ok(cpu_f32(cpu::norm(
                    x.f32s(op)?,
                    w.as_deref().map(Vec::as_slice),
                    b.as_deref().map(Vec::as_slice),
                    len,
                    eps,
                    rms,
                )?))
            }
            Storage::Gpu(x) => x.output(rows * len, DType::F32, |ctx| {
                let (w, b) = (gpu_f32(op, weight)?, gpu_f32(op, bias)?);
                norm::norm(ctx, x.bound(op, DType::F32)?, w, b, rows, len, eps, rms)
            }),
        }
    }

    /// Per-row cross-entropy of `[rows, classes]` logits against `targets` (u32, with `t` its
    /// values on the host): the losses and each row's logsumexp.
    pub(crate) fn cross_entropy(
        &self,
        targets: &Storage,
        t: &[u32],
        classes: usize,
    ) -> Result<(Storage, Storage)> {
        const OP: &str = "cross_entropy";
        let rows = t.len();
        match (self, targets) {
            (Storage::Cpu(x), Storage::Cpu(_)) => {
                let (loss, lse) = cpu::cross_entropy_rows(x.f32s(OP)?, t, classes)?;
                Ok((cpu_f32(loss), cpu_f32(lse)))
            }
            (Storage::Gpu(x), Storage::Gpu(tg)) => {
                if rows == 0 || classes == 0 {
                    return Ok((x.empty(DType::F32), x.empty(DType::F32)));
                }
                let (xb, tb) = (x.bound(OP, DType::F32)?, tg.bound(OP, DType::U32)?);
                let (loss, lse) = xent::forward(&x.ctx, xb, tb, rows, classes)?;
                Ok((x.filled(loss, DType::F32), x.filled(lse, DType::F32)))
            }
            _ => Err(backends(OP)),
        }
    }

    /// The logits' gradient of [`Storage::cross_entropy`] from the loss gradient `g`.
    pub(crate) fn cross_entropy_grad(
        &self,
        targets: &Storage,
        t: &[u32],
        lse: &Storage,
        g: &Storage,
        classes: usize,
    ) -> Result<Storage> {
        const OP: &str = "cross_entropy backward";
        let rows = t.len();
        match (self, targets, lse, g) {
            (Storage::Cpu(x), Storage::Cpu(_), Storage::Cpu(l), Storage::Cpu(gv)) => Ok(cpu_f32(
                cpu::cross_entropy_grad(x.f32s(OP)?, t, l.f32s(OP)?, gv.f32s(OP)?, classes)?,
            )),
            (Storage::Gpu(x), Storage::Gpu(tg), Storage::Gpu(l), Storage::Gpu(gb)) => {
                x.output(rows * classes, DType::F32, |ctx| {
                    let bufs = [
                        x.bound(OP, DType::F32)?,
                        tg.bound(OP, DType::U32)?,
                        l.bound(OP, DType::F32)?,
                        gb.bound(OP, DType::F32)?,
                    ];
                    xent::backward(ctx, bufs, rows, classes)
                })
            }
            _ => Err(backends(OP)),
        }
    }

    // ---- products -----------------------------------------------------------------------------

    /// `act(self · rhs + bias) + residual` over `plan` (`k > 0`: the tensor layer handles empty
    /// sums; the residual has the output's values).
    pub(crate) fn matmul(
        &self,
        rhs: &Storage,
        plan: &MatmulPlan,
        bias: Option<&Storage>,
        act: Option<UnaryOp>,
        residual: Option<&Storage>,
    ) -> Result<Storage> {
        const OP: &str = "matmul";
        match (self, rhs) {
            (Storage::Cpu(a), Storage::Cpu(b)) => {
                let host_f32 = |s: Option<&Storage>| -> Result<Option<Arc<Vec<f32>>>> {
                    s.map(|s| Ok(host(OP, s)?.f32s(OP)?.clone())).transpose()
                };
                let (bias, residual) = (host_f32(bias)?, host_f32(residual)?);
                let mut y = cpu::linear(
                    a.f32s(OP)?,
                    b.f32s(OP)?,
                    plan,
                    bias.as_deref().map(Vec::as_slice),
                    act,
                )?;
                if let Some(r) = residual {
                    y.iter_mut().zip(r.iter()).for_each(|(v, &r)| *v += r);
                }
                Ok(cpu_f32(y))
            }
            (Storage::Gpu(a), Storage::Gpu(b)) => a.output(plan.out_numel(), DType::F32, |ctx| {
                let (bias, residual) = (gpu_f32(OP, bias)?, gpu_f32(OP, residual)?);
                let (x, y) = (a.bound(OP, DType::F32)?, b.bound(OP, DType::F32)?);
                let epilogue = Epilogue {
                    bias,
                    act,
                    residual,
                    row_sums: None,
                };
                matmul::matmul(ctx, x, y, plan, epilogue)
            }),
            _ => Err(backends(OP)),
        }
    }

    /// `self · rhs` over `plan` (`m, n, k > 0`, no epilogue) and, where the device's kernel
    /// adds them in the same pass, the sums of the left operand's rows (`[batches, m]`).
    pub(crate) fn matmul_row_sums(
        &self,
        rhs: &Storage,
        plan: &MatmulPlan,
    ) -> Result<(Storage, Option<Storage>)> {
        const OP: &str = "matmul";
        match (self, rhs) {
            (Storage::Gpu(a), Storage::Gpu(b)) => {
                let (x, y) = (a.bound(OP, DType::F32)?, b.bound(OP, DType::F32)?);
                let (c, sums) = matmul::matmul_row_sums(&a.ctx, x, y, plan)?;
                Ok((
                    a.filled(c, DType::F32),
                    sums.map(|v| a.filled(v, DType::F32)),
                ))
            }
            _ => Ok((self.matmul(rhs, plan, None, None, None)?, None)),
        }
    }

    /// `self · rhs` with both operands rounded to f16 and f32 accumulation; the operands hold
    /// `lens` values. `Unsupported` on a GPU without SHADER_F16 (even for an empty product).
    pub(crate) fn matmul_f16(
        &self,
        rhs: &Storage,
        plan: &MatmulPlan,
        lens: (usize, usize),
    ) -> Result<Storage> {
        const OP: &str = "matmul_f16";
        match (self, rhs) {
            (Storage::Cpu(a), Storage::Cpu(b)) => {
                let round = |v: &[f32]| -> Vec<f32> {
                    v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
                };
                let (a, b) = (round(a.f32s(OP)?), round(b.f32s(OP)?));
                Ok(cpu_f32(cpu::matmul(&a, &b, plan)?))
            }
            (Storage::Gpu(a), Storage::Gpu(b)) => {
                if !matmul::f16_supported(&a.ctx) {
                    return Err(Error::Unsupported {
                        op: OP,
                        reason: "the adapter does not grant SHADER_F16".into(),
                    });
                }
                let n = plan.out_numel();
                a.output(n, DType::F32, |ctx| {
                    if plan.k == 0 {
                        return elementwise::fill(ctx, n, 0.0); // an empty sum
                    }
                    let (x, y) = (a.bound(OP, DType::F32)?, b.bound(OP, DType::F32)?);
                    matmul::matmul_f16(ctx, x, y, lens.0, lens.1, plan)
                })
            }
            _ => Err(backends(OP)),
        }
    }

    /// 2-D convolution over the window `w` (input and weight non-empty).
    pub(crate) fn conv2d(
        &self,
        weight: &Storage,
        bias: Option<&Storage>,
        w: &Window,
    ) -> Result<Storage> {
        const OP: &str = "conv2d";
        let n: usize = w.out_dims().iter().product();
        match (self, weight, bias) {
            (Storage::Cpu(x), Storage::Cpu(k), None | Some(Storage::Cpu(_))) => {
                let bias = match bias {
                    Some(Storage::Cpu(c)) => Some(c.f32s(OP)?.as_slice()),
                    _ => None,
                };
                Ok(cpu_f32(cpu::conv2d(x.f32s(OP)?, k.f32s(OP)?, bias, w)?))
            }
            (Storage::Gpu(x), Storage::Gpu(k), None | Some(Storage::Gpu(_))) => {
                x.output(n, DType::F32, |ctx| {
                    let bias = match bias {
                        Some(Storage::Gpu(c)) => Some(c.bound(OP, DType::F32)?),
                        _ => None,
                    };
                    conv::conv2d(
                        ctx,
                        x.bound(OP, DType::F32)?,
                        k.bound(OP, DType::F32)?,
                        bias,
                        w,
                    )
                })
            }
            _ => Err(backends(OP)),
        }
    }

    /// Max (`max`) or average pooling over the window `w`.
    pub(crate) fn pool2d(&self, w: &Window, max: bool) -> Result<Storage> {
        let op = if max { "max_pool2d" } else { "avg_pool2d" };
        let n: usize = w.out_dims().iter().product();
        match self {
            Storage::Cpu(x) => Ok(cpu_f32(cpu::pool2d(x.f32s(op)?, w, max)?)),
            Storage::Gpu(x) => x.output(n, DType::F32, |ctx| {
                conv::pool2d(ctx, x.bound(op, DType::F32)?, w, max)
            }),
        }
    }

    // ---- layout and indexing --------------------------------------------------------------------

    /// A new storage of `n` values of `dtype` on `device`, filled by strided copies from
    /// `parts` (which cover it and have that element type, unless `zeroed`: then it starts as
    /// zeros and the parts may leave gaps).
    pub(crate) fn assemble(
        device: &Device,
        op: &'static str,
        dtype: DType,
        n: usize,
        parts: &[(&Storage, &StridedCopy)],
        zeroed: bool,
    ) -> Result<Storage> {
        match device.gpu_context() {
            None => {
                fn fill<T: Copy + Default>(
                    op: &'static str,
                    n: usize,
                    parts: &[(&[T], &StridedCopy)],
                ) -> Result<Vec<T>> {
                    let mut out = cpu::alloc(op, n)?;
                    for (src, plan) in parts {
                        cpu::strided_copy(src, &mut out, plan);
                    }
                    Ok(out)
                }
                Ok(Storage::Cpu(match dtype {
                    DType::F32 => {
                        let srcs = parts
                            .iter()
                            .map(|(s, p)| Ok((host(op, s)?.f32s(op)?.as_slice(), *p)))
                            .collect::<Result<Vec<_>>>()?;
                        CpuStorage::F32(Arc::new(fill(op, n, &srcs)?))
                    }
                    DType::U32 => {
                        let srcs = parts
                            .iter()
                            .map(|(s, p)| Ok((host(op, s)?.u32s(op)?.as_slice(), *p)))
                            .collect::<Result<Vec<_>>>()?;
                        CpuStorage::U32(Arc::new(fill(op, n, &srcs)?))
                    }
                }))
            }
            Some(ctx) => GpuStorage::blank(ctx, dtype).output(n, dtype, |ctx| {
                // The bits of 0.0f32 are those of 0u32: one fill serves both types.
                let buf = if zeroed {
                    elementwise::fill(ctx, n, 0.0)?
                } else {
                    ctx.alloc(op, n)?
                };
                for (src, plan) in parts {
                    let Storage::Gpu(g) = src else {
                        return Err(backends(op));
                    };
                    if plan.numel() > 0 {
                        copy::copy(ctx, g.bound(op, dtype)?, &buf, &plan.squeezed(op)?, op)?;
                    }
                }
                Ok(buf)
            }),
        }
    }

    /// These f32 values (contiguous, of `src_dims`, none empty) padded or cropped to `dims`
    /// (non-empty, rank at most `MAX_COPY_RANK`): `before[d]` is the output index minus the
    /// source index along d; outside the source, `value`.
    pub(crate) fn pad(
        &self,
        src_dims: &[usize],
        dims: &[usize],
        before: &[isize],
        value: f32,
    ) -> Result<Storage> {
        const OP: &str = "pad";
        match self {
            Storage::Cpu(c) => Ok(cpu_f32(cpu::pad(
                c.f32s(OP)?,
                src_dims,
                dims,
                before,
                value,
            )?)),
            Storage::Gpu(g) => g.output(dims.iter().product(), DType::F32, |ctx| {
                let src = g.bound(OP, DType::F32)?;
                copy::pad(ctx, src, src_dims, dims, before, value.to_bits())
            }),
        }
    }

    /// The slices `idx` (u32 `indices`, checked) of the middle of `dims`, any element type.
    pub(crate) fn index_select(
        &self,
        indices: &Storage,
        idx: &[u32],
        dims: Around,
    ) -> Result<Storage> {
        const OP: &str = "index_select";
        let n = dims.0 * idx.len() * dims.2;
        match (self, indices) {
            (Storage::Cpu(x), Storage::Cpu(_)) => Ok(Storage::Cpu(match x {
                CpuStorage::U32(v) => CpuStorage::U32(Arc::new(cpu::index_select(v, idx, dims)?)),
                f => CpuStorage::F32(Arc::new(cpu::index_select(f.f32s(OP)?, idx, dims)?)),
            })),
            (Storage::Gpu(x), Storage::Gpu(i)) => x.output(n, x.dtype, |ctx| {
                let src = x.bound(OP, x.dtype)?;
                index::index_select(ctx, src, i.bound(OP, DType::U32)?, dims, idx.len())
            }),
            _ => Err(backends(OP)),
        }
    }

    /// PyTorch's gather along `axis` with the u32 `index` (shape `dims`, values `idx` checked),
    /// from a source with strides `x_strides`; any element type.
    pub(crate) fn gather(
        &self,
        index: &Storage,
        idx: &[u32],
        dims: &[usize],
        x_strides: &[usize],
        axis: usize,
    ) -> Result<Storage> {
        const OP: &str = "gather";
        match (self, index) {
            (Storage::Cpu(x), Storage::Cpu(_)) => Ok(Storage::Cpu(match x {
                CpuStorage::U32(v) => {
                    CpuStorage::U32(Arc::new(cpu::gather(v, idx, dims, x_strides, axis)?))
                }
                f => CpuStorage::F32(Arc::new(cpu::gather(
                    f.f32s(OP)?,
                    idx,
                    dims,
                    x_strides,
                    axis,
                )?)),
            })),
            (Storage::Gpu(x), Storage::Gpu(i)) => x.output(idx.len(), x.dtype, |ctx| {
                let src = x.bound(OP, x.dtype)?;
                index::gather(ctx, src, i.bound(OP, DType::U32)?, dims, x_strides, axis)
            }),
            _ => Err(backends(OP)),
        }
    }

    // ---- backward kernels -----------------------------------------------------------------------

    /// `g · op'(self)` over `n` values.
    pub(crate) fn unary_grad(&self, g: &Storage, op: UnaryOp, n: usize) -> Result<Storage> {
        let name = op.name();
        match (self, g) {
            (Storage::Cpu(x), Storage::Cpu(gv)) => {
                Ok(cpu_f32(cpu::unary_grad(x.f32s(name)?, gv.f32s(name)?, op)?))
            }
            (Storage::Gpu(x), Storage::Gpu(gb)) => x.output(n, DType::F32, |ctx| {
                let (xb, gb) = (x.bound(name, DType::F32)?, gb.bound(name, DType::F32)?);
                grad::unary_grad(ctx, xb, gb, n, op)
            }),
            _ => Err(backends(name)),
        }
    }

    /// The scatter-add of `self` (a gradient of shape `g_dims`, non-empty) through the u32
    /// `index` (values `idx`) along `axis` into zeros of shape `out_dims` (non-empty).
    pub(crate) fn scatter_add(
        &self,
        index: &Storage,
        idx: &[u32],
        out_dims: &[usize],
        g_dims: &[usize],
        axis: usize,
    ) -> Result<Storage> {
        const OP: &str = "scatter_add";
        let n: usize = out_dims.iter().product();
        match (self, index) {
            (Storage::Cpu(g), Storage::Cpu(_)) => Ok(cpu_f32(cpu::scatter_add(
                g.f32s(OP)?,
                idx,
                out_dims,
                g_dims,
                axis,
            )?)),
            (Storage::Gpu(g), Storage::Gpu(i)) => g.output(n, DType::F32, |ctx| {
                let s = grad::Scatter {
                    out_dims,
                    g_dims,
                    axis,
                };
                grad::scatter_add(ctx, g.bound(OP, DType::F32)?, i.bound(OP, DType::U32)?, &s)
            }),
            _ => Err(backends(OP)),
        }
    }

    /// index_select's gradient from `self` (non-empty) into zeros of `dims`, for the checked
    /// indices `idx` along the middle axis. The picks are grouped by row on the host first (a
    /// counting sort), so either backend does O(rows + picks) work.
    pub(crate) fn index_select_grad(&self, idx: &[u32], dims: Around) -> Result<Storage> {
        const OP: &str = "index_select backward";
        let (starts, order) = cpu::group_by_row(idx, dims.1);
        let count = order.len();
        match self {
            Storage::Cpu(g) => Ok(cpu_f32(cpu::index_select_grad(
                g.f32s(OP)?,
                &starts,
                &order,
                dims,
                count,
            )?)),
            Storage::Gpu(g) => g.output(dims.0 * dims.1 * dims.2, DType::F32, |ctx| {
                let most = starts.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
                ctx.check_walk(OP, most as usize)?;
                let sb = ctx.upload(OP, bytemuck::cast_slice(&starts))?;
                let ob = ctx.upload(OP, bytemuck::cast_slice(&order))?;
                let gb = g.bound(OP, DType::F32)?;
                grad::index_select_grad(ctx, gb, &sb, &ob, dims, count)
            }),
        }
    }

    /// [`Storage::index_select_grad`] reading the indices from `index` on the device, for
    /// indices the host must not plan from (a captured step's inputs). The CPU backend has
    /// them on the host: `idx`.
    pub(crate) fn index_select_grad_on_device(
        &self,
        index: &Storage,
        idx: &[u32],
        dims: Around,
    ) -> Result<Storage> {
        const OP: &str = "index_select backward";
        match (self, index) {
            (Storage::Gpu(g), Storage::Gpu(i)) => {
                g.output(dims.0 * dims.1 * dims.2, DType::F32, |ctx| {
                    let (gb, ib) = (g.bound(OP, DType::F32)?, i.bound(OP, DType::U32)?);
                    grad::index_select_grad_scan(ctx, gb, ib, dims, idx.len())
                })
            }
            _ => self.index_select_grad(idx, dims),
        }
    }

    /// conv2d's input gradient (`weight` false; `other` is the weight) or weight gradient
    /// (`other` is the input) from the output gradient `self`; `n` values out (non-empty).
    pub(crate) fn conv2d_grad(
        &self,
        other: &Storage,
        w: &Window,
        weight: bool,
        n: usize,
    ) -> Result<Storage> {
        const OP: &str = "conv2d backward";
        match (self, other) {
            (Storage::Cpu(g), Storage::Cpu(o)) => {
                let (g, o) = (g.f32s(OP)?, o.f32s(OP)?);
                Ok(cpu_f32(if weight {
                    cpu::conv2d_grad_weight(g, o, w)?
                } else {
                    cpu::conv2d_grad_input(g, o, w)?
                }))
            }
            (Storage::Gpu(g), Storage::Gpu(o)) => g.output(n, DType::F32, |ctx| {
                let (gb, ob) = (g.bound(OP, DType::F32)?, o.bound(OP, DType::F32)?);
                conv::conv2d_grad(ctx, gb, ob, w, weight)
            }),
            _ => Err(backends(OP)),
        }
    }

    /// The pooling gradient of the input `self` (`n` values) from the output gradient `g`.
    pub(crate) fn pool2d_grad(
        &self,
        g: &Storage,
        w: &Window,
        max: bool,
        n: usize,
    ) -> Result<Storage> {
        const OP: &str = "pool2d backward";
        match (self, g) {
            (Storage::Cpu(x), Storage::Cpu(gv)) => Ok(cpu_f32(cpu::pool2d_grad(
                x.f32s(OP)?,
                gv.f32s(OP)?,
                w,
                max,
            )?)),
            (Storage::Gpu(x), Storage::Gpu(gb)) => x.output(n, DType::F32, |ctx| {
                let (xb, gb) = (x.bound(OP, DType::F32)?, gb.bound(OP, DType::F32)?);
                conv::pool2d_grad(ctx, xb, gb, w, max)
            }),
            _ => Err(backends(OP)),
        }
    }

    // ---- in-place updates -----------------------------------------------------------------------

    /// Trade a program that has run, and that no other storage shares, for its buffer, so
    /// that an in-place update need not copy it (see [`Storage::is_shared`]).
    pub(crate) fn settle(&mut self) -> Result<()> {
        match self {
            Storage::Cpu(c) => {
                if let CpuStorage::Lazy(f) = c
                    && f.is_done()
                    && Arc::strong_count(f) == 1
                {
                    *c = CpuStorage::F32(f.materialized()?.clone());
                }
            }
            Storage::Gpu(g) => {
                if let Some(f) = &g.lazy
                    && f.is_done()
                    && Arc::strong_count(f) == 1
                {
                    let buf = f.materialized(&g.ctx)?.clone();
                    g.lazy = None;
                    g.buf = Some(buf);
                }
            }
        }
        Ok(())
    }

    /// Whether another storage shares these values (an in-place write would change it too). The
    /// CPU backend copies on write instead, so its values never count as shared.
    pub(crate) fn is_shared(&self) -> bool {
        match self {
            // Unrun programs count as shared: the update works on a copy.
            Storage::Cpu(c) => matches!(c, CpuStorage::Lazy(_)),
            // A program not yet run counts as shared: the update works on a copy.
            Storage::Gpu(g) => {
                g.lazy.is_some() || g.buf.as_ref().is_some_and(|b| Arc::strong_count(b) > 1)
            }
        }
    }

    /// [`Storage::optimizer_update`] of several parameters with the same hyper-parameters and
    /// kind of state; items are (parameter, gradient, state, values), `params.n` is set per
    /// item. On one GPU, batched multi-tensor dispatches (`optim::update_many`); otherwise one
    /// update after another.
    pub(crate) fn optimizer_update_many(
        items: &mut [(&mut Storage, &Storage, Vec<&mut Storage>, usize)],
        params: &OptimParams,
        replay: Option<&Arc<Replayed>>,
    ) -> Result<()> {
        const OP: &str = "optimizer step";
        let ctx = match items.first().map(|i| &*i.0) {
            Some(Storage::Gpu(w)) => w.ctx.clone(),
            _ => {
                for (w, g, state, n) in items.iter_mut() {
                    let p = OptimParams {
                        n: *n as u32,
                        ..*params
                    };
                    w.optimizer_update(g, state, &p, replay)?;
                }
                return Ok(());
            }
        };
        fn on<'s>(ctx: &Arc<GpuContext>, s: &'s Storage) -> Result<&'s PooledBuffer> {
            match s {
                Storage::Gpu(b) if Arc::ptr_eq(&b.ctx, ctx) => b.bound(OP, DType::F32),
                _ => Err(backends(OP)),
            }
        }
        let gpu = |s| on(&ctx, s);
        let slots = items
            .iter()
            .map(|(w, g, state, n)| {
                Ok(optim::Slot {
                    param: gpu(w)?,
                    grad: gpu(g)?,
                    state: state.iter().map(|s| gpu(s)).collect::<Result<_>>()?,
                    n: *n,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        optim::update_many(&ctx, &slots, params, replay)
    }

    /// One fused optimizer update of these `params.n` values in place from `grad`, with `state`
    /// (none, the momentum buffer, or Adam's moments) updated in place too. The caller has made
    /// every one of them unshared.
    pub(crate) fn optimizer_update(
        &mut self,
        grad: &Storage,
        state: &mut [&mut Storage],
        params: &OptimParams,
        replay: Option<&Arc<Replayed>>,
    ) -> Result<()> {
        const OP: &str = "optimizer step";
        match (self, grad) {
            (Storage::Cpu(CpuStorage::F32(w)), Storage::Cpu(g)) => {
                let mut bufs = Vec::with_capacity(state.len());
                for s in state.iter_mut() {
                    match &mut **s {
                        Storage::Cpu(CpuStorage::F32(v)) => bufs.push(Arc::make_mut(v)),
                        other => return Err(mismatch(OP, DType::F32, other.dtype())),
                    }
                }
                cpu::update(
                    Arc::make_mut(w).as_mut_slice(),
                    g.f32s(OP)?,
                    &mut bufs,
                    params,
                );
                Ok(())
            }
            (Storage::Gpu(w), Storage::Gpu(g)) => {
                let bufs = state
                    .iter()
                    .map(|s| match &**s {
                        Storage::Gpu(b) => b.bound(OP, DType::F32),
                        Storage::Cpu(_) => Err(backends(OP)),
                    })
                    .collect::<Result<Vec<_>>>()?;
                optim::update(
                    &w.ctx,
                    w.bound(OP, DType::F32)?,
                    g.bound(OP, DType::F32)?,
                    &bufs,
                    params,
                    replay,
                )
            }
            (w, _) if w.dtype() != DType::F32 => Err(mismatch(OP, DType::F32, w.dtype())),
            _ => Err(backends(OP)),
        }
    }
}
