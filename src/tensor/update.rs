//! In-place updates for the optimizers: the one place where a tensor's values change. Values
//! shared with another tensor are copied first, so tensors stay values.

use super::Tensor;
use crate::error::{Error, Result};
use crate::optim_params::OptimParams;
use crate::storage::Storage;

impl Tensor {
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
