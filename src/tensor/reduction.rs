//! Reductions along an axis, softmax, and normalisation.

use super::Tensor;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::op::ReduceOp;
use crate::shape::Shape;
use crate::storage::Kernel;
use std::sync::Arc;

impl Tensor {
    /// Reduce along `dim` (negative counts from the end); `keepdim` keeps it with extent 1.
    /// `max` and `min` over an empty axis are an error; `sum` gives 0 and `mean`/`var` NaN there.
    pub fn reduce(&self, op: ReduceOp, dim: isize, keepdim: bool) -> Result<Tensor> {
        if let Some(r) = Tensor::via_f32(&[self], |t| t[0].reduce(op, dim, keepdim)) {
            return r;
        }
        let out = self.reduce_forward(op, dim, keepdim)?;
        if !Tensor::tracking(&[self]) {
            return Ok(out);
        }
        let axis = self.axis(op.name(), dim)?;
        let kept = self.reduced_dims(axis, true);
        let (x, y) = (self.detach(), out.detach());
        Ok(out.record(op.name(), &[self], move |g, _| {
            let gk = g.reshape(&kept)?;
            let len = x.shape()[axis];
            let dx = match op {
                ReduceOp::Sum => gk.broadcast_to(x.shape())?,
                ReduceOp::Mean => gk.div_scalar(len as f32)?.broadcast_to(x.shape())?,
                // The extreme takes the gradient; ties share it evenly.
                ReduceOp::Max | ReduceOp::Min => {
                    let hit = x.eq(&y.reshape(&kept)?)?;
                    let count = hit.sum(axis as isize, true)?;
                    hit.mul(&gk.div(&count)?)?
                }
                // d var / dx_i = 2 (x_i - mean) / (n - 1)
                ReduceOp::Var => {
                    let centered = x.sub(&x.mean(axis as isize, true)?)?;
                    centered.mul(&gk)?.mul_scalar(2.0 / (len as f32 - 1.0))?
                }
            };
            Ok(vec![Some(dx)])
        }))
    }

    fn reduce_forward(&self, op: ReduceOp, dim: isize, keepdim: bool) -> Result<Tensor> {
        self.expect(DType::F32, op.name())?;
        let axis = self.axis(op.name(), dim)?;
        let (outer, len, inner) = self.around(axis);
        let n_out = outer * inner;
        if len == 0 && n_out > 0 && matches!(op, ReduceOp::Max | ReduceOp::Min) {
            return Err(Error::InvalidShape {
                op: op.name(),
                reason: format!(
                    "cannot take the {} of an empty dimension ({dim} of {})",
                    op.name(),
                    self.shape
                ),
            });
        }
        let dims = self.reduced_dims(axis, keepdim);
        if len == 0 {
            // An empty axis: the sum of nothing is 0, its mean and variance NaN.
            let v = if op == ReduceOp::Sum { 0.0 } else { f32::NAN };
            return Tensor::full(&self.device, &dims, v);
        }
        let storage = self.storage.reduce((outer, len, inner), op)?;
        Ok(self.with(storage, Shape::new(&dims)?))
    }

    /// Sum along `dim`.
    pub fn sum(&self, dim: isize, keepdim: bool) -> Result<Tensor> {
        self.reduce(ReduceOp::Sum, dim, keepdim)
    }

    /// Mean along `dim`.
    pub fn mean(&self, dim: isize, keepdim: bool) -> Result<Tensor> {
        self.reduce(ReduceOp::Mean, dim, keepdim)
    }

    /// Maximum along `dim` (NaN if any element is NaN).
    pub fn max(&self, dim: isize, keepdim: bool) -> Result<Tensor> {
        self.reduce(ReduceOp::Max, dim, keepdim)
    }

    /// Minimum along `dim` (NaN if any element is NaN).
    pub fn min(&self, dim: isize, keepdim: bool) -> Result<Tensor> {
        self.reduce(ReduceOp::Min, dim, keepdim)
    }

    /// Unbiased variance along `dim` (divides by n - 1).
    pub fn var(&self, dim: isize, keepdim: bool) -> Result<Tensor> {
        self.reduce(ReduceOp::Var, dim, keepdim)
    }

