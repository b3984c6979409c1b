//! Tensors of the storage types (f16, bf16, i8, u8, i32, GGUF's blocks): made from bytes,
//! read as bytes, cast, and taken as weights by `linear` and `embedding`, which decode them
//! in registers.

use super::Tensor;
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::quant;
use crate::shape::Shape;
use crate::storage::{Kernel, Storage};

impl Tensor {
    /// A tensor of `dtype` and `shape` from the bytes of its format: little-endian values, or
    /// GGUF's blocks for the quantized types (a GGUF tensor's data as it is in the file, with
    /// `shape` in row-major order, GGUF's `ne` reversed). A quantized tensor's last dimension
    /// must be a multiple of its block length, and `bytes` must hold exactly the values
    /// (`InvalidShape` otherwise); a block whose scale is NaN or infinite is refused
    /// (`InvalidArgument`, naming the block).
    pub fn from_bytes(
        device: &Device,
        bytes: &[u8],
        dtype: DType,
        shape: &[usize],
    ) -> Result<Tensor> {
        match dtype {
            // Copied into f32 or u32 values below anyway.
            DType::F32 | DType::U32 => Self::from_bytes_in(device, bytes, dtype, shape),
            _ => Tensor::from_byte_vec(device, bytes.to_vec(), dtype, shape),
        }
    }

    /// [`Tensor::from_bytes`] taking the buffer: on the CPU a storage type's bytes become the
    /// tensor's storage without a copy (a loader that assembles a weight's bytes, several
    /// tensors of a file stacked into one, holds them once).
    pub fn from_byte_vec(
        device: &Device,
        bytes: Vec<u8>,
        dtype: DType,
        shape: &[usize],
    ) -> Result<Tensor> {
        Self::from_bytes_in(device, bytes, dtype, shape)
    }

    /// [`Tensor::from_bytes`] from a slice or a vector (taken where it can be).
    fn from_bytes_in<B: AsRef<[u8]> + Into<Vec<u8>>>(
        device: &Device,
        bytes: B,
        dtype: DType,
        shape: &[usize],
    ) -> Result<Tensor> {
        const OP: &str = "from_bytes";
        let shape = Self::packed_shape(OP, dtype, shape)?;
        let len = quant::byte_len(OP, dtype, shape.numel())?;
        if bytes.as_ref().len() != len {
            return Err(Error::InvalidShape {
                op: OP,
                reason: format!(
                    "{} bytes for {} values of {dtype} in shape {shape}, which take {len}",
                    bytes.as_ref().len(),
                    shape.numel()
                ),
            });
        }
        quant::check_scales(OP, dtype, bytes.as_ref())?;
        let storage = match dtype {
            DType::F32 => {
                Storage::from_f32_vec(device, OP, bytemuck::pod_collect_to_vec(bytes.as_ref()))?
            }
            DType::U32 => Storage::from_u32(
                device,
                OP,
                bytemuck::pod_collect_to_vec(bytes.as_ref()).into(),
            )?,
            _ => Storage::from_bytes(device, OP, dtype, bytes.into(), shape.last_dim())?,
        };
        Ok(Tensor::new(storage, shape, device))
    }

    /// An f16 tensor holding `data` with shape `shape`.
    pub fn from_f16(device: &Device, data: &[half::f16], shape: &[usize]) -> Result<Tensor> {
        let bytes: Vec<u8> = data
            .iter()
            .flat_map(|h| h.to_bits().to_le_bytes())
            .collect();
        Tensor::from_bytes(device, &bytes, DType::F16, shape)
    }

    /// A bf16 tensor holding `data` with shape `shape`.
    pub fn from_bf16(device: &Device, data: &[half::bf16], shape: &[usize]) -> Result<Tensor> {
        let bytes: Vec<u8> = data
            .iter()
            .flat_map(|h| h.to_bits().to_le_bytes())
            .collect();
        Tensor::from_bytes(device, &bytes, DType::BF16, shape)
    }

