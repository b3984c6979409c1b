//! The hyper-parameters of one optimizer update, shared by `nn::optim` (which fills them), the
//! CPU loop (`cpu/optim.rs`) and the GPU kernel (`shaders/optim.wgsl`, whose `Params` struct has
//! this layout).

use bytemuck::{Pod, Zeroable};

/// Hyper-parameters of one update, shared by every optimizer kernel.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default, Debug)]
pub(crate) struct OptimParams {
    pub n: u32,
    pub lr: f32,
    pub weight_decay: f32,
    pub momentum: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// `1 - beta1^step`.
    pub bc1: f32,
    /// `1 - beta2^step`.
    pub bc2: f32,
    /// Bit 0: nesterov; bit 1: first step (momentum buffer starts at the gradient); bit 2:
    /// decoupled weight decay (AdamW).
    pub flags: u32,
    pub _pad: [u32; 2],
}

/// The hyper-parameters each replay of a captured step updates with, computed once per replay
/// (Adam's bias correction advances with its step count; SGD's momentum is no longer fresh).
/// The optimizer says what the values are; the GPU backend decides where they go
/// (`gpu::capture`).
pub(crate) type Replayed = dyn Fn() -> OptimParams + Send + Sync;

pub(crate) const NESTEROV: u32 = 1;
pub(crate) const FIRST_STEP: u32 = 2;
pub(crate) const DECOUPLED: u32 = 4;
