//! The autograd surface of a tensor: marking leaves, reading gradients, running backward, and
//! what ops use to record their backward (`tracking`, `record`, `sum_to`).

use super::Tensor;
use crate::autograd::{self, Node};
use crate::dtype::DType;
use crate::error::{Error, Result};

impl Tensor {
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
        self.backward_inner(grad, &[], &mut |_| Ok(()))
    }

    /// [`Tensor::backward`], calling `ready(i)` as soon as the gradient of `leaves[i]` is
    /// complete: backward has passed every op that used it (leaves come in about the reverse
    /// order of the forward pass). Work with that gradient can start while backward goes on
    /// through the rest of the graph, on another thread (`kiln-dist` sends gradient buckets
    /// to the other processes this way). A leaf the output does not depend on is not
    /// reported; an error from `ready` ends the backward with it.
    pub fn backward_reporting(
        &self,
        leaves: &[&Tensor],
        ready: &mut dyn FnMut(usize) -> Result<()>,
    ) -> Result<()> {
        if self.numel() != 1 {
            return Err(Error::Autograd {
                op: "backward",
                reason: format!(
                    "backward() needs a one-element output, got shape {}",
                    self.shape
                ),
            });
        }
        let seed = Tensor::ones(&self.device, self.shape())?;
        self.backward_inner(&seed, leaves, ready)
    }

    fn backward_inner(
        &self,
        grad: &Tensor,
        leaves: &[&Tensor],
        ready: &mut dyn FnMut(usize) -> Result<()>,
    ) -> Result<()> {
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
        let ids: std::collections::HashMap<u64, usize> = leaves
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.node.as_ref().filter(|n| n.is_leaf()).map(|n| (n.id(), i)))
            .collect();
        autograd::backward(node, grad.detach(), &mut |id| match ids.get(&id) {
            Some(&i) => ready(i),
            None => Ok(()),
        })
    }

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
        let extra = t.rank().saturating_sub(dims.len());
        if extra > 0 {
            // The leading dimensions broadcasting added, as one: a single reduction (a bias
            // gradient over [batch, time, n] is one dispatch, not one per dimension).
            let mut flat = vec![t.shape()[..extra].iter().product()];
            flat.extend_from_slice(&t.shape()[extra..]);
            t = t.reshape(&flat)?.sum(0, false)?;
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
}
