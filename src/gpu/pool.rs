//! A pool of GPU buffers keyed by size class.
//!
//! A dropped tensor's buffer comes back here for reuse. Hazard: `Queue::write_buffer` is ordered
//! before the next submitted command buffer, so a buffer that a recorded but unsubmitted dispatch
//! still reads must not be handed to an upload. Released buffers therefore wait in `deferred`
//! until the open batch is submitted (`recycle_deferred`, called by the recorder's flush, or by
//! an allocation that finds no batch open). A deferred buffer may still become the *output* of a
//! later dispatch in the same batch: dispatches run in recording order, and wgpu puts a barrier
//! between a dispatch that reads a buffer and a later one that writes it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Usage of the buffers that hold tensor data.
const STORAGE_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);
/// Usage of the staging buffers for readback.
const STAGING_USAGE: wgpu::BufferUsages =
    wgpu::BufferUsages::MAP_READ.union(wgpu::BufferUsages::COPY_DST);
/// The pool keeps at most this many bytes of idle buffers; beyond it, released buffers are freed.
const MAX_CACHED_BYTES: u64 = 2 << 30;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    Storage,
    Staging,
}

#[derive(Default)]
struct State {
    free: HashMap<(Kind, u64), Vec<wgpu::Buffer>>,
    deferred: HashMap<(Kind, u64), Vec<wgpu::Buffer>>,
    cached_bytes: u64,
    live: usize,
    live_bytes: u64,
    created: usize,
}

/// Counters describing the pool, for tests and diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    /// Buffers held by live tensors (or in-flight readbacks).
    pub live: usize,
    /// Bytes of those buffers (rounded up to their size class).
    pub live_bytes: u64,
    /// Idle buffers held for reuse, including those waiting for the open batch to be submitted.
    pub cached: usize,
    /// Buffers created since the device was made.
    pub created: usize,
}

pub(crate) struct BufferPool {
    device: wgpu::Device,
    state: Arc<Mutex<State>>,
}

/// A buffer on loan from the pool; it goes back when dropped.
pub(crate) struct PooledBuffer {
    pub(crate) buffer: wgpu::Buffer,
    kind: Kind,
    class: u64,
    state: Arc<Mutex<State>>,
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        let mut st = lock(&self.state);
        st.live -= 1;
        st.live_bytes -= self.class;
        st.deferred
            .entry((self.kind, self.class))
            .or_default()
            .push(self.buffer.clone());
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic elsewhere while holding the lock leaves the counters usable; keep going.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Round a request up to its size class: 256 bytes at least, then steps of a quarter of the
/// power of two below it (at most 25% waste), never above `max`.
pub(crate) fn size_class(bytes: u64, max: u64) -> u64 {
    let bytes = bytes.max(4);
    if bytes <= 256 {
        return 256.min(max).max(bytes);
    }
    let pow = 1u64 << (63 - bytes.leading_zeros());
    let step = (pow / 4).max(4);
    let class = bytes.div_ceil(step) * step;
    if class > max { bytes } else { class }
}

impl BufferPool {
    pub(crate) fn new(device: wgpu::Device) -> Self {
        BufferPool {
            device,
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    /// A storage buffer of at least `bytes` bytes (contents undefined) that only GPU commands
    /// recorded from now on will write. `max` is the largest buffer the device allows; the
    /// caller has checked `bytes <= max`.
    pub(crate) fn output(&self, bytes: u64, max: u64) -> PooledBuffer {
        self.get(Kind::Storage, bytes, max, true)
    }

    /// A storage buffer that `Queue::write_buffer` may fill: never one that the open batch uses.
    pub(crate) fn upload(&self, bytes: u64, max: u64) -> PooledBuffer {
        self.get(Kind::Storage, bytes, max, false)
    }

    /// A MAP_READ staging buffer of at least `bytes` bytes.
    pub(crate) fn staging(&self, bytes: u64, max: u64) -> PooledBuffer {
        self.get(Kind::Staging, bytes, max, true)
    }

    fn get(&self, kind: Kind, bytes: u64, max: u64, may_use_deferred: bool) -> PooledBuffer {
        let class = size_class(bytes, max);
        let mut st = lock(&self.state);
        st.live += 1;
        st.live_bytes += class;
        let mut reused = st.free.get_mut(&(kind, class)).and_then(Vec::pop);
        if reused.is_some() {
            st.cached_bytes -= class;
        } else if may_use_deferred {
            reused = st.deferred.get_mut(&(kind, class)).and_then(Vec::pop);
        }
        let buffer = match reused {
            Some(b) => b,
            None => {
                st.created += 1;
                drop(st);
                log::trace!("pool: new {kind:?} buffer of {class} bytes");
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(match kind {
                        Kind::Storage => "kiln tensor",
                        Kind::Staging => "kiln staging",
                    }),
                    size: class,
                    usage: match kind {
                        Kind::Storage => STORAGE_USAGE,
                        Kind::Staging => STAGING_USAGE,
                    },
                    mapped_at_creation: false,
                })
            }
        };
        PooledBuffer {
            buffer,
            kind,
            class,
            state: self.state.clone(),
        }
    }

    /// Make the buffers released so far available for reuse. Call only when no recorded work is
    /// waiting to be submitted (see the module docs).
    pub(crate) fn recycle_deferred(&self) {
        let mut st = lock(&self.state);
        let deferred = std::mem::take(&mut st.deferred);
        for ((kind, class), buffer) in deferred
            .into_iter()
            .flat_map(|(k, v)| v.into_iter().map(move |b| (k, b)))
        {
            if st.cached_bytes + class > MAX_CACHED_BYTES {
                buffer.destroy();
                continue;
            }
            st.cached_bytes += class;
            st.free.entry((kind, class)).or_default().push(buffer);
        }
    }

    pub(crate) fn stats(&self) -> PoolStats {
        let st = lock(&self.state);
        PoolStats {
            live: st.live,
            live_bytes: st.live_bytes,
            cached: st
                .free
                .values()
                .chain(st.deferred.values())
                .map(Vec::len)
                .sum(),
            created: st.created,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_waste_at_most_a_quarter() {
        assert_eq!(size_class(1, u64::MAX), 256);
        assert_eq!(size_class(256, u64::MAX), 256);
        assert_eq!(size_class(257, u64::MAX), 320);
        assert_eq!(size_class(1 << 20, u64::MAX), 1 << 20);
        for bytes in [300u64, 1000, 4097, 123_456_789] {
            let c = size_class(bytes, u64::MAX);
            assert!(
                c >= bytes && c as f64 <= bytes as f64 * 1.25 + 4.0,
                "{bytes} -> {c}"
            );
        }
        assert_eq!(size_class(1000, 1000), 1000);
    }
}
