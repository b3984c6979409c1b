//! A pool of GPU buffers keyed by size class, within an optional memory budget.
//!
//! A dropped tensor's buffer comes back here for reuse. Hazard: `Queue::write_buffer` is ordered
//! before the next submitted command buffer, so a buffer that a recorded but unsubmitted dispatch
//! still reads must not be handed to an upload. Released buffers therefore wait in `deferred`
//! until the open batch is submitted (`recycle_deferred`, called by the recorder's flush, or by
//! an allocation that finds no batch open). A deferred buffer may still become the *output* of a
//! later dispatch in the same batch: dispatches run in recording order, and wgpu puts a barrier
//! between a dispatch that reads a buffer and a later one that writes it.
//!
//! Memory: every buffer the pool made and has not freed counts, lent or idle. A new buffer that
//! would take the total over the budget first frees idle buffers (the pool trims itself); if
//! that is not enough the request fails with `Error::OutOfMemory` and nothing else changes. A
//! failure of the driver to allocate (wgpu's out-of-memory error, caught in an error scope) is
//! handled the same way: idle buffers are freed and the allocation is tried once more.

use super::scope;
use crate::backend::MemoryStats;
use crate::error::{Error, Result};
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
    /// Bytes of the buffers in `free`.
    cached_bytes: u64,
    /// Bytes of the buffers in `deferred`.
    deferred_bytes: u64,
    live: usize,
    live_bytes: u64,
    peak_bytes: u64,
    created: usize,
    budget: Option<u64>,
    /// Buffers that captured graphs use, with how many graphs use each: released, they wait
    /// in `parked` instead of being lent again, since a replay will still write or read them.
    pinned: HashMap<wgpu::Buffer, usize>,
    /// Released buffers that a live graph still uses (counted as live).
    parked: Vec<(Kind, u64, wgpu::Buffer)>,
}

impl State {
    /// Bytes of every buffer the pool holds or has lent.
    fn total(&self) -> u64 {
        self.live_bytes + self.cached_bytes + self.deferred_bytes
    }

    /// Free idle buffers, largest first, until at most `keep` bytes of them are left.
    fn trim_free(&mut self, keep: u64) {
        if self.cached_bytes <= keep {
            return;
        }
        let mut keys: Vec<(Kind, u64)> = self.free.keys().copied().collect();
        keys.sort_by_key(|&(_, class)| std::cmp::Reverse(class));
        for key in keys {
            while self.cached_bytes > keep {
                let Some(b) = self.free.get_mut(&key).and_then(Vec::pop) else {
                    break;
                };
                b.destroy();
                self.cached_bytes -= key.1;
            }
        }
        self.free.retain(|_, v| !v.is_empty());
    }

    fn lend(&mut self, class: u64) {
        self.live += 1;
        self.live_bytes += class;
        self.peak_bytes = self.peak_bytes.max(self.total());
    }
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
    /// Destroy the buffer when dropped instead of pooling it ([`PooledBuffer::discard`]).
    discard: bool,
}