    /// Reduce every element to a scalar (shape `[]`).
    pub fn reduce_all(&self, op: ReduceOp) -> Result<Tensor> {
        self.reshape(&[self.numel()])?.reduce(op, 0, false)
    }

    /// Sum of all elements, as a scalar tensor.
    pub fn sum_all(&self) -> Result<Tensor> {
        self.reduce_all(ReduceOp::Sum)
    }

    /// Mean of all elements, as a scalar tensor.
    pub fn mean_all(&self) -> Result<Tensor> {
        self.reduce_all(ReduceOp::Mean)
    }

    fn softmax_impl(&self, dim: isize, log: bool) -> Result<Tensor> {
        let op = if log { "log_softmax" } else { "softmax" };
        self.expect(DType::F32, op)?;
        let axis = self.axis(op, dim)?;
        let len = self.shape()[axis];
        if !self.storage.takes(Kernel::Softmax { len }) {
            // A kernel that cannot walk so long an axis on this device (llvmpipe's loop
            // limit): the same formula from chunked reductions and fused elementwise ops. A NaN
            // on the axis makes the maximum NaN, and so the whole slice, as the kernel does.
            let x = self.detach();
            let shifted = x.sub(&x.max(dim, true)?)?;
            let e = shifted.exp()?;
            let s = e.sum(dim, true)?;
            return if log {
                shifted.sub(&s.log()?)
            } else {
                e.div(&s)
            };
        }
        let storage = self.storage.softmax(self.around(axis), log)?;
        Ok(self.with(storage, self.shape.clone()))
    }

    /// Numerically stable softmax along `dim` (negative counts from the end).
    pub fn softmax(&self, dim: isize) -> Result<Tensor> {
        self.softmax_tracked(dim, false)
    }

    /// Numerically stable log-softmax along `dim`.
    pub fn log_softmax(&self, dim: isize) -> Result<Tensor> {
        self.softmax_tracked(dim, true)
    }

    fn softmax_tracked(&self, dim: isize, log: bool) -> Result<Tensor> {
        if let Some(r) = Tensor::via_f32(&[self], |t| t[0].softmax_tracked(dim, log)) {
            return r;
        }
        let out = self.softmax_impl(dim, log)?;
        if !Tensor::tracking(&[self]) {
            return Ok(out);
        }
        let y = out.detach();
        let name = if log { "log_softmax" } else { "softmax" };
        Ok(out.record(name, &[self], move |g, _| {
            let dx = if log {
                // dx = g - softmax · Σ g
                g.sub(&y.exp()?.mul(&g.sum(dim, true)?)?)?
            } else {
                // dx = y · (g - Σ g·y)
                y.mul(&g.sub(&g.mul(&y)?.sum(dim, true)?)?)?
            };
            Ok(vec![Some(dx)])
        }))
    }

    fn norm_impl(
        &self,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f32,
        rms: bool,
    ) -> Result<Tensor> {
        if let Some(r) = Tensor::via_f32_opt(&[Some(self), weight, bias], |t| {
            let [Some(x), w, b] = t else {
                unreachable!("via_f32_opt keeps the operands' places")
            };
            x.norm_impl(w.as_ref(), b.as_ref(), eps, rms)
        }) {
            return r;
        }
        let out = self.norm_forward(weight, bias, eps, rms)?;
        let inputs = [Some(self), weight, bias];
        let present: Vec<&Tensor> = inputs.iter().flatten().copied().collect();
        if !Tensor::tracking(&present) {
            return Ok(out);
        }
        let x = self.detach();
        let w = weight.map(Tensor::detach);
        let has_bias = bias.is_some();
        let name = if rms { "rms_norm" } else { "layer_norm" };
        Ok(out.record(name, &present, move |g, need| {
            let len = *x.shape().last().unwrap_or(&1);
            // x̂ = (x - mean) · r (layer_norm) or x · r (rms_norm), r = 1/sqrt(var + eps)
            let (dx, stats) = match Self::norm_grad_kernel(&x, w.as_ref(), g, eps, rms)? {
                Some((dx, mean, r)) => (dx, Some((mean, r))),
                // Too long a row for this device's kernel: composed from reductions.
                None => (
                    Self::norm_grad_composite(&x, w.as_ref(), g, eps, rms)?,
                    None,
                ),
            };
            let want_w = w.is_some() && need[1];
            let want_b = has_bias && need[1 + usize::from(w.is_some())];
            // Both sums over the rows in one pass where the device's kernel takes them.
            let pair = match (&stats, want_w || want_b) {
                (Some((mean, r)), true) => Self::norm_param_grads(&x, g, mean, r)?,
                _ => None,
            };
            let (dw, db) = match pair {
                Some((dw, db)) => (want_w.then_some(dw), want_b.then_some(db)),
                None => {
                    let dw = want_w.then(|| {
                        let xhat = match &stats {
                            Some((mean, r)) => x.sub(mean)?.mul(r)?,
                            None => Self::norm_xhat(&x, eps, rms)?.0,
                        };
                        g.mul(&xhat)?.sum_to(&[len])
                    });
                    (
                        dw.transpose()?,
                        want_b.then(|| g.sum_to(&[len])).transpose()?,
                    )
                }
            };
            let mut grads = vec![Some(dx)];
            if w.is_some() {
                grads.push(dw);
            }
            if has_bias {
                grads.push(db);
            }
            Ok(grads)
        }))
    }

