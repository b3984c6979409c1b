//! The wgpu device behind a kiln `Device`: adapter, device, queue, limits, features, the buffer
//! pool, the pipeline cache, the open batch, and the capture of wgpu's errors.

use super::adapters::{self, OPTIONAL_FEATURES};
use super::capture::{CaptureLog, Dispatch};
use super::pipelines::{KernelSpec, PipelineCache};
use super::pool::{BufferPool, PooledBuffer};
use super::recorder::{MAX_BATCH, Recorder};
use crate::backend::MemoryStats;
use crate::error::{Error, Result};
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Workgroup size of every 1-D kernel (the `WG` override constant they are built with).
pub(crate) const WG_1D: u32 = 256;

pub(crate) struct GpuContext {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) limits: wgpu::Limits,
    pub(crate) features: wgpu::Features,
    /// (min, max) subgroup size, where SUBGROUP is granted.
    pub(crate) subgroups: Option<(u32, u32)>,
    pool: BufferPool,
    pipelines: PipelineCache,
    recorder: Mutex<Recorder>,
    /// `name backend driver` of the adapter: a key for what is measured on it.
    pub(crate) adapter_key: String,
    /// Per-device state of kernel families (the matmul tuner), by type; see [`GpuContext::state`].
    states: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
    /// Compute dispatches recorded since the device was opened.
    pub(crate) dispatches: AtomicU64,
    /// Of those, the ones captured graphs recorded again (`gpu::capture`).
    pub(crate) replayed: AtomicU64,
    /// Command buffers submitted since the device was opened.
    pub(crate) submissions: AtomicU64,
    /// The first error wgpu reported outside an error scope, returned by the next fallible call.
    error: Arc<Mutex<Option<Error>>>,
    /// The most loop iterations one invocation may run in all, where the driver ends longer
    /// loops silently (llvmpipe/lavapipe: 65,535, Mesa's `LP_MAX_TGSI_LOOP_ITERATIONS`).
    walk_cap: Option<u64>,
    /// Set once the device is lost (destroyed, or reported lost by the driver): from then on
    /// every call returns `Error::DeviceLost`.
    lost: Arc<AtomicBool>,
    /// Whether the adapter is a software rasterizer, whose invocations are SIMD lanes of CPU
    /// threads: a loop per invocation beats an integer division per element there.
    pub(crate) software: bool,
    /// The captures in progress (`gpu::capture`), at most one per thread: a capture keeps
    /// only what its own thread records.
    captures: Mutex<Vec<CaptureLog>>,
}

/// llvmpipe (and lavapipe, built on it) ends a shader's loops once their iterations, counted
/// together per invocation, reach this many, without an error.
const LLVMPIPE_LOOP_ITERATIONS: u64 = 65_535;

