//! Host side of each shader family: binds buffers, picks a specialization, dispatches.

pub(crate) mod copy;
pub(crate) mod elementwise;
pub(crate) mod matmul;
pub(crate) mod matmul_tune;
pub(crate) mod norm;
pub(crate) mod reduce;
pub(crate) mod select;

use super::pipelines::KernelSpec;

/// Every specialization the host can ask for, so that `tests/shaders.rs` validates exactly what
/// runs.
pub fn all_specs() -> Vec<KernelSpec> {
    let mut specs = elementwise::specs();
    specs.extend(matmul::specs());
    specs.extend(reduce::specs());
    specs.push(copy::spec());
    specs.extend(norm::specs());
    specs.push(select::spec());
    specs
}

/// `(shader, WGSL struct name, size of the Rust #[repr(C)] struct)` for every uniform params
/// struct, so that `tests/shaders.rs` can check the Rust layout against naga's.
pub fn param_structs() -> Vec<(&'static str, &'static str, usize)> {
    use std::mem::size_of;
    vec![
        (
            "unary.wgsl",
            "Params",
            size_of::<elementwise::UnaryParams>(),
        ),
        (
            "unary.wgsl",
            "FillParams",
            size_of::<elementwise::UnaryParams>(),
        ),
        (
            "binary.wgsl",
            "Params",
            size_of::<elementwise::BinaryParams>(),
        ),
        ("matmul.wgsl", "Params", size_of::<matmul::MatmulParams>()),
        (
            "matmul_blocked.wgsl",
            "Params",
            size_of::<matmul::MatmulParams>(),
        ),
    ]
}
