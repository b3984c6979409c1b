//! The CPU backend: the reference the GPU is checked against, and the fallback when no adapter
//! exists. Large matmuls use kiln's SGEMM where the CPU has AVX-512F or AVX2 + FMA (`sgemm/`), the
//! rest `matrixmultiply` (threaded); the SGEMM and every parallel loop run on kiln's own worker
//! pool (`spin_pool.rs`, through [`par_chunks_mut`] for loops), whose threads stay awake between
//! ops; rayon only takes a job the pool cannot (another thread's, while it is busy).

mod attention;
mod conv;
mod conv_gemm;
mod conv_tile;
mod depthwise;
mod depthwise3;
pub(crate) mod device;
mod elementwise;
mod fft;
pub(crate) mod fused;
mod grad;
mod half;
mod index;
mod matmul;
mod optim;
mod phases;
mod qdot;
mod qmatmul;
mod reduce;
mod rope;
pub(crate) mod row_groups;
mod scan;
#[cfg(target_arch = "x86_64")]
mod sgemm;
mod spin_pool;
pub(crate) mod storage;
mod strided;

pub(crate) use attention::{attention, attention_backward};
pub(crate) use conv::{conv2d, pool2d};
pub(crate) use elementwise::{binary, fill, unary};
pub(crate) use grad::{
    conv2d_grad_input, conv2d_grad_weight, index_select_grad, pool2d_grad, scatter_add, unary_grad,
};
pub(crate) use index::{gather, group_by_row, index_copy, index_select, where_};
pub(crate) use matmul::{linear, matmul, matmul_then};
pub(crate) use optim::update;
pub(crate) use reduce::{
    argmax, cross_entropy_grad, cross_entropy_rows, norm, norm_backward, norm_param_grads, reduce,
    softmax,
};
pub(crate) use rope::rope;
pub(crate) use scan::{cumsum, topk};
pub(crate) use strided::{pad, strided_copy};

use crate::error::{Error, Result};
use std::mem::MaybeUninit;

/// Starts the CPU backend: its worker threads (see `spin_pool.rs`), so that the first ops do
/// not wait for them, and [`keep_freed_memory`].
pub(crate) fn start_workers() {
    spin_pool::start();
    keep_freed_memory();
}

/// Asks glibc's allocator to keep freed memory for reuse instead of handing it back to the
/// kernel: buffers up to 32 MiB come from the heap rather than from their own mapping, and the
/// heap is not trimmed below 1 GiB. Every op's output is a fresh buffer, and glibc's defaults
/// (a mapping per buffer over 128 KiB, returned when it is freed) made each one pay a page
/// fault per 4 KiB on first touch: on a small ONNX network on the CPU, a third of the run.
/// Process-wide and once; `KILN_CPU_KEEP_FREED=0` leaves the allocator alone.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            if std::env::var("KILN_CPU_KEEP_FREED").is_ok_and(|v| v.trim() == "0") {
                return;
            }
            // SAFETY: mallopt only changes the allocator's thresholds; it is safe to call at
            // any time (glibc takes its own lock).
            let ok = unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1
                    && libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30) == 1
            };
            log::debug!("kiln CPU: keep freed memory for reuse (mallopt ok: {ok})");
        });
    }
}

/// A piece of work whose plain f32 loops vectorise: [`widest`] compiles it for the CPU's widest
/// vectors. Its `run` must be `#[inline(always)]`, so that it is compiled into each of
/// `widest`'s per-ISA functions (a closure would be compiled once, for the baseline).
pub(crate) trait Wide {
    /// What the work returns.
    type Out;
    /// The work.
    fn run(self) -> Self::Out;
}