/// Parse a byte count with an optional K, M or G suffix (powers of 1024): `KILN_MEMORY_BUDGET`.
pub(crate) fn parse_bytes(text: &str) -> Result<u64> {
    let t = text.trim();
    let (digits, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c.to_ascii_uppercase()),
        _ => (t, 'B'),
    };
    let shift = match unit {
        'B' => 0,
        'K' => 10,
        'M' => 20,
        'G' => 30,
        _ => u32::MAX,
    };
    match digits.trim().parse::<u64>() {
        Ok(n) if shift != u32::MAX => n.checked_shl(shift).filter(|v| v >> shift == n),
        _ => None,
    }
    .ok_or_else(|| Error::InvalidArgument {
        op: "KILN_MEMORY_BUDGET",
        reason: format!("{text:?} is not a byte count such as 1073741824, 512M or 2G"),
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl GpuContext {
    /// Open a device on `adapter` with the adapter's own limits and the optional features it has.
    pub(crate) async fn open(adapter: &wgpu::Adapter) -> Result<Self> {
        let info = adapter.get_info();
        let wanted = OPTIONAL_FEATURES
            .iter()
            .fold(wgpu::Features::empty(), |acc, (f, _)| acc | *f);
        let features = adapter.features() & wanted;
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("kiln"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::NoAdapter {
                reason: format!("{} ({:?}) refused a device: {e}", info.name, info.backend),
            })?;

        // wgpu's default handler panics; record the error instead so that a call returns it.
        let budget = match std::env::var("KILN_MEMORY_BUDGET") {
            Ok(v) if !v.trim().is_empty() => Some(parse_bytes(&v)?),
            _ => None,
        };
        let error: Arc<Mutex<Option<Error>>> = Arc::default();
        let lost = Arc::new(AtomicBool::new(false));
        let slot = error.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            log::error!("wgpu: {e}");
            let err = match e {
                wgpu::Error::OutOfMemory { .. } => Error::OutOfMemory(e.to_string()),
                other => Error::Gpu(other.to_string()),
            };
            lock(&slot).get_or_insert(err);
        }));
        let (slot, flag) = (error.clone(), lost.clone());
        device.set_device_lost_callback(move |reason, message| {
            log::error!("wgpu device lost: {reason:?} {message}");
            let mut slot = lock(&slot);
            if !matches!(*slot, Some(Error::DeviceLost(_))) {
                *slot = Some(Error::DeviceLost(format!("{reason:?}: {message}")));
            }
            flag.store(true, Ordering::SeqCst);
        });
        log::info!(
            "opened {} ({:?}, {}), features {:?}",
            info.name,
            info.backend,
            adapters::type_name(info.device_type),
            adapters::feature_names(features)
        );
        let subgroups = features
            .contains(wgpu::Features::SUBGROUP)
            .then_some((info.subgroup_min_size, info.subgroup_max_size));
        let adapter_key = format!("{} {:?} {}", info.name, info.backend, info.driver_info);
        let software = adapters::is_software(&info);
        let walk_cap = (info.name.to_lowercase().contains("llvmpipe")
            || info.driver.to_lowercase().contains("llvmpipe"))
        .then_some(LLVMPIPE_LOOP_ITERATIONS);
        let pipelines = PipelineCache::open(&device, &info, features);
        Ok(GpuContext {
            pool: BufferPool::new(device.clone(), budget),
            device,
            queue,
            limits,
            features,
            subgroups,
            pipelines,
            adapter_key,
            states: Mutex::default(),
            dispatches: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            submissions: AtomicU64::new(0),
            recorder: Mutex::new(Recorder::default()),
            error,
            walk_cap,
            lost,
            software,
            captures: Mutex::default(),
        })
    }

    /// The state of type `T` that a kernel family keeps for this device, made by `init` on first
    /// use. Generic, so that the context knows nothing of the families (no import cycle).
    pub(crate) fn state<T: Any + Send + Sync>(&self, init: impl FnOnce(&Self) -> T) -> Arc<T> {
        let key = TypeId::of::<T>();
        let found = lock(&self.states).get(&key).cloned();
        let any = match found {
            Some(s) => s,
            // Made outside the lock (`init` may use the context); the first insert wins.
            None => {
                let made: Arc<dyn Any + Send + Sync> = Arc::new(init(self));
                lock(&self.states).entry(key).or_insert(made).clone()
            }
        };
        any.downcast::<T>()
            .unwrap_or_else(|_| unreachable!("states are keyed by their TypeId"))
    }

    /// Return (and clear) the error wgpu reported since the last check. A lost device stays lost.
    pub(crate) fn check(&self) -> Result<()> {
        self.check_lost()?;
        let mut slot = lock(&self.error);
        match slot.take() {
            None => Ok(()),
            Some(Error::DeviceLost(m)) => {
                *slot = Some(Error::DeviceLost(m.clone()));
                Err(Error::DeviceLost(m))
            }
            Some(e) => Err(e),
        }
    }

    /// `Error::Unsupported` if a kernel whose invocations run `iterations` loop iterations in
    /// all (the caller's bound for its shape) would be cut short by the driver, instead of a
    /// silently wrong result. Ops with a composite form fall back to it on this error.
    pub(crate) fn check_walk(&self, op: &'static str, iterations: usize) -> Result<()> {
        match self.walk_cap {
            Some(cap) if !self.walks(iterations) => Err(Error::Unsupported {
                op,
                reason: format!(
                    "one invocation would run {iterations} loop iterations, and this driver \
                     (llvmpipe) ends shader loops after {cap}"
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Whether a kernel whose invocations run `iterations` loop iterations in all runs to the
    /// end on this driver ([`GpuContext::check_walk`]).
    pub(crate) fn walks(&self, iterations: usize) -> bool {
        self.walk_cap.is_none_or(|cap| (iterations as u64) < cap)
    }

    /// `Error::DeviceLost` once the device is lost; one atomic load otherwise.
    pub(crate) fn check_lost(&self) -> Result<()> {
        if !self.lost.load(Ordering::SeqCst) {
            return Ok(());
        }
        let known = match &*lock(&self.error) {
            Some(Error::DeviceLost(m)) => m.clone(),
            _ => "lost".to_string(),
        };
        Err(Error::DeviceLost(known))
    }

    /// Whether the device is lost.
    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Lose the device on purpose (wgpu's `Device::destroy`): its memory is freed and every
    /// later call, and every readback already waiting, returns `Error::DeviceLost`.
    pub(crate) fn destroy(&self) {
        *lock(&self.error) = Some(Error::DeviceLost("destroyed by Device::destroy".into()));
        self.lost.store(true, Ordering::SeqCst);
        lock(&self.recorder).discard();
        self.device.destroy();
    }

    /// A buffer from the pool; when the pool refuses for lack of memory while released buffers
    /// wait for the open batch, submit it (so they can be freed) and ask once more.
    fn pooled(&self, get: impl Fn(&BufferPool) -> Result<PooledBuffer>) -> Result<PooledBuffer> {
        match get(&self.pool) {
            Err(Error::OutOfMemory(_)) if self.pool.has_deferred() => {
                self.submit(&mut lock(&self.recorder));
                get(&self.pool)
            }
            other => other,
        }
    }

    /// Free the idle buffers the pool holds, after submitting the open batch.
    pub(crate) fn trim(&self) {
        let mut rec = lock(&self.recorder);
        self.submit(&mut rec);
        self.pool.trim();
    }

    /// The memory budget, if one is set.
    pub(crate) fn memory_budget(&self) -> Option<u64> {
        self.pool.budget()
    }

    /// Set or lift the memory budget.
    pub(crate) fn set_memory_budget(&self, budget: Option<u64>) {
        self.pool.set_budget(budget);
    }

    /// Wait for the GPU to finish the submitted work. A device lost meanwhile (by the driver, or
    /// by another thread's `destroy`) ends the wait with `Error::DeviceLost`: the driver's wait
    /// fails, or the work finishes. (Not in time slices: wgpu 30 asserts, and panics, when a
    /// timed-out wait races with another thread's submission.)
    fn wait(&self) -> Result<()> {
        self.check_lost()?;
        let waited = self.device.poll(wgpu::PollType::wait_indefinitely());
        self.check_lost()?;
        waited
            .map(drop)
            .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))
    }

    /// The largest buffer, in bytes, that one tensor may occupy on this device.
    pub(crate) fn max_tensor_bytes(&self) -> u64 {
        self.limits
            .max_buffer_size
            .min(self.limits.max_storage_buffer_binding_size)
    }

    /// A buffer for `numel` f32 values that a kernel recorded next will write, checked against
    /// the device's limits.
    pub(crate) fn alloc(&self, op: &'static str, numel: usize) -> Result<PooledBuffer> {
        let bytes = self.check_size(op, numel)?;
        self.pooled(|p| p.output(bytes, self.max_tensor_bytes()))
    }

    /// Bytes for `numel` f32 values, or `TooLarge` if the device cannot hold them in one binding.
    fn check_size(&self, op: &'static str, numel: usize) -> Result<u64> {
        self.check()?;
        let requested = (numel as u64).saturating_mul(4);
        let limit = self.max_tensor_bytes();
        if requested > limit || numel > u32::MAX as usize {
            return Err(Error::TooLarge {
                op,
                requested,
                limit,
            });
        }
        Ok(requested)
    }

    /// Upload `data` into a buffer that no recorded work uses (see `pool`'s hazard note).
    pub(crate) fn upload(&self, op: &'static str, data: &[f32]) -> Result<PooledBuffer> {
        let bytes = self.check_size(op, data.len())?;
        {
            let rec = lock(&self.recorder);
            if rec.is_empty() {
                self.pool.recycle_deferred();
            }
        }
        let buf = self.pooled(|p| p.upload(bytes, self.max_tensor_bytes()))?;
        self.queue
            .write_buffer(&buf.buffer, 0, bytemuck::cast_slice(data));
        self.with_capture(|log| log.uploads += 1);
        Ok(buf)
    }

    /// Start keeping what this thread records on this device for a graph (`gpu::capture`).
    pub(crate) fn begin_capture(&self) -> Result<()> {
        if self.capturing() {
            return Err(Error::InvalidArgument {
                op: "capture",
                reason: "this thread is already capturing a step on this device".into(),
            });
        }
        self.resume_capture(CaptureLog::new());
        Ok(())
    }

    /// Stop this thread's capture: what was kept (its buffers stay pinned until the log's
    /// graph drops).
    pub(crate) fn end_capture(&self) -> Option<CaptureLog> {
        let me = std::thread::current().id();
        let mut logs = lock(&self.captures);
        let at = logs.iter().position(|l| l.thread == me)?;
        Some(logs.swap_remove(at))
    }

    /// Continue a capture that `end_capture` paused (`Device::capture_once`).
    pub(crate) fn resume_capture(&self, log: CaptureLog) {
        lock(&self.captures).push(log);
    }

    /// `f` on this thread's capture in progress, if there is one.
    pub(crate) fn with_capture<R>(&self, f: impl FnOnce(&mut CaptureLog) -> R) -> Option<R> {
        let me = std::thread::current().id();
        lock(&self.captures)
            .iter_mut()
            .find(|l| l.thread == me)
            .map(f)
    }

    /// Whether this thread is capturing a step on this device.
    pub(crate) fn capturing(&self) -> bool {
        self.with_capture(|_| ()).is_some()
    }

    /// See [`BufferPool::pin`].
    pub(crate) fn pin<'b>(&self, buffers: impl IntoIterator<Item = &'b wgpu::Buffer>) {
        self.pool.pin(buffers);
    }

    /// See [`BufferPool::unpin`].
    pub(crate) fn unpin(&self, buffers: &[wgpu::Buffer]) {
        self.pool.unpin(buffers);
    }

    /// Record a copy of the first `bytes` bytes of `src` into `dst` in the open batch.
    pub(crate) fn copy(&self, src: &wgpu::Buffer, dst: &wgpu::Buffer, bytes: u64) -> Result<()> {
        self.check_lost()?;
        let mut rec = lock(&self.recorder);
        rec.encoder(&self.device)
            .copy_buffer_to_buffer(src, 0, dst, 0, bytes);
        Ok(())
    }

    /// Record kept dispatches again, in order (a replay), all in the open batch: they do not
    /// count toward `MAX_BATCH` (see [`Recorder::planned`]), so a replay and the readback after
    /// it are one submission.
    pub(crate) fn record_all<'d>(
        &self,
        dispatches: impl Iterator<Item = (&'d wgpu::ComputePipeline, &'d wgpu::BindGroup, [u32; 3])>,
    ) -> Result<()> {
        self.check_lost()?;
        let mut rec = lock(&self.recorder);
        for (pipeline, bind_group, workgroups) in dispatches {
            self.dispatches.fetch_add(1, Ordering::Relaxed);
            self.replayed.fetch_add(1, Ordering::Relaxed);
            rec.dispatch_replayed(&self.device, pipeline, bind_group, workgroups);
        }
        Ok(())
    }

    /// Record one dispatch of `spec` with `buffers` bound at 0, 1, ... in order and `params` (a
    /// `#[repr(C)]` struct's bytes) as a uniform at the next binding.
    pub(crate) fn dispatch(
        &self,
        spec: &KernelSpec,
        buffers: &[&wgpu::Buffer],
        params: &[u8],
        workgroups: [u32; 3],
    ) -> Result<()> {
        self.check_lost()?;
        let pipeline = self.pipelines.get(&self.device, spec)?;
        let uniform = self.uniform(params)?;
        let mut entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        entries.push(wgpu::BindGroupEntry {
            binding: buffers.len() as u32,
            resource: uniform.as_entire_binding(),
        });
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(spec.entry),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        self.dispatches.fetch_add(1, Ordering::Relaxed);
        log::trace!("dispatch {}:{}", spec.shader.name(), spec.entry);
        self.with_capture(|log| {
            log.pin(self, buffers);
            log.dispatches.push(Dispatch {
                pipeline: pipeline.clone(),
                bind_group: bind_group.clone(),
                workgroups,
                refresh: super::capture::current_refresh().map(|r| (uniform.clone(), r)),
            });
        });
        let mut rec = lock(&self.recorder);
        rec.dispatch(&self.device, &pipeline, &bind_group, workgroups);
        if rec.planned() >= MAX_BATCH {
            self.submit(&mut rec);
        }
        Ok(())
    }

    /// A uniform buffer holding `params`. Written through a mapping rather than wgpu's
    /// `create_buffer_init`, which panics when the device is lost while it runs.
    fn uniform(&self, params: &[u8]) -> Result<wgpu::Buffer> {
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("kiln params"),
            size: (params.len() as u64)
                .next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT)
                .max(16),
            // COPY_DST: a replay may rewrite it (`gpu::capture`).
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: true,
        });
        match buffer.get_mapped_range_mut(..) {
            Ok(mut view) => view.slice(..params.len()).copy_from_slice(params),
            Err(e) => {
                self.check_lost()?;
                return Err(Error::Gpu(format!("writing a uniform buffer: {e}")));
            }
        }
        buffer.unmap();
        Ok(buffer)
    }

    /// Record a dispatch of a 1-D kernel (workgroup size `WG_1D`) covering `threads` invocations,
    /// on a grid folded into 2-D past the per-dimension limit.
    pub(crate) fn dispatch_1d(
        &self,
        op: &'static str,
        spec: &KernelSpec,
        buffers: &[&wgpu::Buffer],
        params: &[u8],
        threads: usize,
    ) -> Result<()> {
        let grid = self.grid_1d(op, (threads as u64).div_ceil(u64::from(WG_1D)))?;
        self.dispatch(spec, buffers, params, grid)
    }

    /// A grid of `groups` workgroups laid out in x, folded into y past the per-dimension limit.
    pub(crate) fn grid_1d(&self, op: &'static str, groups: u64) -> Result<[u32; 3]> {
        let max = u64::from(self.limits.max_compute_workgroups_per_dimension);
        let x = groups.clamp(1, max);
        let y = groups.div_ceil(x);
        if y > max {
            return Err(Error::TooLarge {
                op,
                requested: groups,
                limit: max * max,
            });
        }
        Ok([x as u32, y as u32, 1])
    }

    fn submit(&self, rec: &mut Recorder) {
        if self.is_lost() {
            rec.discard();
        } else if let Some(cmd) = rec.finish() {
            self.queue.submit([cmd]);
            self.submissions.fetch_add(1, Ordering::Relaxed);
        }
        self.pool.recycle_deferred();
    }

    /// Submit the open batch.
    pub(crate) fn flush(&self) -> Result<()> {
        self.submit(&mut lock(&self.recorder));
        self.check()
    }

    /// Submit the open batch and wait for the GPU to finish it.
    pub(crate) fn synchronize(&self) -> Result<()> {
        self.flush()?;
        self.wait()?;
        self.check()
    }

    /// Copy the first `numel` values of `src` to a staging buffer and submit, with everything
    /// recorded before it; returns the staging buffer and a receiver that fires once it is mapped.
    fn start_read(&self, src: &PooledBuffer, numel: usize) -> Result<(PooledBuffer, ReadSignal)> {
        self.check()?;
        if self.capturing() {
            return Err(Error::Unsupported {
                op: "capture",
                reason: "a captured step reads values back to the host; a replay could not \
                         repeat that (read the graph's outputs after it runs instead)"
                    .into(),
            });
        }
        let bytes = numel as u64 * 4;
        let staging = self.pooled(|p| p.staging(bytes, self.limits.max_buffer_size))?;
        {
            let mut rec = lock(&self.recorder);
            rec.encoder(&self.device).copy_buffer_to_buffer(
                &src.buffer,
                0,
                &staging.buffer,
                0,
                bytes,
            );
            self.submit(&mut rec);
        }
        let (tx, rx) = futures::channel::oneshot::channel();
        staging
            .buffer
            .slice(0..bytes)
            .map_async(wgpu::MapMode::Read, move |r| {
                let _ =
                    tx.send(r.map_err(|e| Error::Gpu(format!("mapping a readback buffer: {e}"))));
            });
        Ok((staging, rx))
    }

    fn finish_read(
        &self,
        staging: PooledBuffer,
        numel: usize,
        mapped: MapResult,
    ) -> Result<Vec<f32>> {
        let failed = match mapped {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(Error::Gpu("readback was cancelled".into())),
        };
        let bytes = numel as u64 * 4;
        let read = match failed {
            None => staging
                .buffer
                .slice(0..bytes)
                .get_mapped_range()
                .map(|view| {
                    let mut out = vec![0f32; numel];
                    bytemuck::cast_slice_mut(&mut out).copy_from_slice(&view);
                    out
                })
                .map_err(|e| Error::Gpu(format!("reading a mapped buffer: {e}"))),
            Some(e) => Err(e),
        };
        match read {
            Ok(out) => {
                staging.buffer.unmap();
                self.check()?;
                Ok(out)
            }
            Err(e) => {
                // Its mapping may still complete later: never hand it out again.
                staging.discard();
                self.check()?;
                Err(e)
            }
        }
    }

    /// Blocking readback of the first `numel` values of `src`.
    pub(crate) fn read(&self, src: &PooledBuffer, numel: usize) -> Result<Vec<f32>> {
        if cfg!(target_arch = "wasm32") {
            return Err(Error::Unsupported {
                op: "to_vec",
                reason: "a browser cannot block while the GPU works; await the asynchronous \
                         read-back (to_vec_async) instead"
                    .into(),
            });
        }
        let (staging, mut rx) = self.start_read(src, numel)?;
        // Another thread polling the same device may be the one that runs our map callback, a
        // moment after our own poll returns: keep polling until the callback has run.
        let mapped = loop {
            match rx.try_recv() {
                Ok(Some(r)) => break Ok(r),
                Ok(None) => match self.wait() {
                    Ok(()) => std::thread::yield_now(),
                    Err(e) => break Ok(Err(e)),
                },
                Err(canceled) => break Err(canceled),
            }
        };
        self.finish_read(staging, numel, mapped)
    }

    /// Readback as a future. A helper thread drives `Device::poll` so the caller's executor is
    /// never blocked; in the browser, the page's event loop runs the map callback.
    pub(crate) async fn read_async(
        self: Arc<Self>,
        src: &PooledBuffer,
        numel: usize,
    ) -> Result<Vec<f32>> {
        let (staging, rx) = self.start_read(src, numel)?;
        #[cfg(target_arch = "wasm32")]
        let mapped = rx.await;
        #[cfg(not(target_arch = "wasm32"))]
        let mapped = {
            // The helper waits for the GPU; if its wait fails (a lost device), the future ends
            // with that error instead of waiting for a map callback that may never run.
            let (done_tx, done_rx) = futures::channel::oneshot::channel::<Result<()>>();
            let ctx = self.clone();
            std::thread::spawn(move || {
                let _ = done_tx.send(ctx.wait());
            });
            match futures::future::select(rx, done_rx).await {
                futures::future::Either::Left((mapped, _)) => mapped,
                futures::future::Either::Right((waited, rx)) => match waited {
                    Ok(Err(e)) => Ok(Err(e)),
                    _ => rx.await,
                },
            }
        };
        self.finish_read(staging, numel, mapped)
    }

    /// GPU time of the compute passes that `f` records, from timestamp queries; `None` where
    /// TIMESTAMP_QUERY is not granted, or in the browser, where the timestamps could be read
    /// only asynchronously (then `f` still runs). At most 64 passes are timed.
    pub(crate) fn time(
        &self,
        f: impl FnOnce() -> Result<()>,
    ) -> Result<Option<std::time::Duration>> {
        if !self.features.contains(wgpu::Features::TIMESTAMP_QUERY) || cfg!(target_arch = "wasm32")
        {
            f()?;
            self.synchronize()?;
            return Ok(None);
        }
        self.synchronize()?;
        let capacity = 128;
        let set = self.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("kiln timing"),
            ty: wgpu::QueryType::Timestamp,
            count: capacity,
        });
        lock(&self.recorder).timing = Some(super::recorder::Timing {
            set,
            next: 0,
            capacity,
        });
        let ran = f();
        let timing = {
            let mut rec = lock(&self.recorder);
            self.submit(&mut rec);
            rec.timing.take()
        };
        ran?;
        let Some(t) = timing.filter(|t| t.next > 0) else {
            self.synchronize()?;
            return Ok(Some(std::time::Duration::ZERO));
        };
        let bytes = u64::from(t.next) * 8;
        let resolve = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("kiln timing resolve"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let read = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("kiln timing read"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("kiln timing"),
            });
        encoder.resolve_query_set(&t.set, 0..t.next, &resolve, 0);
        encoder.copy_buffer_to_buffer(&resolve, 0, &read, 0, bytes);
        self.queue.submit([encoder.finish()]);
        let (tx, mut rx) = futures::channel::oneshot::channel();
        read.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        loop {
            match rx.try_recv() {
                Ok(Some(Ok(()))) => break,
                Ok(Some(Err(e))) => {
                    self.check_lost()?;
                    return Err(Error::Gpu(format!("mapping timestamps: {e}")));
                }
                Ok(None) => self.wait()?,
                Err(_) => return Err(Error::Gpu("timestamp readback was cancelled".into())),
            }
        }
        let ticks: Vec<u64> = {
            let view = read
                .slice(..)
                .get_mapped_range()
                .map_err(|e| Error::Gpu(format!("reading timestamps: {e}")))?;
            bytemuck::cast_slice(&view).to_vec()
        };
        read.unmap();
        self.check()?;
        let period = f64::from(self.queue.get_timestamp_period());
        let ns: f64 = ticks
            .chunks(2)
            .map(|p| p[1].saturating_sub(p[0]) as f64 * period)
            .sum();
        Ok(Some(std::time::Duration::from_nanos(ns as u64)))
    }

    pub(crate) fn memory(&self) -> MemoryStats {
        self.pool.stats()
    }

    pub(crate) fn pipeline_count(&self) -> usize {
        self.pipelines.len()
    }
}

type MapResult = std::result::Result<Result<()>, futures::channel::oneshot::Canceled>;
type ReadSignal = futures::channel::oneshot::Receiver<Result<()>>;
