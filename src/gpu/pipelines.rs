//! Shader modules and the pipeline cache.
//!
//! wgpu does not deduplicate pipelines, so each (shader, entry point, specialization constants)
//! is compiled once per device and kept. Creation runs inside a validation error scope, so a
//! broken shader or specialization becomes an `Error::Gpu` instead of an uncaptured error.

use super::scope;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::Mutex;
use web_time::Instant;

/// A shader module of one kernel family: its name (a file under `shaders/`, or the name of a
/// variant derived from one) and its WGSL, compiled after the prelude (`crate::op::wgsl_prelude`).
/// Each family in `kernels/` declares its own with the crate's `shader!` macro or
/// `Shader::derived`; there is no central list.
#[derive(Clone, Copy)]
pub struct Shader {
    name: &'static str,
    body: Body,
}

#[derive(Clone, Copy)]
enum Body {
    File(&'static str),
    Derived(fn() -> String),
}

impl Shader {
    /// The shader in `shaders/<name>` with contents `wgsl` (see [`shader!`]).
    pub(crate) const fn file(name: &'static str, wgsl: &'static str) -> Shader {
        Shader {
            name,
            body: Body::File(wgsl),
        }
    }

    /// A variant named `name` whose WGSL `make` builds (templating another family's file,
    /// where WGSL has no generics).
    pub(crate) const fn derived(name: &'static str, make: fn() -> String) -> Shader {
        Shader {
            name,
            body: Body::Derived(make),
        }
    }

    /// The file (or variant) name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The WGSL before the prelude.
    pub(crate) fn body(&self) -> String {
        match self.body {
            Body::File(s) => s.to_string(),
            Body::Derived(make) => make(),
        }
    }

    /// The complete WGSL the device compiles: the prelude, then the body.
    pub fn source(&self) -> String {
        with_prelude(&self.body())
    }
}

impl std::fmt::Debug for Shader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl PartialEq for Shader {
    fn eq(&self, other: &Shader) -> bool {
        self.name == other.name
    }
}

/// The [`Shader`] for the file `shaders/<name>`, embedded at compile time.
macro_rules! shader {
    ($name:literal) => {
        $crate::gpu::pipelines::Shader::file(
            $name,
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $name)),
        )
    };
}
pub(crate) use shader;

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
    /// The shader module.
    pub shader: Shader,
    /// Entry point.
    pub entry: &'static str,
    /// Override constants, by name.
    pub constants: Vec<(&'static str, f64)>,
    /// Built without wgpu's runtime bounds checks and without zeroing workgroup memory: only for
    /// kernels whose indexing is proven in bounds (the shader says why).
    pub unchecked: bool,
}

impl KernelSpec {
    /// The complete WGSL source of the spec's shader.
    pub fn source(&self) -> String {
        self.shader.source()
    }

    fn key(&self) -> String {
        let mut key = format!("{}:{}:{}", self.shader.name, self.entry, self.unchecked);
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
        let (pipeline, error) = scope::catch(device, wgpu::ErrorFilter::Validation, || {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&key),
                layout: None,
                module: &module,
                entry_point: Some(spec.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &spec.constants,
                    zero_initialize_workgroup_memory: !spec.unchecked,
                },
                cache: None,
            })
        });
        if let Some(e) = error {
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
        shader: Shader,
        unchecked: bool,
    ) -> Result<wgpu::ShaderModule> {
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = modules.get(&(shader.name, unchecked)) {
            return Ok(m.clone());
        }
        let source = shader.source();
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(shader.name),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        };
        let (module, error) = scope::catch(device, wgpu::ErrorFilter::Validation, || {
            if unchecked {
                // SAFETY: only specs marked `unchecked` get here, and those are kernels whose every
                // index is in bounds for the shapes the host dispatches them on (see each shader's
                // header and the op-table tests that run them).
                unsafe {
                    device
                        .create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
                }
            } else {
                device.create_shader_module(desc)
            }
        });
        if let Some(e) = error {
            return Err(Error::Gpu(format!("compiling {}: {e}", shader.name)));
        }
        modules.insert((shader.name, unchecked), module.clone());
        Ok(module)
    }

    pub(crate) fn len(&self) -> usize {
        self.pipelines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}
