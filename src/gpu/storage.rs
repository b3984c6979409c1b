//! The wgpu backend's storage: a pooled buffer tagged with its element type (or a fused
//! program not yet run), and every op of the backend contract ([`BackendStorage`]) as the
//! dispatches of `kernels/`.

use super::context::GpuContext;
use super::kernels::fused::{self, Fused};
use super::kernels::matmul::Epilogue;
use super::kernels::{
    attention, conv, copy, elementwise, grad, index, matmul, norm, optim, packed,
};
use super::kernels::{half, reduce, rope, scan, select, xent};
use super::pool::PooledBuffer;
use crate::attention::AttnDims;
use crate::backend::{Around, BackendStorage, Kernel, WherePlan, mismatch};
use crate::conv::Window;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::fusion::{self, LeafMap, Operand};
use crate::matmul_plan::MatmulPlan;
use crate::op::{BinaryOp, ReduceOp, UnaryOp};
use crate::optim_params::{OptimParams, Replayed};
use crate::rope::RopeDims;
use crate::shape::BroadcastLayout;
use crate::strided::StridedCopy;
use std::sync::Arc;

/// A GPU buffer of 32-bit values with their element type. A tensor with no elements has no
/// buffer (`buf` is `None`) and ops on it dispatch nothing. The result of an elementwise op may
/// be a fused program not yet run (`lazy`, see `kernels/fused.rs`): it runs when an op binds
/// it or it is read.
#[derive(Clone)]
pub(crate) struct GpuStorage {
    ctx: Arc<GpuContext>,
    buf: Option<Arc<PooledBuffer>>,
    lazy: Option<Arc<Fused>>,
    dtype: DType,
}

/// Most values [`GpuStorage::full`] uploads instead of dispatching a fill kernel.
const UPLOAD_FILL_MAX: usize = 64;

impl GpuStorage {
    /// 32-bit words uploaded to `ctx` as `dtype`.
    pub(crate) fn upload(
        ctx: &Arc<GpuContext>,
        op: &'static str,
        dtype: DType,
        words: &[f32],
    ) -> Result<GpuStorage> {
        GpuStorage::blank(ctx, dtype).output(words.len(), dtype, |ctx| ctx.upload(op, words))
    }

    /// Values of a storage type as the bytes of its format, uploaded in 32-bit words (the last
    /// one padded with zeros).
    pub(crate) fn upload_bytes(
        ctx: &Arc<GpuContext>,
        op: &'static str,
        dtype: DType,
        bytes: &[u8],
    ) -> Result<GpuStorage> {
        let mut words = vec![0u32; bytes.len().div_ceil(4)];
        bytemuck::cast_slice_mut::<u32, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        GpuStorage::blank(ctx, dtype).output(words.len(), dtype, |ctx| {
            ctx.upload(op, bytemuck::cast_slice(&words))
        })
    }

    /// `n` copies of `value`: a fill kernel, except for at most [`UPLOAD_FILL_MAX`] values (a
    /// backward pass's seed, a scalar), which cost less to upload than a dispatch.
    pub(crate) fn full(ctx: &Arc<GpuContext>, n: usize, value: f32) -> Result<GpuStorage> {
        if n <= UPLOAD_FILL_MAX {
            return Self::upload(ctx, "full", DType::F32, &vec![value; n]);
        }
        GpuStorage::blank(ctx, DType::F32)
            .output(n, DType::F32, |ctx| elementwise::fill(ctx, n, value))
    }

    /// `n` values of `dtype` on `ctx`, filled by strided copies from `parts` (which cover it
    /// and have that element type, unless `zeroed`: then it starts as zeros and the parts may
    /// leave gaps).
    pub(crate) fn assemble(
        ctx: &Arc<GpuContext>,
        op: &'static str,
        dtype: DType,
        n: usize,
        parts: &[(&GpuStorage, &StridedCopy)],
        zeroed: bool,
    ) -> Result<GpuStorage> {
        GpuStorage::blank(ctx, dtype).output(n, dtype, |ctx| {
            // The bits of 0.0f32 are those of 0u32: one fill serves both types.
            let buf = if zeroed {
                elementwise::fill(ctx, n, 0.0)?
            } else {
                ctx.alloc(op, n)?
            };
            for (src, plan) in parts {
                if plan.numel() > 0 {
                    copy::copy(ctx, src.bound(op, dtype)?, &buf, &plan.squeezed(op)?, op)?;
                }
            }
            Ok(buf)
        })
    }

