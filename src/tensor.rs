//! `Tensor`: constructors, readback, and op methods. Each method validates its inputs and hands
//! the work to the backend of the tensor's device.

use crate::cpu;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::gpu::kernels::matmul::Epilogue;
use crate::gpu::kernels::{copy, elementwise, matmul, norm, reduce, select};
use crate::gpu::pool::PooledBuffer;
use crate::matmul_plan::MatmulPlan;
use crate::op::{BinaryOp, ReduceOp, UnaryOp};
use crate::random;
use crate::shape::{BroadcastLayout, Shape};
use crate::strided::StridedCopy;
use std::fmt;
use std::sync::Arc;

/// Where a tensor's values are.
#[derive(Clone)]
enum Storage {
    Cpu(Arc<Vec<f32>>),
    /// `None` for a tensor with no elements: no buffer, and ops on it dispatch nothing.
    Gpu(Option<Arc<PooledBuffer>>),
}

/// An immutable n-dimensional array of f32, row-major, on one [`Device`]. Cloning is cheap (the
/// values are shared); every op makes a new tensor. On a GPU, ops are recorded and run in
/// batches: `to_vec`, `to_vec_async` and [`Device::synchronize`] submit the work.
#[derive(Clone)]
pub struct Tensor {
    storage: Storage,
    shape: Shape,
    device: Device,
}

impl Tensor {
    // ---- constructors -------------------------------------------------------------------

    /// A tensor holding `data` (row-major) with shape `shape`.
    /// `Error::InvalidShape` if `data.len()` is not the shape's element count.
    pub fn from_vec(device: &Device, data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
        let shape = Shape::new(shape)?;
        if data.len() != shape.numel() {
            return Err(Error::InvalidShape {
                op: "from_vec",
                reason: format!(
                    "{} values cannot fill shape {shape} ({} elements)",
                    data.len(),
                    shape.numel()
                ),
            });
        }
        let storage = match device.gpu_context() {
            None => Storage::Cpu(Arc::new(data)),
            Some(_) if data.is_empty() => Storage::Gpu(None),
            Some(ctx) => Storage::Gpu(Some(Arc::new(ctx.upload("from_vec", &data)?))),
        };
        Ok(Tensor {
            storage,
            shape,
            device: device.clone(),
        })
    }

    /// A tensor holding a copy of `data` with shape `shape`.
    pub fn from_slice(device: &Device, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        let shape_ = Shape::new(shape)?;
        if data.len() != shape_.numel() {
            return Err(Error::InvalidShape {
                op: "from_slice",
                reason: format!(
                    "{} values cannot fill shape {shape_} ({} elements)",
                    data.len(),
                    shape_.numel()
                ),
            });
        }
        match device.gpu_context() {
            // Upload straight from the slice: no intermediate Vec.
            Some(ctx) if !data.is_empty() => Ok(Tensor {
                storage: Storage::Gpu(Some(Arc::new(ctx.upload("from_slice", data)?))),
                shape: shape_,
                device: device.clone(),
            }),
            _ => Self::from_vec(device, data.to_vec(), shape),
        }
    }

    /// A tensor of `shape` filled with `value` (on a GPU, by a fill kernel: nothing is uploaded).
    pub fn full(device: &Device, shape: &[usize], value: f32) -> Result<Tensor> {
        let shape = Shape::new(shape)?;
        let n = shape.numel();
        let storage = match device.gpu_context() {
            None => Storage::Cpu(Arc::new(cpu::fill(n, value)?)),
            Some(_) if n == 0 => Storage::Gpu(None),
            Some(ctx) => Storage::Gpu(Some(Arc::new(elementwise::fill(ctx, n, value)?))),
        };
        Ok(Tensor {
            storage,
            shape,
            device: device.clone(),
        })
    }

    /// A tensor of zeros.
    pub fn zeros(device: &Device, shape: &[usize]) -> Result<Tensor> {
        Self::full(device, shape, 0.0)
    }

    /// A tensor of ones.
    pub fn ones(device: &Device, shape: &[usize]) -> Result<Tensor> {
        Self::full(device, shape, 1.0)
    }

    /// Values uniform in [0, 1), the same for a given seed on every device.
    pub fn rand(device: &Device, shape: &[usize], seed: u64) -> Result<Tensor> {
        let n = Shape::new(shape)?.numel();
        cpu::alloc("rand", n)?; // refuse impossible sizes before generating
        Self::from_vec(device, random::uniform(seed, n), shape)
    }

