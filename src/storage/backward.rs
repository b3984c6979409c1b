//! The storage seam's backward ops: the gradient kernels of each backend, one line each (the
//! forward ops are in `storage.rs`; the tensor layer's `tensor/backward.rs` calls these).

use super::dispatch::{Backend, on, opt, the, wrap2};
use super::{Around, Storage};
use crate::attention::AttnDims;
use crate::backend::BackendStorage;
use crate::conv::Window;
use crate::cpu::storage::CpuStorage;
use crate::error::Result;
use crate::gpu::storage::GpuStorage;
use crate::op::UnaryOp;

impl Storage {
    /// A norm's input gradient and row statistics (`BackendStorage::norm_backward`).
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
        on!(
            self,
            |x| x.norm_backward(opt(weight, OP)?, the(g, OP)?, rows, len, eps, rms),
            |(a, b, c)| (a.wrap(), b.wrap(), c.wrap())
        )
    }

    /// A norm's weight and bias gradients (`BackendStorage::norm_param_grads`).
    pub(crate) fn norm_param_grads(
        &self,
        [g, m, r]: [&Storage; 3],
        rows: usize,
        len: usize,
    ) -> Result<(Storage, Storage)> {
        const OP: &str = "layer_norm backward";
        on!(
            self,
            |x| x.norm_param_grads([the(g, OP)?, the(m, OP)?, the(r, OP)?], rows, len),
            wrap2
        )
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
        on!(self, |x| x.cross_entropy_grad(
            the(targets, OP)?,
            t,
            the(lse, OP)?,
            the(g, OP)?,
            classes
        ))
    }

    /// `g · op'(self)` over `n` values.
    pub(crate) fn unary_grad(&self, g: &Storage, op: UnaryOp, n: usize) -> Result<Storage> {
        on!(self, |x| x.unary_grad(the(g, op.name())?, op, n))
    }

    /// The scatter-add of `self` through the u32 `index` (`BackendStorage::scatter_add`).
    pub(crate) fn scatter_add(
        &self,
        index: &Storage,
        idx: &[u32],
        out_dims: &[usize],
        g_dims: &[usize],
        axis: usize,
    ) -> Result<Storage> {
        on!(self, |x| x.scatter_add(
            the(index, "scatter_add")?,
            idx,
            out_dims,
            g_dims,
            axis
        ))
    }

    /// index_select's gradient from `self` (non-empty) into zeros of `dims`, for the checked
    /// indices `idx` along the middle axis. The picks are grouped by row on the host first (a
    /// counting sort), so either backend does O(rows + picks) work.
    pub(crate) fn index_select_grad(&self, idx: &[u32], dims: Around) -> Result<Storage> {
        let (starts, order) = crate::cpu::group_by_row(idx, dims.1);
        on!(self, |x| x.index_select_grad(&starts, &order, dims))
    }

    /// index_select's gradient reading the indices from `index` on the device, for indices
    /// the host must not plan from (a captured step's inputs).
    pub(crate) fn index_select_grad_on_device(
        &self,
        index: &Storage,
        idx: &[u32],
        dims: Around,
    ) -> Result<Storage> {
        const OP: &str = "index_select backward";
        on!(self, |x| x.index_select_grad_on_device(
            the(index, OP)?,
            idx,
            dims
        ))
    }

    /// conv2d's input or weight gradient from the output gradient `self`.
    pub(crate) fn conv2d_grad(
        &self,
        other: &Storage,
        w: &Window,
        weight: bool,
        n: usize,
    ) -> Result<Storage> {
        on!(self, |x| x.conv2d_grad(
            the(other, "conv2d backward")?,
            w,
            weight,
            n
        ))
    }

    /// The pooling gradient of the input `self` (`n` values) from the output gradient `g`.
    pub(crate) fn pool2d_grad(
        &self,
        g: &Storage,
        w: &Window,
        max: bool,
        n: usize,
    ) -> Result<Storage> {
        on!(self, |x| x.pool2d_grad(
            the(g, "pool2d backward")?,
            w,
            max,
            n
        ))
    }

    /// The gradients of attention's inputs (`BackendStorage::attention_backward`).
    pub(crate) fn attention_backward(
        qkv: [&Storage; 3],
        ogl: [&Storage; 3],
        dims: &AttnDims,
    ) -> Result<Vec<Storage>> {
        fn run<B: Backend>(
            qkv: [&Storage; 3],
            ogl: [&Storage; 3],
            dims: &AttnDims,
        ) -> Result<Vec<Storage>> {
            const OP: &str = "attention backward";
            let [q, k, v] = qkv.map(|s| the::<B>(s, OP));
            let [o, g, l] = ogl.map(|s| the::<B>(s, OP));
            let grads = B::attention_backward([q?, k?, v?], [o?, g?, l?], dims)?;
            Ok(grads.into_iter().map(Backend::wrap).collect())
        }
        match qkv[0] {
            Storage::Cpu(_) => run::<CpuStorage>(qkv, ogl, dims),
            Storage::Gpu(_) => run::<GpuStorage>(qkv, ogl, dims),
        }
    }
}