/// `k.run()` compiled for the widest vectors this CPU has (AVX-512F, else AVX2, else the
/// build's baseline, SSE2 on x86-64; `KILN_CPU_WIDEST=avx2` or `=baseline` caps it, for tests
/// and comparisons). The values are the same on each: Rust never fuses a multiply and an add,
/// and every lane computes the same operations.
#[inline]
pub(crate) fn widest<K: Wide>(k: K) -> K::Out {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
        fn avx512<K: Wide>(k: K) -> K::Out {
            k.run()
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2<K: Wide>(k: K) -> K::Out {
            k.run()
        }
        static ISA: std::sync::OnceLock<u8> = std::sync::OnceLock::new();
        let isa = *ISA.get_or_init(|| {
            let has = |f: &str| match f {
                "avx512" => {
                    std::arch::is_x86_feature_detected!("avx512f")
                        && std::arch::is_x86_feature_detected!("avx512bw")
                        && std::arch::is_x86_feature_detected!("avx512dq")
                        && std::arch::is_x86_feature_detected!("avx512vl")
                }
                _ => {
                    std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                }
            };
            let best = match (has("avx512") && has("avx2"), has("avx2")) {
                (true, _) => 2,
                (_, true) => 1,
                _ => 0,
            };
            match std::env::var("KILN_CPU_WIDEST").as_deref() {
                Ok("baseline") => 0,
                Ok("avx2") => best.min(1),
                _ => best,
            }
        });
        match isa {
            // SAFETY: the CPU has these features, checked above.
            2 => return unsafe { avx512(k) },
            // SAFETY: as above.
            1 => return unsafe { avx2(k) },
            _ => {}
        }
    }
    k.run()
}

/// Work applied to each finished row of a product, given the row's index in the whole output
/// (rows numbered across batches): a matmul's fused bias and activation, a convolution's bias
/// per channel.
pub(crate) type RowEpilogue<'e> = &'e (dyn Fn(usize, &mut [f32]) + Sync);

/// Outputs of at least this many values are split over kiln's worker pool (`spin_pool`); below
/// it (about 100 µs of work) waking a worker can cost more than it saves.
const PARALLEL_MIN: usize = 1 << 18;

/// Fills the first `n` values of `out`'s spare capacity with `fill(start, piece)`, over the
/// worker pool for large `n`, and sets its length.
///
/// # Safety
/// `fill` writes every value of each piece it is given (or panics).
pub(crate) unsafe fn fill_spare(
    out: &mut Vec<f32>,
    n: usize,
    fill: &(dyn Fn(usize, &mut [MaybeUninit<f32>]) + Sync),
) {
    let spare = &mut out.spare_capacity_mut()[..n];
    if n >= PARALLEL_MIN {
        let per = n.div_ceil(spin_pool::width());
        spin_pool::run_claimed(spare, per, &|t, piece| fill(t * per, piece));
    } else {
        fill(0, spare);
    }
    // SAFETY: every piece was filled completely (the caller's contract).
    unsafe { out.set_len(n) };
}

/// Work (multiply-adds or values touched) below which a loop stays on the calling thread:
/// waking a pool worker costs tens of microseconds, about this much arithmetic.
const PARALLEL_WORK: usize = 1 << 16;

/// Calls `f(i, chunk)` for the consecutive `chunk`-value pieces of `data` (the last may be
/// shorter), split into one contiguous run of pieces per thread of kiln's worker pool
/// (`spin_pool`, whose workers stay awake between jobs), or all on the calling thread when the
/// whole loop is less than [`PARALLEL_WORK`] (`work` is the cost of one piece). Used instead of
/// rayon's `par_chunks_mut` for the CPU backend's loops: rayon's workers fall asleep between
/// the many small ops of a network and each op paid for waking them, and two pools spinning
/// on two cores slowed each other down.
pub(crate) fn par_chunks_mut<T: Send>(
    data: &mut [T],
    chunk: usize,
    work: usize,
    f: &(dyn Fn(usize, &mut [T]) + Sync),
) {
    let chunk = chunk.max(1);
    let count = data.len().div_ceil(chunk);
    let threads = spin_pool::width().min(count);
    if threads <= 1 || count.saturating_mul(work) < PARALLEL_WORK {
        data.chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
        return;
    }
    let per = count.div_ceil(threads);
    spin_pool::run_claimed(data, per * chunk, &|t, run| {
        for (j, c) in run.chunks_mut(chunk).enumerate() {
            f(t * per + j, c);
        }
    });
}

