//! `Tensor`: constructors, readback, and op methods. Each method validates its inputs and hands
//! the work to the backend of the tensor's device.

use crate::autograd::Node;
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::pool::PooledBuffer;
use crate::shape::Shape;
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
    dtype: DType,
    /// The autograd graph vertex: a leaf that requires gradients, or the op that made this
    /// tensor from inputs that do (`None` for a plain value).
    node: Option<Arc<Node>>,
    /// For a u32 tensor made from host data: those values, so that index ops can check them
    /// (and backward can group them) without reading the device back.
    host_u32: Option<Arc<Vec<u32>>>,
}

mod autograd;
mod construct;
mod convolution;
mod index;
mod layout;
mod linalg;
mod pointwise;
mod reduction;

impl Tensor {
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

    // ---- readback and transfer ----------------------------------------------------------

    /// The values, row-major. On a GPU this submits the recorded work and waits for it.
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        self.expect(DType::F32, "to_vec")?;
        self.raw_values()
    }

    /// The values of a u32 tensor, row-major (`DTypeMismatch` for an f32 tensor).
    pub fn to_vec_u32(&self) -> Result<Vec<u32>> {
        self.expect(DType::U32, "to_vec_u32")?;
        Ok(self.raw_values()?.into_iter().map(f32::to_bits).collect())
    }

    /// The values of a u32 tensor, from the host copy kept by `from_vec_u32` when there is one
    /// (no device read-back), else read back.
    pub(crate) fn indices_on_host(&self) -> Result<Arc<Vec<u32>>> {
        match &self.host_u32 {
            Some(v) => Ok(v.clone()),
            None => Ok(Arc::new(self.to_vec_u32()?)),
        }
    }

    /// The stored 32-bit values, whatever the element type (u32 values as f32 bit patterns).
    fn raw_values(&self) -> Result<Vec<f32>> {
        match &self.storage {
            Storage::Cpu(v) => Ok(v.as_ref().clone()),
            Storage::Gpu(None) => Ok(Vec::new()),
            Storage::Gpu(Some(buf)) => self.ctx()?.read(buf, self.numel()),
        }
    }

    /// [`Tensor::to_vec`] as a future: the caller's executor is not blocked while the GPU works.
    pub async fn to_vec_async(&self) -> Result<Vec<f32>> {
        self.expect(DType::F32, "to_vec_async")?;
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
        let mut t = Self::from_vec(device, self.raw_values()?, self.shape())?;
        t.dtype = self.dtype;
        Ok(t)
    }

    // ---- helpers ------------------------------------------------------------------------

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

    /// `DTypeMismatch` unless this tensor has element type `dtype`.
    pub(crate) fn expect(&self, dtype: DType, op: &'static str) -> Result<()> {
        if self.dtype == dtype {
            Ok(())
        } else {
            Err(Error::DTypeMismatch {
                op,
                expected: dtype,
                got: self.dtype,
            })
        }
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
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

    /// The shape after reducing `axis`: removed, or kept with extent 1.
    fn reduced_dims(&self, axis: usize, keepdim: bool) -> Vec<usize> {
        let mut dims = self.shape().to_vec();
        if keepdim {
            dims[axis] = 1;
        } else {
            dims.remove(axis);
        }
        dims
    }

    fn with(&self, storage: Storage, shape: Shape) -> Tensor {
        Tensor {
            storage,
            shape,
            device: self.device.clone(),
            dtype: self.dtype,
            node: None,
            host_u32: None,
        }
    }

    fn ctx(&self) -> Result<&Arc<crate::gpu::context::GpuContext>> {
        self.device
            .gpu_context()
            .ok_or_else(|| Error::Gpu("GPU storage on a CPU device".into()))
    }

    pub(crate) fn same_device(&self, other: &Tensor, op: &'static str) -> Result<()> {
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
        write!(
            f,
            "Tensor({} {} on {})",
            self.dtype, self.shape, self.device
        )
    }
}
