//! The wgpu instance, adapter enumeration and the ranking behind device selection.

use std::sync::OnceLock;

/// One process-wide instance: creating one probes every backend, which is slow on some drivers.
pub(crate) fn instance() -> &'static wgpu::Instance {
    static INSTANCE: OnceLock<wgpu::Instance> = OnceLock::new();
    INSTANCE.get_or_init(|| {
        // WGPU_BACKEND (and the other WGPU_* variables) narrow the backends when set.
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
    })
}

/// Every adapter wgpu can see, in the order of preference for `Device::gpu`.
pub(crate) fn ranked_adapters() -> Vec<wgpu::Adapter> {
    let mut adapters = pollster::block_on(instance().enumerate_adapters(wgpu::Backends::all()));
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
pub(crate) const OPTIONAL_FEATURES: [(wgpu::Features, &str); 3] = [
    (wgpu::Features::SHADER_F16, "shader-f16"),
    (wgpu::Features::SUBGROUP, "subgroup"),
    (wgpu::Features::TIMESTAMP_QUERY, "timestamp-query"),
];

/// Names of the optional features in `features`.
pub(crate) fn feature_names(features: wgpu::Features) -> Vec<String> {
    OPTIONAL_FEATURES
        .iter()
        .filter(|(f, _)| features.contains(*f))
        .map(|(_, n)| (*n).to_string())
        .collect()
}
