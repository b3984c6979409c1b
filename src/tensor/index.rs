//! Ops with u32 tensors: argmax (produces one), index_select, gather and embedding (read one).

use super::Tensor;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::shape::Shape;
use std::sync::Arc;

impl Tensor {
    /// Index of the maximum along `dim` as a u32 tensor (the first maximum; the first NaN if
    /// there is one, NaN counting as the largest value). An empty axis is an error.
    pub fn argmax(&self, dim: isize, keepdim: bool) -> Result<Tensor> {
        if let Some(r) = Tensor::via_f32(&[self], |t| t[0].argmax(dim, keepdim)) {
            return r;
        }
        self.expect(DType::F32, "argmax")?;
        let axis = self.axis("argmax", dim)?;
        let (outer, len, inner) = self.around(axis);
        let n_out = outer * inner;
        if len == 0 && n_out > 0 {
            return Err(Error::InvalidShape {
                op: "argmax",
                reason: format!(
                    "cannot take the argmax of an empty dimension ({dim} of {})",
                    self.shape
                ),
            });
        }
        let dims = self.reduced_dims(axis, keepdim);
        let storage = self.storage.argmax((outer, len, inner))?;
        Ok(self.with(storage, Shape::new(&dims)?))
    }

    /// The slices `indices[0], indices[1], ...` of dimension `dim`, in that order: the result has
    /// `indices.len()` in place of that dimension. `indices` is a 1-D u32 tensor on the same
    /// device; every value is checked against the dimension's size first (on a GPU this reads
    /// the indices back, one synchronisation), so an out-of-range index is
    /// `Error::IndexOutOfRange`, never garbage. Works for f32 and u32 tensors.
    pub fn index_select(&self, dim: isize, indices: &Tensor) -> Result<Tensor> {
        if let Some(r) = Tensor::via_f32(&[self], |t| t[0].index_select(dim, indices)) {
            return r;
        }
        let (out, idx) = self.index_select_forward(dim, indices)?;
        if !Tensor::tracking(&[self]) {
            return Ok(out);
        }
        let x = self.detach();
        let axis = self.axis("index_select", dim)?;
        // A captured step's input indices change at every replay: its gradient reads them on
        // the device instead of grouping them on the host.
        let on_device = self.device.is_graph_input(&idx).then(|| indices.detach());
        Ok(out.record("index_select", &[self, indices], move |g, _| {
            // The indices were read back by the forward check: group them by row here.
            Ok(vec![
                Some(x.index_select_grad(g, &idx, on_device.as_ref(), axis)?),
                None,
            ])
        }))
    }

    /// The selection and the indices (read back for the range check).
    fn index_select_forward(
        &self,
        dim: isize,
        indices: &Tensor,
    ) -> Result<(Tensor, Arc<Vec<u32>>)> {
        self.same_device(indices, "index_select")?;
        indices.expect(DType::U32, "index_select")?;
        if indices.rank() != 1 {
            return Err(Error::InvalidShape {
                op: "index_select",
                reason: format!("indices must be 1-D, got shape {}", indices.shape),
            });
        }
        let axis = self.axis("index_select", dim)?;
        let (outer, len, inner) = self.around(axis);
        let idx = indices.checked_indices("index_select", len)?;
        let mut dims = self.shape().to_vec();
        dims[axis] = idx.len();
        let storage = (self.storage).index_select(&indices.storage, &idx, (outer, len, inner))?;
        Ok((self.with(storage, Shape::new(&dims)?), idx))
    }

    /// PyTorch's `gather`: the result has the shape of `index` (a u32 tensor of the same rank),
    /// and `out[m] = self[m with m[dim] replaced by index[m]]`. Outside `dim`, `index` may not be
    /// larger than `self`. Every index is checked first (on a GPU, one read back), so an
    /// out-of-range one is `Error::IndexOutOfRange`.
    pub fn gather(&self, dim: isize, index: &Tensor) -> Result<Tensor> {
        if let Some(r) = Tensor::via_f32(&[self], |t| t[0].gather(dim, index)) {
            return r;
        }
        let out = self.gather_forward(dim, index)?;
        if !Tensor::tracking(&[self]) {
            return Ok(out);
        }
        let (x, idx) = (self.detach(), index.detach());
        let axis = self.axis("gather", dim)?;
        Ok(out.record("gather", &[self, index], move |g, _| {
            Ok(vec![Some(x.scatter_add(g, &idx, axis)?), None])
        }))
    }

    fn gather_forward(&self, dim: isize, index: &Tensor) -> Result<Tensor> {
        self.same_device(index, "gather")?;
        index.expect(DType::U32, "gather")?;
        let axis = self.axis("gather", dim)?;
        let fits = index.rank() == self.rank()
            && (0..self.rank()).all(|d| d == axis || index.shape()[d] <= self.shape()[d]);
        if !fits {
            return Err(Error::ShapeMismatch {
                op: "gather",
                lhs: self.shape().to_vec(),
                rhs: index.shape().to_vec(),
            });
        }
        let len = self.shape()[axis];
        let idx = index.checked_indices("gather", len)?;
        let x_strides = self.shape.strides();
        let dims = index.shape().to_vec();
        let storage = (self.storage).gather(&index.storage, &idx, &dims, &x_strides, axis)?;
        Ok(self.with(storage, index.shape.clone()))
    }

    /// Embedding lookup: rows of `weight` (`[vocab, dim]`) for every id in `ids` (a u32 tensor of
    /// any shape); the result has shape `ids.shape + [dim]`.
    pub fn embedding(weight: &Tensor, ids: &Tensor) -> Result<Tensor> {
        if weight.rank() != 2 {
            return Err(Error::InvalidShape {
                op: "embedding",
                reason: format!("the weight must be [vocab, dim], got {}", weight.shape),
            });
        }
        if weight.dtype().is_packed() {
            return weight.packed_rows(ids);
        }
        let flat = ids.reshape(&[ids.numel()])?;
        let rows = weight.index_select(0, &flat).map_err(|e| match e {
            Error::IndexOutOfRange { index, size, .. } => Error::IndexOutOfRange {
                op: "embedding",
                index,
                size,
            },
            other => other,
        })?;
        let mut dims = ids.shape().to_vec();
        dims.push(weight.shape()[1]);
        rows.reshape(&dims)
    }
}
