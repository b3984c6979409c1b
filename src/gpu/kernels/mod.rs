//! Host side of each shader family: binds buffers, picks a specialization, dispatches.

pub(crate) mod conv;
pub(crate) mod copy;
pub(crate) mod elementwise;
pub(crate) mod grad;
pub(crate) mod index;
pub(crate) mod matmul;
pub(crate) mod matmul_tune;
pub(crate) mod norm;
pub(crate) mod optim;
pub(crate) mod reduce;
pub(crate) mod select;
pub(crate) mod xent;

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
    specs.push(index::spec());
    specs.push(index::gather_spec());
    specs.push(reduce::argmax_spec());
    specs.extend(conv::specs());
    specs.extend(grad::specs());
    specs.extend(optim::specs());
    specs.extend(xent::specs());
    specs
}

/// `(shader, WGSL struct name, size of the Rust #[repr(C)] struct)` for every uniform params
/// struct, so that `tests/shaders.rs` can check the Rust layout against naga's.
pub fn param_structs() -> Vec<(&'static str, &'static str, usize)> {
    use std::mem::size_of;
    let matmul = size_of::<matmul::MatmulParams>();
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
        ("matmul.wgsl", "Params", matmul),
        ("matmul_blocked.wgsl", "Params", matmul),
        ("matmul_strip.wgsl", "Params", matmul),
        ("reduce.wgsl", "Params", size_of::<reduce::ReduceParams>()),
        ("copy.wgsl", "Params", size_of::<copy::CopyParams>()),
        ("norm.wgsl", "Params", size_of::<norm::NormParams>()),
        ("where.wgsl", "Params", size_of::<select::WhereParams>()),
        ("index.wgsl", "Params", size_of::<index::IndexParams>()),
        ("gather.wgsl", "Params", size_of::<index::GatherParams>()),
        ("argmax.wgsl", "Params", size_of::<reduce::ReduceParams>()),
        ("conv2d.wgsl", "Params", size_of::<conv::ConvParams>()),
        ("pool2d.wgsl", "Params", size_of::<conv::PoolParams>()),
        (
            "unary_vec4.wgsl",
            "Params",
            size_of::<elementwise::UnaryParams>(),
        ),
        ("binary_vec4.wgsl", "Params", size_of::<[u32; 4]>()),
        ("cast_f16.wgsl", "Params", size_of::<[u32; 4]>()),
        ("matmul_blocked_f16.wgsl", "Params", matmul),
        ("matmul_blocked_sg.wgsl", "Params", matmul),
        (
            "unary_grad.wgsl",
            "Params",
            size_of::<elementwise::UnaryParams>(),
        ),
        (
            "scatter_add.wgsl",
            "Params",
            size_of::<grad::ScatterParams>(),
        ),
        (
            "scatter_add.wgsl",
            "RowParams",
            size_of::<grad::RowParams>(),
        ),
        (
            "optim.wgsl",
            "Params",
            size_of::<crate::optim_params::OptimParams>(),
        ),
        ("xent.wgsl", "Params", size_of::<xent::XentParams>()),
    ]
}
