//! The storage seam: where a tensor's values live, and the one module that matches on the
//! backend.
//!
//! A [`Storage`] is the CPU backend's storage (`cpu/storage.rs`) or the GPU's
//! (`gpu/storage.rs`). Both implement the backend contract ([`BackendStorage`],
//! `backend.rs`): every op the tensor layer runs is one method there, and one line here that
//! picks the backend and checks that the operands share it (`DeviceMismatch` otherwise). The
//! backends check element types, handle empty tensors and decide their own limits.

use crate::attention::AttnDims;
use crate::backend::BackendStorage;
pub(crate) use crate::backend::{Around, Kernel, WherePlan};
use crate::conv::Window;
use crate::cpu::storage::CpuStorage;
use crate::device::Device;
use crate::dtype::DType;
use crate::error::Result;
use crate::gpu::context::GpuContext;
use crate::gpu::storage::GpuStorage;
use crate::matmul_plan::MatmulPlan;
use crate::op::{BinaryOp, ReduceOp, UnaryOp};
use crate::optim_params::{OptimParams, Replayed};
use crate::rope::RopeDims;
use crate::shape::BroadcastLayout;
use crate::strided::StridedCopy;
use std::sync::Arc;

mod backward;
mod dispatch;

use dispatch::{Backend, on, opt, the, wrap2};

/// A tensor's values on one backend. Cloning shares them.
#[derive(Clone)]
pub(crate) enum Storage {
    /// Host memory of the CPU backend.
    Cpu(CpuStorage),
    /// A buffer on a wgpu device.
    Gpu(GpuStorage),
}

impl Storage {
    // ---- making and reading ---------------------------------------------------------------

    /// `data` on `device`.
    pub(crate) fn from_f32(device: &Device, op: &'static str, data: &[f32]) -> Result<Storage> {
        match device.gpu_context() {
            None => Ok(CpuStorage::from_f32(data.to_vec()).wrap()),
            Some(ctx) => Ok(GpuStorage::upload(ctx, op, DType::F32, data)?.wrap()),
        }
    }

    /// `data` (owned: the CPU backend keeps it without a copy) on `device`.
    pub(crate) fn from_f32_vec(
        device: &Device,
        op: &'static str,
        data: Vec<f32>,
    ) -> Result<Storage> {
        match device.gpu_context() {
            None => Ok(CpuStorage::from_f32(data).wrap()),
            Some(ctx) => Ok(GpuStorage::upload(ctx, op, DType::F32, &data)?.wrap()),
        }
    }

    /// u32 `data` on `device` (the CPU backend shares it).
    pub(crate) fn from_u32(
        device: &Device,
        op: &'static str,
        data: Arc<Vec<u32>>,
    ) -> Result<Storage> {
        match device.gpu_context() {
            None => Ok(CpuStorage::from_u32(data).wrap()),
            Some(ctx) => {
                Ok(GpuStorage::upload(ctx, op, DType::U32, bytemuck::cast_slice(&data))?.wrap())
            }
        }
    }

    /// Values of a storage type, as the bytes of its format, on `device`.
    pub(crate) fn from_bytes(
        device: &Device,
        op: &'static str,
        dtype: DType,
        bytes: Vec<u8>,
        row_len: usize,
    ) -> Result<Storage> {
        match device.gpu_context() {
            None => Ok(CpuStorage::from_bytes(dtype, bytes, row_len)?.wrap()),
            Some(ctx) => Ok(GpuStorage::upload_bytes(ctx, op, dtype, &bytes)?.wrap()),
        }
    }

    /// The bytes of these `n` values in their element type's format.
    pub(crate) fn to_bytes(&self, op: &'static str, n: usize) -> Result<Vec<u8>> {
        on!(self, |x| x.to_bytes(op, n), |v| v)
    }

    /// These `n` values converted to `dtype`.
    pub(crate) fn cast(
        &self,
        op: &'static str,
        dtype: DType,
        n: usize,
        row_len: usize,
    ) -> Result<Storage> {
        on!(self, |x| x.cast(op, dtype, n, row_len))
    }

    /// `self · weightᵀ` for f32 `self` (`m × k`) and a packed `weight` (`n × k`).
    pub(crate) fn matmul_packed(
        &self,
        weight: &Storage,
        mkn: (usize, usize, usize),
    ) -> Result<Storage> {
        on!(self, |x| x.matmul_packed(the(weight, "linear")?, mkn))
    }

