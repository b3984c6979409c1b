//! The wgpu backend. Most of it is internal; what is public here serves tests and tools that
//! need to see which shaders and specializations exist.

mod adapters;
pub(crate) mod capture;
pub(crate) mod context;
mod device;
pub(crate) mod kernels;
mod pipelines;
pub(crate) mod pool;
mod recorder;
pub(crate) mod scope;
pub(crate) mod storage;

pub use crate::backend::MemoryStats;
pub(crate) use adapters::{
    feature_names, is_software, ranked_adapters, ranked_adapters_async, type_name,
};
pub use kernels::matmul::{
    CANDIDATES as MATMUL_CANDIDATES, MatmulConfig, configs as matmul_configs,
};
pub use kernels::{all_specs, param_structs, shaders};
pub use pipelines::{KernelSpec, Shader};
