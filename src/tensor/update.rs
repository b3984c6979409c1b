//! In-place updates: the optimizers' and [`Tensor::index_copy`] (a key/value cache written
//! row by row), the one place where a tensor's values change. Values shared with another tensor
//! are copied first, so tensors stay values.

use super::Tensor;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::optim_params::{OptimParams, Replayed};
use crate::storage::Storage;
use crate::strided::StridedCopy;
use std::sync::Arc;

impl Tensor {
    /// Makes this tensor's values unshared (copying them if another tensor shares them), so an
    /// in-place write changes this tensor only: tensors stay values.
    fn make_unique(&mut self) -> Result<()> {
        self.make_unique_for("an optimizer step")
    }

    /// [`Tensor::make_unique`] for `what` (named in the error a capture gives).
    fn make_unique_for(&mut self, what: &str) -> Result<()> {
        self.storage.settle()?;
        if self.storage.is_shared() {
            let n = self.numel();
            // A replay would read the values this step read and update a copy of them.
            self.device.refuse_in_capture(&format!(
                "{what} inside the captured step found a tensor it writes in place shared with \
                 another tensor, so it would update a copy; drop the other tensor (a clone the \
                 step keeps) before the step"
            ))?;
            let flat = self.detach().reshape(&[n])?;
            let plan = StridedCopy::place(&flat.shape, &[1], 0, 0);
            let (device, dtype) = (self.device.clone(), self.dtype());
            let copy = Tensor::assemble(
                "copy",
                &device,
                dtype,
                flat.shape.clone(),
                &[(&flat, plan)],
                false,
            )?;
            self.storage = copy.storage;
        }
        Ok(())
    }

    /// PyTorch's `index_copy_`: writes the slices of `source` into this tensor's slices
    /// `indices[0], indices[1], …` of dimension `dim`, in place; `source` has this tensor's
    /// shape with `indices.len()` in place of that dimension. A key/value cache preallocated
    /// to its capacity takes each new token's rows this way, with no copy of the rows before.
    ///
    /// `indices` is a 1-D u32 tensor of distinct values on the same device, checked against
    /// the dimension first (from their host copy where they were made on the host, else read
    /// back), so an out-of-range one is `Error::IndexOutOfRange` and nothing is written. In a
    /// captured step ([`Device::capture`](crate::Device::capture)) the write is replayed, with
    /// the indices of each run when they are a graph input (checked against the same bound).
    /// If another tensor shares this one's values, they are copied first, so the other keeps
    /// its values (and, inside a capture, that is `Unsupported`).
    ///
    /// f32 and u32 tensors. In-place writes are not recorded for autograd: `Unsupported` where
    /// this tensor or `source` requires gradients. Other errors: `ShapeMismatch`,
    /// `DTypeMismatch`, `DeviceMismatch`, `InvalidShape` for indices that are not 1-D, and
    /// `InvalidArgument` for a repeated index.
    pub fn index_copy(&mut self, dim: isize, indices: &Tensor, source: &Tensor) -> Result<()> {
        const OP: &str = "index_copy";
        self.same_device(indices, OP)?;
        self.same_device(source, OP)?;
        indices.expect(DType::U32, OP)?;
        if !matches!(self.dtype(), DType::F32 | DType::U32) {
            return Err(Error::Unsupported {
                op: OP,
                reason: format!(
                    "{} tensors (f32 and u32 are written in place; cast to f32 first)",
                    self.dtype()
                ),
            });
        }
        source.expect(self.dtype(), OP)?;
        if Tensor::tracking(&[&*self, source]) {
            return Err(Error::Unsupported {
                op: OP,
                reason: "in-place writes are not recorded for autograd: detach the tensors".into(),
            });
        }
        if indices.rank() != 1 {
            return Err(Error::InvalidShape {
                op: OP,
                reason: format!("indices must be 1-D, got shape {}", indices.shape),
            });
        }
        let axis = self.axis(OP, dim)?;
        let mut want = self.shape().to_vec();
        want[axis] = indices.numel();
        if source.shape() != want.as_slice() {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: want,
                rhs: source.shape().to_vec(),
            });
        }
        let dims = self.around(axis);
        let idx = indices.checked_indices(OP, dims.1)?;
        if !self.device.is_graph_input(&idx) {
            let mut seen = vec![false; dims.1];
            for &i in idx.iter() {
                if std::mem::replace(&mut seen[i as usize], true) {
                    return Err(Error::InvalidArgument {
                        op: OP,
                        reason: format!("index {i} appears more than once"),
                    });
                }
            }
        }
        if idx.is_empty() || self.numel() == 0 {
            return Ok(());
        }
        self.make_unique_for(OP)?;
        let (src, ind) = (source.storage.clone(), indices.storage.clone());
        self.storage.index_copy(&src, &ind, &idx, dims)
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
