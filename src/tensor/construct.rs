//! Constructors: from host data, filled, and seeded random tensors.

use super::{Storage, Tensor};
use crate::cpu;
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::kernels::elementwise;
use crate::random;
use crate::shape::Shape;
use std::sync::Arc;

impl Tensor {
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
            dtype: DType::F32,
            node: None,
            host_u32: None,
        })
    }

    /// A u32 tensor (indices, for `index_select` and `embedding`) holding `data` with `shape`.
    pub fn from_vec_u32(device: &Device, data: Vec<u32>, shape: &[usize]) -> Result<Tensor> {
        let bits: Vec<f32> = data.iter().map(|&v| f32::from_bits(v)).collect();
        let mut t = Self::from_vec(device, bits, shape).map_err(|e| match e {
            Error::InvalidShape { reason, .. } => Error::InvalidShape {
                op: "from_vec_u32",
                reason,
            },
            other => other,
        })?;
        t.dtype = DType::U32;
        t.host_u32 = Some(Arc::new(data));
        Ok(t)
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
                dtype: DType::F32,
                node: None,
                host_u32: None,
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
            dtype: DType::F32,
            node: None,
            host_u32: None,
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
}
