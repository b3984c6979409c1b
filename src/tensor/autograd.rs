//! Autograd on tensors: marking leaves, reading gradients, running backward, and the backward
//! kernels that ops record (unary derivatives, scatter-add, convolution and pooling gradients).

use super::Tensor;
use crate::autograd::{self, Node};
use crate::conv::Window;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::op::UnaryOp;
use crate::optim_params::OptimParams;
use crate::shape::Shape;
use crate::storage::Storage;
use crate::strided::StridedCopy;

impl Tensor {
    // ---- the public surface -------------------------------------------------------------

    /// This tensor as a leaf of the autograd graph: ops on it record what backward needs, and
    /// [`Tensor::backward`] fills its [`Tensor::grad`]. The values are shared, not copied. A
    /// tensor that is already a leaf is returned as is; an op's output is detached first.
    /// u32 tensors cannot require gradients (`DTypeMismatch`).
    pub fn with_grad(self) -> Result<Tensor> {
        self.expect(DType::F32, "with_grad")?;
        if self.node.as_ref().is_some_and(|n| n.is_leaf()) {
            return Ok(self);
        }
        Ok(Tensor {
            node: Some(Node::leaf()),
            ..self
        })
    }

    /// Whether this tensor is part of the autograd graph (a leaf that requires gradients, or
    /// computed from one while recording was on).
    pub fn requires_grad(&self) -> bool {
        self.node.is_some()
    }

    /// Whether this is a leaf that collects a gradient (made with [`Tensor::with_grad`]).
    pub fn is_leaf(&self) -> bool {
        self.node.as_ref().is_some_and(|n| n.is_leaf())
    }

    /// The gradient accumulated by backward passes (leaves only; `None` before the first
    /// backward, after [`Tensor::zero_grad`], and for tensors that are not leaves).
    pub fn grad(&self) -> Option<Tensor> {
        self.node.as_ref().and_then(|n| n.grad())
    }

    /// Forgets the accumulated gradient (backward adds to it, as in PyTorch).
    pub fn zero_grad(&self) {
        if let Some(n) = &self.node {
            n.set_grad(None);
        }
    }

    /// The same values outside the autograd graph.
    pub fn detach(&self) -> Tensor {
        Tensor {
            node: None,
            ..self.clone()
        }
    }

    /// Backward from this scalar (one element): the gradient of every leaf it depends on is
    /// added to that leaf's [`Tensor::grad`]. The graph's saved tensors are freed as backward
    /// passes through them, so a second backward through the same graph is `Error::Autograd`.
    pub fn backward(&self) -> Result<()> {
        if self.numel() != 1 {
            return Err(Error::Autograd {
                op: "backward",
                reason: format!(
                    "backward() needs a one-element output, got shape {}; pass the output \
                     gradient to backward_with",
                    self.shape
                ),
            });
        }
        let seed = Tensor::ones(&self.device, self.shape())?;
        self.backward_with(&seed)
    }

    /// Backward with an explicit gradient of this tensor (same shape): vector-Jacobian
    /// products for non-scalar outputs.
    pub fn backward_with(&self, grad: &Tensor) -> Result<()> {
        let Some(node) = &self.node else {
            return Err(Error::Autograd {
                op: "backward",
                reason: "the tensor does not require gradients (no input was made with \
                         with_grad, or it was computed inside no_grad)"
                    .into(),
            });
        };
        self.same_device(grad, "backward")?;
        grad.expect(DType::F32, "backward")?;
        if grad.shape() != self.shape() {
            return Err(Error::ShapeMismatch {
                op: "backward",
                lhs: self.shape().to_vec(),
                rhs: grad.shape().to_vec(),
            });
        }
        autograd::backward(node, grad.detach())
    }

    /// The values repeated along broadcast dimensions to `shape` (numpy's rules: this shape
    /// aligned at the right, extents of 1 stretched); materialised.
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Tensor> {
        let target = Shape::new(shape)?;
        let fits = self.shape.broadcast(&target, "broadcast_to").ok().as_ref() == Some(&target);
        if !fits {
            return Err(Error::ShapeMismatch {
                op: "broadcast_to",
                lhs: self.shape().to_vec(),
                rhs: shape.to_vec(),
            });
        }
        if self.shape() == shape {
            return Ok(self.clone());
        }
        let plan = StridedCopy {
            dims: shape.to_vec(),
            in_strides: self.shape.broadcast_strides(&target),
            in_offset: 0,
            out_strides: target.strides(),
            out_offset: 0,
        };
        let out = Self::assemble(
            "broadcast_to",
            &self.device,
            self.dtype(),
            target,
            &[(self, plan)],
        )?;
        if !Tensor::tracking(&[self]) {
            return Ok(out);
        }
        let dims = self.shape().to_vec();
        Ok(out.record("broadcast_to", &[self], move |g, _| {
            Ok(vec![Some(g.sum_to(&dims)?)])
        }))
    }

