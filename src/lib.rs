//! # kiln
//!
//! A GPU compute engine for Rust on WebGPU. Tensors live on a [`Device`]: a wgpu adapter (any
//! GPU wgpu can drive, software rasterizers such as lavapipe included) or kiln's CPU backend,
//! which runs the same API and gives the same answers when no adapter exists.
//!
//! ```
//! use kiln::{Device, Tensor};
//!
//! # fn main() -> kiln::Result<()> {
//! let dev = Device::cpu(); // or Device::auto()?, Device::from_env()?
//! let a = Tensor::from_vec(&dev, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3])?;
//! let b = Tensor::ones(&dev, &[3, 2])?;
//! let c = a.matmul(&b)?.relu()?;
//! let d = c.add(&Tensor::full(&dev, &[2], 0.5)?)?; // numpy broadcasting
//! assert_eq!(d.to_vec()?, vec![6.5, 6.5, 15.5, 15.5]);
//! # Ok(())
//! # }
//! ```
//!
//! On a GPU, ops are recorded into one compute pass and submitted in batches; readback
//! (`to_vec`, `to_vec_async`) and [`Device::synchronize`] submit what is pending. In the
//! browser (`wasm32-unknown-unknown`, WebGPU) nothing may block: open the GPU with
//! [`Device::gpu_async`] and read with the `*_async` read-backs (crate `kiln-web`). Elementwise
//! ops are fused on every device: a chain of them (broadcasting included) runs as one generated
//! kernel on a GPU and one pass on the CPU when its value is needed, and a reduction or softmax
//! of such a chain takes it as its prologue ([`Device::set_fusion`], `KILN_FUSION=0` to turn it
//! off; [`Device::stats`] counts the work).
//!
//! Training uses reverse-mode autograd ([`Tensor::with_grad`], [`Tensor::backward`]), the losses
//! and optimizers of [`nn`], and [`no_grad`] for inference:
//!
//! ```
//! use kiln::nn::{Optimizer, Sgd, mse_loss};
//! use kiln::{Device, Tensor};
//!
//! # fn main() -> kiln::Result<()> {
//! let dev = Device::cpu();
//! let x = Tensor::from_vec(&dev, vec![1.0, 2.0, 3.0, 4.0], &[4, 1])?;
//! let y = x.mul_scalar(3.0)?; // learn y = 3x
//! let mut w = Tensor::zeros(&dev, &[1, 1])?.with_grad()?;
//! let mut opt = Sgd::new(0.05);
//! for _ in 0..50 {
//!     let loss = mse_loss(&x.matmul(&w)?, &y)?;
//!     loss.backward()?;
//!     opt.step(&mut [&mut w])?;
//!     opt.zero_grad(&mut [&mut w]);
//! }
//! assert!((w.to_vec()?[0] - 3.0).abs() < 1e-3);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod attention;
mod autograd;
mod backend;
mod conv;
mod cpu;
mod device;
mod dft;
mod dtype;
mod error;
mod fusion;
pub mod gpu;
mod graph;
mod matmul_plan;
pub mod nn;
mod op;
mod optim_params;
mod quant;
mod random;
mod rope;
mod shape;
mod storage;
mod strided;
mod tensor;

pub use attention::AttentionOptions;
pub use autograd::{NoGradGuard, is_grad_enabled, no_grad};
pub use conv::Conv2dOptions;
pub use device::{Device, DeviceInfo, DeviceKind, DeviceLimits, DeviceStats};
pub use dtype::DType;
pub use error::{Error, Result};
pub use gpu::MemoryStats;
pub use graph::Graph;
pub use op::{BinaryOp, ReduceOp, UnaryOp};
pub use rope::RopeLayout;
pub use shape::Shape;
pub use tensor::Tensor;
