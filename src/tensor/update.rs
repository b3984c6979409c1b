//! In-place updates for the optimizers: the one place where a tensor's values change. Values
//! shared with another tensor are copied first, so tensors stay values.

use super::Tensor;
use crate::error::{Error, Result};
use crate::optim_params::{OptimParams, Replayed};
use crate::storage::Storage;
use std::sync::Arc;

impl Tensor {
    /// Makes this tensor's values unshared (copying them if another tensor shares them), so an
    /// in-place write changes this tensor only: tensors stay values.
    fn make_unique(&mut self) -> Result<()> {
        self.storage.settle()?;
        if self.storage.is_shared() {
            let n = self.numel();
            // A replay would read the values this step read and update a copy of them.
            self.device.refuse_in_capture(
                "an optimizer step inside the captured step found a parameter (or its state) \
                 shared with another tensor, so it would update a copy; drop the other tensor \
                 (a clone the step keeps) before the step",
            )?;
            let copy = self.detach().reshape(&[n])?.narrow(0, 0, n)?;
            self.storage = copy.storage;
        }
        Ok(())
    }

    /// One fused optimizer update of each parameter in place (see `shaders/optim.wgsl`): items
    /// are (parameter, gradient, the optimizer's state for it: none, the momentum buffer, or
    /// Adam's moments, updated in place too), all with the same kind of state and the same
    /// hyper-parameters (`params.n` is set per parameter). Every item is checked before any
    /// value changes. On a GPU the parameters are updated in batches, several per dispatch
    /// (`gpu/kernels/optim.rs`); on the CPU one after another.
    pub(crate) fn optimizer_update_all(
        items: &mut [(&mut Tensor, Tensor, &mut [Tensor])],
        params: &OptimParams,
        replay: Option<&Arc<Replayed>>,
    ) -> Result<()> {
        for (param, grad, state) in items.iter() {
            // The gradient and every state tensor: the parameter's device and shape.
            for other in std::iter::once(grad).chain(state.iter()) {
                param.same_device(other, "optimizer step")?;
                if other.shape() != param.shape() {
                    return Err(Error::ShapeMismatch {
                        op: "optimizer step",
                        lhs: param.shape().to_vec(),
                        rhs: other.shape().to_vec(),
                    });
                }
            }
            if state.len() != items[0].2.len() {
                return Err(Error::InvalidArgument {
                    op: "optimizer step",
                    reason: "every parameter of one update needs the same kind of state".into(),
                });
            }
        }
        let mut batch = Vec::with_capacity(items.len());
        for (param, grad, state) in items.iter_mut() {
            if param.numel() == 0 {
                continue;
            }
            param.make_unique()?;
            for s in state.iter_mut() {
                s.make_unique()?;
            }
            let n = param.numel();
            let bufs: Vec<&mut Storage> = state.iter_mut().map(|s| &mut s.storage).collect();
            batch.push((&mut param.storage, &grad.storage, bufs, n));
        }
        Storage::optimizer_update_many(&mut batch, params, replay)
    }
}
