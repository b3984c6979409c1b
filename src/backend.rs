//! The contract between the storage seam (`storage.rs`) and the backends: [`BackendStorage`],
//! which the CPU's storage (`cpu/storage.rs`) and the GPU's (`gpu/storage.rs`) implement, and
//! the plain data the ops take. Backend-neutral: it names no backend, so both may use it.
//!
//! Every op is one method with the same signature on each backend. The tensor layer validates
//! shapes and passes the derived sizes in; each backend checks element types, handles empty
//! tensors, and decides its own limits (a kernel that cannot take a problem computes it
//! another way, inside the backend). `storage.rs` only picks the backend: one line per op.

use crate::attention::AttnDims;
use crate::conv::Window;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::matmul_plan::MatmulPlan;
use crate::op::{BinaryOp, ReduceOp, UnaryOp};
use crate::optim_params::{OptimParams, Replayed};
use crate::rope::RopeDims;
use crate::shape::BroadcastLayout;
use crate::strided::StridedCopy;
use std::sync::Arc;

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

/// A problem whose one-kernel form a backend may not take: llvmpipe ends shader loops after
/// 65,535 iterations, and some GPU kernels have fixed sizes. The tensor layer asks
/// [`BackendStorage::takes`] before it runs one, and composes it from other ops (chunked
/// reductions, slices of K) where the answer is no; a kernel asked anyway refuses with
/// `Unsupported` rather than give a wrong answer.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kernel<'a> {
    /// (log-)softmax along an axis of `len` values.
    Softmax { len: usize },
    /// layer_norm or rms_norm over rows of `len` values.
    Norm { len: usize },
    /// A norm's input gradient over rows of `len` values.
    NormBackward { len: usize },
    /// A norm's weight and bias gradients over `rows` rows.
    NormParamGrads { rows: usize },
    /// Cross-entropy over rows of `classes` logits.
    CrossEntropy { classes: usize },
    /// A matrix product summing over `k`.
    Matmul { k: usize },
    /// Attention over these views.
    Attention(&'a AttnDims),
    /// Decoding rows of `len` values of a storage type in registers (`matmul_packed`,
    /// `packed_rows`, a cast to f32).
    Packed { dtype: DType, len: usize },
    /// A fast Fourier transform (`rfft`); a backend without one has the tensor layer multiply
    /// by the transform's coefficients.
    Fft,
}

/// `DTypeMismatch` for `op`.
pub(crate) fn mismatch(op: &'static str, expected: DType, got: DType) -> Error {
    Error::DTypeMismatch { op, expected, got }
}

/// A tensor's values on one backend, and every op on them. Operands of one op are on the same
/// backend (the seam checks that); the sizes are the tensor layer's, already validated.
pub(crate) trait BackendStorage: Sized + Clone {
    /// The element type.
    fn dtype(&self) -> DType;

    /// Whether this backend's kernel takes `kernel` in one piece (see [`Kernel`]).
    fn takes(&self, kernel: Kernel) -> bool;