    /// The values as the bytes of their format (see [`Tensor::from_bytes`]); on a GPU this
    /// submits the recorded work and waits.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.storage.to_bytes("to_bytes", self.numel())
    }

    /// [`Tensor::to_bytes`] as a future (the way to read a GPU tensor in the browser).
    pub async fn to_bytes_async(&self) -> Result<Vec<u8>> {
        self.storage
            .to_bytes_async("to_bytes_async", self.numel())
            .await
    }

    /// This tensor's values as `dtype`, on the same device.
    ///
    /// Decoding to f32 is exact. Encoding rounds: f16 and bf16 to nearest even; the integer
    /// types truncate toward zero and saturate (NaN gives 0); the quantized types use ggml's
    /// reference quantizers (their bytes match llama.cpp's for the same values) and refuse NaN
    /// and infinities (`InvalidArgument`). A quantized target needs a last dimension that is a
    /// multiple of its block length (`InvalidShape`). On a GPU, decoding to f32 runs on the
    /// device; encoding runs on the host (the values are read back and uploaded).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        const OP: &str = "to_dtype";
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        Self::packed_shape(OP, dtype, self.shape())?;
        let storage = self
            .storage
            .cast(OP, dtype, self.numel(), self.shape.last_dim())?;
        Ok(self.with(storage, self.shape.clone()))
    }

    /// `shape` if a tensor of `dtype` may have it (whole blocks per row).
    fn packed_shape(op: &'static str, dtype: DType, shape: &[usize]) -> Result<Shape> {
        let shape = Shape::new(shape)?;
        let last = shape.dims().last().copied().unwrap_or(1);
        if !last.is_multiple_of(dtype.block_len()) {
            return Err(Error::InvalidShape {
                op,
                reason: format!(
                    "a {dtype} tensor's last dimension must be a multiple of {} (its block), \
                     got shape {shape}",
                    dtype.block_len()
                ),
            });
        }
        Ok(shape)
    }

    /// `self · weightᵀ` for a `weight` of a storage type, `[n, k]`: the weight is decoded in
    /// registers (see `linear`). Autograd reaches `self` (through the weight decoded to f32);
    /// the weight itself is frozen.
    pub(crate) fn matmul_packed(&self, weight: &Tensor) -> Result<Tensor> {
        const OP: &str = "linear";
        self.same_device(weight, OP)?;
        self.expect(DType::F32, OP)?;
        if weight.rank() != 2
            || self.rank() == 0
            || self.shape()[self.rank() - 1] != weight.shape()[1]
        {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: self.shape().to_vec(),
                rhs: weight.shape().to_vec(),
            });
        }
        let (n, k) = (weight.shape()[0], weight.shape()[1]);
        let m = self.numel() / k.max(1);
        let mut dims = self.shape()[..self.rank() - 1].to_vec();
        dims.push(n);
        let out = if k == 0 || m == 0 || n == 0 {
            Tensor::zeros(&self.device, &dims)?
        } else if !weight.storage.takes(Kernel::Packed {
            dtype: weight.dtype(),
            len: k,
        }) {
            // A row this device's kernels cannot decode: the weight in f32.
            return self.matmul_transposed(&weight.to_dtype(DType::F32)?, false, true);
        } else {
            let storage = self.storage.matmul_packed(&weight.storage, (m, k, n))?;
            self.with(storage, Shape::new(&dims)?)
        };
        if !Tensor::tracking(&[self]) {
            return Ok(out);
        }
        let w = weight.clone();
        Ok(out.record(OP, &[self], move |g, _| {
            Ok(vec![Some(g.matmul(&w.to_dtype(DType::F32)?)?)])
        }))
    }

    /// Rows `ids` of a table `[rows, len]` of a storage type, decoded to f32 (`embedding`).
    pub(crate) fn packed_rows(&self, ids: &Tensor) -> Result<Tensor> {
        const OP: &str = "embedding";
        self.same_device(ids, OP)?;
        ids.expect(DType::U32, OP)?;
        let (rows, len) = (self.shape()[0], self.shape()[1]);
        let idx = ids.checked_indices(OP, rows)?;
        let mut dims = ids.shape().to_vec();
        dims.push(len);
        if !self.storage.takes(Kernel::Packed {
            dtype: self.dtype(),
            len,
        }) {
            return Tensor::embedding(&self.to_dtype(DType::F32)?, ids);
        }
        let storage = self.storage.packed_rows(&ids.storage, &idx, len)?;
        Ok(self.with(storage, Shape::new(&dims)?))
    }
}
