//! Layout: reshape (a view), and the materialised permute, transpose, narrow and cat.

use super::Tensor;
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::shape::Shape;
use crate::storage::Storage;
use crate::strided::StridedCopy;

impl Tensor {
    /// The same values with another shape of the same element count; no copy is made.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let new = Shape::new(shape)?;
        if new.numel() != self.numel() {
            return Err(Error::InvalidShape {
                op: "reshape",
                reason: format!(
                    "cannot view {} ({} elements) as {new} ({} elements)",
                    self.shape,
                    self.numel(),
                    new.numel()
                ),
            });
        }
        let out = Tensor {
            host_u32: self.host_u32.clone(),
            ..self.with(self.storage.clone(), new)
        };
        if !Tensor::tracking(&[self]) {
            return Ok(out);
        }
        let dims = self.shape().to_vec();
        Ok(out.record("reshape", &[self], move |g, _| {
            Ok(vec![Some(g.reshape(&dims)?)])
        }))
    }

    /// Dimensions reordered: output dimension `i` is input dimension `dims[i]` (materialised:
    /// the result is contiguous). `dims` must be a permutation of `0..rank`.
    pub fn permute(&self, dims: &[usize]) -> Result<Tensor> {
        let rank = self.rank();
        let mut seen = vec![false; rank];
        let valid = dims.len() == rank
            && dims
                .iter()
                .all(|&d| d < rank && !std::mem::replace(&mut seen[d], true));
        if !valid {
            return Err(Error::InvalidShape {
                op: "permute",
                reason: format!(
                    "{dims:?} is not a permutation of the {rank} dimensions of {}",
                    self.shape
                ),
            });
        }
        let strides = self.shape.strides();
        let out_dims: Vec<usize> = dims.iter().map(|&d| self.shape()[d]).collect();
        let out_shape = Shape::new(&out_dims)?;
        let plan = StridedCopy {
            dims: out_dims,
            in_strides: dims.iter().map(|&d| strides[d]).collect(),
            in_offset: 0,
            out_strides: out_shape.strides(),
            out_offset: 0,
        };
        let out = Self::assemble(
            "permute",
            &self.device,
            self.dtype(),
            out_shape,
            &[(self, plan)],
            false,
        )?;
        if !Tensor::tracking(&[self]) {
            return Ok(out);
        }
        let mut inverse = vec![0; rank];
        for (i, &d) in dims.iter().enumerate() {
            inverse[d] = i;
        }
        Ok(out.record("permute", &[self], move |g, _| {
            Ok(vec![Some(g.permute(&inverse)?)])
        }))
    }

    /// Dimensions `d0` and `d1` swapped (materialised). Negative dimensions count from the end.
    pub fn transpose(&self, d0: isize, d1: isize) -> Result<Tensor> {
        let (a, b) = (self.axis("transpose", d0)?, self.axis("transpose", d1)?);
        let mut dims: Vec<usize> = (0..self.rank()).collect();
        dims.swap(a, b);
        self.permute(&dims)
    }

    /// The slice `start..start + len` of dimension `dim` (materialised).
    pub fn narrow(&self, dim: isize, start: usize, len: usize) -> Result<Tensor> {
        let axis = self.axis("narrow", dim)?;
        let extent = self.shape()[axis];
        if start.checked_add(len).is_none_or(|end| end > extent) {
            return Err(Error::InvalidShape {
                op: "narrow",
                reason: format!(
                    "{start}..{start}+{len} is outside dimension {dim} (extent {extent}) of {}",
                    self.shape
                ),
            });
        }
        let strides = self.shape.strides();
        let mut out_dims = self.shape().to_vec();
        out_dims[axis] = len;
        let out_shape = Shape::new(&out_dims)?;
        let plan = StridedCopy {
            dims: out_dims,
            in_strides: strides.clone(),
            in_offset: start * strides[axis],
            out_strides: out_shape.strides(),
            out_offset: 0,
        };
        // f32 values as a view that elementwise ops read in place (a fused program), else a copy.
        let view = match self.dtype() {
            DType::F32 => self.storage.view(&plan)?,
            _ => None,
        };
        let out = match view {
            Some(storage) => self.with(storage, out_shape),
            None => Self::assemble(
                "narrow",
                &self.device,
                self.dtype(),
                out_shape,
                &[(self, plan)],
                false,
            )?,
        };
        if !Tensor::tracking(&[self]) {
            return Ok(out);
        }
        let mut pads = vec![(0, 0); self.rank()];
        pads[axis] = (start as isize, (extent - start - len) as isize);
        Ok(out.record("narrow", &[self], move |g, _| {
            // The gradient sits at start..start + len, zeros elsewhere: one padding pass.
            Ok(vec![Some(g.pad(&pads, 0.0)?)])
        }))
    }

    /// This f32 tensor padded with `value` (or cropped, for a negative amount): `pads[d]` is
    /// (before, after) along dimension d, one pair per dimension. One pass on every device; the
    /// gradient is the gradient cropped (or padded with zeros) back. A negative result extent
    /// or a wrong number of pairs is `InvalidArgument`.
    pub fn pad(&self, pads: &[(isize, isize)], value: f32) -> Result<Tensor> {
        if let Some(r) = Tensor::via_f32(&[self], |t| t[0].pad(pads, value)) {
            return r;
        }
        self.expect(DType::F32, "pad")?;
        if pads.len() != self.rank() {
            return Err(Error::InvalidArgument {
                op: "pad",
                reason: format!(
                    "{} pairs of pads for a tensor of rank {}",
                    pads.len(),
                    self.rank()
                ),
            });
        }
        let mut dims = Vec::with_capacity(pads.len());
        for (&extent, &(before, after)) in self.shape().iter().zip(pads) {
            let n = extent as isize + before + after;
            if n < 0 {
                return Err(Error::InvalidArgument {
                    op: "pad",
                    reason: format!("pads {pads:?} leave a negative extent for {}", self.shape),
                });
            }
            dims.push(n as usize);
        }
        if pads.iter().all(|&p| p == (0, 0)) {
            return Ok(self.clone());
        }
        if self.rank() > crate::strided::MAX_COPY_RANK {
            return Err(Error::Unsupported {
                op: "pad",
                reason: format!(
                    "rank {} (at most {})",
                    self.rank(),
                    crate::strided::MAX_COPY_RANK
                ),
            });
        }
        let shape = Shape::new(&dims)?;
        let out = if shape.numel() == 0 {
            Tensor::zeros(&self.device, &dims)?
        } else if self.numel() == 0 {
            Tensor::full(&self.device, &dims, value)?
        } else {
            let before: Vec<isize> = pads.iter().map(|p| p.0).collect();
            let storage = self.storage.pad(self.shape(), &dims, &before, value)?;
            self.with(storage, shape)
        };
        if !Tensor::tracking(&[self]) {
            return Ok(out);
        }
        let back: Vec<(isize, isize)> = pads.iter().map(|&(b, a)| (-b, -a)).collect();
        Ok(out.record("pad", &[self], move |g, _| {
            Ok(vec![Some(g.pad(&back, 0.0)?)])
        }))
    }

    /// Tensors joined along `dim`: every tensor has the same rank and the same extents except
    /// along `dim`, and all live on one device.
    pub fn cat(tensors: &[&Tensor], dim: isize) -> Result<Tensor> {
        let first = *tensors.first().ok_or_else(|| Error::InvalidShape {
            op: "cat",
            reason: "no tensors to concatenate".into(),
        })?;
        let axis = first.axis("cat", dim)?;
        let mut total = 0;
        for t in tensors {
            first.same_device(t, "cat")?;
            t.expect(first.dtype(), "cat")?;
            let compatible = t.rank() == first.rank()
                && (0..first.rank()).all(|d| d == axis || t.shape()[d] == first.shape()[d]);
            if !compatible {
                return Err(Error::ShapeMismatch {
                    op: "cat",
                    lhs: first.shape().to_vec(),
                    rhs: t.shape().to_vec(),
                });
            }
            total += t.shape()[axis];
        }
        let mut out_dims = first.shape().to_vec();
        out_dims[axis] = total;
        let out_shape = Shape::new(&out_dims)?;
        let out_strides = out_shape.strides();
        let mut at = 0;
        let parts: Vec<(&Tensor, StridedCopy)> = tensors
            .iter()
            .map(|t| {
                let plan = StridedCopy::place(&t.shape, &out_strides, axis, at);
                at += t.shape()[axis];
                (*t, plan)
            })
            .collect();
        let out = Self::assemble(
            "cat",
            &first.device,
            first.dtype(),
            out_shape,
            &parts,
            false,
        )?;
        if !Tensor::tracking(tensors) {
            return Ok(out);
        }
        let extents: Vec<usize> = tensors.iter().map(|t| t.shape()[axis]).collect();
        Ok(out.record("cat", tensors, move |g, need| {
            let mut start = 0;
            let mut grads = Vec::with_capacity(extents.len());
            for (&len, &want) in extents.iter().zip(need) {
                grads.push(match want {
                    true => Some(g.narrow(axis as isize, start, len)?),
                    false => None,
                });
                start += len;
            }
            Ok(grads)
        }))
    }

    /// A new tensor of `shape` on `device` filled by strided copies from `parts` (which cover
    /// it, unless `zeroed`: then it starts as zeros).
    pub(super) fn assemble(
        op: &'static str,
        device: &Device,
        dtype: DType,
        shape: Shape,
        parts: &[(&Tensor, StridedCopy)],
        zeroed: bool,
    ) -> Result<Tensor> {
        if super::half::is_half(dtype) {
            // Half values are moved as f32 (exact both ways).
            let wide = (parts.iter())
                .map(|(t, _)| t.to_dtype(DType::F32))
                .collect::<Result<Vec<_>>>()?;
            let parts: Vec<(&Tensor, StridedCopy)> = (wide.iter().zip(parts))
                .map(|(w, (_, plan))| (w, plan.clone()))
                .collect();
            return Self::assemble(op, device, DType::F32, shape, &parts, zeroed)?.to_dtype(dtype);
        }
        if !matches!(dtype, DType::F32 | DType::U32) {
            return Err(Error::DTypeMismatch {
                op,
                expected: DType::F32,
                got: dtype,
            });
        }
        let parts: Vec<(&Storage, &StridedCopy)> =
            parts.iter().map(|(t, plan)| (&t.storage, plan)).collect();
        let storage = Storage::assemble(device, op, dtype, shape.numel(), &parts, zeroed)?;
        Ok(Tensor::new(storage, shape, device))
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
        // One value: a fused program that repeats it (no copy pass where fusion is on).
        let splat = match self.numel() == 1 && self.dtype() == DType::F32 {
            true => self.storage.splat(target.numel())?,
            false => None,
        };
        let out = match splat {
            Some(storage) => self.with(storage, target),
            None => {
                let plan = StridedCopy {
                    dims: shape.to_vec(),
                    in_strides: self.shape.broadcast_strides(&target),
                    in_offset: 0,
                    out_strides: target.strides(),
                    out_offset: 0,
                };
                Self::assemble(
                    "broadcast_to",
                    &self.device,
                    self.dtype(),
                    target,
                    &[(self, plan)],
                    false,
                )?
            }
        };
        if !Tensor::tracking(&[self]) {
            return Ok(out);
        }
        let dims = self.shape().to_vec();
        Ok(out.record("broadcast_to", &[self], move |g, _| {
            Ok(vec![Some(g.sum_to(&dims)?)])
        }))
    }
}
