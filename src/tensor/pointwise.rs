//! Elementwise ops: unary, binary with broadcasting, and `where`.

use super::Tensor;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::op::{BinaryOp, UnaryOp};
use crate::shape::BroadcastLayout;
use crate::storage::{Storage, WherePlan};

impl Tensor {
    /// Apply an elementwise [`UnaryOp`].
    pub fn unary(&self, op: UnaryOp) -> Result<Tensor> {
        if let Some(r) = Tensor::via_f32(&[self], |t| t[0].unary(op)) {
            return r;
        }
        let out = self.unary_forward(op)?;
        if !Tensor::tracking(&[self]) {
            return Ok(out);
        }
        let x = self.detach();
        Ok(out.record(op.name(), &[self], move |g, _| {
            Ok(vec![Some(x.unary_grad(g, op)?)])
        }))
    }

    fn unary_forward(&self, op: UnaryOp) -> Result<Tensor> {
        self.expect(DType::F32, op.name())?;
        let storage = self.storage.unary(op, self.numel())?;
        Ok(self.with(storage, self.shape.clone()))
    }

    /// `max(x, 0)`; NaN stays NaN.
    pub fn relu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Relu)
    }

    /// `x` where `x >= 0`, else `alpha * x`.
    pub fn leaky_relu(&self, alpha: f32) -> Result<Tensor> {
        self.unary(UnaryOp::LeakyRelu(alpha))
    }

    /// GELU with the exact (erf) normal CDF.
    pub fn gelu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Gelu)
    }

    /// GELU, tanh approximation.
    pub fn gelu_tanh(&self) -> Result<Tensor> {
        self.unary(UnaryOp::GeluTanh)
    }

    /// The logistic function.
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sigmoid)
    }

    /// Hyperbolic tangent.
    pub fn tanh(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Tanh)
    }

    /// `x * sigmoid(x)`.
    pub fn silu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Silu)
    }

    /// The error function.
    pub fn erf(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Erf)
    }

    /// Sine.
    pub fn sin(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sin)
    }

    /// Cosine.
    pub fn cos(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Cos)
    }

    /// Round down to an integer.
    pub fn floor(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Floor)
    }

    /// Round up to an integer.
    pub fn ceil(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Ceil)
    }

    /// `-1`, `0` or `1` by the sign (0 for ±0; NaN stays NaN).
    pub fn sign(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sign)
    }

    /// Round to the nearest integer, ties to even.
    pub fn round(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Round)
    }

    /// `min(max(alpha·x + beta, 0), 1)`.
    pub fn hard_sigmoid(&self, alpha: f32, beta: f32) -> Result<Tensor> {
        self.unary(UnaryOp::HardSigmoid(alpha, beta))
    }

    /// `x · min(max(x/6 + 1/2, 0), 1)`.
    pub fn hard_swish(&self) -> Result<Tensor> {
        self.unary(UnaryOp::HardSwish)
    }

    /// `e^x`.
    pub fn exp(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Exp)
    }

    /// Natural logarithm.
    pub fn log(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Log)
    }

    /// Square root.
    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sqrt)
    }

    /// `1 / sqrt(x)`.
    pub fn rsqrt(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Rsqrt)
    }

    /// `|x|`.
    pub fn abs(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Abs)
    }

    /// `-x`.
    pub fn neg(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Neg)
    }

    /// `1 / x`.
    pub fn recip(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Recip)
    }

    /// `x * x`.
    pub fn square(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Square)
    }

    /// `x^p` for a scalar `p`.
    pub fn powf(&self, p: f32) -> Result<Tensor> {
        self.unary(UnaryOp::Powf(p))
    }

    /// `min(max(x, lo), hi)`; `Error::InvalidArgument` if `lo > hi` or either is NaN.
    pub fn clamp(&self, lo: f32, hi: f32) -> Result<Tensor> {
        if lo.is_nan() || hi.is_nan() || lo > hi {
            return Err(Error::InvalidArgument {
                op: "clamp",
                reason: format!("bounds must satisfy lo <= hi, got lo = {lo}, hi = {hi}"),
            });
        }
        self.unary(UnaryOp::Clamp(lo, hi))
    }

    /// `ln(1 + e^x)`.
    pub fn softplus(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Softplus)
    }

    /// `x` for `x > 0`, `alpha (e^x - 1)` otherwise.
    pub fn elu(&self, alpha: f32) -> Result<Tensor> {
        self.unary(UnaryOp::Elu(alpha))
    }

    /// `x + c`.
    pub fn add_scalar(&self, c: f32) -> Result<Tensor> {
        self.unary(UnaryOp::AddScalar(c))
    }

    /// `x - c`.
    pub fn sub_scalar(&self, c: f32) -> Result<Tensor> {
        self.unary(UnaryOp::AddScalar(-c))
    }

    /// `x * c`.
    pub fn mul_scalar(&self, c: f32) -> Result<Tensor> {
        self.unary(UnaryOp::MulScalar(c))
    }

    /// `x / c`.
    pub fn div_scalar(&self, c: f32) -> Result<Tensor> {
        self.unary(UnaryOp::DivScalar(c))
    }

    /// Apply an elementwise [`BinaryOp`] with numpy broadcasting. The comparisons have no
    /// gradient (their output does not require one).
    pub fn binary(&self, rhs: &Tensor, op: BinaryOp) -> Result<Tensor> {
        if let Some(r) = Tensor::via_f32(&[self, rhs], |t| t[0].binary(&t[1], op)) {
            return r;
        }
        let out = self.binary_forward(rhs, op)?;
        if op.is_comparison() || !Tensor::tracking(&[self, rhs]) {
            return Ok(out);
        }
        let (a, b, y) = (self.detach(), rhs.detach(), out.detach());
        Ok(out.record(op.name(), &[self, rhs], move |g, need| {
            let (ga, gb) = binary_grads(op, g, &a, &b, &y, need)?;
            Ok(vec![
                ga.map(|t| t.sum_to(a.shape())).transpose()?,
                gb.map(|t| t.sum_to(b.shape())).transpose()?,
            ])
        }))
    }

    fn binary_forward(&self, rhs: &Tensor, op: BinaryOp) -> Result<Tensor> {
        self.expect(DType::F32, op.name())?;
        rhs.expect(DType::F32, op.name())?;
        self.same_device(rhs, op.name())?;
        let out = self.shape.broadcast(&rhs.shape, op.name())?;
        let n = out.numel();
        let layout = BroadcastLayout::new(&self.shape, &rhs.shape, &out);
        let storage = self.storage.binary(&rhs.storage, &layout, n, op)?;
        Ok(self.with(storage, out))
    }

    /// `self + rhs`, broadcasting.
    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Add)
    }

    /// `self - rhs`, broadcasting.
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Sub)
    }

    /// `self * rhs` elementwise, broadcasting.
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Mul)
    }

    /// `self / rhs` elementwise, broadcasting.
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Div)
    }

    /// Elementwise maximum (NaN if either is NaN), broadcasting.
    pub fn maximum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Maximum)
    }

    /// Elementwise minimum (NaN if either is NaN), broadcasting.
    pub fn minimum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Minimum)
    }

    /// `self^rhs` elementwise (`powf` semantics), broadcasting.
    pub fn pow(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Pow)
    }

    /// `self == rhs` as a 1.0/0.0 mask, broadcasting.
    pub fn eq(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Eq)
    }

    /// `self != rhs` as a 1.0/0.0 mask, broadcasting.
    pub fn ne(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Ne)
    }

    /// `self < rhs` as a 1.0/0.0 mask, broadcasting.
    pub fn lt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Lt)
    }

    /// `self <= rhs` as a 1.0/0.0 mask, broadcasting.
    pub fn le(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Le)
    }

    /// `self > rhs` as a 1.0/0.0 mask, broadcasting.
    pub fn gt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Gt)
    }

    /// `self >= rhs` as a 1.0/0.0 mask, broadcasting.
    pub fn ge(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Ge)
    }

    /// `a` where `mask` is non-zero (NaN counts as non-zero), else `b`; all three broadcast
    /// together under numpy's rules. Masks usually come from the comparison ops.
    pub fn where_cond(mask: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        if super::half::is_half(mask.dtype()) {
            return Tensor::where_cond(&mask.to_dtype(DType::F32)?, a, b);
        }
        if let Some(r) = Tensor::via_f32(&[a, b], |t| Tensor::where_cond(mask, &t[0], &t[1])) {
            return r;
        }
        let out = Self::where_forward(mask, a, b)?;
        if !Tensor::tracking(&[a, b]) {
            return Ok(out);
        }
        let (m, da, db) = (mask.detach(), a.shape().to_vec(), b.shape().to_vec());
        Ok(out.record("where", &[mask, a, b], move |g, need| {
            let zero = Tensor::zeros(g.device(), &[])?;
            let ga = match need[1] {
                true => Some(Tensor::where_cond(&m, g, &zero)?.sum_to(&da)?),
                false => None,
            };
            let gb = match need[2] {
                true => Some(Tensor::where_cond(&m, &zero, g)?.sum_to(&db)?),
                false => None,
            };
            Ok(vec![None, ga, gb])
        }))
    }

    fn where_forward(mask: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        mask.same_device(a, "where")?;
        mask.same_device(b, "where")?;
        for t in [mask, a, b] {
            t.expect(DType::F32, "where")?;
        }
        let ab = a.shape.broadcast(&b.shape, "where")?;
        let out = mask
            .shape
            .broadcast(&ab, "where")
            .map_err(|_| Error::ShapeMismatch {
                op: "where",
                lhs: mask.shape().to_vec(),
                rhs: ab.dims().to_vec(),
            })?;
        let keep: Vec<usize> = (0..out.rank()).filter(|&d| out.dims()[d] != 1).collect();
        let strides = |t: &Tensor| -> Vec<usize> {
            let s = t.shape.broadcast_strides(&out);
            keep.iter().map(|&d| s[d]).collect()
        };
        let plan = WherePlan {
            dims: keep.iter().map(|&d| out.dims()[d]).collect(),
            strides: [strides(mask), strides(a), strides(b)],
        };
        let storage = Storage::where_(&mask.storage, &a.storage, &b.storage, &plan)?;
        Ok(mask.with(storage, out))
    }
}

