//! The shader registry and the pipeline cache.
//!
//! wgpu does not deduplicate pipelines, so each (shader, entry point, specialization constants)
//! is compiled once per device and kept. Creation runs inside a validation error scope, so a
//! broken shader or specialization becomes an `Error::Gpu` instead of an uncaptured error.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// `(file name, source)` for a file under `shaders/`.
macro_rules! shader {
    ($name:literal, $prelude:expr) => {
        ($name, include_str!(concat!("../../shaders/", $name)))
    };
}

/// Every shader, by file name. Each is compiled after the prelude (`crate::op::wgsl_prelude`).
const FILES: &[(&str, &str)] = &[
    shader!("unary.wgsl", true),
    shader!("binary.wgsl", true),
    shader!("unary_vec4.wgsl", true),
    shader!("binary_vec4.wgsl", false),
    shader!("matmul.wgsl", false),
    shader!("matmul_blocked.wgsl", true),
    shader!("matmul_strip.wgsl", true),
    shader!("reduce.wgsl", true),
    shader!("copy.wgsl", false),
    shader!("norm.wgsl", false),
    shader!("where.wgsl", false),
    shader!("index.wgsl", false),
    shader!("gather.wgsl", false),
    shader!("argmax.wgsl", true),
    shader!("conv2d.wgsl", false),
    shader!("pool2d.wgsl", true),
    shader!("cast_f16.wgsl", false),
    shader!("unary_grad.wgsl", true),
    shader!("scatter_add.wgsl", false),
    shader!("optim.wgsl", false),
    shader!("xent.wgsl", false),
];

/// The complete WGSL source of every shader module, by file name, as the device compiles it.
/// `tests/shaders.rs` validates each one with naga.
pub fn shaders() -> Vec<(&'static str, String)> {
    FILES
        .iter()
        .map(|(name, _)| *name)
        .chain(DERIVED.iter().copied())
        .map(|name| (name, source(name).unwrap_or_default()))
        .collect()
}

/// Shaders derived from another by templating (WGSL has no generics): the f16-storage matmul
/// is `matmul_blocked.wgsl` with its `Elem` alias switched to f16; the subgroup matmul is the
/// same file with its A operand shared through subgroup shuffles.
fn derived(shader: &str) -> Option<String> {
    match shader {
        "matmul_blocked_f16.wgsl" => source("matmul_blocked.wgsl").map(|s| {
            format!(
                "enable f16;\n{}",
                s.replace("alias Elem = f32;", "alias Elem = f16;")
            )
        }),
        "matmul_blocked_sg.wgsl" => source("matmul_blocked.wgsl").map(|s| {
            let with_lanes = s.replace(
                "    @builtin(local_invocation_index) tid: u32,\n) {",
                "    @builtin(local_invocation_index) tid: u32,\n    \
                 @builtin(subgroup_invocation_id) lane: u32,\n) {",
            );
            with_lanes.replace(SUBGROUP_K_STEP.0, SUBGROUP_K_STEP.1)
        }),
        _ => None,
    }
}

