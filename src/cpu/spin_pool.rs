//! A small pool of worker threads that stay awake between jobs, for the CPU backend's SGEMM
//! and elementwise loops.
//!
//! rayon's workers go to sleep microseconds after their queue empties, so a product that
//! follows other work pays for waking them: measured on the 2-vCPU development VM, a two-way
//! rayon fork-join costs about 10 µs back to back and 135 µs (median) when the caller did
//! 200 µs of other work first — most of a 256³ product. These workers spin, then yield, for
//! [`AWAKE`] after each job before they park (OpenBLAS's threads do the same, for longer),
//! and the calling thread runs one share of the work itself. Work below a few hundred
//! microseconds should stay on the calling thread.
//!
//! Jobs are plain parallel loops: `run(tasks, f)` calls `f(t)` once for every `t < tasks`,
//! in any order, and returns when all have returned. The tasks must not wait for one another
//! (they may run one after another): when the pool is busy with another caller's job, the
//! tasks run on rayon instead.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a worker stays awake (spinning, then yielding) after its last job.
const AWAKE: Duration = Duration::from_millis(2);
/// Of which the first part is a pure spin (no system calls).
const SPIN: Duration = Duration::from_micros(50);

/// A job as the workers see it: the task function, with its lifetime erased (see `run`).
type Job = &'static (dyn Fn(usize) + Sync);

struct Pool {
    /// Worker threads (the caller is one more participant).
    workers: usize,
    /// `generation << 16 | tasks` of the latest job; workers wait for it to change.
    state: AtomicU64,
    /// The latest job; written by the caller only while no worker is running a task.
    job: UnsafeCell<Option<Job>>,
    /// Workers still running a task of the latest job.
    pending: AtomicUsize,
    /// Set when a task panicked on a worker.
    panicked: AtomicBool,
    /// Held by the caller whose job is running.
    busy: AtomicBool,
    /// Workers parked on `wake`.
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written by the one caller holding `busy`, before the release store of
// `state` that publishes it and only after every worker reading the previous job has finished
// (`pending` back to 0, acquire); workers read it only after an acquire load of that `state`.
unsafe impl Sync for Pool {}

fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let workers = rayon::current_num_threads().saturating_sub(1);
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            workers,
            state: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }));
        for w in 0..workers {
            let spawned = std::thread::Builder::new()
                .name(format!("kiln-gemm-{}", w + 1))
                .spawn(move || worker(pool, w + 1));
            if let Err(e) = spawned {
                // Jobs that count on this worker would never finish: give up on the pool.
                log::warn!("kiln: could not start a GEMM worker thread ({e}); using rayon");
                pool.busy.store(true, Ordering::SeqCst);
            }
        }
        log::debug!("kiln: SGEMM pool of {} threads", workers + 1);
        pool
    })
}

/// Threads a job can use: the workers and the caller.
pub(crate) fn width() -> usize {
    pool().workers + 1
}

/// Calls `f(t)` for every `t < tasks` (one task per thread when `tasks` ≤ [`width`]; more
/// run on rayon) and returns when all have returned. A panic in a task is resumed on
/// the caller after every task has finished.
pub(crate) fn run(tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    let p = pool();
    if tasks <= 1 {
        (0..tasks).for_each(f);
        return;
    }
    if tasks > p.workers + 1
        || p.busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
    {
        // Another caller's job is running (or more tasks than threads): share rayon's pool.
        use rayon::prelude::*;
        (0..tasks).into_par_iter().for_each(f);
        return;
    }
    // SAFETY: the lifetime is erased only until this function returns, and it returns only
    // after every worker has finished its task (`pending` == 0), even when a task panics.
    let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f) };
    // SAFETY: we hold `busy` and the previous job's workers are done (see `impl Sync`).
    unsafe { *p.job.get() = Some(job) };
    p.pending.store(tasks - 1, Ordering::Relaxed);
    let generation = (p.state.load(Ordering::Relaxed) >> 16) + 1;
    p.state
        .store(generation << 16 | tasks as u64, Ordering::SeqCst);
    if p.sleepers.load(Ordering::SeqCst) > 0 {
        let _guard = p.lock.lock().unwrap_or_else(|e| e.into_inner());
        p.wake.notify_all();
    }
    let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(0)));
    wait_until(|| p.pending.load(Ordering::Acquire) == 0);
    let theirs = p.panicked.swap(false, Ordering::Relaxed);
    p.busy.store(false, Ordering::Release);
    if let Err(payload) = mine {
        std::panic::resume_unwind(payload);
    }
    assert!(
        !theirs,
        "a task of a parallel SGEMM panicked on a worker thread"
    );
}

