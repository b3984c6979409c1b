//! The backward kernels that ops record: unary derivatives, scatter-add (gather's gradient),
//! index_select's gradient, and the convolution and pooling gradients. Each is one storage call.

use super::Tensor;
use crate::conv::Window;
use crate::error::Result;
use crate::op::UnaryOp;
use crate::shape::Shape;
use std::sync::Arc;

impl Tensor {
    /// `g · op'(self)`, elementwise.
    pub(crate) fn unary_grad(&self, g: &Tensor, op: UnaryOp) -> Result<Tensor> {
        let storage = self.storage.unary_grad(&g.storage, op, self.numel())?;
        Ok(self.with(storage, self.shape.clone()))
    }

    /// The scatter-add of `g` (shape `g_dims`) through the u32 `index` along `axis` into zeros
    /// of this tensor's shape (`index` has g's shape): the gradient of gather.
    pub(crate) fn scatter_add(&self, g: &Tensor, index: &Tensor, axis: usize) -> Result<Tensor> {
        if self.numel() == 0 || g.numel() == 0 {
            return self.zeros_like();
        }
        // Only the CPU backend adds on the host; a GPU reads the indices on the device.
        let idx = if self.device.is_cpu() {
            index.indices_on_host()?
        } else {
            Arc::default()
        };
        let storage =
            (g.storage).scatter_add(&index.storage, &idx, self.shape(), g.shape(), axis)?;
        Ok(self.with(storage, self.shape.clone()))
    }

    /// index_select's gradient: `g` (this tensor's shape with `idx.len()` along `axis`) added
    /// back into zeros of this tensor's shape at the rows `idx` picked. The indices are grouped
    /// by row on the host (a stable counting sort), so the kernel does O(this + g) work.
    pub(crate) fn index_select_grad(
        &self,
        g: &Tensor,
        idx: &[u32],
        on_device: Option<&Tensor>,
        axis: usize,
    ) -> Result<Tensor> {
        let dims = self.around(axis);
        if self.numel() == 0 || g.numel() == 0 {
            return self.zeros_like();
        }
        let storage = match on_device {
            Some(index) => g
                .storage
                .index_select_grad_on_device(&index.storage, idx, dims)?,
            None => g.storage.index_select_grad(idx, dims)?,
        };
        Ok(self.with(storage, self.shape.clone()))
    }

    /// conv2d's input gradient (`weight` false; `other` is the weight) or weight gradient
    /// (`other` is the input) from the output gradient `self`; `out_dims` is the result shape.
    pub(crate) fn conv2d_grad(
        &self,
        other: &Tensor,
        w: &Window,
        weight: bool,
        out_dims: &[usize],
    ) -> Result<Tensor> {
        let shape = Shape::new(out_dims)?;
        if shape.numel() == 0 || self.numel() == 0 {
            return Tensor::zeros(&self.device, out_dims);
        }
        let n = shape.numel();
        let storage = self.storage.conv2d_grad(&other.storage, w, weight, n)?;
        Ok(self.with(storage, shape))
    }

    /// The pooling gradient of the input `self` from the output gradient `g`.
    pub(crate) fn pool2d_grad(&self, g: &Tensor, w: &Window, max: bool) -> Result<Tensor> {
        if self.numel() == 0 || g.numel() == 0 {
            return self.zeros_like();
        }
        let storage = self.storage.pool2d_grad(&g.storage, w, max, self.numel())?;
        Ok(self.with(storage, self.shape.clone()))
    }
}
