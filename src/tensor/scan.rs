//! Walks along one axis: `cumsum` and `topk` (`shaders/scan.wgsl`, `cpu/scan.rs`).

use super::Tensor;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::shape::Shape;

impl Tensor {
    /// Running sums along `dim`: `out[i] = x[0] + … + x[i]`, or with `exclusive` the sum of
    /// the values before `i` (0 first), or with `reverse` the sums from the axis's end. The
    /// sums are f32 additions in the axis's order, the same on every device. Differentiable
    /// (the gradient is the running sum of the output gradient the other way).
    pub fn cumsum(&self, dim: isize, exclusive: bool, reverse: bool) -> Result<Tensor> {
        if let Some(r) = Tensor::via_f32(&[self], |t| t[0].cumsum(dim, exclusive, reverse)) {
            return r;
        }
        self.expect(DType::F32, "cumsum")?;
        let axis = self.axis("cumsum", dim)?;
        if self.numel() == 0 {
            return self.zeros_like();
        }
        let storage = self.storage.cumsum(self.around(axis), exclusive, reverse)?;
        let out = self.with(storage, self.shape.clone());
        if !Tensor::tracking(&[self]) {
            return Ok(out);
        }
        Ok(out.record("cumsum", &[self], move |g, _| {
            Ok(vec![Some(g.cumsum(axis as isize, exclusive, !reverse)?)])
        }))
    }

    /// The `k` largest values along `dim` (the smallest with `largest` false), first to last,
    /// and their indices as a u32 tensor; both have `k` in place of that dimension. NaN counts
    /// as the largest value; equal values keep the lower index first. `k` larger than the
    /// dimension is `InvalidArgument`. The values are differentiable (the gradient goes back to
    /// the picked positions).
    pub fn topk(&self, k: usize, dim: isize, largest: bool) -> Result<(Tensor, Tensor)> {
        if let Some(r) = Tensor::via_f32_pair(&[self], |t| t[0].topk(k, dim, largest)) {
            return r;
        }
        self.expect(DType::F32, "topk")?;
        let axis = self.axis("topk", dim)?;
        let (outer, len, inner) = self.around(axis);
        if k > len {
            return Err(Error::InvalidArgument {
                op: "topk",
                reason: format!("k = {k} is larger than dimension {dim} of {}", self.shape),
            });
        }
        let mut dims = self.shape().to_vec();
        dims[axis] = k;
        let shape = Shape::new(&dims)?;
        if shape.numel() == 0 {
            let none = Tensor::from_vec_u32(&self.device, Vec::new(), &dims)?;
            return Ok((Tensor::zeros(&self.device, &dims)?, none));
        }
        let (v, i) = self.storage.topk((outer, len, inner), k, largest)?;
        let (values, indices) = (self.with(v, shape.clone()), self.with(i, shape));
        if !Tensor::tracking(&[self]) {
            return Ok((values, indices));
        }
        let (x, idx) = (self.detach(), indices.clone());
        let values = values.record("topk", &[self], move |g, _| {
            Ok(vec![Some(x.scatter_add(g, &idx, axis)?)])
        });
        Ok((values, indices))
    }
}
