//! Devices and the selection policy.

use crate::backend::DeviceBackend;
pub use crate::backend::{DeviceStats, MemoryStats};
use crate::cpu::device::CpuDevice;
use crate::error::{Error, Result};
use crate::gpu;
use crate::gpu::context::GpuContext;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

mod capture;

/// What kind of device runs the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// kiln's CPU backend (no wgpu involved).
    Cpu,
    /// A hardware GPU through wgpu.
    Gpu,
    /// A software rasterizer through wgpu (lavapipe, llvmpipe, WARP, SwiftShader).
    SoftwareGpu,
}

/// Limits of a device that bound what kiln can run on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceLimits {
    /// Largest buffer, in bytes.
    pub max_buffer_size: u64,
    /// Largest storage-buffer binding, in bytes (bounds the size of one tensor).
    pub max_storage_buffer_binding_size: u64,
    /// Workgroups per dispatch dimension.
    pub max_compute_workgroups_per_dimension: u32,
    /// Invocations in one workgroup.
    pub max_compute_invocations_per_workgroup: u32,
    /// Bytes of workgroup memory.
    pub max_compute_workgroup_storage_size: u32,
    /// Storage buffers one kernel may bind (bounds how many parameters one multi-tensor
    /// optimizer dispatch updates).
    pub max_storage_buffers_per_shader_stage: u32,
}

/// A description of a device (or of an adapter that could become one) and why it was chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceInfo {
    /// Adapter name, or "cpu".
    pub name: String,
    /// CPU, hardware GPU or software GPU.
    pub kind: DeviceKind,
    /// Graphics API: "cpu", "vulkan", "metal", "dx12", "gl".
    pub backend: String,
    /// Adapter type as wgpu reports it (discrete, integrated, ...), or "cpu".
    pub device_type: String,
    /// Driver name and version information.
    pub driver: String,
    /// Key limits; `None` for the CPU backend, whose limit is host memory.
    pub limits: Option<DeviceLimits>,
    /// Optional features granted (for an open device) or offered (for a listed adapter):
    /// "shader-f16", "subgroup", "timestamp-query".
    pub features: Vec<String>,
    /// Why this device was chosen (empty for a listed adapter).
    pub reason: String,
}

enum Backend {
    Cpu,
    Gpu(Arc<GpuContext>),
}

struct Inner {
    id: u64,
    info: DeviceInfo,
    backend: Backend,
}

/// Where tensors live and ops run: the CPU backend or one wgpu device. Cheap to clone; clones
/// are the same device.
#[derive(Clone)]
pub struct Device {
    inner: Arc<Inner>,
}

/// Id 0 is the CPU backend: every `Device::cpu()` is the same device.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn cpu_info(reason: String) -> DeviceInfo {
    DeviceInfo {
        name: "cpu".into(),
        kind: DeviceKind::Cpu,
        backend: "cpu".into(),
        device_type: "cpu".into(),
        driver: format!(
            "kiln {} (own SGEMM with AVX-512F or AVX2 micro-kernels, matrixmultiply, kiln worker pool)",
            env!("CARGO_PKG_VERSION")
        ),
        limits: None,
        features: vec![],
        reason,
    }
}

fn adapter_info(
    adapter: &wgpu::Adapter,
    features: wgpu::Features,
    limits: &wgpu::Limits,
    reason: String,
) -> DeviceInfo {
    let info = adapter.get_info();
    DeviceInfo {
        kind: if gpu::is_software(&info) {
            DeviceKind::SoftwareGpu
        } else {
            DeviceKind::Gpu
        },
        name: info.name.clone(),
        backend: info.backend.to_str().to_string(),
        device_type: gpu::type_name(info.device_type).into(),
        driver: format!("{} {}", info.driver, info.driver_info)
            .trim()
            .to_string(),
        limits: Some(DeviceLimits {
            max_buffer_size: limits.max_buffer_size,
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
            max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
            max_storage_buffers_per_shader_stage: limits.max_storage_buffers_per_shader_stage,
        }),
        features: gpu::feature_names(features),
        reason,
    }
}

