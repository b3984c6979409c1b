//! Constructors: from host data, filled, and seeded random tensors.

use super::Tensor;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::random;
use crate::shape::Shape;
use crate::storage::Storage;
use std::sync::Arc;

impl Tensor {
    /// A tensor holding `data` (row-major) with shape `shape`.
    /// `Error::InvalidShape` if `data.len()` is not the shape's element count.
    pub fn from_vec(device: &Device, data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
        let shape = Self::fill_shape("from_vec", data.len(), shape)?;
        let storage = Storage::from_f32_vec(device, "from_vec", data)?;
        Ok(Tensor::new(storage, shape, device))
    }

    /// A u32 tensor (indices, for `index_select` and `embedding`) holding `data` with `shape`.
    pub fn from_vec_u32(device: &Device, data: Vec<u32>, shape: &[usize]) -> Result<Tensor> {
        let shape = Self::fill_shape("from_vec_u32", data.len(), shape)?;
        let data = Arc::new(data);
        let storage = Storage::from_u32(device, "from_vec_u32", data.clone())?;
        Ok(Tensor {
            host_u32: Some(data),
            ..Tensor::new(storage, shape, device)
        })
    }

    /// `shape`, if `len` values fill it exactly; else `InvalidShape` for `op`.
    fn fill_shape(op: &'static str, len: usize, shape: &[usize]) -> Result<Shape> {
        let shape = Shape::new(shape)?;
        if len != shape.numel() {
            return Err(Error::InvalidShape {
                op,
                reason: format!(
                    "{len} values cannot fill shape {shape} ({} elements)",
                    shape.numel()
                ),
            });
        }
        Ok(shape)
    }

    /// A tensor holding a copy of `data` with shape `shape`.
    pub fn from_slice(device: &Device, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        let shape = Self::fill_shape("from_slice", data.len(), shape)?;
        // A GPU uploads straight from the slice: no intermediate Vec.
        let storage = Storage::from_f32(device, "from_slice", data)?;
        Ok(Tensor::new(storage, shape, device))
    }

    /// A tensor of `shape` filled with `value` (on a GPU, by a fill kernel: nothing is uploaded).
    pub fn full(device: &Device, shape: &[usize], value: f32) -> Result<Tensor> {
        let shape = Shape::new(shape)?;
        let storage = Storage::full(device, shape.numel(), value)?;
        Ok(Tensor::new(storage, shape, device))
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
        Self::from_vec(device, random::uniform("rand", seed, n)?, shape)
    }

    /// Values from the standard normal distribution, the same for a given seed on every device.
    pub fn randn(device: &Device, shape: &[usize], seed: u64) -> Result<Tensor> {
        let n = Shape::new(shape)?.numel();
        Self::from_vec(device, random::normal("randn", seed, n)?, shape)
    }
}