/// The k-step loop of `matmul_blocked.wgsl` and its subgroup version (see the shader's header).
const SUBGROUP_K_STEP: (&str, &str) = (
    "        for (var kk = 0u; kk < BK; kk = kk + 1u) {
            let av = tile_a[(kk * BM + lid.y * TM) / 4u];",
    "        var own_a = vec4<f32>(0.0);
        if (lane < BK) {
            own_a = tile_a[(lane * BM + lid.y * TM) / 4u];
        }
        for (var kk = 0u; kk < BK; kk = kk + 1u) {
            let av = subgroupShuffle(own_a, kk);",
);

/// Names of the derived shaders.
const DERIVED: &[&str] = &["matmul_blocked_f16.wgsl", "matmul_blocked_sg.wgsl"];

fn source(shader: &str) -> Option<String> {
    if let Some(s) = derived(shader) {
        return Some(s);
    }
    FILES
        .iter()
        .find(|(name, _)| *name == shader)
        .map(|(_, src)| with_prelude(src))
}

/// `src` compiled after the prelude: its global directives (`enable f16;`), which WGSL allows
/// only before every declaration, stay first.
fn with_prelude(src: &str) -> String {
    let (directives, body): (Vec<&str>, Vec<&str>) =
        src.lines().partition(|l| l.starts_with("enable "));
    format!(
        "{}\n{}\n{}\n",
        directives.join("\n"),
        crate::op::wgsl_prelude(),
        body.join("\n")
    )
}

/// One pipeline the host can build: a shader file, its entry point and the values of its
/// `override` constants.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelSpec {
    /// File name under `shaders/`.
    pub shader: &'static str,
    /// Entry point.
    pub entry: &'static str,
    /// Override constants, by name.
    pub constants: Vec<(&'static str, f64)>,
    /// Built without wgpu's runtime bounds checks and without zeroing workgroup memory: only for
    /// kernels whose indexing is proven in bounds (the shader says why).
    pub unchecked: bool,
}

impl KernelSpec {
    /// The complete WGSL source of the spec's shader (empty if it is not registered).
    pub fn source(&self) -> String {
        source(self.shader).unwrap_or_default()
    }

    fn key(&self) -> String {
        let mut key = format!("{}:{}:{}", self.shader, self.entry, self.unchecked);
        for (name, value) in &self.constants {
            key.push_str(&format!(":{name}={value}"));
        }
        key
    }
}

#[derive(Default)]
pub(crate) struct PipelineCache {
    modules: Mutex<HashMap<(&'static str, bool), wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<String, wgpu::ComputePipeline>>,
}

impl PipelineCache {
    /// The pipeline for `spec`, compiled on first use.
    pub(crate) fn get(
        &self,
        device: &wgpu::Device,
        spec: &KernelSpec,
    ) -> Result<wgpu::ComputePipeline> {
        let key = spec.key();
        if let Some(p) = self
            .pipelines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(p.clone());
        }
        let start = Instant::now();
        let module = self.module(device, spec.shader, spec.unchecked)?;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&key),
            layout: None,
            module: &module,
            entry_point: Some(spec.entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &spec.constants,
                zero_initialize_workgroup_memory: !spec.unchecked,
            },
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!("creating pipeline {key}: {e}")));
        }
        log::debug!("compiled pipeline {key} in {:.1?}", start.elapsed());
        self.pipelines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, pipeline.clone());
        Ok(pipeline)
    }

    fn module(
        &self,
        device: &wgpu::Device,
        shader: &'static str,
        unchecked: bool,
    ) -> Result<wgpu::ShaderModule> {
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = modules.get(&(shader, unchecked)) {
            return Ok(m.clone());
        }
        let source =
            source(shader).ok_or_else(|| Error::Gpu(format!("no shader named {shader}")))?;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(shader),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        };
        let module = if unchecked {
            // SAFETY: only specs marked `unchecked` get here, and those are kernels whose every
            // index is in bounds for the shapes the host dispatches them on (see each shader's
            // header and the op-table tests that run them).
            unsafe {
                device.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
            }
        } else {
            device.create_shader_module(desc)
        };
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!("compiling {shader}: {e}")));
        }
        modules.insert((shader, unchecked), module.clone());
        Ok(module)
    }

    pub(crate) fn len(&self) -> usize {
        self.pipelines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The derived shaders are built by string replacement: if `matmul_blocked.wgsl` changes
    /// under them, the replacements must not silently stop matching.
    #[test]
    fn derived_shaders_apply_their_replacements() {
        let f16 = source("matmul_blocked_f16.wgsl").unwrap();
        assert!(f16.starts_with("enable f16;") && f16.contains("alias Elem = f16;"));
        let sg = source("matmul_blocked_sg.wgsl").unwrap();
        assert!(sg.contains("@builtin(subgroup_invocation_id) lane: u32"));
        assert!(sg.contains("subgroupShuffle(own_a, kk)"));
        assert!(!sg.contains(SUBGROUP_K_STEP.0));
    }
}