/// The adapters of `all` allowed by `KILN_ADAPTER` (a case-insensitive name substring), in
/// their order, and a line saying what was seen.
fn candidates(all: Vec<wgpu::Adapter>) -> (Vec<wgpu::Adapter>, String) {
    let names: Vec<String> = all
        .iter()
        .map(|a| {
            let i = a.get_info();
            format!("{} ({:?})", i.name, i.backend)
        })
        .collect();
    let seen = if names.is_empty() {
        "wgpu found no adapters".to_string()
    } else {
        format!("adapters: {}", names.join(", "))
    };
    match std::env::var("KILN_ADAPTER") {
        Ok(filter) if !filter.is_empty() => {
            let f = filter.to_lowercase();
            let kept = all
                .into_iter()
                .filter(|a| a.get_info().name.to_lowercase().contains(&f))
                .collect();
            (kept, format!("KILN_ADAPTER={filter}; {seen}"))
        }
        _ => (all, seen),
    }
}

impl Device {
    /// The CPU backend.
    pub fn cpu() -> Device {
        Self::cpu_because("requested with Device::cpu()".into())
    }

    fn cpu_because(reason: String) -> Device {
        crate::cpu::start_workers();
        Device {
            inner: Arc::new(Inner {
                id: 0,
                info: cpu_info(reason),
                backend: Backend::Cpu,
            }),
        }
    }

    /// The best wgpu adapter of any kind, software ones included: hardware first (discrete,
    /// integrated, virtual), native APIs before GL. `Error::NoAdapter` if there is none.
    ///
    /// This waits for the adapter and device; in the browser it cannot, and returns
    /// `Error::Unsupported`: await [`Device::gpu_async`] there.
    pub fn gpu() -> Result<Device> {
        gpu::scope::block_on("Device::gpu", "Device::gpu_async", Self::gpu_async())?
    }

    /// [`Device::gpu`] as a future, which works everywhere: in the browser it opens the WebGPU
    /// adapter `navigator.gpu` offers (`Error::NoAdapter` where the browser has none), with the
    /// adapter's own limits.
    pub async fn gpu_async() -> Result<Device> {
        let (adapters, seen) = candidates(gpu::ranked_adapters_async().await);
        Self::open_first(adapters, &seen, "the best adapter wgpu offers").await
    }

    /// A software adapter only (lavapipe, llvmpipe, WARP): what CI runs on.
    pub fn software() -> Result<Device> {
        gpu::scope::block_on("Device::software", "Device::gpu_async", async {
            let (adapters, seen) = candidates(gpu::ranked_adapters_async().await);
            let soft = adapters
                .into_iter()
                .filter(|a| gpu::is_software(&a.get_info()))
                .collect();
            Self::open_first(soft, &seen, "a software adapter was requested").await
        })?
    }

    /// Every GPU device that can be opened (one per adapter allowed by `KILN_ADAPTER`), best
    /// first. Used by the tests to run the op table everywhere. Empty in the browser, which
    /// cannot wait for them (see [`Device::gpu_async`]).
    pub fn all_gpus() -> Vec<Result<Device>> {
        gpu::scope::block_on("Device::all_gpus", "Device::gpu_async", async {
            let (adapters, _) = candidates(gpu::ranked_adapters_async().await);
            let mut devices = Vec::new();
            for a in &adapters {
                devices.push(Self::open(a, "enumerated by Device::all_gpus".into()).await);
            }
            devices
        })
        .unwrap_or_default()
    }

    /// Descriptions of every adapter wgpu can see (features listed are those offered), best
    /// first, without opening any. GL adapters are looked for only where no Vulkan, Metal or
    /// DX12 adapter exists: elsewhere they drive the same hardware more slowly, and loading
    /// NVIDIA's EGL driver beside its Vulkan driver let threads deadlock inside the driver.
    pub fn adapters() -> Vec<DeviceInfo> {
        gpu::ranked_adapters()
            .iter()
            .map(|a| adapter_info(a, a.features(), &a.limits(), String::new()))
            .collect()
    }

    async fn open_first(adapters: Vec<wgpu::Adapter>, seen: &str, why: &str) -> Result<Device> {
        let mut errors = Vec::new();
        for adapter in &adapters {
            match Self::open(adapter, format!("{why}; {seen}")).await {
                Ok(d) => return Ok(d),
                Err(e) => {
                    log::warn!("{e}");
                    errors.push(e.to_string());
                }
            }
        }
        Err(Error::NoAdapter {
            reason: if errors.is_empty() {
                format!("none matches ({seen})")
            } else {
                errors.join("; ")
            },
        })
    }

    async fn open(adapter: &wgpu::Adapter, reason: String) -> Result<Device> {
        let ctx = GpuContext::open(adapter).await?;
        let info = adapter_info(adapter, ctx.features, &ctx.limits, reason);
        log::info!("device: {} ({}): {}", info.name, info.backend, info.reason);
        Ok(Device {
            inner: Arc::new(Inner {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                info,
                backend: Backend::Gpu(Arc::new(ctx)),
            }),
        })
    }