/// [`par_chunks_mut`] with the pieces claimed dynamically (`spin_pool::run_claimed`), `claim`
/// pieces at a time: for loops whose pieces are many and even, where a slowed core should take
/// fewer of them.
pub(crate) fn par_chunks_claimed<T: Send>(
    data: &mut [T],
    chunk: usize,
    claim: usize,
    work: usize,
    f: &(dyn Fn(usize, &mut [T]) + Sync),
) {
    let chunk = chunk.max(1);
    let count = data.len().div_ceil(chunk);
    if spin_pool::width() <= 1 || count.saturating_mul(work) < PARALLEL_WORK {
        data.chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
        return;
    }
    let claim = claim.max(1);
    spin_pool::run_claimed(data, chunk * claim, &|p, run| {
        for (j, c) in run.chunks_mut(chunk).enumerate() {
            f(p * claim + j, c);
        }
    });
}

/// A pointer that threads of a parallel loop write through, each at places that are its
/// alone (every use says why they are).
#[derive(Clone, Copy)]
pub(crate) struct Shared<T>(pub(crate) *mut T);

impl<T> Shared<T> {
    /// The pointer (a method, so that a closure captures the whole `Shared`, not its field).
    pub(crate) fn ptr(self) -> *mut T {
        self.0
    }
}

// SAFETY: the writers' places are disjoint (see the uses).
unsafe impl<T> Send for Shared<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for Shared<T> {}

/// `&mut [f32]` over values that have all been written.
///
/// # Safety
/// Every value of `d` is initialised.
pub(crate) unsafe fn assume_init(d: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: per the contract; MaybeUninit<f32> has f32's layout.
    unsafe { &mut *(d as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// A zeroed vector of `n` values, or `OutOfMemory` instead of an abort.
pub(crate) fn alloc<T: Copy + Default>(op: &'static str, n: usize) -> Result<Vec<T>> {
    let mut v = reserve(op, n)?;
    v.resize(n, T::default());
    Ok(v)
}

/// An empty vector with room for `n` values, or `OutOfMemory` instead of an abort. Large
/// buffers ask for transparent huge pages (as numpy does): a fresh 64 MiB output otherwise
/// takes 16,384 page faults, most of an elementwise op's time.
pub(crate) fn reserve<T>(op: &'static str, n: usize) -> Result<Vec<T>> {
    let mut v: Vec<T> = Vec::new();
    v.try_reserve_exact(n).map_err(|e| {
        Error::OutOfMemory(format!(
            "{op}: {n} values of {} bytes on the CPU: {e}",
            size_of::<T>()
        ))
    })?;
    advise_huge_pages(&v);
    Ok(v)
}

/// Asks Linux for transparent huge pages over the 2 MiB-aligned part of `v`'s buffer, when it
/// is at least [`HUGE_PAGE_MIN`] bytes (a hint: without THP it changes nothing).
fn advise_huge_pages<T>(v: &Vec<T>) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let bytes = v.capacity() * size_of::<T>();
        if bytes < HUGE_PAGE_MIN {
            return;
        }
        let start = (v.as_ptr() as usize).next_multiple_of(HUGE);
        let end = (v.as_ptr() as usize + bytes) & !(HUGE - 1);
        if end > start {
            // SAFETY: the range lies inside `v`'s allocation; MADV_HUGEPAGE is advice that
            // changes neither the contents nor the validity of the memory.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = v;
}

/// Buffers of at least this many bytes get [`advise_huge_pages`].
pub(crate) const HUGE_PAGE_MIN: usize = 16 << 20;