    /// The `n` f32 values (a GPU submits its recorded work and waits).
    fn to_f32(&self, op: &'static str, n: usize) -> Result<Vec<f32>>;

    /// The `n` u32 values.
    fn to_u32(&self, op: &'static str, n: usize) -> Result<Vec<u32>>;

    /// A copy of these `n` values in storage of their own (the CPU shares its immutable
    /// values).
    fn duplicate(&self, op: &'static str, n: usize) -> Result<Self>;

    /// The bytes of these `n` values in their element type's format
    /// (`dtype.bytes_for(n)` of them).
    fn to_bytes(&self, op: &'static str, n: usize) -> Result<Vec<u8>>;

    /// These `n` values converted to `dtype` (through f32: decoded, then encoded; see
    /// `quant::encode` for the rounding), in rows of `row_len` values (the shape's last
    /// dimension: a backend may order a storage type's rows for its kernels).
    fn cast(&self, op: &'static str, dtype: DType, n: usize, row_len: usize) -> Result<Self>;

    /// `self · weightᵀ` for f32 `self` of `m × k` and a `weight` of a storage type of
    /// `n × k` (whole blocks per row), decoded in registers: an `m × n` f32 result.
    fn matmul_packed(&self, weight: &Self, mkn: (usize, usize, usize)) -> Result<Self>;

    /// Rows `idx` (checked) of a table of a storage type with rows of `len` values (whole
    /// blocks), decoded to f32.
    fn packed_rows(&self, ids: &Self, idx: &[u32], len: usize) -> Result<Self>;

    /// `op` on each of the `n` values.
    fn unary(&self, op: UnaryOp, n: usize) -> Result<Self>;

    /// This one f32 value repeated `n` times as a fused program, so that a broadcast scalar
    /// costs no pass of its own; `None` with fusion off (the caller copies).
    fn splat(&self, n: usize) -> Result<Option<Self>>;

    /// These f32 values read through `plan` (its output contiguous) as a fused program, so
    /// that a view (a `narrow`) read by elementwise ops costs no copy of its own; `None` with
    /// fusion off, for other element types, or past the generated code's rank (the caller
    /// copies).
    fn view(&self, plan: &StridedCopy) -> Result<Option<Self>>;

    /// `self op rhs` over the `n` outputs of `layout`.
    fn binary(&self, rhs: &Self, layout: &BroadcastLayout, n: usize, op: BinaryOp) -> Result<Self>;

    /// `a` where the mask `self` is non-zero, else `b`, over `plan`.
    fn where_(&self, a: &Self, b: &Self, plan: &WherePlan) -> Result<Self>;

    /// `op` along the middle of `dims` (`len > 0`: the tensor layer fills empty reductions).
    fn reduce(&self, dims: Around, op: ReduceOp) -> Result<Self>;

    /// (log-)softmax along the middle of `dims`.
    fn softmax(&self, dims: Around, log: bool) -> Result<Self>;

    /// Index of the maximum along the middle of `dims` (`len > 0`), as u32.
    fn argmax(&self, dims: Around) -> Result<Self>;

    /// Running sums along the middle axis of `dims` (all extents > 0).
    fn cumsum(&self, dims: Around, exclusive: bool, reverse: bool) -> Result<Self>;

    /// The `k` first values along the middle axis of `dims` and their u32 indices (all
    /// extents and `k` > 0, `k` ≤ the axis).
    fn topk(&self, dims: Around, k: usize, largest: bool) -> Result<(Self, Self)>;

    /// layer_norm (`rms` false) or rms_norm over `rows` rows of `len` values, with optional
    /// weight and bias of `len` values.
    #[allow(clippy::too_many_arguments)]
    fn norm(
        &self,
        weight: Option<&Self>,
        bias: Option<&Self>,
        rows: usize,
        len: usize,
        eps: f32,
        rms: bool,
    ) -> Result<Self>;

    /// The input gradient of a norm over `rows` rows of `len` values (both > 0) from the
    /// output gradient `g` and the optional weight: (dx, each row's mean, each row's
    /// `1/sqrt(var + eps)`).
    #[allow(clippy::too_many_arguments)]
    fn norm_backward(
        &self,
        weight: Option<&Self>,
        g: &Self,
        rows: usize,
        len: usize,
        eps: f32,
        rms: bool,
    ) -> Result<(Self, Self, Self)>;

    /// A norm's weight and bias gradients from its input (`self`), the output gradient and the
    /// row statistics `norm_backward` made: `(Σ_rows g·x̂, Σ_rows g)`.
    fn norm_param_grads(&self, gmr: [&Self; 3], rows: usize, len: usize) -> Result<(Self, Self)>;

    /// Per-row cross-entropy of `[rows, classes]` logits against `targets` (u32, with `t` its
    /// values on the host): the losses and each row's logsumexp.
    fn cross_entropy(&self, targets: &Self, t: &[u32], classes: usize) -> Result<(Self, Self)>;

    /// The logits' gradient of `cross_entropy` from the loss gradient `g`.
    fn cross_entropy_grad(
        &self,
        targets: &Self,
        t: &[u32],
        lse: &Self,
        g: &Self,
        classes: usize,
    ) -> Result<Self>;

    /// `act(self · rhs + bias) + residual` over `plan` (`k > 0`: the tensor layer handles
    /// empty sums; the residual has the output's values).
    fn matmul(
        &self,
        rhs: &Self,
        plan: &MatmulPlan,
        bias: Option<&Self>,
        act: Option<UnaryOp>,
        residual: Option<&Self>,
    ) -> Result<Self>;

    /// `self · rhs` over `plan` (`m, n, k > 0`, no epilogue) and, where the backend's kernel
    /// adds them in the same pass, the sums of the left operand's rows (`[batches, m]`).
    fn matmul_row_sums(&self, rhs: &Self, plan: &MatmulPlan) -> Result<(Self, Option<Self>)>;

    /// `self · rhs` with both operands rounded to f16 and f32 accumulation; the operands hold
    /// `lens` values. `Unsupported` on a GPU without SHADER_F16 (even for an empty product).
    fn matmul_f16(&self, rhs: &Self, plan: &MatmulPlan, lens: (usize, usize)) -> Result<Self>;

    /// 2-D convolution over the window `w` (input and weight non-empty), then `act` on every
    /// output.
    fn conv2d(
        &self,
        weight: &Self,
        bias: Option<&Self>,
        w: &Window,
        act: Option<UnaryOp>,
    ) -> Result<Self>;

    /// The real discrete Fourier transform of each of `rows` rows of `len` values, zero-padded
    /// to `n ≥ len` points: `[rows, n/2 + 1, 2]` (each bin's real and imaginary parts). Only
    /// where the backend `takes(Kernel::Fft)`.
    fn rfft(&self, rows: usize, len: usize, n: usize) -> Result<Self>;

    /// Max (`max`) or average pooling over the window `w`.
    fn pool2d(&self, w: &Window, max: bool) -> Result<Self>;

    /// These f32 values (contiguous, of `src_dims`, none empty) padded or cropped to `dims`:
    /// `before[d]` is the output index minus the source index along d; outside, `value`.
    fn pad(&self, src_dims: &[usize], dims: &[usize], before: &[isize], value: f32)
    -> Result<Self>;

    /// The slices `idx` (u32 `indices`, checked) of the middle of `dims`, any element type.
    fn index_select(&self, indices: &Self, idx: &[u32], dims: Around) -> Result<Self>;

    /// Writes the slices of `src` (`[outer, idx.len(), inner]`) into this storage's slices
    /// `idx` (u32 `indices`, checked, distinct) of the middle of `dims`, in place; any element
    /// type. The caller has made this storage unshared.
    fn index_copy(&mut self, src: &Self, indices: &Self, idx: &[u32], dims: Around) -> Result<()>;

    /// PyTorch's gather along `axis` with the u32 `index` (shape `dims`, values `idx` checked),
    /// from a source with strides `x_strides`; any element type.
    fn gather(
        &self,
        index: &Self,
        idx: &[u32],
        dims: &[usize],
        x_strides: &[usize],
        axis: usize,
    ) -> Result<Self>;

    /// `g · op'(self)` over `n` values.
    fn unary_grad(&self, g: &Self, op: UnaryOp, n: usize) -> Result<Self>;

    /// The scatter-add of `self` (a gradient of shape `g_dims`, non-empty) through the u32
    /// `index` (values `idx`) along `axis` into zeros of shape `out_dims` (non-empty).
    fn scatter_add(
        &self,
        index: &Self,
        idx: &[u32],
        out_dims: &[usize],
        g_dims: &[usize],
        axis: usize,
    ) -> Result<Self>;

    /// index_select's gradient from `self` (non-empty) into zeros of `dims`, from the picks
    /// grouped by row on the host (`starts`, `order`: a counting sort of the checked indices).
    fn index_select_grad(&self, starts: &[u32], order: &[u32], dims: Around) -> Result<Self>;

    /// index_select's gradient reading the indices from `index` on the device where the
    /// backend can (for indices the host must not plan from: a captured step's inputs); the
    /// host values `idx` otherwise.
    fn index_select_grad_on_device(&self, index: &Self, idx: &[u32], dims: Around) -> Result<Self>;

    /// conv2d's input gradient (`weight` false; `other` is the weight) or weight gradient
    /// (`other` is the input) from the output gradient `self`; `n` values out (non-empty).
    fn conv2d_grad(&self, other: &Self, w: &Window, weight: bool, n: usize) -> Result<Self>;

    /// The pooling gradient of the input `self` (`n` values) from the output gradient `g`.
    fn pool2d_grad(&self, g: &Self, w: &Window, max: bool, n: usize) -> Result<Self>;

    /// Trade a program that has run, and that no other storage shares, for its values, so that
    /// an in-place update need not copy them.
    fn settle(&mut self) -> Result<()>;

    /// Whether another storage shares these values (an in-place write would change it too).
    fn is_shared(&self) -> bool;

    /// One fused optimizer update of these `params.n` values in place from `grad`, with `state`
    /// (none, the momentum buffer, or Adam's moments) updated in place too; `replay` gives the
    /// hyper-parameters of each replay of a captured step. The caller has made every one of
    /// them unshared.
    fn optimizer_update(
        &mut self,
        grad: &Self,
        state: &mut [&mut Self],
        params: &OptimParams,
        replay: Option<&Arc<Replayed>>,
    ) -> Result<()>;

    /// Attention over the views `dims` describes of `qkv` (the same storage three times when
    /// packed): the output `[batch, tq, heads, dv]` and each query row's logsumexp. Every
    /// extent > 0 except the head dimensions.
    fn attention(qkv: [&Self; 3], lens: Option<&Self>, dims: &AttnDims) -> Result<(Self, Self)>;

    /// Rotary position embedding of x with the tables cos and sin (see `shaders/rope.wgsl`).
    fn rope(xcs: [&Self; 3], dims: &RopeDims) -> Result<Self>;

    /// The gradients of attention's inputs from its output, the output's gradient and the
    /// forward's logsumexp (`ogl`): one storage in the packed layout, or three.
    fn attention_backward(qkv: [&Self; 3], ogl: [&Self; 3], dims: &AttnDims) -> Result<Vec<Self>>;
}

/// What a device's memory holds, in bytes ([`Device::memory`](crate::Device::memory)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryStats {
    /// Buffers held by live tensors (or in-flight readbacks).
    pub live: usize,
    /// Bytes of those buffers (rounded up to their size class).
    pub live_bytes: u64,
    /// Idle buffers held for reuse, including those waiting for the open batch to be submitted.
    pub cached: usize,
    /// Bytes of those idle buffers ([`Device::trim`](crate::Device::trim) frees them).
    pub pooled_bytes: u64,
    /// The most bytes live and pooled together ever held at once.
    pub peak_bytes: u64,
    /// Buffers created since the device was made.
    pub created: usize,
    /// The most bytes the device may hold (`KILN_MEMORY_BUDGET`,
    /// [`Device::set_memory_budget`](crate::Device::set_memory_budget)); `None`: what the
    /// driver grants.
    pub budget: Option<u64>,
}

/// Counters of the work a device has done ([`crate::Device::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceStats {
    /// Compute dispatches recorded since the device was opened (fused kernels included).
    pub dispatches: u64,
    /// Fused elementwise kernels dispatched.
    pub fused_kernels: u64,
    /// Elementwise ops computed inside those kernels.
    pub fused_ops: u64,
    /// Compute pipelines compiled.
    pub pipelines: usize,
    /// Of `dispatches`, those that captured graphs recorded again ([`crate::Graph::run`]).
    pub replayed: u64,
    /// Command buffers submitted (one per flush, readback, `synchronize`, or 64 dispatches).
    pub submissions: u64,
}

/// The services of a device beside its ops: running what is pending, its counters and memory,
/// the fusion switch, timing, and loss. The CPU backend's is `cpu::device::CpuDevice`; a GPU's
/// is its `GpuContext`. `Device` calls them in one line each.
pub(crate) trait DeviceBackend: Send + Sync {
    /// Run every pending op and, on a GPU, submit all recorded work and wait for it.
    fn synchronize(&self) -> Result<()>;

    /// Run every pending op and submit recorded work without waiting for it.
    fn flush(&self) -> Result<()>;

    /// Counters of the work done (all zero where the backend keeps none).
    fn stats(&self) -> DeviceStats;

    /// Turn elementwise fusion on or off.
    fn set_fusion(&self, on: bool);

    /// Run `f` and measure the device time of the work it records, where the backend can.
    fn time(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<Option<std::time::Duration>>;

    /// What the device's memory holds.
    fn memory(&self) -> MemoryStats;

    /// Free the idle buffers kept for reuse.
    fn trim(&self);

    /// Bound the bytes the device may hold.
    fn set_memory_budget(&self, bytes: Option<u64>);

    /// Lose the device on purpose.
    fn destroy(&self);

    /// Whether the device is lost.
    fn is_lost(&self) -> bool;
}
