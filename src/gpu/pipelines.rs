//! The shader registry and the pipeline cache.
//!
//! wgpu does not deduplicate pipelines, so each (shader, entry point, specialization constants)
//! is compiled once per device and kept. Creation runs inside a validation error scope, so a
//! broken shader or specialization becomes an `Error::Gpu` instead of an uncaptured error.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Every WGSL file, by name. `tests/shaders.rs` validates each one with naga.
pub const SHADERS: [(&str, &str); 3] = [
    ("unary.wgsl", include_str!("../../shaders/unary.wgsl")),
    ("binary.wgsl", include_str!("../../shaders/binary.wgsl")),
    ("matmul.wgsl", include_str!("../../shaders/matmul.wgsl")),
];

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
}

impl KernelSpec {
    /// The WGSL source of the spec's shader.
    pub fn source(&self) -> &'static str {
        SHADERS
            .iter()
            .find(|(name, _)| *name == self.shader)
            .map(|(_, src)| *src)
            .unwrap_or_default()
    }

    fn key(&self) -> String {
        let mut key = format!("{}:{}", self.shader, self.entry);
        for (name, value) in &self.constants {
            key.push_str(&format!(":{name}={value}"));
        }
        key
    }
}

#[derive(Default)]
pub(crate) struct PipelineCache {
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
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
        let module = self.module(device, spec.shader)?;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&key),
            layout: None,
            module: &module,
            entry_point: Some(spec.entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &spec.constants,
                zero_initialize_workgroup_memory: true,
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

    fn module(&self, device: &wgpu::Device, shader: &'static str) -> Result<wgpu::ShaderModule> {
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = modules.get(shader) {
            return Ok(m.clone());
        }
        let source = SHADERS
            .iter()
            .find(|(name, _)| *name == shader)
            .map(|(_, src)| *src)
            .ok_or_else(|| Error::Gpu(format!("no shader named {shader}")))?;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(shader),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!("compiling {shader}: {e}")));
        }
        modules.insert(shader, module.clone());
        Ok(module)
    }

    pub(crate) fn len(&self) -> usize {
        self.pipelines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}