    /// Rows `idx` of a packed table with rows of `len` values, as f32.
    pub(crate) fn packed_rows(&self, ids: &Storage, idx: &[u32], len: usize) -> Result<Storage> {
        on!(self, |x| x.packed_rows(the(ids, "embedding")?, idx, len))
    }

    /// `n` copies of `value` on `device`.
    pub(crate) fn full(device: &Device, n: usize, value: f32) -> Result<Storage> {
        match device.gpu_context() {
            None => Ok(CpuStorage::full(n, value)?.wrap()),
            Some(ctx) => Ok(GpuStorage::full(ctx, n, value)?.wrap()),
        }
    }

    /// The element type.
    pub(crate) fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(c) => c.dtype(),
            Storage::Gpu(g) => g.dtype(),
        }
    }

    /// Whether this backend's kernel takes `kernel` in one piece (else the tensor layer
    /// composes it from other ops).
    pub(crate) fn takes(&self, kernel: Kernel) -> bool {
        match self {
            Storage::Cpu(c) => c.takes(kernel),
            Storage::Gpu(g) => g.takes(kernel),
        }
    }

    /// The `n` f32 values (a GPU submits its recorded work and waits).
    pub(crate) fn to_f32(&self, op: &'static str, n: usize) -> Result<Vec<f32>> {
        on!(self, |x| x.to_f32(op, n), |v| v)
    }

    /// [`Storage::to_f32`] as a future.
    pub(crate) async fn to_f32_async(&self, op: &'static str, n: usize) -> Result<Vec<f32>> {
        match self {
            Storage::Cpu(c) => c.to_f32(op, n),
            Storage::Gpu(g) => g.to_f32_async(op, n).await,
        }
    }

    /// The `n` u32 values.
    pub(crate) fn to_u32(&self, op: &'static str, n: usize) -> Result<Vec<u32>> {
        on!(self, |x| x.to_u32(op, n), |v| v)
    }

    /// [`Storage::to_u32`] as a future.
    pub(crate) async fn to_u32_async(&self, op: &'static str, n: usize) -> Result<Vec<u32>> {
        match self {
            Storage::Cpu(c) => c.to_u32(op, n),
            Storage::Gpu(g) => g.to_u32_async(op, n).await,
        }
    }

    /// [`Storage::to_bytes`] as a future.
    pub(crate) async fn to_bytes_async(&self, op: &'static str, n: usize) -> Result<Vec<u8>> {
        match self {
            Storage::Cpu(c) => c.to_bytes(op, n),
            Storage::Gpu(g) => g.to_bytes_async(op, n).await,
        }
    }

    /// The GPU buffer holding these values, running a pending program first: `None` for the
    /// CPU backend or an empty tensor (for the capture API, which pins and copies it).
    pub(crate) fn gpu_buffer(
        &self,
        op: &'static str,
    ) -> Result<Option<(&Arc<GpuContext>, &wgpu::Buffer)>> {
        match self {
            Storage::Cpu(_) => Ok(None),
            Storage::Gpu(g) => Ok(g.buffer(op)?.map(|b| (g.ctx(), b))),
        }
    }

    /// A copy of these `n` values in storage of their own.
    pub(crate) fn duplicate(&self, op: &'static str, n: usize) -> Result<Storage> {
        on!(self, |x| x.duplicate(op, n))
    }

    /// These `n` values on `device` (whatever their element type), in rows of `row_len`.
    pub(crate) fn to_device(&self, device: &Device, n: usize, row_len: usize) -> Result<Storage> {
        match self.dtype() {
            DType::F32 => Self::from_f32_vec(device, "to_device", self.to_f32("to_device", n)?),
            DType::U32 => {
                Self::from_u32(device, "to_device", Arc::new(self.to_u32("to_device", n)?))
            }
            packed => {
                let bytes = self.to_bytes("to_device", n)?;
                Self::from_bytes(device, "to_device", packed, bytes, row_len)
            }
        }
    }

    // ---- elementwise ----------------------------------------------------------------------

    /// `op` on each of the `n` values.
    pub(crate) fn unary(&self, op: UnaryOp, n: usize) -> Result<Storage> {
        on!(self, |x| x.unary(op, n))
    }

    /// This one f32 value repeated `n` times as a fused program; `None` with fusion off.
    pub(crate) fn splat(&self, n: usize) -> Result<Option<Storage>> {
        on!(self, |x| x.splat(n), |s| s.map(Backend::wrap))
    }

    /// These f32 values read through `plan` as a fused program (`BackendStorage::view`).
    pub(crate) fn view(&self, plan: &StridedCopy) -> Result<Option<Storage>> {
        on!(self, |x| x.view(plan), |s| s.map(Backend::wrap))
    }

    /// `self op rhs` over the `n` outputs of `layout`.
    pub(crate) fn binary(
        &self,
        rhs: &Storage,
        layout: &BroadcastLayout,
        n: usize,
        op: BinaryOp,
    ) -> Result<Storage> {
        on!(self, |x| x.binary(the(rhs, op.name())?, layout, n, op))
    }

    /// `a` where `mask` is non-zero, else `b`, over `plan`.
    pub(crate) fn where_(
        mask: &Storage,
        a: &Storage,
        b: &Storage,
        plan: &WherePlan,
    ) -> Result<Storage> {
        on!(mask, |m| m.where_(the(a, "where")?, the(b, "where")?, plan))
    }

    // ---- reductions and normalisation -------------------------------------------------------

    /// `op` along the middle of `dims` (`len > 0`).
    pub(crate) fn reduce(&self, dims: Around, op: ReduceOp) -> Result<Storage> {
        on!(self, |x| x.reduce(dims, op))
    }

    /// (log-)softmax along the middle of `dims`.
    pub(crate) fn softmax(&self, dims: Around, log: bool) -> Result<Storage> {
        on!(self, |x| x.softmax(dims, log))
    }

    /// Index of the maximum along the middle of `dims` (`len > 0`), as u32.
    pub(crate) fn argmax(&self, dims: Around) -> Result<Storage> {
        on!(self, |x| x.argmax(dims))
    }

    /// Running sums along the middle axis of `dims` (all extents > 0).
    pub(crate) fn cumsum(&self, dims: Around, exclusive: bool, reverse: bool) -> Result<Storage> {
        on!(self, |x| x.cumsum(dims, exclusive, reverse))
    }

    /// The `k` first values along the middle axis of `dims` and their u32 indices.
    pub(crate) fn topk(&self, dims: Around, k: usize, largest: bool) -> Result<(Storage, Storage)> {
        on!(self, |x| x.topk(dims, k, largest), wrap2)
    }

    /// layer_norm (`rms` false) or rms_norm over `rows` rows of `len` values.
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
        const OP: &str = "layer_norm";
        on!(self, |x| x.norm(
            opt(weight, OP)?,
            opt(bias, OP)?,
            rows,
            len,
            eps,
            rms
        ))
    }

    /// Per-row cross-entropy of `[rows, classes]` logits against u32 `targets` (values `t`).
    pub(crate) fn cross_entropy(
        &self,
        targets: &Storage,
        t: &[u32],
        classes: usize,
    ) -> Result<(Storage, Storage)> {
        on!(
            self,
            |x| x.cross_entropy(the(targets, "cross_entropy")?, t, classes),
            wrap2
        )
    }

    // ---- products ---------------------------------------------------------------------------

    /// `act(self · rhs + bias) + residual` over `plan` (`k > 0`).
    pub(crate) fn matmul(
        &self,
        rhs: &Storage,
        plan: &MatmulPlan,
        bias: Option<&Storage>,
        act: Option<UnaryOp>,
        residual: Option<&Storage>,
    ) -> Result<Storage> {
        const OP: &str = "matmul";
        on!(self, |x| x.matmul(
            the(rhs, OP)?,
            plan,
            opt(bias, OP)?,
            act,
            opt(residual, OP)?
        ))
    }

    /// `self · rhs` and, where the backend adds them in the same pass, the left rows' sums.
    pub(crate) fn matmul_row_sums(
        &self,
        rhs: &Storage,
        plan: &MatmulPlan,
    ) -> Result<(Storage, Option<Storage>)> {
        on!(
            self,
            |x| x.matmul_row_sums(the(rhs, "matmul")?, plan),
            |(c, s)| (c.wrap(), s.map(Backend::wrap))
        )
    }

    /// `self · rhs` with both operands rounded to f16 and f32 accumulation.
    pub(crate) fn matmul_f16(
        &self,
        rhs: &Storage,
        plan: &MatmulPlan,
        lens: (usize, usize),
    ) -> Result<Storage> {
        on!(self, |x| x.matmul_f16(the(rhs, "matmul_f16")?, plan, lens))
    }

    /// 2-D convolution over the window `w` (input and weight non-empty).
    pub(crate) fn conv2d(
        &self,
        weight: &Storage,
        bias: Option<&Storage>,
        w: &Window,
        act: Option<UnaryOp>,
    ) -> Result<Storage> {
        on!(self, |x| x.conv2d(
            the(weight, "conv2d")?,
            opt(bias, "conv2d")?,
            w,
            act
        ))
    }

    /// The real DFT of `rows` rows of `len` values at `n` points (`Kernel::Fft`).
    pub(crate) fn rfft(&self, rows: usize, len: usize, n: usize) -> Result<Storage> {
        on!(self, |x| x.rfft(rows, len, n))
    }

    /// Max (`max`) or average pooling over the window `w`.
    pub(crate) fn pool2d(&self, w: &Window, max: bool) -> Result<Storage> {
        on!(self, |x| x.pool2d(w, max))
    }

    // ---- layout and indexing ----------------------------------------------------------------

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
        fn taken<'s, B: Backend>(
            op: &'static str,
            parts: &[(&'s Storage, &'s StridedCopy)],
        ) -> Result<Vec<(&'s B, &'s StridedCopy)>> {
            parts.iter().map(|(s, p)| Ok((the(s, op)?, *p))).collect()
        }
        match device.gpu_context() {
            None => Ok(CpuStorage::assemble(op, dtype, n, &taken(op, parts)?, zeroed)?.wrap()),
            Some(ctx) => {
                let parts = taken(op, parts)?;
                Ok(GpuStorage::assemble(ctx, op, dtype, n, &parts, zeroed)?.wrap())
            }
        }
    }

    /// These f32 values padded or cropped to `dims` (`BackendStorage::pad`).
    pub(crate) fn pad(
        &self,
        src_dims: &[usize],
        dims: &[usize],
        before: &[isize],
        value: f32,
    ) -> Result<Storage> {
        on!(self, |x| x.pad(src_dims, dims, before, value))
    }

    /// The slices `idx` (u32 `indices`, checked) of the middle of `dims`, any element type.
    pub(crate) fn index_select(
        &self,
        indices: &Storage,
        idx: &[u32],
        dims: Around,
    ) -> Result<Storage> {
        on!(self, |x| x.index_select(
            the(indices, "index_select")?,
            idx,
            dims
        ))
    }

    /// `src`'s slices written into the slices `idx` of the middle of `dims`, in place
    /// (`BackendStorage::index_copy`); the caller has made this storage unshared.
    pub(crate) fn index_copy(
        &mut self,
        src: &Storage,
        indices: &Storage,
        idx: &[u32],
        dims: Around,
    ) -> Result<()> {
        fn run<B: Backend>(
            dst: &mut Storage,
            src: &Storage,
            indices: &Storage,
            idx: &[u32],
            dims: Around,
        ) -> Result<()> {
            const OP: &str = "index_copy";
            B::of_mut(dst, OP)?.index_copy(the(src, OP)?, the(indices, OP)?, idx, dims)
        }
        match self {
            Storage::Cpu(_) => run::<CpuStorage>(self, src, indices, idx, dims),
            Storage::Gpu(_) => run::<GpuStorage>(self, src, indices, idx, dims),
        }
    }

    /// PyTorch's gather along `axis` with the u32 `index` (`BackendStorage::gather`).
    pub(crate) fn gather(
        &self,
        index: &Storage,
        idx: &[u32],
        dims: &[usize],
        x_strides: &[usize],
        axis: usize,
    ) -> Result<Storage> {
        on!(self, |x| x.gather(
            the(index, "gather")?,
            idx,
            dims,
            x_strides,
            axis
        ))
    }

    /// Attention over the views `dims` describes of `qkv` (`BackendStorage::attention`).
    pub(crate) fn attention(
        qkv: [&Storage; 3],
        lens: Option<&Storage>,
        dims: &AttnDims,
    ) -> Result<(Storage, Storage)> {
        fn run<B: Backend>(
            qkv: [&Storage; 3],
            lens: Option<&Storage>,
            dims: &AttnDims,
        ) -> Result<(Storage, Storage)> {
            let [q, k, v] = qkv.map(|s| the::<B>(s, "attention"));
            B::attention([q?, k?, v?], opt(lens, "attention")?, dims).map(wrap2)
        }
        match qkv[0] {
            Storage::Cpu(_) => run::<CpuStorage>(qkv, lens, dims),
            Storage::Gpu(_) => run::<GpuStorage>(qkv, lens, dims),
        }
    }

    /// Rotary position embedding of x with the tables cos and sin.
    pub(crate) fn rope(xcs: [&Storage; 3], dims: &RopeDims) -> Result<Storage> {
        fn run<B: Backend>(xcs: [&Storage; 3], dims: &RopeDims) -> Result<Storage> {
            let [x, c, s] = xcs.map(|s| the::<B>(s, "rope"));
            B::rope([x?, c?, s?], dims).map(|s| s.wrap())
        }
        match xcs[0] {
            Storage::Cpu(_) => run::<CpuStorage>(xcs, dims),
            Storage::Gpu(_) => run::<GpuStorage>(xcs, dims),
        }
    }

    // ---- in-place updates -------------------------------------------------------------------

    /// Trade a program that has run, and that no other storage shares, for its values, so
    /// that an in-place update need not copy them (see [`Storage::is_shared`]).
    pub(crate) fn settle(&mut self) -> Result<()> {
        match self {
            Storage::Cpu(c) => c.settle(),
            Storage::Gpu(g) => g.settle(),
        }
    }

    /// Whether another storage shares these values (an in-place write would change it too).
    pub(crate) fn is_shared(&self) -> bool {
        match self {
            Storage::Cpu(c) => c.is_shared(),
            Storage::Gpu(g) => g.is_shared(),
        }
    }

    /// [`Storage::optimizer_update`] of several parameters with the same hyper-parameters and
    /// kind of state; items are (parameter, gradient, state, values), `params.n` set per item.
    /// On one GPU, batched multi-tensor dispatches; otherwise one update after another.
    pub(crate) fn optimizer_update_many(
        items: &mut [(&mut Storage, &Storage, Vec<&mut Storage>, usize)],
        params: &OptimParams,
        replay: Option<&Arc<Replayed>>,
    ) -> Result<()> {
        const OP: &str = "optimizer step";
        if let Some((Storage::Gpu(_), ..)) = items.first() {
            let gpu = items
                .iter()
                .map(|(w, g, state, n)| {
                    let state = state.iter().map(|s| the(s, OP)).collect::<Result<_>>()?;
                    Ok((the(w, OP)?, the(g, OP)?, state, *n))
                })
                .collect::<Result<Vec<_>>>()?;
            return GpuStorage::optimizer_update_many(&gpu, params, replay);
        }
        for (w, g, state, n) in items.iter_mut() {
            let p = OptimParams {
                n: *n as u32,
                ..*params
            };
            w.optimizer_update(g, state, &p, replay)?;
        }
        Ok(())
    }

    /// One fused optimizer update in place (`BackendStorage::optimizer_update`).
    pub(crate) fn optimizer_update(
        &mut self,
        grad: &Storage,
        state: &mut [&mut Storage],
        params: &OptimParams,
        replay: Option<&Arc<Replayed>>,
    ) -> Result<()> {
        fn run<B: Backend>(
            w: &mut Storage,
            grad: &Storage,
            state: &mut [&mut Storage],
            params: &OptimParams,
            replay: Option<&Arc<Replayed>>,
        ) -> Result<()> {
            const OP: &str = "optimizer step";
            let mut state = state
                .iter_mut()
                .map(|s| B::of_mut(s, OP))
                .collect::<Result<Vec<_>>>()?;
            B::of_mut(w, OP)?.optimizer_update(the(grad, OP)?, &mut state, params, replay)
        }
        match self {
            Storage::Cpu(_) => run::<CpuStorage>(self, grad, state, params, replay),
            Storage::Gpu(_) => run::<GpuStorage>(self, grad, state, params, replay),
        }
    }
}