    /// Values from the standard normal distribution, the same for a given seed on every device.
    pub fn randn(device: &Device, shape: &[usize], seed: u64) -> Result<Tensor> {
        let n = Shape::new(shape)?.numel();
        cpu::alloc("randn", n)?;
        Self::from_vec(device, random::normal(seed, n), shape)
    }

    // ---- properties ---------------------------------------------------------------------

    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        self.shape.dims()
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.rank()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.numel()
    }

    /// The device holding the values.
    pub fn device(&self) -> &Device {
        &self.device
    }

    // ---- layout -------------------------------------------------------------------------

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
        Ok(Tensor {
            storage: self.storage.clone(),
            shape: new,
            device: self.device.clone(),
        })
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
        Self::assemble("permute", &self.device, out_shape, &[(self, plan)])
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
        Self::assemble("narrow", &self.device, out_shape, &[(self, plan)])
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
                let plan = StridedCopy {
                    dims: t.shape().to_vec(),
                    in_strides: t.shape.strides(),
                    in_offset: 0,
                    out_strides: out_strides.clone(),
                    out_offset: at * out_strides[axis],
                };
                at += t.shape()[axis];
                (*t, plan)
            })
            .collect();
        Self::assemble("cat", &first.device, out_shape, &parts)
    }

    /// A new tensor of `shape` on `device` filled by strided copies from `parts` (which cover it).
    fn assemble(
        op: &'static str,
        device: &Device,
        shape: Shape,
        parts: &[(&Tensor, StridedCopy)],
    ) -> Result<Tensor> {
        let n = shape.numel();
        let storage = match device.gpu_context() {
            None => {
                let mut out = cpu::alloc(op, n)?;
                for (t, plan) in parts {
                    if let Storage::Cpu(src) = &t.storage {
                        for i in 0..plan.numel() {
                            let (s, d) = plan.offsets(i);
                            out[d] = src[s];
                        }
                    }
                }
                Storage::Cpu(Arc::new(out))
            }
            Some(_) if n == 0 => Storage::Gpu(None),
            Some(ctx) => {
                let out = ctx.alloc(op, n)?;
                for (t, plan) in parts {
                    if let Storage::Gpu(Some(src)) = &t.storage {
                        copy::copy(ctx, src, &out, &plan.squeezed(op)?, op)?;
                    }
                }
                Storage::Gpu(Some(Arc::new(out)))
            }
        };
        Ok(Tensor {
            storage,
            shape,
            device: device.clone(),
        })
    }

    // ---- readback and transfer ----------------------------------------------------------

    /// The values, row-major. On a GPU this submits the recorded work and waits for it.
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        match &self.storage {
            Storage::Cpu(v) => Ok(v.as_ref().clone()),
            Storage::Gpu(None) => Ok(Vec::new()),
            Storage::Gpu(Some(buf)) => self.ctx()?.read(buf, self.numel()),
        }
    }

    /// [`Tensor::to_vec`] as a future: the caller's executor is not blocked while the GPU works.
    pub async fn to_vec_async(&self) -> Result<Vec<f32>> {
        match &self.storage {
            Storage::Cpu(v) => Ok(v.as_ref().clone()),
            Storage::Gpu(None) => Ok(Vec::new()),
            Storage::Gpu(Some(buf)) => self.ctx()?.clone().read_async(buf, self.numel()).await,
        }
    }

    /// A copy of this tensor on `device` (a clone if it is already there).
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        if self.device.same(device) {
            return Ok(self.clone());
        }
        Self::from_vec(device, self.to_vec()?, self.shape())
    }

    // ---- ops ----------------------------------------------------------------------------

    /// Apply an elementwise [`UnaryOp`].
    pub fn unary(&self, op: UnaryOp) -> Result<Tensor> {
        let storage = match &self.storage {
            Storage::Cpu(v) => Storage::Cpu(Arc::new(cpu::unary(v, op)?)),
            Storage::Gpu(None) => Storage::Gpu(None),
            Storage::Gpu(Some(b)) => Storage::Gpu(Some(Arc::new(elementwise::unary(
                self.ctx()?,
                b,
                self.numel(),
                op,
            )?))),
        };
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

    /// `min(max(x, lo), hi)`; `Error::InvalidShape` if `lo > hi` or either is NaN.
    pub fn clamp(&self, lo: f32, hi: f32) -> Result<Tensor> {
        if lo.is_nan() || hi.is_nan() || lo > hi {
            return Err(Error::InvalidShape {
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

    /// Apply an elementwise [`BinaryOp`] with numpy broadcasting.
    pub fn binary(&self, rhs: &Tensor, op: BinaryOp) -> Result<Tensor> {
        self.same_device(rhs, op.name())?;
        let out = self.shape.broadcast(&rhs.shape, op.name())?;
        let n = out.numel();
        let layout = BroadcastLayout::new(&self.shape, &rhs.shape, &out);
        let storage = match (&self.storage, &rhs.storage) {
            (Storage::Cpu(a), Storage::Cpu(b)) => {
                Storage::Cpu(Arc::new(cpu::binary(a, b, &layout, n, op)?))
            }
            (Storage::Gpu(Some(a)), Storage::Gpu(Some(b))) if n > 0 => Storage::Gpu(Some(
                Arc::new(elementwise::binary(self.ctx()?, a, b, &layout, n, op)?),
            )),
            // A broadcast with an empty operand has an empty result.
            (Storage::Gpu(_), Storage::Gpu(_)) => Storage::Gpu(None),
            _ => unreachable!("same_device checked the backends"),
        };
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
        mask.same_device(a, "where")?;
        mask.same_device(b, "where")?;
        let ab = a.shape.broadcast(&b.shape, "where")?;
        let out = mask
            .shape
            .broadcast(&ab, "where")
            .map_err(|_| Error::ShapeMismatch {
                op: "where",
                lhs: mask.shape().to_vec(),
                rhs: ab.dims().to_vec(),
            })?;
        let n = out.numel();
        let keep: Vec<usize> = (0..out.rank()).filter(|&d| out.dims()[d] != 1).collect();
        let strides = |t: &Tensor| -> Vec<usize> {
            let s = t.shape.broadcast_strides(&out);
            keep.iter().map(|&d| s[d]).collect()
        };
        let (sm, sa, sb) = (strides(mask), strides(a), strides(b));
        let dims: Vec<usize> = keep.iter().map(|&d| out.dims()[d]).collect();
        let storage = match (&mask.storage, &a.storage, &b.storage) {
            (Storage::Cpu(m), Storage::Cpu(x), Storage::Cpu(y)) => {
                let mut v = cpu::alloc("where", n)?;
                for (i, o) in v.iter_mut().enumerate() {
                    let (mut rem, mut im, mut ia, mut ib) = (i, 0, 0, 0);
                    for d in (0..dims.len()).rev() {
                        let idx = rem % dims[d];
                        rem /= dims[d];
                        im += idx * sm[d];
                        ia += idx * sa[d];
                        ib += idx * sb[d];
                    }
                    *o = if m[im].to_bits() & 0x7fff_ffff != 0 {
                        x[ia]
                    } else {
                        y[ib]
                    };
                }
                Storage::Cpu(Arc::new(v))
            }
            (Storage::Gpu(Some(m)), Storage::Gpu(Some(x)), Storage::Gpu(Some(y))) if n > 0 => {
                let dims = if dims.is_empty() { vec![1] } else { dims };
                let pad = |s: Vec<usize>| if s.is_empty() { vec![0] } else { s };
                let (sm, sa, sb) = (pad(sm), pad(sa), pad(sb));
                Storage::Gpu(Some(Arc::new(select::where_(
                    mask.ctx()?,
                    [m, x, y],
                    &dims,
                    [&sm, &sa, &sb],
                )?)))
            }
            _ => Storage::Gpu(None),
        };
        Ok(mask.with(storage, out))
    }

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
        self.same_device(rhs, "matmul")?;
        let plan = MatmulPlan::transposed(&self.shape, &rhs.shape, transpose_self, transpose_rhs)?;
        let out_n = plan.out_numel();
        let storage = match (&self.storage, &rhs.storage) {
            (Storage::Cpu(a), Storage::Cpu(b)) => Storage::Cpu(Arc::new(cpu::matmul(a, b, &plan)?)),
            (Storage::Gpu(a), Storage::Gpu(b)) => {
                let ctx = self.ctx()?;
                match (a, b) {
                    _ if out_n == 0 => Storage::Gpu(None),
                    (Some(a), Some(b)) if plan.k > 0 => Storage::Gpu(Some(Arc::new(
                        matmul::matmul(ctx, a, b, &plan, Epilogue::default())?,
                    ))),
                    // k = 0: the operands are empty and the product is all zeros.
                    _ => Storage::Gpu(Some(Arc::new(elementwise::fill(ctx, out_n, 0.0)?))),
                }
            }
            _ => unreachable!("same_device checked the backends"),
        };
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
        self.same_device(weight, "linear")?;
        let plan = MatmulPlan::with_transposed_rhs(&self.shape, &weight.shape)?;
        if let Some(b) = bias {
            self.same_device(b, "linear")?;
            if b.shape() != [plan.n] {
                return Err(Error::ShapeMismatch {
                    op: "linear",
                    lhs: weight.shape().to_vec(),
                    rhs: b.shape().to_vec(),
                });
            }
        }
        let out_n = plan.out_numel();
        let storage = match (&self.storage, &weight.storage) {
            (Storage::Cpu(x), Storage::Cpu(w)) => {
                let bias = bias.map(|b| match &b.storage {
                    Storage::Cpu(v) => v.as_slice(),
                    Storage::Gpu(_) => &[],
                });
                Storage::Cpu(Arc::new(cpu::linear(x, w, &plan, bias, act)?))
            }
            (Storage::Gpu(x), Storage::Gpu(w)) => {
                let ctx = self.ctx()?;
                let bias_buf = match bias.map(|b| &b.storage) {
                    Some(Storage::Gpu(Some(buf))) => Some(buf.as_ref()),
                    _ => None,
                };
                match (x, w) {
                    _ if out_n == 0 => Storage::Gpu(None),
                    (Some(x), Some(w)) if plan.k > 0 => {
                        let epilogue = Epilogue {
                            bias: bias_buf,
                            act,
                        };
                        Storage::Gpu(Some(Arc::new(matmul::matmul(ctx, x, w, &plan, epilogue)?)))
                    }
                    // k = 0: the product is zero; bias and activation still apply.
                    _ => {
                        let zero = self.with(
                            Storage::Gpu(Some(Arc::new(elementwise::fill(ctx, out_n, 0.0)?))),
                            plan.out_shape.clone(),
                        );
                        let with_bias = match bias {
                            Some(b) => zero.add(b)?,
                            None => zero,
                        };
                        let out = match act {
                            Some(op) => with_bias.unary(op)?,
                            None => with_bias,
                        };
                        return Ok(out);
                    }
                }
            }
            _ => unreachable!("same_device checked the backends"),
        };
        Ok(self.with(storage, plan.out_shape))
    }

    /// The axis `dim` names (negative counts from the end), or `InvalidShape`.
    fn axis(&self, op: &'static str, dim: isize) -> Result<usize> {
        let rank = self.rank() as isize;
        let d = if dim < 0 { dim + rank } else { dim };
        if d < 0 || d >= rank {
            return Err(Error::InvalidShape {
                op,
                reason: format!(
                    "dimension {dim} is out of range for a tensor of shape {}",
                    self.shape
                ),
            });
        }
        Ok(d as usize)
    }

    /// `[outer, len, inner]` around `axis`.
    fn around(&self, axis: usize) -> (usize, usize, usize) {
        let d = self.shape();
        (
            d[..axis].iter().product(),
            d[axis],
            d[axis + 1..].iter().product(),
        )
    }

    /// Reduce along `dim` (negative counts from the end); `keepdim` keeps it with extent 1.
    /// `max` and `min` over an empty axis are an error; `sum` gives 0 and `mean`/`var` NaN there.
    pub fn reduce(&self, op: ReduceOp, dim: isize, keepdim: bool) -> Result<Tensor> {
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
        let mut dims = self.shape().to_vec();
        if keepdim {
            dims[axis] = 1;
        } else {
            dims.remove(axis);
        }
        let storage = match &self.storage {
            Storage::Cpu(x) => Storage::Cpu(Arc::new(cpu::reduce(x, (outer, len, inner), op)?)),
            _ if n_out == 0 => Storage::Gpu(None),
            Storage::Gpu(Some(x)) => Storage::Gpu(Some(Arc::new(reduce::reduce(
                self.ctx()?,
                x,
                (outer, len, inner),
                op,
            )?))),
            // An empty axis: the sum of nothing is 0, its mean and variance NaN.
            Storage::Gpu(None) => {
                let v = if op == ReduceOp::Sum { 0.0 } else { f32::NAN };
                Storage::Gpu(Some(Arc::new(elementwise::fill(self.ctx()?, n_out, v)?)))
            }
        };
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
        let axis = self.axis(op, dim)?;
        let dims = self.around(axis);
        let storage = match &self.storage {
            Storage::Cpu(x) => Storage::Cpu(Arc::new(cpu::softmax(x, dims, log)?)),
            Storage::Gpu(Some(x)) => {
                Storage::Gpu(Some(Arc::new(reduce::softmax(self.ctx()?, x, dims, log)?)))
            }
            Storage::Gpu(None) => Storage::Gpu(None),
        };
        Ok(self.with(storage, self.shape.clone()))
    }

    /// Numerically stable softmax along `dim` (negative counts from the end).
    pub fn softmax(&self, dim: isize) -> Result<Tensor> {
        self.softmax_impl(dim, false)
    }

    /// Numerically stable log-softmax along `dim`.
    pub fn log_softmax(&self, dim: isize) -> Result<Tensor> {
        self.softmax_impl(dim, true)
    }

    fn norm_impl(
        &self,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f32,
        rms: bool,
    ) -> Result<Tensor> {
        let op = if rms { "rms_norm" } else { "layer_norm" };
        let len = *self.shape().last().ok_or_else(|| Error::InvalidShape {
            op,
            reason: "a scalar has no dimension to normalise".into(),
        })?;
        if eps.is_nan() || eps < 0.0 {
            return Err(Error::InvalidShape {
                op,
                reason: format!("eps must be >= 0, got {eps}"),
            });
        }
        for p in [weight, bias].into_iter().flatten() {
            self.same_device(p, op)?;
            if p.shape() != [len] {
                return Err(Error::ShapeMismatch {
                    op,
                    lhs: self.shape().to_vec(),
                    rhs: p.shape().to_vec(),
                });
            }
        }
        let rows = self.numel().checked_div(len).unwrap_or(0);
        let cpu_slice = |t: Option<&Tensor>| match t.map(|t| &t.storage) {
            Some(Storage::Cpu(v)) => Some(v.clone()),
            _ => None,
        };
        let gpu_buf = |t: Option<&Tensor>| match t.map(|t| &t.storage) {
            Some(Storage::Gpu(Some(b))) => Some(b.clone()),
            _ => None,
        };
        let storage = match &self.storage {
            Storage::Cpu(x) => {
                let (w, b) = (cpu_slice(weight), cpu_slice(bias));
                Storage::Cpu(Arc::new(cpu::norm(
                    x,
                    w.as_deref().map(|v| v.as_slice()),
                    b.as_deref().map(|v| v.as_slice()),
                    len,
                    eps,
                    rms,
                )?))
            }
            Storage::Gpu(Some(x)) if rows > 0 => {
                let (w, b) = (gpu_buf(weight), gpu_buf(bias));
                Storage::Gpu(Some(Arc::new(norm::norm(
                    self.ctx()?,
                    x,
                    w.as_deref(),
                    b.as_deref(),
                    rows,
                    len,
                    eps,
                    rms,
                )?)))
            }
            Storage::Gpu(_) => Storage::Gpu(None),
        };
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

    // ---- helpers ------------------------------------------------------------------------

    fn with(&self, storage: Storage, shape: Shape) -> Tensor {
        Tensor {
            storage,
            shape,
            device: self.device.clone(),
        }
    }

    fn ctx(&self) -> Result<&Arc<crate::gpu::context::GpuContext>> {
        self.device
            .gpu_context()
            .ok_or_else(|| Error::Gpu("GPU storage on a CPU device".into()))
    }

    fn same_device(&self, other: &Tensor, op: &'static str) -> Result<()> {
        if self.device.same(&other.device) {
            Ok(())
        } else {
            Err(Error::DeviceMismatch {
                op,
                lhs: self.device.to_string(),
                rhs: other.device.to_string(),
            })
        }
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor({} on {})", self.shape, self.device)
    }
}