/// Gradients of `y = a op b` (before summing back over broadcast dimensions), for the inputs
/// that `need` them. Every one is built from tracked-free ops on the device.
fn binary_grads(
    op: BinaryOp,
    g: &Tensor,
    a: &Tensor,
    b: &Tensor,
    y: &Tensor,
    need: &[bool],
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let (na, nb) = (need[0], need[1]);
    let pick = |on: bool, f: &dyn Fn() -> Result<Tensor>| if on { f().map(Some) } else { Ok(None) };
    match op {
        BinaryOp::Add => Ok((pick(na, &|| Ok(g.clone()))?, pick(nb, &|| Ok(g.clone()))?)),
        BinaryOp::Sub => Ok((pick(na, &|| Ok(g.clone()))?, pick(nb, &|| g.neg())?)),
        BinaryOp::Mul => Ok((pick(na, &|| g.mul(b))?, pick(nb, &|| g.mul(a))?)),
        // d(a/b)/db = -a/b² = -y/b
        BinaryOp::Div => Ok((
            pick(na, &|| g.div(b))?,
            pick(nb, &|| g.mul(y)?.div(b)?.neg())?,
        )),
        // The winner takes the gradient; ties split it evenly (PyTorch's rule).
        BinaryOp::Maximum | BinaryOp::Minimum => {
            let wins = if op == BinaryOp::Maximum {
                a.gt(b)?
            } else {
                a.lt(b)?
            };
            let share_a = wins.add(&a.eq(b)?.mul_scalar(0.5)?)?;
            let ga = g.mul(&share_a)?;
            let gb = if nb { Some(g.sub(&ga)?) } else { None };
            Ok((na.then_some(ga), gb))
        }
        // d(a^b)/da = b·a^(b-1); d(a^b)/db = a^b·ln(a) (NaN for a negative base, as in math).
        BinaryOp::Pow => Ok((
            pick(na, &|| g.mul(&b.mul(&a.pow(&b.sub_scalar(1.0)?)?)?))?,
            pick(nb, &|| g.mul(&y.mul(&a.log()?)?))?,
        )),
        // Comparisons are piecewise constant: `binary` records no node for them.
        BinaryOp::Eq | BinaryOp::Ne | BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge => {
            Ok((None, None))
        }
    }
}
