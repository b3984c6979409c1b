//! The CPU backend: the reference the GPU is checked against, and the fallback when no adapter
//! exists. Large matmuls use kiln's AVX-512 kernel where the CPU has it (`gemm_avx512.rs`), the
//! rest `matrixmultiply` (threaded); elementwise work is split across cores with rayon.

mod conv;
mod elementwise;
#[cfg(target_arch = "x86_64")]
mod gemm_avx512;
mod grad;
mod matmul;
mod optim;
mod reduce;
#[cfg(target_arch = "x86_64")]
mod spin_pool;
mod strided;

pub(crate) use conv::{conv2d, pool2d};
pub(crate) use elementwise::{binary, fill, unary};
pub(crate) use grad::{
    conv2d_grad_input, conv2d_grad_weight, index_select_grad, pool2d_grad, scatter_add, unary_grad,
};
pub(crate) use matmul::{linear, matmul};
pub(crate) use optim::update;
pub(crate) use reduce::{
    argmax, cross_entropy_grad, cross_entropy_rows, index_select, norm, reduce, softmax,
};
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
