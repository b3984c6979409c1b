//! Matrix products: matmul (batched, broadcast, optionally transposed operands) and the fused linear layer.

use super::Tensor;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::matmul_plan::MatmulPlan;
use crate::op::UnaryOp;
use crate::shape::Shape;
use crate::storage::Kernel;

/// Slices of K a split-K matmul sums, where a device cannot walk all of K in one kernel.
const SPLIT_K: usize = 16_384;

impl Tensor {
    /// Matrix product `[.., m, k] x [.., k, n] -> [.., m, n]`, batch dimensions broadcast
    /// (numpy's `matmul` for operands of rank 2 or more). `k = 0` gives zeros.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.matmul_transposed(rhs, false, false)
    }

    /// `op(self) x op(rhs)`, where `op` swaps the last two dimensions of an operand whose flag is
    /// set, without materialising the transpose (the kernels read through strides): for example
    /// `a.matmul_transposed(&b, false, true)` is `a · bᵀ` for `b` of shape `[.., n, k]`.
    pub fn matmul_transposed(
        &self,
        rhs: &Tensor,
        transpose_self: bool,
        transpose_rhs: bool,
    ) -> Result<Tensor> {
        if rhs.dtype().is_packed() && transpose_rhs && !transpose_self && rhs.rank() == 2 {
            // A weight of a storage type: the activation's type is the result's.
            if let Some(r) = Tensor::via_f32(&[self], |t| t[0].matmul_packed(rhs)) {
                return r;
            }
            return self.matmul_packed(rhs);
        }
        if let Some(r) = Tensor::via_f32(&[self, rhs], |t| {
            t[0].matmul_transposed(&t[1], transpose_self, transpose_rhs)
        }) {
            return r;
        }
        let out = self.matmul_forward(rhs, transpose_self, transpose_rhs)?;
        if !Tensor::tracking(&[self, rhs]) {
            return Ok(out);
        }
        let (a, b) = (self.detach(), rhs.detach());
        let (ta, tb) = (transpose_self, transpose_rhs);
        Ok(out.record("matmul", &[self, rhs], move |g, need| {
            // C = op(A)·op(B): dop(A) = g·op(B)ᵀ and dop(B) = op(A)ᵀ·g, transposed back where
            // the operand was read transposed, then summed over broadcast batch dimensions.
            let ga = match (need[0], ta) {
                (false, _) => None,
                (true, false) => Some(g.matmul_transposed(&b, false, !tb)?),
                (true, true) => Some(b.matmul_transposed(g, tb, true)?),
            };
            let gb = match (need[1], tb) {
                (false, _) => None,
                (true, false) => Some(a.matmul_transposed(g, !ta, false)?),
                (true, true) => Some(g.matmul_transposed(&a, true, ta)?),
            };
            Ok(vec![
                ga.map(|t| t.sum_to(a.shape())).transpose()?,
                gb.map(|t| t.sum_to(b.shape())).transpose()?,
            ])
        }))
    }

    fn matmul_forward(
        &self,
        rhs: &Tensor,
        transpose_self: bool,
        transpose_rhs: bool,
    ) -> Result<Tensor> {
        self.same_device(rhs, "matmul")?;
        self.expect(DType::F32, "matmul")?;
        rhs.expect(DType::F32, "matmul")?;
        let plan = MatmulPlan::transposed(&self.shape, &rhs.shape, transpose_self, transpose_rhs)?;
        if plan.k == 0 {
            // An empty sum: the product is all zeros.
            return Tensor::zeros(&self.device, plan.out_shape.dims());
        }
        // A kernel that cannot walk all of K on this device (llvmpipe's loop limit): the sum of
        // products over slices of K.
        if plan.k > SPLIT_K && !self.storage.takes(Kernel::Matmul { k: plan.k }) {
            {
                let dim = |t: &Tensor, transposed: bool, k_last: bool| match t.rank() {
                    1 => 0,
                    r if transposed ^ k_last => r as isize - 1,
                    r => r as isize - 2,
                };
                let (da, db) = (
                    dim(self, transpose_self, true),
                    dim(rhs, transpose_rhs, false),
                );
                let mut sum: Option<Tensor> = None;
                for k0 in (0..plan.k).step_by(SPLIT_K) {
                    let kc = SPLIT_K.min(plan.k - k0);
                    let part = self.narrow(da, k0, kc)?.matmul_forward(
                        &rhs.narrow(db, k0, kc)?,
                        transpose_self,
                        transpose_rhs,
                    )?;
                    sum = Some(match sum {
                        Some(s) => s.add(&part)?,
                        None => part,
                    });
                }
                return sum.ok_or_else(|| unreachable!("plan.k > SPLIT_K > 0"));
            }
        }
        let storage = self.storage.matmul(&rhs.storage, &plan, None, None, None)?;
        Ok(self.with(storage, plan.out_shape))
    }

    /// A linear layer in one op: `act(self · weightᵀ + bias)`, with `weight` of shape
    /// `[out_features, in_features]` (PyTorch's convention) read transposed in place, `bias` of
    /// shape `[out_features]`, and the activation applied in the matmul kernel's epilogue.
    pub fn linear(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        act: Option<UnaryOp>,
    ) -> Result<Tensor> {
        self.linear_with(weight, bias, act, None)
    }

    /// `residual + self · weightᵀ + bias` in one op (a residual block's `x + proj(y)`): the
    /// residual, of the output's shape, is added in the matmul kernel's epilogue on a GPU
    /// (versions 2 to 4; version 1, which has none, is not picked for it), so the sum is not a
    /// pass of its own. Its gradient is the output's.
    pub fn linear_add(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        residual: &Tensor,
    ) -> Result<Tensor> {
        self.linear_with(weight, bias, None, Some(residual))
    }

    fn linear_with(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        act: Option<UnaryOp>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        // A weight of a storage type (f16 included) is read as it is; the other operands'
        // types make the result's.
        let own = (!weight.dtype().is_packed()).then_some(weight);
        if let Some(r) = Tensor::via_f32_opt(&[Some(self), own, bias, residual], |t| {
            let [Some(x), w, b, res] = t else {
                unreachable!("via_f32_opt keeps the operands' places")
            };
            x.linear_with(w.as_ref().unwrap_or(weight), b.as_ref(), act, res.as_ref())
        }) {
            return r;
        }
        if weight.dtype().is_packed() {
            // A weight of a storage type: decoded in registers, the epilogue as ops (which
            // fuse into one pass).
            let mut y = self.matmul_packed(weight)?;
            if let Some(b) = bias {
                y = y.add(b)?;
            }
            if let Some(op) = act {
                y = y.unary(op)?;
            }
            return match residual {
                Some(r) => y.add(r),
                None => Ok(y),
            };
        }
        let present: Vec<&Tensor> = [Some(self), Some(weight), bias, residual]
            .into_iter()
            .flatten()
            .collect();
        if !Tensor::tracking(&present) {
            return self.linear_forward(weight, bias, act, residual);
        }
        if let Some(op) = act {
            // Training: the activation's backward needs its input, so it runs as its own op.
            let y = self.linear(weight, bias, None)?.unary(op)?;
            return match residual {
                Some(r) => y.add(r),
                None => Ok(y),
            };
        }
        let out = self.linear_forward(weight, bias, None, residual)?;
        let (x, w) = (self.detach(), weight.detach());
        let (has_bias, has_residual) = (bias.is_some(), residual.is_some());
        Ok(out.record("linear", &present, move |g, need| {
            let (n, k) = (w.shape()[0], w.shape()[1]);
            let rows: usize = x.shape()[..x.rank() - 1].iter().product();
            let (g2, x2) = (g.reshape(&[rows, n])?, x.reshape(&[rows, k])?);
            let want_bias = has_bias && need[2];
            // The weight's gradient gᵀ·x, with the bias's (g's column sums) from the same pass
            // where the kernel adds them.
            let (dw, db) = match need[1] {
                true if want_bias => {
                    let (dw, db) = g2.matmul_with_row_sums(&x2)?;
                    (Some(dw), db)
                }
                true => (Some(g2.matmul_transposed(&x2, true, false)?), None),
                false => (None, None),
            };
            let mut grads = vec![need[0].then(|| g.matmul(&w)).transpose()?, dw];
            if has_bias {
                let db = match db {
                    Some(db) => Some(db),
                    None => want_bias.then(|| g.sum_to(&[n])).transpose()?,
                };
                grads.push(db);
            }
            if has_residual {
                grads.push(need[grads.len()].then(|| g.clone()));
            }
            Ok(grads)
        }))
    }

    /// `selfᵀ · rhs` for 2-D operands (untracked) and, where the device's kernel adds them in
    /// the same pass, the sums of `self`'s columns (`[self.shape()[1]]`).
    fn matmul_with_row_sums(&self, rhs: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let plan = MatmulPlan::transposed(&self.shape, &rhs.shape, true, false)?;
        if plan.k == 0 || plan.out_numel() == 0 {
            return Ok((self.matmul_transposed(rhs, true, false)?, None));
        }
        if !self.storage.takes(Kernel::Matmul { k: plan.k }) {
            return Ok((self.matmul_transposed(rhs, true, false)?, None));
        }
        let (c, sums) = self.storage.matmul_row_sums(&rhs.storage, &plan)?;
        let sums = sums
            .map(|s| Ok::<_, Error>(self.with(s, Shape::new(&[plan.m])?)))
            .transpose()?;
        Ok((self.with(c, plan.out_shape), sums))
    }

    fn linear_forward(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        act: Option<UnaryOp>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.same_device(weight, "linear")?;
        self.expect(DType::F32, "linear")?;
        weight.expect(DType::F32, "linear")?;
        let plan = MatmulPlan::with_transposed_rhs(&self.shape, &weight.shape)?;
        if let Some(b) = bias {
            self.same_device(b, "linear")?;
            b.expect(DType::F32, "linear")?;
            if b.shape() != [plan.n] {
                return Err(Error::ShapeMismatch {
                    op: "linear",
                    lhs: weight.shape().to_vec(),
                    rhs: b.shape().to_vec(),
                });
            }
        }
        if let Some(r) = residual {
            self.same_device(r, "linear")?;
            r.expect(DType::F32, "linear")?;
            if r.shape() != plan.out_shape.dims() {
                return Err(Error::ShapeMismatch {
                    op: "linear",
                    lhs: plan.out_shape.dims().to_vec(),
                    rhs: r.shape().to_vec(),
                });
            }
        }
        // Where the kernel cannot: the epilogue as ops.
        let epilogue = |y: Tensor| -> Result<Tensor> {
            let y = match bias {
                Some(b) => y.add(b)?,
                None => y,
            };
            let y = match act {
                Some(op) => y.unary(op)?,
                None => y,
            };
            match residual {
                Some(r) => y.add(r),
                None => Ok(y),
            }
        };
        if plan.k == 0 {
            // An empty sum: the product is zero; bias and activation still apply.
            return epilogue(Tensor::zeros(&self.device, plan.out_shape.dims())?);
        }
        let (fused, res) = (bias.map(|b| &b.storage), residual.map(|r| &r.storage));
        if plan.k > SPLIT_K && !self.storage.takes(Kernel::Matmul { k: plan.k }) {
            // Too long a K for this device's kernels: split-K matmul, then the epilogue.
            return epilogue(self.matmul_forward(weight, false, true)?);
        }
        let storage = self
            .storage
            .matmul(&weight.storage, &plan, fused, act, res)?;
        Ok(self.with(storage, plan.out_shape))
    }

    /// `self x rhs` (2-D or batched, as [`Tensor::matmul`]) with both operands stored as f16 and
    /// the products accumulated in f32: half the memory traffic for the operands, at f16 input
    /// precision (relative rounding 2^-11). On a GPU it needs SHADER_F16 (`Error::Unsupported`
    /// otherwise); the CPU backend rounds the operands to f16 the same way and multiplies in f32.
    pub fn matmul_f16(&self, rhs: &Tensor) -> Result<Tensor> {
        if let Some(r) = Tensor::via_f32(&[self, rhs], |t| t[0].matmul_f16(&t[1])) {
            return r;
        }
        if Tensor::tracking(&[self, rhs]) {
            return Err(Error::Autograd {
                op: "matmul_f16",
                reason: "matmul_f16 has no backward; use matmul for training, or run \
                         inference inside kiln::no_grad"
                    .into(),
            });
        }
        self.same_device(rhs, "matmul_f16")?;
        self.expect(DType::F32, "matmul_f16")?;
        rhs.expect(DType::F32, "matmul_f16")?;
        let plan = MatmulPlan::new(&self.shape, &rhs.shape)?;
        let lens = (self.numel(), rhs.numel());
        let storage = self.storage.matmul_f16(&rhs.storage, &plan, lens)?;
        Ok(self.with(storage, plan.out_shape))
    }
}