/// Splits `data` into pieces of `per` values (the last may be shorter; at most [`width`]
/// pieces, so `per` should be at least `data.len() / width()`) and calls `f(index, piece)` for
/// each on the pool, the first on the calling thread.
pub(crate) fn run_chunks<T: Send>(
    data: &mut [T],
    per: usize,
    f: &(dyn Fn(usize, &mut [T]) + Sync),
) {
    let per = per.max(1);
    let pieces = data.len().div_ceil(per);
    let base = SharedPtr(data.as_mut_ptr());
    let len = data.len();
    run(pieces, &|t| {
        let start = t * per;
        let end = len.min(start + per);
        // SAFETY: pieces are disjoint ranges inside `data`, which stays mutably borrowed (by
        // this function) until every task has returned.
        let piece = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), end - start) };
        f(t, piece);
    });
}

/// A pointer to the start of a slice whose disjoint pieces the tasks of one job write.
struct SharedPtr<T>(*mut T);

impl<T> SharedPtr<T> {
    fn get(&self) -> *mut T {
        self.0
    }
}

// SAFETY: used only by `run_chunks`, whose tasks touch disjoint pieces of a `&mut [T]` with
// `T: Send`.
unsafe impl<T: Send> Sync for SharedPtr<T> {}

/// Waits for `done()`, spinning for a few microseconds and then yielding the CPU between
/// checks: the thread being waited for may need this CPU (a pure spin would hold it for the
/// rest of its time slice, ~4 ms; measured once as a 20× slower 256³ product).
pub(crate) fn wait_until(done: impl Fn() -> bool) {
    let mut polls = 0u32;
    while !done() {
        if polls < 1 << 12 {
            polls += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

fn worker(p: &'static Pool, index: usize) {
    let mut seen = 0u64;
    loop {
        let state = wait_for_job(p, seen);
        seen = state >> 16;
        let tasks = (state & 0xffff) as usize;
        if index >= tasks {
            continue;
        }
        // SAFETY: published by the acquire load in `wait_for_job` (see `impl Sync`).
        let job = unsafe { *p.job.get() };
        if let Some(f) = job
            && std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(index))).is_err()
        {
            p.panicked.store(true, Ordering::Relaxed);
        }
        p.pending.fetch_sub(1, Ordering::Release);
    }
}

/// The state of the first job after generation `seen`: spinning, then yielding, then parked.
fn wait_for_job(p: &Pool, seen: u64) -> u64 {
    let start = Instant::now();
    let mut polls = 0u32;
    loop {
        let state = p.state.load(Ordering::Acquire);
        if state >> 16 != seen {
            return state;
        }
        polls = polls.wrapping_add(1);
        if !polls.is_multiple_of(64) {
            std::hint::spin_loop();
            continue;
        }
        let idle = start.elapsed();
        if idle < SPIN {
            continue;
        }
        if idle < AWAKE {
            std::thread::yield_now();
            continue;
        }
        let mut guard = p.lock.lock().unwrap_or_else(|e| e.into_inner());
        p.sleepers.fetch_add(1, Ordering::SeqCst);
        while p.state.load(Ordering::SeqCst) >> 16 == seen {
            guard = p.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
        p.sleepers.fetch_sub(1, Ordering::SeqCst);
        drop(guard);
        return p.state.load(Ordering::Acquire);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every task runs exactly once per job, jobs back to back and after the workers parked,
    /// and a panicking task reaches the caller without wedging the pool.
    #[test]
    fn runs_every_task_once_and_survives_a_panic() {
        let n = width();
        for round in 0..200 {
            let counts: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            run(n, &|t| {
                counts[t].fetch_add(1, Ordering::Relaxed);
            });
            assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1));
            if round == 100 {
                std::thread::sleep(AWAKE * 3);
            }
        }
        if n > 1 {
            let caught = std::panic::catch_unwind(|| run(n, &|t| assert!(t != n - 1, "boom")));
            assert!(caught.is_err());
        }
        let hits = AtomicUsize::new(0);
        run(n, &|_| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), n);
    }
}