    /// x̂ = (x - mean) · r (layer_norm) or x · r (rms_norm) and r = 1/sqrt(var + eps), from
    /// reductions.
    fn norm_xhat(x: &Tensor, eps: f32, rms: bool) -> Result<(Tensor, Tensor)> {
        let centered = if rms {
            x.clone()
        } else {
            x.sub(&x.mean(-1, true)?)?
        };
        let r = centered
            .square()?
            .mean(-1, true)?
            .add_scalar(eps)?
            .rsqrt()?;
        Ok((centered.mul(&r)?, r))
    }

    /// The norm's input gradient composed from reductions and elementwise ops.
    fn norm_grad_composite(
        x: &Tensor,
        w: Option<&Tensor>,
        g: &Tensor,
        eps: f32,
        rms: bool,
    ) -> Result<Tensor> {
        let (xhat, r) = Self::norm_xhat(x, eps, rms)?;
        let dxhat = match w {
            Some(w) => g.mul(w)?,
            None => g.clone(),
        };
        let proj = dxhat.mul(&xhat)?.mean(-1, true)?.mul(&xhat)?;
        if rms {
            dxhat.sub(&proj)?.mul(&r)
        } else {
            dxhat.sub(&dxhat.mean(-1, true)?)?.sub(&proj)?.mul(&r)
        }
    }

    /// The norm's input gradient from its own kernel (one pass per row) with each row's mean
    /// and r (`[.., 1]`); `None` where the rows are too long for the device's kernel or empty.
    fn norm_grad_kernel(
        x: &Tensor,
        w: Option<&Tensor>,
        g: &Tensor,
        eps: f32,
        rms: bool,
    ) -> Result<Option<(Tensor, Tensor, Tensor)>> {
        let len = *x.shape().last().unwrap_or(&0);
        if len == 0 || x.numel() == 0 {
            return Ok(None);
        }
        let rows = x.numel() / len;
        if !x.storage.takes(Kernel::NormBackward { len }) {
            return Ok(None);
        }
        let w = w.map(|w| &w.storage);
        let (dx, mean, r) = x
            .storage
            .norm_backward(w, &g.storage, rows, len, eps, rms)?;
        let mut stat = x.shape().to_vec();
        *stat.last_mut().expect("rank > 0") = 1;
        let stat = Shape::new(&stat)?;
        let (mean, r) = (x.with(mean, stat.clone()), x.with(r, stat));
        Ok(Some((x.with(dx, x.shape.clone()), mean, r)))
    }

    /// The weight's and bias's gradients `(Σ_rows g·x̂, Σ_rows g)` in one pass from the row
    /// statistics; `None` where the device's kernel does not take so many rows.
    fn norm_param_grads(
        x: &Tensor,
        g: &Tensor,
        mean: &Tensor,
        r: &Tensor,
    ) -> Result<Option<(Tensor, Tensor)>> {
        let len = *x.shape().last().expect("rank > 0");
        let rows = x.numel() / len;
        if !x.storage.takes(Kernel::NormParamGrads { rows }) {
            return Ok(None);
        }
        let stats = [&g.storage, &mean.storage, &r.storage];
        let (dw, db) = x.storage.norm_param_grads(stats, rows, len)?;
        let shape = Shape::new(&[len])?;
        Ok(Some((x.with(dw, shape.clone()), x.with(db, shape))))
    }

