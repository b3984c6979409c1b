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

/// Where kiln keeps what it learns about an adapter between processes (the matmul tuning
/// results, the driver's compiled pipelines): `KILN_CACHE_DIR`, else `$XDG_CACHE_HOME/kiln`,
/// else `~/.cache/kiln`.
pub(crate) fn cache_dir() -> Option<std::path::PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(std::path::PathBuf::from)
    };
    var("KILN_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("kiln")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("kiln")))
}
