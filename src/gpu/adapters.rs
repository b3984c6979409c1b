//! The wgpu instance, adapter enumeration and the ranking behind device selection.

use std::sync::OnceLock;

/// A wgpu instance for the backends that `WGPU_BACKEND` (and the other `WGPU_*` variables)
/// allow, GL alone (`gl`) or all but GL; `None` where that leaves no backend.
fn instance(gl: bool) -> Option<wgpu::Instance> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = if gl {
        desc.backends & wgpu::Backends::GL
    } else {
        desc.backends - wgpu::Backends::GL
    };
    (!desc.backends.is_empty()).then(|| wgpu::Instance::new(desc))
}

/// Every adapter wgpu can see, in the order of preference for `Device::gpu`.
///
/// GL adapters are looked for only where the native compute APIs (Vulkan, Metal, DX12) find
/// none: elsewhere GL drives the same hardware through a slower, thread-bound API, and merely
/// loading NVIDIA's EGL driver beside its Vulkan driver let concurrent device and pipeline
/// creation deadlock inside the driver (seen on an H200: every test thread waiting on one lock
/// in `libnvidia-glsi`, one of them in EGL's thread-exit hook).
///
/// In the browser this cannot wait for the adapter, and is empty: see [`ranked_adapters_async`].
pub(crate) fn ranked_adapters() -> Vec<wgpu::Adapter> {
    super::scope::block_on(
        "Device::adapters",
        "Device::gpu_async",
        ranked_adapters_async(),
    )
    .unwrap_or_default()
}

/// [`ranked_adapters`] as a future: in the browser, the adapter `navigator.gpu` offers (none
/// where the browser has no WebGPU).
pub(crate) async fn ranked_adapters_async() -> Vec<wgpu::Adapter> {
    static NATIVE: OnceLock<Option<wgpu::Instance>> = OnceLock::new();
    static GL: OnceLock<Option<wgpu::Instance>> = OnceLock::new();
    let mut adapters = match NATIVE.get_or_init(|| instance(false)) {
        Some(i) => i.enumerate_adapters(wgpu::Backends::all()).await,
        None => Vec::new(),
    };
    if adapters.is_empty()
        && !cfg!(target_arch = "wasm32")
        && let Some(i) = GL.get_or_init(|| instance(true))
    {
        adapters = i.enumerate_adapters(wgpu::Backends::all()).await;
    }
    adapters.sort_by_key(rank);
    adapters
}

/// Whether an adapter is a software rasterizer (lavapipe, llvmpipe, SwiftShader, WARP).
pub(crate) fn is_software(info: &wgpu::AdapterInfo) -> bool {
    let name = info.name.to_lowercase();
    info.device_type == wgpu::DeviceType::Cpu
        || [
            "llvmpipe",
            "lavapipe",
            "swiftshader",
            "warp",
            "basic render",
            "softpipe",
        ]
        .iter()
        .any(|s| name.contains(s))
}

/// Sort key: lower is better. Hardware before software; discrete, integrated, virtual, other;
/// native compute APIs (Vulkan, Metal, DX12) before GL.
fn rank(adapter: &wgpu::Adapter) -> (u8, u8, u8) {
    let info = adapter.get_info();
    let software = u8::from(is_software(&info));
    let kind = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    let api = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        _ => 1,
    };
    (software, kind, api)
}

/// A human name for the adapter type.
pub(crate) fn type_name(t: wgpu::DeviceType) -> &'static str {
    match t {
        wgpu::DeviceType::DiscreteGpu => "discrete GPU",
        wgpu::DeviceType::IntegratedGpu => "integrated GPU",
        wgpu::DeviceType::VirtualGpu => "virtual GPU",
        wgpu::DeviceType::Cpu => "CPU (software)",
        wgpu::DeviceType::Other => "other",
    }
}

/// The optional features kiln asks for when the adapter offers them.
pub(crate) const OPTIONAL_FEATURES: [(wgpu::Features, &str); 4] = [
    (wgpu::Features::SHADER_F16, "shader-f16"),
    (wgpu::Features::SUBGROUP, "subgroup"),
    (wgpu::Features::TIMESTAMP_QUERY, "timestamp-query"),
    (wgpu::Features::PIPELINE_CACHE, "pipeline-cache"),
];

/// Names of the optional features in `features`.
pub(crate) fn feature_names(features: wgpu::Features) -> Vec<String> {
    OPTIONAL_FEATURES
        .iter()
        .filter(|(f, _)| features.contains(*f))
        .map(|(_, n)| (*n).to_string())
        .collect()
}
