//! The kernel families: one module (or folder) per shader family, holding its shaders, its
//! specializations, its uniform params structs and the host code that binds and dispatches.
//! Each family describes itself with a [`Family`]; the list below is the only place that names
//! them all, for the tests that validate every specialization.

pub(crate) mod attention;
pub(crate) mod conv;
pub(crate) mod copy;
pub(crate) mod elementwise;
pub(crate) mod fused;
pub(crate) mod grad;
pub(crate) mod half;
pub(crate) mod index;
pub(crate) mod matmul;
pub(crate) mod norm;
pub(crate) mod optim;
pub(crate) mod packed;
pub(crate) mod reduce;
pub(crate) mod rope;
pub(crate) mod scan;
pub(crate) mod select;
pub(crate) mod xent;

use super::pipelines::{KernelSpec, Shader};

/// What a kernel family declares about itself.
pub(crate) struct Family {
    /// Every specialization the host can ask for.
    pub specs: fn() -> Vec<KernelSpec>,
    /// `(shader, WGSL struct name, size of the Rust #[repr(C)] struct)` for each uniform
    /// params struct.
    pub params: &'static [(&'static str, &'static str, usize)],
}

const FAMILIES: [&Family; 17] = [
    &attention::FAMILY,
    &elementwise::FAMILY,
    &fused::FAMILY,
    &matmul::FAMILY,
    &reduce::FAMILY,
    &scan::FAMILY,
    &copy::FAMILY,
    &norm::FAMILY,
    &select::FAMILY,
    &index::FAMILY,
    &conv::FAMILY,
    &grad::FAMILY,
    &optim::FAMILY,
    &xent::FAMILY,
    &packed::FAMILY,
    &rope::FAMILY,
    &half::FAMILY,
];

/// Every specialization the host can ask for, so that `tests/shaders.rs` validates exactly what
/// runs.
pub fn all_specs() -> Vec<KernelSpec> {
    FAMILIES.iter().flat_map(|f| (f.specs)()).collect()
}

/// `(shader, WGSL struct name, size of the Rust #[repr(C)] struct)` for every uniform params
/// struct, so that `tests/shaders.rs` can check the Rust layout against naga's.
pub fn param_structs() -> Vec<(&'static str, &'static str, usize)> {
    FAMILIES
        .iter()
        .flat_map(|f| f.params.iter().copied())
        .collect()
}

/// The complete WGSL source of every shader module the host's specializations use, by name, as
/// the device compiles it. `tests/shaders.rs` validates each one with naga.
pub fn shaders() -> Vec<(&'static str, String)> {
    let mut seen: Vec<Shader> = Vec::new();
    for spec in all_specs() {
        if !seen.contains(&spec.shader) {
            seen.push(spec.shader);
        }
    }
    seen.into_iter().map(|s| (s.name(), s.source())).collect()
}
