//! The CPU backend: the reference the GPU is checked against, and the fallback when no adapter
//! exists. Matmul goes through `matrixmultiply` (threaded); elementwise work is split across cores
//! with rayon.

mod conv;
mod elementwise;
mod grad;
mod matmul;
mod optim;
mod reduce;
mod strided;

pub(crate) use conv::{conv2d, pool2d};
pub(crate) use elementwise::{binary, fill, unary};
pub(crate) use grad::{
    conv2d_grad_input, conv2d_grad_weight, pool2d_grad, scatter_add, unary_grad,
};
pub(crate) use matmul::{linear, matmul};
pub(crate) use optim::update;
pub(crate) use reduce::{argmax, index_select, norm, reduce, softmax};
pub(crate) use strided::strided_copy;

use crate::error::{Error, Result};

/// Below this many elements, elementwise loops stay on one thread.
const PARALLEL_MIN: usize = 1 << 15;

/// A zeroed vector of `n` values, or `OutOfMemory` instead of an abort.
pub(crate) fn alloc(op: &'static str, n: usize) -> Result<Vec<f32>> {
    let mut v: Vec<f32> = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|e| Error::OutOfMemory(format!("{op}: {n} f32 values on the CPU: {e}")))?;
    v.resize(n, 0.0);
    Ok(v)
}
