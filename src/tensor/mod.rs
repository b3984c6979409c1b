//! `Tensor`: constructors, readback, and op methods. Each method validates its inputs, makes one
//! call into the storage seam (`crate::storage`), and records its backward.

use crate::autograd::Node;
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::shape::Shape;
use crate::storage::Storage;
use std::fmt;
use std::sync::Arc;

/// An immutable n-dimensional array, row-major, on one [`Device`]: f32 (or f16/bf16, computed
/// through f32), u32 indices, or a weight in a storage type ([`DType`]). Cloning is cheap (the
/// values are shared); every op makes a new tensor. On a GPU, ops are recorded and run in
/// batches: `to_vec`, `to_vec_async` and [`Device::synchronize`] submit the work.
#[derive(Clone)]
pub struct Tensor {
    storage: Storage,
    shape: Shape,
    device: Device,
    /// The autograd graph vertex: a leaf that requires gradients, or the op that made this
    /// tensor from inputs that do (`None` for a plain value).
    node: Option<Arc<Node>>,
    /// For a u32 tensor made from host data: those values, so that index ops can check them
    /// (and backward can group them) without reading the device back.
    host_u32: Option<Arc<Vec<u32>>>,
}

mod attention;
mod autograd;
mod backward;
mod construct;
mod convolution;
mod fourier;
mod half;
mod index;
mod layout;
mod linalg;
mod packed;
mod pointwise;
mod reduction;
mod rope;
mod scan;
mod update;

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

    /// The values, row-major (an f16 or bf16 tensor's widened to f32, exactly). On a GPU this
    /// submits the recorded work and waits for it.
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        if half::is_half(self.dtype()) {
            return self.to_dtype(DType::F32)?.to_vec();
        }
        self.storage.to_f32("to_vec", self.numel())
    }

    /// The values of a u32 tensor, row-major (`DTypeMismatch` for an f32 tensor).
    pub fn to_vec_u32(&self) -> Result<Vec<u32>> {
        self.storage.to_u32("to_vec_u32", self.numel())
    }

    /// The values of a u32 tensor, from the host copy kept by `from_vec_u32` when there is one
    /// (no device read-back), else read back.
    pub(crate) fn indices_on_host(&self) -> Result<Arc<Vec<u32>>> {
        match &self.host_u32 {
            Some(v) => Ok(v.clone()),
            None => Ok(Arc::new(self.to_vec_u32()?)),
        }
    }

    /// [`Tensor::to_vec`] as a future: the caller's executor is not blocked while the GPU works.
    /// In the browser (wasm32) this is the way to read a GPU tensor: the blocking readbacks
    /// return `Error::Unsupported` there.
    pub async fn to_vec_async(&self) -> Result<Vec<f32>> {
        if half::is_half(self.dtype()) {
            return Box::pin(self.to_dtype(DType::F32)?.to_vec_async()).await;
        }
        self.storage
            .to_f32_async("to_vec_async", self.numel())
            .await
    }

    /// [`Tensor::to_vec_u32`] as a future.
    pub async fn to_vec_u32_async(&self) -> Result<Vec<u32>> {
        self.storage
            .to_u32_async("to_vec_u32_async", self.numel())
            .await
    }

    /// A copy of this tensor on `device` (a clone if it is already there).
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        if self.device.same(device) {
            return Ok(self.clone());
        }
        let storage = self
            .storage
            .to_device(device, self.numel(), self.shape.last_dim())?;
        Ok(Tensor::new(storage, self.shape.clone(), device))
    }

    /// The host copy of a u32 tensor's values, where one is kept (no read-back).
    pub(crate) fn host_indices(&self) -> Option<Arc<Vec<u32>>> {
        self.host_u32.clone()
    }

    /// The values of a u32 index tensor on the host (see [`Tensor::indices_on_host`]), each
    /// checked to be below `len` (`IndexOutOfRange` names `op`). While a step is captured, the
    /// bound is noted for a graph input, so that a replay checks its new indices the same way.
    pub(crate) fn checked_indices(&self, op: &'static str, len: usize) -> Result<Arc<Vec<u32>>> {
        let idx = self.indices_on_host()?;
        if let Some(&bad) = idx.iter().find(|&&i| i as usize >= len) {
            return Err(Error::IndexOutOfRange {
                op,
                index: bad,
                size: len,
            });
        }
        self.device.note_index_bound(&idx, op, len);
        Ok(idx)
    }

    /// A copy of this tensor in storage of its own, with no autograd node, for a captured
    /// graph's inputs and outputs.
    pub(crate) fn detached_copy(&self, op: &'static str) -> Result<Tensor> {
        Ok(Tensor {
            storage: self.storage.duplicate(op, self.numel())?,
            shape: self.shape.clone(),
            device: self.device.clone(),
            node: None,
            host_u32: self.host_u32.as_ref().map(|v| Arc::new(v.as_ref().clone())),
        })
    }

    /// The values' storage, for the capture API (`crate::graph`), which pins and copies the
    /// buffers of a graph's inputs and outputs.
    pub(crate) fn storage(&self) -> &Storage {
        &self.storage
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
        if self.dtype() == dtype {
            Ok(())
        } else {
            Err(Error::DTypeMismatch {
                op,
                expected: dtype,
                got: self.dtype(),
            })
        }
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.storage.dtype()
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

    /// A plain tensor (no autograd node) over `storage`.
    fn new(storage: Storage, shape: Shape, device: &Device) -> Tensor {
        Tensor {
            storage,
            shape,
            device: device.clone(),
            node: None,
            host_u32: None,
        }
    }

    /// A plain tensor over `storage` on this tensor's device.
    fn with(&self, storage: Storage, shape: Shape) -> Tensor {
        Tensor::new(storage, shape, &self.device)
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
            self.dtype(),
            self.shape,
            self.device
        )
    }
}