    /// The default choice. `KILN_DEVICE` wins if set (see [`Device::from_env`]). Otherwise the
    /// best hardware adapter; with only a software adapter, or none, the CPU backend, which is
    /// faster than a software rasterizer for this work. [`DeviceInfo::reason`] says why.
    pub fn auto() -> Result<Device> {
        match std::env::var("KILN_DEVICE") {
            Ok(v) if !v.is_empty() && v != "auto" => Self::from_env(),
            _ => Self::auto_policy(),
        }
    }

    fn auto_policy() -> Result<Device> {
        if cfg!(target_arch = "wasm32") {
            return Ok(Self::cpu_because(
                "auto: in the browser a device cannot be waited for; await Device::gpu_async \
                 for WebGPU"
                    .into(),
            ));
        }
        let (adapters, seen) = candidates(gpu::ranked_adapters());
        let hardware: Vec<wgpu::Adapter> = adapters
            .into_iter()
            .filter(|a| !gpu::is_software(&a.get_info()))
            .collect();
        if hardware.is_empty() {
            let d = Self::cpu_because(format!(
                "auto: no hardware GPU, and the CPU backend is faster than a software rasterizer ({seen})"
            ));
            log::info!("device: cpu: {}", d.info().reason);
            return Ok(d);
        }
        let opened = gpu::scope::block_on(
            "Device::auto",
            "Device::gpu_async",
            Self::open_first(hardware, &seen, "auto: the best hardware adapter"),
        )
        .and_then(|r| r);
        match opened {
            Ok(d) => Ok(d),
            Err(e) => {
                let d = Self::cpu_because(format!("auto: hardware GPUs failed to open ({e})"));
                log::warn!("device: cpu: {}", d.info().reason);
                Ok(d)
            }
        }
    }

    /// The device `KILN_DEVICE` names: `auto` (the default), `gpu`, `software` or `cpu`.
    /// `KILN_ADAPTER` narrows the adapters to those whose name contains it.
    pub fn from_env() -> Result<Device> {
        let v = std::env::var("KILN_DEVICE").unwrap_or_default();
        match v.to_lowercase().as_str() {
            "" | "auto" => Self::auto_policy(),
            "gpu" => Self::gpu(),
            "software" => Self::software(),
            "cpu" => Ok(Self::cpu_because("KILN_DEVICE=cpu".into())),
            other => Err(Error::InvalidArgument {
                op: "Device::from_env",
                reason: format!("KILN_DEVICE={other} is not one of auto, gpu, software, cpu"),
            }),
        }
    }

    /// What this device is and why it was chosen.
    pub fn info(&self) -> &DeviceInfo {
        &self.inner.info
    }

    /// Whether this is the CPU backend.
    pub fn is_cpu(&self) -> bool {
        matches!(self.inner.backend, Backend::Cpu)
    }

    /// Whether two handles name the same device.
    pub fn same(&self, other: &Device) -> bool {
        self.inner.id == other.inner.id
    }

    /// The backend's device services, on which the methods below are one line each.
    fn services(&self) -> &dyn DeviceBackend {
        match &self.inner.backend {
            Backend::Cpu => &CpuDevice,
            Backend::Gpu(ctx) => ctx.as_ref(),
        }
    }

    /// Run every pending op (the fused elementwise programs that live tensors hold), and on a
    /// GPU submit all recorded work and wait for it; returns any error the GPU reported.
    pub fn synchronize(&self) -> Result<()> {
        self.services().synchronize()
    }

    /// Run every pending op (the fused programs that live tensors hold) and, on a GPU, submit
    /// the recorded work without waiting for it: the GPU starts while the caller goes on.
    /// [`Device::synchronize`] also waits.
    pub fn flush(&self) -> Result<()> {
        self.services().flush()
    }

    /// Counters of the work this device has done (all zero for the CPU backend). Memory
    /// (buffers and bytes, live, pooled and peak) is [`Device::memory`].
    pub fn stats(&self) -> DeviceStats {
        self.services().stats()
    }

    /// Turn elementwise fusion on or off (on by default; `KILN_FUSION=0` starts it off). Off,
    /// every elementwise op is its own pass (on a GPU its own dispatch), as before fusion
    /// existed. On a GPU the switch is per device; the CPU backend has one switch for the
    /// process.
    pub fn set_fusion(&self, on: bool) {
        self.services().set_fusion(on);
    }

