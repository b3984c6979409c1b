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

pub(crate) struct PipelineCache {
    modules: Mutex<HashMap<(&'static str, bool), wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<String, wgpu::ComputePipeline>>,
    /// The driver's compiled pipelines, kept on disk between processes where the backend can.
    disk: Option<Disk>,
}

impl PipelineCache {
    /// The cache of a device just opened on an adapter with `info` and `features`: empty, with
    /// the driver's pipeline cache loaded from disk where the device has `PIPELINE_CACHE`.
    pub(crate) fn open(
        device: &wgpu::Device,
        info: &wgpu::AdapterInfo,
        features: wgpu::Features,
    ) -> PipelineCache {
        PipelineCache {
            modules: Mutex::default(),
            pipelines: Mutex::default(),
            disk: Disk::open(device, info, features),
        }
    }

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
                cache: self.disk.as_ref().map(|d| &d.cache),
            })
        });
        if let Some(e) = error {
            return Err(Error::Gpu(format!("creating pipeline {key}: {e}")));
        }
        log::debug!("compiled pipeline {key} in {:.1?}", start.elapsed());
        if let Some(d) = &self.disk {
            d.grown.store(true, std::sync::atomic::Ordering::Relaxed);
        }
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

/// The driver's compiled pipelines (wgpu's `PipelineCache`, Vulkan's `VkPipelineCache`) on
/// disk, beside the matmul tuning cache (`gpu::cache_dir`): loaded when a device opens, given
/// to every pipeline it compiles, written back when the device is dropped if it compiled any.
/// A second process then skips the driver's compilation of the pipelines the first one made
/// (naga still translates the WGSL). `KILN_PIPELINE_CACHE=0` turns it off.
///
/// The file is `pipelines-<wgpu's key for the adapter>.bin`: [`MAGIC`], the data's length and
/// its FNV-1a hash (little-endian u64s), then the data `get_data` gave. wgpu checks the data's
/// header against the adapter and driver; kiln's hash makes sure the rest is what an earlier
/// process wrote, so that a truncated or damaged file is ignored (and replaced) instead of
/// reaching the driver. Not on the web, where there is no file system (nor the feature).
pub(crate) struct Disk {
    cache: wgpu::PipelineCache,
    file: std::path::PathBuf,
    /// Whether a pipeline was compiled since the data was loaded.
    grown: std::sync::atomic::AtomicBool,
}

/// The first bytes of a pipeline cache file.
const MAGIC: &[u8; 8] = b"KILNPC01";

impl Disk {
    #[cfg(not(target_arch = "wasm32"))]
    fn open(
        device: &wgpu::Device,
        info: &wgpu::AdapterInfo,
        features: wgpu::Features,
    ) -> Option<Disk> {
        if !features.contains(wgpu::Features::PIPELINE_CACHE)
            || std::env::var("KILN_PIPELINE_CACHE").as_deref() == Ok("0")
        {
            return None;
        }
        let key = wgpu::util::pipeline_cache_key(info)?;
        let file = super::cache_dir()?.join(format!("pipelines-{key}.bin"));
        let data = std::fs::read(&file).ok().and_then(|bytes| {
            let data = unwrap_file(&bytes);
            if data.is_none() {
                log::warn!("ignoring the pipeline cache {file:?}: not a whole file kiln wrote");
            }
            data.map(<[u8]>::to_vec)
        });
        // SAFETY: `data` is what `get_data` returned in an earlier process (the file's hash
        // matches what that process wrote); wgpu checks its header against this adapter and
        // driver, and `fallback` makes an empty cache where it does not match.
        let cache = unsafe {
            device.create_pipeline_cache(&wgpu::PipelineCacheDescriptor {
                label: Some("kiln pipelines"),
                data: data.as_deref(),
                fallback: true,
            })
        };
        log::debug!(
            "pipeline cache {file:?}: {} bytes loaded",
            data.as_ref().map_or(0, Vec::len)
        );
        Some(Disk {
            cache,
            file,
            grown: std::sync::atomic::AtomicBool::new(false),
        })
    }

    #[cfg(target_arch = "wasm32")]
    fn open(_: &wgpu::Device, _: &wgpu::AdapterInfo, _: wgpu::Features) -> Option<Disk> {
        None
    }

    /// The cache's data into its file (a new file renamed over the old, so that a reader never
    /// sees half of one).
    fn save(&self) {
        let Some(data) = self.cache.get_data() else {
            return;
        };
        let mut bytes = Vec::with_capacity(data.len() + 24);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(data.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&fnv1a(&data).to_le_bytes());
        bytes.extend_from_slice(&data);
        let tmp = self
            .file
            .with_extension(format!("tmp{}", std::process::id()));
        let written = self
            .file
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|_| std::fs::write(&tmp, &bytes))
            .and_then(|_| std::fs::rename(&tmp, &self.file));
        match written {
            Ok(()) => log::debug!(
                "pipeline cache {:?}: {} bytes written",
                self.file,
                data.len()
            ),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                log::warn!("could not write the pipeline cache {:?}: {e}", self.file);
            }
        }
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if self.grown.load(std::sync::atomic::Ordering::Relaxed) {
            self.save();
        }
    }
}

/// The data of a pipeline cache file's bytes, if they are a whole file as [`Disk::save`]
/// writes them (magic, length and hash all agree).
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
fn unwrap_file(bytes: &[u8]) -> Option<&[u8]> {
    let rest = bytes.strip_prefix(MAGIC)?;
    let (len, rest) = rest.split_first_chunk::<8>()?;
    let (hash, data) = rest.split_first_chunk::<8>()?;
    (u64::from_le_bytes(*len) == data.len() as u64 && u64::from_le_bytes(*hash) == fnv1a(data))
        .then_some(data)
}

/// The 64-bit FNV-1a hash of `data`.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file as `save` writes it gives its data back; any truncation, a changed byte, a
    /// wrong length or another magic gives nothing.
    #[test]
    fn damaged_cache_files_are_refused() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&(data.len() as u64).to_le_bytes());
        file.extend_from_slice(&fnv1a(&data).to_le_bytes());
        file.extend_from_slice(&data);
        assert_eq!(unwrap_file(&file), Some(&data[..]));
        for cut in [0, 5, 8, 15, 23, 24, 500, file.len() - 1] {
            assert_eq!(unwrap_file(&file[..cut]), None, "cut at {cut}");
        }
        for at in [0, 9, 17, 24, 600, file.len() - 1] {
            let mut bad = file.clone();
            bad[at] ^= 0x40;
            assert_eq!(unwrap_file(&bad), None, "byte {at} changed");
        }
        let mut longer = file.clone();
        longer.push(0);
        assert_eq!(unwrap_file(&longer), None, "a byte appended");
        assert_eq!(unwrap_file(&[]), None);
    }
}