    /// The device these values are on.
    pub(crate) fn ctx(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// The buffer holding the values, running a pending program first (`None` for an empty
    /// tensor): for the capture API, which pins and copies it.
    pub(crate) fn buffer(&self, op: &'static str) -> Result<Option<&wgpu::Buffer>> {
        Ok(self.readable(op, self.dtype)?.map(|b| &b.buffer))
    }

    /// The buffer of an operand the op reads, checked for its element type. An empty operand
    /// has none; the tensor layer handles empty inputs before an op needs their buffer, so
    /// reaching that is a bug reported as `Error::Gpu`, not a panic.
    pub(crate) fn bound(&self, op: &'static str, dtype: DType) -> Result<&PooledBuffer> {
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

    /// The buffer of an optional f32 operand.
    fn bound_opt<'s>(
        op: &'static str,
        s: Option<&'s GpuStorage>,
    ) -> Result<Option<&'s PooledBuffer>> {
        s.map(|s| s.bound(op, DType::F32)).transpose()
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
    fn lazy(&self, f: Arc<Fused>) -> GpuStorage {
        GpuStorage {
            lazy: Some(f),
            ..GpuStorage::blank(&self.ctx, DType::F32)
        }
    }

    /// A result held in `buf`, of `dtype`, on this device.
    fn filled(&self, buf: PooledBuffer, dtype: DType) -> GpuStorage {
        GpuStorage {
            buf: Some(Arc::new(buf)),
            ..GpuStorage::blank(&self.ctx, dtype)
        }
    }

    /// A result of `n` values of `dtype` on this device: no buffer when `n` is 0, else the
    /// buffer that `run` makes.
    fn output(
        &self,
        n: usize,
        dtype: DType,
        run: impl FnOnce(&GpuContext) -> Result<PooledBuffer>,
    ) -> Result<GpuStorage> {
        if n == 0 {
            return Ok(GpuStorage::blank(&self.ctx, dtype));
        }
        Ok(self.filled(run(&self.ctx)?, dtype))
    }

    /// [`BackendStorage::to_f32`] as a future.
    pub(crate) async fn to_f32_async(&self, op: &'static str, n: usize) -> Result<Vec<f32>> {
        self.words_async(op, DType::F32, n).await
    }

    /// [`BackendStorage::to_u32`] as a future.
    pub(crate) async fn to_u32_async(&self, op: &'static str, n: usize) -> Result<Vec<u32>> {
        let words = self.words_async(op, DType::U32, n).await?;
        Ok(words.into_iter().map(f32::to_bits).collect())
    }

    /// [`BackendStorage::to_bytes`] as a future.
    pub(crate) async fn to_bytes_async(&self, op: &'static str, n: usize) -> Result<Vec<u8>> {
        let len = crate::quant::byte_len(op, self.dtype, n)?;
        let words = self.words_async(op, self.dtype, len.div_ceil(4)).await?;
        Ok(word_bytes(&words, len))
    }

    /// The first `words` 32-bit words of these values, which must be of `dtype`, as a future.
    async fn words_async(&self, op: &'static str, dtype: DType, words: usize) -> Result<Vec<f32>> {
        match self.readable(op, dtype)? {
            None => Ok(Vec::new()),
            Some(buf) => self.ctx.clone().read_async(buf, words).await,
        }
    }

    /// Optimizer updates of several parameters on this device with the same hyper-parameters
    /// and kind of state, in batched multi-tensor dispatches (`optim::update_many`); items are
    /// (parameter, gradient, state, values). `DeviceMismatch` for an item on another device.
    pub(crate) fn optimizer_update_many(
        items: &[(&GpuStorage, &GpuStorage, Vec<&GpuStorage>, usize)],
        params: &OptimParams,
        replay: Option<&Arc<Replayed>>,
    ) -> Result<()> {
        const OP: &str = "optimizer step";
        let Some(ctx) = items.first().map(|i| i.0.ctx.clone()) else {
            return Ok(());
        };
        fn on<'s>(ctx: &Arc<GpuContext>, s: &'s GpuStorage) -> Result<&'s PooledBuffer> {
            if !Arc::ptr_eq(&s.ctx, ctx) {
                return Err(Error::DeviceMismatch {
                    op: OP,
                    lhs: "a GPU tensor".into(),
                    rhs: "a tensor on another GPU".into(),
                });
            }
            s.bound(OP, DType::F32)
        }
        let on = |s| on(&ctx, s);
        let slots = items
            .iter()
            .map(|(w, g, state, n)| {
                Ok(optim::Slot {
                    param: on(w)?,
                    grad: on(g)?,
                    state: state.iter().map(|s| on(s)).collect::<Result<_>>()?,
                    n: *n,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        optim::update_many(&ctx, &slots, params, replay)
    }
}

impl BackendStorage for GpuStorage {
    fn dtype(&self) -> DType {
        self.dtype
    }

    fn takes(&self, kernel: Kernel) -> bool {
        let ctx = &self.ctx;
        match kernel {
            Kernel::Softmax { len } => ctx.walks(reduce::softmax_walk(len)),
            Kernel::Norm { len } => ctx.walks(norm::forward_walk(len)),
            Kernel::NormBackward { len } => ctx.walks(norm::backward_walk(len)),
            Kernel::NormParamGrads { rows } => norm::param_grads_takes(ctx, rows),
            Kernel::CrossEntropy { classes } => ctx.walks(xent::walk(classes)),
            Kernel::Matmul { k } => ctx.walks(matmul::walk(k)),
            Kernel::Attention(dims) => attention::check(ctx, dims).is_ok(),
            Kernel::Packed { dtype, len } => packed::takes(dtype, len),
            Kernel::Fft => false,
        }
    }

    fn to_f32(&self, op: &'static str, n: usize) -> Result<Vec<f32>> {
        match self.readable(op, DType::F32)? {
            None => Ok(Vec::new()),
            Some(buf) => self.ctx.read(buf, n),
        }
    }

    fn to_u32(&self, op: &'static str, n: usize) -> Result<Vec<u32>> {
        match self.readable(op, DType::U32)? {
            None => Ok(Vec::new()),
            Some(buf) => Ok(self
                .ctx
                .read(buf, n)?
                .into_iter()
                .map(f32::to_bits)
                .collect()),
        }
    }

    fn to_bytes(&self, op: &'static str, n: usize) -> Result<Vec<u8>> {
        let len = crate::quant::byte_len(op, self.dtype, n)?;
        match self.readable(op, self.dtype)? {
            None => Ok(Vec::new()),
            Some(buf) => Ok(word_bytes(&self.ctx.read(buf, len.div_ceil(4))?, len)),
        }
    }

    fn cast(
        &self,
        op: &'static str,
        dtype: DType,
        n: usize,
        _row_len: usize,
    ) -> Result<GpuStorage> {
        if dtype == self.dtype {
            return Ok(self.clone());
        }
        // f32 <-> f16/bf16 on the device for any length (f16 <-> bf16 through f32).
        if half::is_half(self.dtype) && (dtype == DType::F32 || half::is_half(dtype)) {
            let src = self.readable(op, self.dtype)?;
            let wide = self.output(n, DType::F32, |ctx| {
                let src = src.ok_or_else(|| {
                    Error::Gpu(format!("{op}: internal error: values without a buffer"))
                })?;
                half::decode(ctx, op, self.dtype, src, n)
            })?;
            return wide.cast(op, dtype, n, _row_len);
        }
        if self.dtype == DType::F32 && half::is_half(dtype) {
            let src = self.readable(op, DType::F32)?;
            return self.output(n, dtype, |ctx| {
                let src = src.ok_or_else(|| {
                    Error::Gpu(format!("{op}: internal error: values without a buffer"))
                })?;
                half::encode(ctx, op, dtype, src, n)
            });
        }
        if dtype == DType::F32 && packed::takes(self.dtype, n) {
            let src = self.readable(op, self.dtype)?;
            return self.output(n, DType::F32, |ctx| {
                let src = src.ok_or_else(|| {
                    Error::Gpu(format!("{op}: internal error: values without a buffer"))
                })?;
                packed::decode(ctx, op, self.dtype, src, None, 1, n)
            });
        }
        if (self.dtype, dtype) == (DType::U32, DType::F32) {
            return self.output(n, DType::F32, |ctx| {
                index::u32_to_f32(ctx, self.bound(op, DType::U32)?, n)
            });
        }
        // Encoding (and the odd-length decodes) run on the host: read, convert, upload.
        let bytes = self.to_bytes(op, n)?;
        let mut values = vec![0f32; n];
        crate::quant::decode(self.dtype, &bytes, &mut values);
        Self::upload_bytes(
            &self.ctx,
            op,
            dtype,
            &crate::quant::encode(op, dtype, &values)?,
        )
    }

    fn matmul_packed(
        &self,
        weight: &GpuStorage,
        (m, k, n): (usize, usize, usize),
    ) -> Result<GpuStorage> {
        const OP: &str = "linear";
        let x = self.bound(OP, DType::F32)?;
        let w = weight.bound(OP, weight.dtype)?;
        self.output(m * n, DType::F32, |ctx| {
            // Many rows (a prefill): the weight decoded once into a pooled f32 buffer (one
            // layer's, freed after) and multiplied by the tuned f32 kernels, which reuse each
            // value across rows; the packed kernel where that buffer would be too large.
            if m >= packed::GEMM_ROWS
                && n * k * 4 <= packed::DECODED_MAX
                && ctx.walks(matmul::walk(k))
            {
                let wf = packed::decode(ctx, OP, weight.dtype, w, None, 1, n * k)?;
                let plan = MatmulPlan::with_transposed_rhs(
                    &crate::shape::Shape::new(&[m, k])?,
                    &crate::shape::Shape::new(&[n, k])?,
                )?;
                let none = Epilogue {
                    bias: None,
                    act: None,
                    residual: None,
                    row_sums: None,
                };
                return matmul::matmul(ctx, x, &wf, &plan, none);
            }
            packed::linear(ctx, weight.dtype, x, w, (m, k, n))
        })
    }

    fn packed_rows(&self, ids: &GpuStorage, idx: &[u32], len: usize) -> Result<GpuStorage> {
        const OP: &str = "embedding_rows";
        let n = idx.len() * len;
        if n == 0 {
            return Ok(GpuStorage::blank(&self.ctx, DType::F32));
        }
        let table = self.bound(OP, self.dtype)?;
        // The ids' own buffer, not their host values: a replayed step brings new ones.
        let rows = ids.bound(OP, DType::U32)?;
        self.output(n, DType::F32, |ctx| {
            packed::decode(ctx, OP, self.dtype, table, Some(rows), idx.len(), len)
        })
    }

    fn duplicate(&self, op: &'static str, n: usize) -> Result<GpuStorage> {
        let src = self.readable(op, self.dtype)?;
        self.output(n, self.dtype, |ctx| {
            let src = src.ok_or_else(|| {
                Error::Gpu(format!("{op}: internal error: values without a buffer"))
            })?;
            let out = ctx.alloc(op, n)?;
            ctx.copy(&src.buffer, &out.buffer, n as u64 * 4)?;
            Ok(out)
        })
    }

    fn unary(&self, op: UnaryOp, n: usize) -> Result<GpuStorage> {
        if n > 0 && fused::enabled(&self.ctx) {
            let x = self.operand(op.name(), LeafMap::Contiguous, 1)?;
            return Ok(self.lazy(fused::unary(&self.ctx, x, op, n)));
        }
        self.output(n, DType::F32, |ctx| {
            elementwise::unary(ctx, self.bound(op.name(), DType::F32)?, n, op)
        })
    }

    fn splat(&self, n: usize) -> Result<Option<GpuStorage>> {
        const OP: &str = "broadcast_to";
        if n == 0 || !fused::enabled(&self.ctx) {
            return Ok(None);
        }
        if self.dtype != DType::F32 {
            return Err(mismatch(OP, DType::F32, self.dtype));
        }
        let x = match self.program() {
            Some(f) => Operand::Splat(f),
            None => Operand::Buffer(self.materialized(OP)?, LeafMap::Scalar),
        };
        Ok(Some(self.lazy(fused::read(&self.ctx, x, n))))
    }

    fn view(&self, plan: &StridedCopy) -> Result<Option<GpuStorage>> {
        let n = plan.numel();
        let map = LeafMap::view(plan);
        match map {
            Some(map) if n > 0 && fused::enabled(&self.ctx) && self.dtype == DType::F32 => {
                let x = Operand::Buffer(self.materialized("narrow")?, map);
                Ok(Some(self.lazy(fused::read(&self.ctx, x, n))))
            }
            _ => Ok(None),
        }
    }

    fn binary(
        &self,
        rhs: &GpuStorage,
        layout: &BroadcastLayout,
        n: usize,
        op: BinaryOp,
    ) -> Result<GpuStorage> {
        let name = op.name();
        // With fusion on, both operands' maps within the generated code's reach: a program.
        if let Some(maps) = fusion::binary_maps(layout, n).filter(|_| fused::enabled(&self.ctx)) {
            let (x, y) = (
                self.operand(name, maps.0, 2)?,
                rhs.operand(name, maps.1.clone(), 2)?,
            );
            let y = fusion::within_caps(&x, y, || {
                Ok(Operand::Buffer(rhs.materialized(name)?, maps.1))
            })?;
            return Ok(self.lazy(fused::binary(&self.ctx, x, y, op, n)));
        }
        self.output(n, DType::F32, |ctx| {
            let (x, y) = (self.bound(name, DType::F32)?, rhs.bound(name, DType::F32)?);
            elementwise::binary(ctx, x, y, layout, n, op)
        })
    }

    fn where_(&self, a: &GpuStorage, b: &GpuStorage, plan: &WherePlan) -> Result<GpuStorage> {
        const OP: &str = "where";
        let n: usize = plan.dims.iter().product();
        let [sm, sa, sb] = &plan.strides;
        self.output(n, DType::F32, |ctx| {
            let bufs = [
                self.bound(OP, DType::F32)?,
                a.bound(OP, DType::F32)?,
                b.bound(OP, DType::F32)?,
            ];
            // The kernel wants at least one dimension.
            let one = |v: &[usize], unit: usize| if v.is_empty() { vec![unit] } else { v.to_vec() };
            let dims = one(&plan.dims, 1);
            let (sm, sa, sb) = (one(sm, 0), one(sa, 0), one(sb, 0));
            select::where_(ctx, bufs, &dims, [&sm, &sa, &sb])
        })
    }

    fn reduce(&self, dims: Around, op: ReduceOp) -> Result<GpuStorage> {
        // An elementwise program not yet run becomes the reduction's prologue, unless reading
        // it along the axis would pass the driver's loop limit: then it runs first.
        self.output(dims.0 * dims.2, DType::F32, |ctx| match self.program() {
            Some(f) if ctx.walks(reduce::reduce_walk(dims.1) * f.value_walk()) => {
                f.reduce(ctx, dims, op)
            }
            _ => reduce::reduce(ctx, self.bound(op.name(), DType::F32)?, dims, op),
        })
    }

    fn softmax(&self, dims: Around, log: bool) -> Result<GpuStorage> {
        let op = if log { "log_softmax" } else { "softmax" };
        // An elementwise program not yet run becomes the softmax's prologue, unless reading it
        // along the axis would pass the driver's loop limit: then it runs first.
        self.output(dims.0 * dims.1 * dims.2, DType::F32, |ctx| {
            match self.program() {
                Some(f) if ctx.walks(reduce::softmax_walk(dims.1) * f.value_walk()) => {
                    f.softmax(ctx, dims, log)
                }
                _ => reduce::softmax(ctx, self.bound(op, DType::F32)?, dims, log),
            }
        })
    }

    fn argmax(&self, dims: Around) -> Result<GpuStorage> {
        self.output(dims.0 * dims.2, DType::U32, |ctx| {
            reduce::argmax(ctx, self.bound("argmax", DType::F32)?, dims)
        })
    }

    fn cumsum(&self, dims: Around, exclusive: bool, reverse: bool) -> Result<GpuStorage> {
        self.output(dims.0 * dims.1 * dims.2, DType::F32, |ctx| {
            let x = self.bound("cumsum", DType::F32)?;
            scan::cumsum(ctx, x, dims, exclusive, reverse)
        })
    }

    fn topk(&self, dims: Around, k: usize, largest: bool) -> Result<(GpuStorage, GpuStorage)> {
        let x = self.bound("topk", DType::F32)?;
        let (v, i) = scan::topk(&self.ctx, x, dims, k, largest)?;
        Ok((self.filled(v, DType::F32), self.filled(i, DType::U32)))
    }

    fn norm(
        &self,
        weight: Option<&GpuStorage>,
        bias: Option<&GpuStorage>,
        rows: usize,
        len: usize,
        eps: f32,
        rms: bool,
    ) -> Result<GpuStorage> {
        let op = if rms { "rms_norm" } else { "layer_norm" };
        self.output(rows * len, DType::F32, |ctx| {
            let (w, b) = (Self::bound_opt(op, weight)?, Self::bound_opt(op, bias)?);
            norm::norm(ctx, self.bound(op, DType::F32)?, w, b, rows, len, eps, rms)
        })
    }

    fn norm_backward(
        &self,
        weight: Option<&GpuStorage>,
        g: &GpuStorage,
        rows: usize,
        len: usize,
        eps: f32,
        rms: bool,
    ) -> Result<(GpuStorage, GpuStorage, GpuStorage)> {
        const OP: &str = "layer_norm backward";
        let wb = Self::bound_opt(OP, weight)?;
        let (xb, gb) = (self.bound(OP, DType::F32)?, g.bound(OP, DType::F32)?);
        let (dx, m, r) = norm::backward(&self.ctx, xb, wb, gb, rows, len, eps, rms)?;
        let f = |b| self.filled(b, DType::F32);
        Ok((f(dx), f(m), f(r)))
    }

    fn norm_param_grads(
        &self,
        [g, mean, r]: [&GpuStorage; 3],
        rows: usize,
        len: usize,
    ) -> Result<(GpuStorage, GpuStorage)> {
        const OP: &str = "layer_norm backward";
        let [xb, gb, mb, rb] = [self, g, mean, r].map(|s| s.bound(OP, DType::F32));
        let (dw, db) = norm::param_grads(&self.ctx, [xb?, gb?, mb?, rb?], rows, len)?;
        Ok((self.filled(dw, DType::F32), self.filled(db, DType::F32)))
    }

    fn cross_entropy(
        &self,
        targets: &GpuStorage,
        t: &[u32],
        classes: usize,
    ) -> Result<(GpuStorage, GpuStorage)> {
        const OP: &str = "cross_entropy";
        let rows = t.len();
        if rows == 0 || classes == 0 {
            let empty = || GpuStorage::blank(&self.ctx, DType::F32);
            return Ok((empty(), empty()));
        }
        let (xb, tb) = (self.bound(OP, DType::F32)?, targets.bound(OP, DType::U32)?);
        let (loss, lse) = xent::forward(&self.ctx, xb, tb, rows, classes)?;
        Ok((self.filled(loss, DType::F32), self.filled(lse, DType::F32)))
    }

    fn cross_entropy_grad(
        &self,
        targets: &GpuStorage,
        t: &[u32],
        lse: &GpuStorage,
        g: &GpuStorage,
        classes: usize,
    ) -> Result<GpuStorage> {
        const OP: &str = "cross_entropy backward";
        let rows = t.len();
        self.output(rows * classes, DType::F32, |ctx| {
            let bufs = [
                self.bound(OP, DType::F32)?,
                targets.bound(OP, DType::U32)?,
                lse.bound(OP, DType::F32)?,
                g.bound(OP, DType::F32)?,
            ];
            xent::backward(ctx, bufs, rows, classes)
        })
    }

    fn matmul(
        &self,
        rhs: &GpuStorage,
        plan: &MatmulPlan,
        bias: Option<&GpuStorage>,
        act: Option<UnaryOp>,
        residual: Option<&GpuStorage>,
    ) -> Result<GpuStorage> {
        const OP: &str = "matmul";
        self.output(plan.out_numel(), DType::F32, |ctx| {
            let (bias, residual) = (Self::bound_opt(OP, bias)?, Self::bound_opt(OP, residual)?);
            let (x, y) = (self.bound(OP, DType::F32)?, rhs.bound(OP, DType::F32)?);
            let epilogue = Epilogue {
                bias,
                act,
                residual,
                row_sums: None,
            };
            matmul::matmul(ctx, x, y, plan, epilogue)
        })
    }

    fn matmul_row_sums(
        &self,
        rhs: &GpuStorage,
        plan: &MatmulPlan,
    ) -> Result<(GpuStorage, Option<GpuStorage>)> {
        const OP: &str = "matmul";
        let (x, y) = (self.bound(OP, DType::F32)?, rhs.bound(OP, DType::F32)?);
        let (c, sums) = matmul::matmul_row_sums(&self.ctx, x, y, plan)?;
        Ok((
            self.filled(c, DType::F32),
            sums.map(|v| self.filled(v, DType::F32)),
        ))
    }

    fn matmul_f16(
        &self,
        rhs: &GpuStorage,
        plan: &MatmulPlan,
        lens: (usize, usize),
    ) -> Result<GpuStorage> {
        const OP: &str = "matmul_f16";
        if !matmul::f16_supported(&self.ctx) {
            return Err(Error::Unsupported {
                op: OP,
                reason: "the adapter does not grant SHADER_F16".into(),
            });
        }
        let n = plan.out_numel();
        self.output(n, DType::F32, |ctx| {
            if plan.k == 0 {
                return elementwise::fill(ctx, n, 0.0); // an empty sum
            }
            let (x, y) = (self.bound(OP, DType::F32)?, rhs.bound(OP, DType::F32)?);
            matmul::matmul_f16(ctx, x, y, lens.0, lens.1, plan)
        })
    }

    fn conv2d(
        &self,
        weight: &GpuStorage,
        bias: Option<&GpuStorage>,
        w: &Window,
        act: Option<UnaryOp>,
    ) -> Result<GpuStorage> {
        const OP: &str = "conv2d";
        let n: usize = w.out_dims().iter().product();
        let y = self.output(n, DType::F32, |ctx| {
            let bias = Self::bound_opt(OP, bias)?;
            let (x, k) = (self.bound(OP, DType::F32)?, weight.bound(OP, DType::F32)?);
            conv::conv2d(ctx, x, k, bias, w)
        })?;
        // The convolution shaders have no epilogue: the activation is one more dispatch.
        match act {
            Some(op) => y.unary(op, n),
            None => Ok(y),
        }
    }

    fn rfft(&self, _rows: usize, _len: usize, _n: usize) -> Result<GpuStorage> {
        // `takes(Kernel::Fft)` is false: the tensor layer multiplies by the coefficients.
        Err(crate::error::Error::Unsupported {
            op: "rfft",
            reason: "no FFT kernel on a GPU (the tensor layer composes it)".into(),
        })
    }

    fn pool2d(&self, w: &Window, max: bool) -> Result<GpuStorage> {
        let op = if max { "max_pool2d" } else { "avg_pool2d" };
        let n: usize = w.out_dims().iter().product();
        self.output(n, DType::F32, |ctx| {
            conv::pool2d(ctx, self.bound(op, DType::F32)?, w, max)
        })
    }

    fn pad(
        &self,
        src_dims: &[usize],
        dims: &[usize],
        before: &[isize],
        value: f32,
    ) -> Result<GpuStorage> {
        self.output(dims.iter().product(), DType::F32, |ctx| {
            let src = self.bound("pad", DType::F32)?;
            copy::pad(ctx, src, src_dims, dims, before, value.to_bits())
        })
    }

    fn index_select(&self, indices: &GpuStorage, idx: &[u32], dims: Around) -> Result<GpuStorage> {
        const OP: &str = "index_select";
        let n = dims.0 * idx.len() * dims.2;
        self.output(n, self.dtype, |ctx| {
            let src = self.bound(OP, self.dtype)?;
            index::index_select(ctx, src, indices.bound(OP, DType::U32)?, dims, idx.len())
        })
    }

    fn index_copy(
        &mut self,
        src: &GpuStorage,
        indices: &GpuStorage,
        idx: &[u32],
        dims: Around,
    ) -> Result<()> {
        const OP: &str = "index_copy";
        if dims.0 * idx.len() * dims.2 == 0 {
            return Ok(());
        }
        let dst = self.bound(OP, self.dtype)?;
        index::index_copy(
            &self.ctx,
            dst,
            src.bound(OP, self.dtype)?,
            indices.bound(OP, DType::U32)?,
            dims,
            idx.len(),
        )
    }

    fn gather(
        &self,
        index: &GpuStorage,
        idx: &[u32],
        dims: &[usize],
        x_strides: &[usize],
        axis: usize,
    ) -> Result<GpuStorage> {
        const OP: &str = "gather";
        self.output(idx.len(), self.dtype, |ctx| {
            let src = self.bound(OP, self.dtype)?;
            index::gather(
                ctx,
                src,
                index.bound(OP, DType::U32)?,
                dims,
                x_strides,
                axis,
            )
        })
    }

    fn unary_grad(&self, g: &GpuStorage, op: UnaryOp, n: usize) -> Result<GpuStorage> {
        let name = op.name();
        self.output(n, DType::F32, |ctx| {
            let (xb, gb) = (self.bound(name, DType::F32)?, g.bound(name, DType::F32)?);
            grad::unary_grad(ctx, xb, gb, n, op)
        })
    }

    fn scatter_add(
        &self,
        index: &GpuStorage,
        _idx: &[u32],
        out_dims: &[usize],
        g_dims: &[usize],
        axis: usize,
    ) -> Result<GpuStorage> {
        const OP: &str = "scatter_add";
        let n: usize = out_dims.iter().product();
        self.output(n, DType::F32, |ctx| {
            let s = grad::Scatter {
                out_dims,
                g_dims,
                axis,
            };
            let (gb, ib) = (self.bound(OP, DType::F32)?, index.bound(OP, DType::U32)?);
            grad::scatter_add(ctx, gb, ib, &s)
        })
    }

    fn index_select_grad(&self, starts: &[u32], order: &[u32], dims: Around) -> Result<GpuStorage> {
        const OP: &str = "index_select backward";
        self.output(dims.0 * dims.1 * dims.2, DType::F32, |ctx| {
            let most = starts.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
            ctx.check_walk(OP, most as usize)?;
            let sb = ctx.upload(OP, bytemuck::cast_slice(starts))?;
            let ob = ctx.upload(OP, bytemuck::cast_slice(order))?;
            let gb = self.bound(OP, DType::F32)?;
            grad::index_select_grad(ctx, gb, &sb, &ob, dims, order.len())
        })
    }

    fn index_select_grad_on_device(
        &self,
        index: &GpuStorage,
        idx: &[u32],
        dims: Around,
    ) -> Result<GpuStorage> {
        const OP: &str = "index_select backward";
        self.output(dims.0 * dims.1 * dims.2, DType::F32, |ctx| {
            let (gb, ib) = (self.bound(OP, DType::F32)?, index.bound(OP, DType::U32)?);
            grad::index_select_grad_scan(ctx, gb, ib, dims, idx.len())
        })
    }

    fn conv2d_grad(
        &self,
        other: &GpuStorage,
        w: &Window,
        weight: bool,
        n: usize,
    ) -> Result<GpuStorage> {
        const OP: &str = "conv2d backward";
        self.output(n, DType::F32, |ctx| {
            let (gb, ob) = (self.bound(OP, DType::F32)?, other.bound(OP, DType::F32)?);
            conv::conv2d_grad(ctx, gb, ob, w, weight)
        })
    }

    fn pool2d_grad(&self, g: &GpuStorage, w: &Window, max: bool, n: usize) -> Result<GpuStorage> {
        const OP: &str = "pool2d backward";
        self.output(n, DType::F32, |ctx| {
            let (xb, gb) = (self.bound(OP, DType::F32)?, g.bound(OP, DType::F32)?);
            conv::pool2d_grad(ctx, xb, gb, w, max)
        })
    }

    fn settle(&mut self) -> Result<()> {
        if let Some(f) = &self.lazy
            && f.is_done()
            && Arc::strong_count(f) == 1
        {
            let buf = f.materialized(&self.ctx)?.clone();
            self.lazy = None;
            self.buf = Some(buf);
        }
        Ok(())
    }

    fn is_shared(&self) -> bool {
        // A program not yet run counts as shared: the update works on a copy.
        self.lazy.is_some() || self.buf.as_ref().is_some_and(|b| Arc::strong_count(b) > 1)
    }

    fn optimizer_update(
        &mut self,
        grad: &GpuStorage,
        state: &mut [&mut GpuStorage],
        params: &OptimParams,
        replay: Option<&Arc<Replayed>>,
    ) -> Result<()> {
        const OP: &str = "optimizer step";
        let bufs = state
            .iter()
            .map(|s| s.bound(OP, DType::F32))
            .collect::<Result<Vec<_>>>()?;
        optim::update(
            &self.ctx,
            self.bound(OP, DType::F32)?,
            grad.bound(OP, DType::F32)?,
            &bufs,
            params,
            replay,
        )
    }

    fn rope([x, c, s]: [&GpuStorage; 3], dims: &RopeDims) -> Result<GpuStorage> {
        const OP: &str = "rope";
        let [bx, bc, bs] = [x, c, s].map(|t| t.bound(OP, DType::F32));
        let out = rope::rope(&x.ctx, [bx?, bc?, bs?], dims)?;
        Ok(x.filled(out, DType::F32))
    }

    fn attention(
        [q, k, v]: [&GpuStorage; 3],
        lens: Option<&GpuStorage>,
        dims: &AttnDims,
    ) -> Result<(GpuStorage, GpuStorage)> {
        const OP: &str = "attention";
        let [bq, bk, bv] = [q, k, v].map(|s| s.bound(OP, DType::F32));
        let lens = lens.map(|l| l.bound(OP, DType::U32)).transpose()?;
        let (o, lse) = attention::forward(&q.ctx, [bq?, bk?, bv?], lens, dims)?;
        Ok((q.filled(o, DType::F32), q.filled(lse, DType::F32)))
    }

    fn attention_backward(
        [q, k, v]: [&GpuStorage; 3],
        [o, g, lse]: [&GpuStorage; 3],
        dims: &AttnDims,
    ) -> Result<Vec<GpuStorage>> {
        const OP: &str = "attention backward";
        let [bq, bk, bv] = [q, k, v].map(|s| s.bound(OP, DType::F32));
        let [bo, bg, bl] = [o, g, lse].map(|s| s.bound(OP, DType::F32));
        let grads = attention::backward(&q.ctx, [bq?, bk?, bv?], [bo?, bg?, bl?], dims)?;
        Ok(grads.into_iter().map(|b| q.filled(b, DType::F32)).collect())
    }
}

/// The first `len` bytes of words read back.
fn word_bytes(words: &[f32], len: usize) -> Vec<u8> {
    let mut bytes: Vec<u8> = bytemuck::cast_slice(words).to_vec();
    bytes.truncate(len);
    bytes
}