    /// Run `f` and measure the GPU time of the compute passes it records, from timestamp
    /// queries (summed over passes, at most 64 of them), after waiting for earlier work. `None`
    /// on the CPU backend and where TIMESTAMP_QUERY is not granted; `f` runs either way.
    pub fn time_gpu(&self, f: impl FnOnce() -> Result<()>) -> Result<Option<std::time::Duration>> {
        let mut f = Some(f);
        self.services()
            .time(&mut || f.take().map_or(Ok(()), |f| f()))
    }

    /// What the device's memory holds: live, pooled and peak bytes, buffer counts and the
    /// budget. All zero for the CPU backend, whose tensors are ordinary host allocations.
    pub fn memory(&self) -> MemoryStats {
        self.services().memory()
    }

    /// Free the idle buffers the pool keeps for reuse (after submitting recorded work). Live
    /// tensors are untouched. Nothing to do on the CPU backend.
    pub fn trim(&self) {
        self.services().trim();
    }

    /// Bound the bytes this GPU device may hold, live and pooled (`None`: no bound but the
    /// driver's; `KILN_MEMORY_BUDGET=512M` sets one when a device opens). An allocation that
    /// would go over it first frees pooled buffers, then fails with `Error::OutOfMemory`; the
    /// device stays usable, and freeing tensors makes room again. No effect on the CPU backend.
    pub fn set_memory_budget(&self, bytes: Option<u64>) {
        self.services().set_memory_budget(bytes);
    }

    /// Lose this GPU device on purpose, as a driver reset would (wgpu's `Device::destroy`): its
    /// memory is freed, recorded work is dropped, and from then on every call on it, and every
    /// readback already waiting, returns `Error::DeviceLost`. For tests of recovery, and to
    /// release a GPU at once. The CPU backend cannot be lost: there it does nothing.
    ///
    /// Recovery from a loss (this one or the driver's): open a device again
    /// ([`Device::gpu`], [`Device::auto`], ...; the same adapter works), load the last
    /// checkpoint onto it ([`Module::load_safetensors`](crate::nn::Module::load_safetensors),
    /// [`nn::load_checkpoint`](crate::nn::load_checkpoint)) and go on.
    pub fn destroy(&self) {
        self.services().destroy();
    }

    /// Whether this device is lost (always false for the CPU backend).
    pub fn is_lost(&self) -> bool {
        self.services().is_lost()
    }

    /// Number of compute pipelines compiled so far (0 for the CPU backend).
    pub fn pipeline_count(&self) -> usize {
        self.stats().pipelines
    }

    /// Force the matmul kernel configuration on this device (`None`: back to the default choice,
    /// autotuned per shape class). The same as `KILN_MATMUL_CONFIG`, for tests and benchmarks.
    /// No effect on the CPU backend.
    pub fn set_matmul_config(&self, config: Option<gpu::MatmulConfig>) {
        if let Backend::Gpu(ctx) = &self.inner.backend {
            gpu::kernels::matmul::force_config(ctx, config);
        }
    }

    /// Settle the matmul autotuner for products of this shape class (m, k, n rounded up to
    /// powers of two) now, by running products of zeros until it has chosen: the tuner is
    /// online (each new class's first products try the candidate kernels), so this moves
    /// that cost to a moment of the caller's choosing, before timing or serving. Returns the
    /// products run (0 on the CPU, when a configuration is forced, for problems too small to
    /// tune, or when the class is already settled or cached).
    pub fn tune_matmul(&self, m: usize, k: usize, n: usize) -> Result<usize> {
        let Backend::Gpu(ctx) = &self.inner.backend else {
            return Ok(0);
        };
        let plan = crate::matmul_plan::MatmulPlan::new(
            &crate::shape::Shape::new(&[m, k])?,
            &crate::shape::Shape::new(&[k, n])?,
        )?;
        gpu::kernels::matmul::settle(ctx, &plan)
    }

    pub(crate) fn gpu_context(&self) -> Option<&Arc<GpuContext>> {
        match &self.inner.backend {
            Backend::Cpu => None,
            Backend::Gpu(ctx) => Some(ctx),
        }
    }
}

impl PartialEq for Device {
    fn eq(&self, other: &Self) -> bool {
        self.same(other)
    }
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Device({} {})",
            self.inner.info.backend, self.inner.info.name
        )
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.inner.info.name, self.inner.info.backend)
    }
}