impl PooledBuffer {
    /// Free the buffer instead of returning it to the pool: for a staging buffer whose mapping
    /// did not finish (it may still become mapped, and a mapped buffer must not be reused).
    pub(crate) fn discard(mut self) {
        self.discard = true;
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        let mut st = lock(&self.state);
        if st.pinned.contains_key(&self.buffer) {
            st.parked.push((self.kind, self.class, self.buffer.clone()));
            return;
        }
        st.live -= 1;
        st.live_bytes -= self.class;
        if self.discard {
            self.buffer.destroy();
            return;
        }
        st.deferred_bytes += self.class;
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
    pub(crate) fn new(device: wgpu::Device, budget: Option<u64>) -> Self {
        BufferPool {
            device,
            state: Arc::new(Mutex::new(State {
                budget,
                ..State::default()
            })),
        }
    }

    /// A storage buffer of at least `bytes` bytes (contents undefined) that only GPU commands
    /// recorded from now on will write. `max` is the largest buffer the device allows; the
    /// caller has checked `bytes <= max`.
    pub(crate) fn output(&self, bytes: u64, max: u64) -> Result<PooledBuffer> {
        self.get(Kind::Storage, bytes, max, true)
    }

    /// A storage buffer that `Queue::write_buffer` may fill: never one that the open batch uses.
    pub(crate) fn upload(&self, bytes: u64, max: u64) -> Result<PooledBuffer> {
        self.get(Kind::Storage, bytes, max, false)
    }

    /// A MAP_READ staging buffer of at least `bytes` bytes.
    pub(crate) fn staging(&self, bytes: u64, max: u64) -> Result<PooledBuffer> {
        self.get(Kind::Staging, bytes, max, true)
    }

    fn get(
        &self,
        kind: Kind,
        bytes: u64,
        max: u64,
        may_use_deferred: bool,
    ) -> Result<PooledBuffer> {
        let class = size_class(bytes, max);
        let mut st = lock(&self.state);
        let mut reused = st.free.get_mut(&(kind, class)).and_then(Vec::pop);
        if reused.is_some() {
            st.cached_bytes -= class;
        } else if may_use_deferred {
            reused = st.deferred.get_mut(&(kind, class)).and_then(Vec::pop);
            if reused.is_some() {
                st.deferred_bytes -= class;
            }
        }
        if let Some(buffer) = reused {
            st.lend(class);
            return Ok(self.loan(buffer, kind, class));
        }
        if let Some(budget) = st.budget {
            // Under pressure: free idle buffers to make room before refusing.
            let others = st.live_bytes + st.deferred_bytes + class;
            st.trim_free(budget.saturating_sub(others));
            if st.total() + class > budget {
                return Err(self.refusal(&st, class, "over the memory budget"));
            }
        }
        st.created += 1;
        st.lend(class);
        drop(st);
        log::trace!("pool: new {kind:?} buffer of {class} bytes");
        match self.create(kind, class) {
            Ok(buffer) => Ok(self.loan(buffer, kind, class)),
            Err(first) => {
                // The driver refused: free every idle buffer and try once more.
                lock(&self.state).trim_free(0);
                match self.create(kind, class) {
                    Ok(buffer) => Ok(self.loan(buffer, kind, class)),
                    Err(_) => {
                        let mut st = lock(&self.state);
                        st.live -= 1;
                        st.live_bytes -= class;
                        Err(self.refusal(&st, class, &first))
                    }
                }
            }
        }
    }

    fn refusal(&self, st: &State, class: u64, why: &str) -> Error {
        Error::OutOfMemory(format!(
            "a buffer of {class} bytes: {why} (live {} bytes, pooled {} bytes, budget {})",
            st.live_bytes,
            st.cached_bytes + st.deferred_bytes,
            st.budget
                .map_or("none".to_string(), |b| format!("{b} bytes")),
        ))
    }

    /// A new buffer, or the driver's out-of-memory message.
    fn create(&self, kind: Kind, class: u64) -> std::result::Result<wgpu::Buffer, String> {
        let (buffer, error) = scope::catch(&self.device, wgpu::ErrorFilter::OutOfMemory, || {
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
        });
        match error {
            None => Ok(buffer),
            Some(e) => {
                log::warn!("pool: the driver refused {class} bytes: {e}");
                Err(e.to_string())
            }
        }
    }

    fn loan(&self, buffer: wgpu::Buffer, kind: Kind, class: u64) -> PooledBuffer {
        PooledBuffer {
            buffer,
            kind,
            class,
            state: self.state.clone(),
            discard: false,
        }
    }

    /// Keep `buffers` from being lent again while a captured graph uses them (see `State::pinned`).
    pub(crate) fn pin<'b>(&self, buffers: impl IntoIterator<Item = &'b wgpu::Buffer>) {
        let mut st = lock(&self.state);
        for b in buffers {
            *st.pinned.entry(b.clone()).or_default() += 1;
        }
    }

    /// Undo one `pin` of each of `buffers`: those no graph uses any more and whose tensors are
    /// gone are released as a dropped tensor's buffer is (after the open batch is submitted).
    pub(crate) fn unpin(&self, buffers: &[wgpu::Buffer]) {
        let mut st = lock(&self.state);
        for b in buffers {
            if let Some(n) = st.pinned.get_mut(b) {
                *n -= 1;
                if *n == 0 {
                    st.pinned.remove(b);
                }
            }
        }
        let parked = std::mem::take(&mut st.parked);
        for (kind, class, buffer) in parked {
            if st.pinned.contains_key(&buffer) {
                st.parked.push((kind, class, buffer));
                continue;
            }
            st.live -= 1;
            st.live_bytes -= class;
            st.deferred_bytes += class;
            st.deferred.entry((kind, class)).or_default().push(buffer);
        }
    }

    /// Whether released buffers wait for the open batch to be submitted (submitting it and
    /// recycling them may make room).
    pub(crate) fn has_deferred(&self) -> bool {
        lock(&self.state).deferred_bytes > 0
    }

    /// Make the buffers released so far available for reuse. Call only when no recorded work is
    /// waiting to be submitted (see the module docs).
    pub(crate) fn recycle_deferred(&self) {
        let mut st = lock(&self.state);
        let deferred = std::mem::take(&mut st.deferred);
        st.deferred_bytes = 0;
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

    /// Free every idle buffer. Call only when no recorded work is waiting to be submitted.
    pub(crate) fn trim(&self) {
        self.recycle_deferred();
        lock(&self.state).trim_free(0);
    }

    /// The memory budget, if one is set.
    pub(crate) fn budget(&self) -> Option<u64> {
        lock(&self.state).budget
    }

    /// Set (or lift, with `None`) the memory budget; idle buffers over it are freed now.
    pub(crate) fn set_budget(&self, budget: Option<u64>) {
        let mut st = lock(&self.state);
        st.budget = budget;
        if let Some(b) = budget {
            let others = st.live_bytes + st.deferred_bytes;
            st.trim_free(b.saturating_sub(others));
        }
    }

    pub(crate) fn stats(&self) -> MemoryStats {
        let st = lock(&self.state);
        MemoryStats {
            live: st.live,
            live_bytes: st.live_bytes,
            cached: st
                .free
                .values()
                .chain(st.deferred.values())
                .map(Vec::len)
                .sum(),
            pooled_bytes: st.cached_bytes + st.deferred_bytes,
            peak_bytes: st.peak_bytes,
            created: st.created,
            budget: st.budget,
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