    // ---- recording ----------------------------------------------------------------------

    /// Whether an op on `inputs` records a graph node: recording is on and an input requires
    /// gradients. Ops check this before saving anything, so inference costs nothing extra.
    pub(crate) fn tracking(inputs: &[&Tensor]) -> bool {
        autograd::is_grad_enabled() && inputs.iter().any(|t| t.node.is_some())
    }

    /// This tensor (an op's output) with a graph node for `backward`, which maps the output
    /// gradient to one gradient per input (in the order of `inputs`).
    pub(crate) fn record(
        self,
        name: &'static str,
        inputs: &[&Tensor],
        backward: impl FnOnce(&Tensor, &[bool]) -> Result<Vec<Option<Tensor>>> + Send + Sync + 'static,
    ) -> Tensor {
        let parents = inputs.iter().map(|t| t.node.clone()).collect();
        Tensor {
            node: Some(Node::op(name, parents, Box::new(backward))),
            ..self
        }
    }

    /// The sum of this gradient over the dimensions that broadcasting added or stretched, so
    /// that it has the shape `dims` of the operand it flows back to.
    pub(crate) fn sum_to(&self, dims: &[usize]) -> Result<Tensor> {
        let mut t = self.clone();
        while t.rank() > dims.len() {
            t = t.sum(0, false)?;
        }
        for (d, &want) in dims.iter().enumerate() {
            if want == 1 && t.shape()[d] != 1 {
                t = t.sum(d as isize, true)?;
            }
        }
        Ok(t)
    }

    /// Zeros of this tensor's shape, on its device.
    pub(crate) fn zeros_like(&self) -> Result<Tensor> {
        Tensor::zeros(&self.device, self.shape())
    }

    // ---- backward kernels ---------------------------------------------------------------

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
        let idx = index.indices_on_host()?;
        let storage =
            (g.storage).scatter_add(&index.storage, &idx, self.shape(), g.shape(), axis)?;
        Ok(self.with(storage, self.shape.clone()))
    }

    /// index_select's gradient: `g` (this tensor's shape with `idx.len()` along `axis`) added
    /// back into zeros of this tensor's shape at the rows `idx` picked. The indices are grouped
    /// by row on the host (a stable counting sort), so the kernel does O(this + g) work.
    pub(crate) fn index_select_grad(&self, g: &Tensor, idx: &[u32], axis: usize) -> Result<Tensor> {
        let dims = self.around(axis);
        let (_, len, _) = dims;
        if self.numel() == 0 || g.numel() == 0 {
            return self.zeros_like();
        }
        let mut starts = vec![0u32; len + 1];
        for &r in idx {
            starts[r as usize + 1] += 1;
        }
        for r in 0..len {
            starts[r + 1] += starts[r];
        }
        let mut next = starts.clone();
        let mut order = vec![0u32; idx.len()];
        for (j, &r) in idx.iter().enumerate() {
            order[next[r as usize] as usize] = j as u32;
            next[r as usize] += 1;
        }
        let storage = g.storage.index_select_grad(starts, order, dims)?;
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

    // ---- in-place updates (optimizers) --------------------------------------------------

    /// Makes this tensor's values unshared (copying them if another tensor shares them), so an
    /// in-place write changes this tensor only: tensors stay values.
    fn make_unique(&mut self) -> Result<()> {
        if self.storage.is_shared() {
            let n = self.numel();
            let copy = self.detach().reshape(&[n])?.narrow(0, 0, n)?;
            self.storage = copy.storage;
        }
        Ok(())
    }

    /// One fused optimizer update of this parameter in place (see `shaders/optim.wgsl`), with
    /// `state` the optimizer's buffers for it (none, the momentum buffer, or Adam's moments),
    /// which are updated in place too.
    pub(crate) fn optimizer_update(
        &mut self,
        grad: &Tensor,
        state: &mut [Tensor],
        params: &OptimParams,
    ) -> Result<()> {
        self.same_device(grad, "optimizer step")?;
        if grad.shape() != self.shape() {
            return Err(Error::ShapeMismatch {
                op: "optimizer step",
                lhs: self.shape().to_vec(),
                rhs: grad.shape().to_vec(),
            });
        }
        if self.numel() == 0 {
            return Ok(());
        }
        self.make_unique()?;
        for s in state.iter_mut() {
            s.make_unique()?;
        }
        let mut p = *params;
        p.n = self.numel() as u32;
        let mut bufs: Vec<&mut Storage> = state.iter_mut().map(|s| &mut s.storage).collect();
        self.storage.optimizer_update(&grad.storage, &mut bufs, &p)
    }
}