    fn norm_forward(
        &self,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f32,
        rms: bool,
    ) -> Result<Tensor> {
        let op = if rms { "rms_norm" } else { "layer_norm" };
        self.expect(DType::F32, op)?;
        let len = *self.shape().last().ok_or_else(|| Error::InvalidShape {
            op,
            reason: "a scalar has no dimension to normalise".into(),
        })?;
        if eps.is_nan() || eps < 0.0 {
            return Err(Error::InvalidArgument {
                op,
                reason: format!("eps must be >= 0, got {eps}"),
            });
        }
        for p in [weight, bias].into_iter().flatten() {
            self.same_device(p, op)?;
            p.expect(DType::F32, op)?;
            if p.shape() != [len] {
                return Err(Error::ShapeMismatch {
                    op,
                    lhs: self.shape().to_vec(),
                    rhs: p.shape().to_vec(),
                });
            }
        }
        let rows = self.numel().checked_div(len).unwrap_or(0);
        let (w, b) = (weight.map(|t| &t.storage), bias.map(|t| &t.storage));
        if !self.storage.takes(Kernel::Norm { len }) {
            // Too long a row for this device's kernel (llvmpipe's loop limit): the same
            // formula from chunked reductions and fused elementwise ops.
            let mut y = Self::norm_xhat(&self.detach(), eps, rms)?.0;
            if let Some(w) = weight {
                y = y.mul(&w.detach())?;
            }
            return match bias {
                Some(b) => y.add(&b.detach()),
                None => Ok(y),
            };
        }
        let storage = self.storage.norm(w, b, rows, len, eps, rms)?;
        Ok(self.with(storage, self.shape.clone()))
    }

    /// Layer normalisation over the last dimension: `(x - mean) / sqrt(var + eps) * weight + bias`
    /// with the biased variance; `weight` and `bias` (shape `[last]`) are optional.
    pub fn layer_norm(
        &self,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f32,
    ) -> Result<Tensor> {
        self.norm_impl(weight, bias, eps, false)
    }

    /// RMS normalisation over the last dimension: `x / sqrt(mean(x²) + eps) * weight`.
    pub fn rms_norm(&self, weight: Option<&Tensor>, eps: f32) -> Result<Tensor> {
        self.norm_impl(weight, None, eps, true)
    }
}

impl Tensor {
    /// Per-row cross-entropy of `[rows, classes]` logits against the u32 `targets` (`[rows]`,
    /// values `t` already checked against `classes` by the caller): one fused kernel forward and
    /// one backward. `nn::cross_entropy` validates and averages.
    pub(crate) fn cross_entropy_rows(&self, targets: &Tensor, t: Arc<Vec<u32>>) -> Result<Tensor> {
        let (rows, classes) = (self.shape()[0], self.shape()[1]);
        if !self.storage.takes(Kernel::CrossEntropy { classes }) {
            // Too many classes for this device's kernel (llvmpipe's loop limit): the same
            // loss from log_softmax and a gather, tracked op by op.
            let picked = self
                .log_softmax(1)?
                .gather(1, &targets.reshape(&[rows, 1])?)?;
            return picked.reshape(&[rows])?.neg();
        }
        let (loss, lse) = self.storage.cross_entropy(&targets.storage, &t, classes)?;
        let shape = Shape::new(&[rows])?;
        let out = self.with(loss, shape.clone());
        if !Tensor::tracking(&[self]) {
            return Ok(out);
        }
        let (x, tt, lse) = (self.detach(), targets.detach(), self.with(lse, shape));
        Ok(out.record("cross_entropy", &[self, targets], move |g, _| {
            let dx = (x.storage).cross_entropy_grad(
                &tt.storage,
                &t,
                &lse.storage,
                &g.storage,
                classes,
            )?;
            Ok(vec![Some(x.with(dx, x.shape.clone())), None])
        }))
    }
}
