//! A small pool of worker threads that stay awake between jobs, for the CPU backend's SGEMM
//! and elementwise loops.
//!
//! rayon's workers go to sleep microseconds after their queue empties, so a product that
//! follows other work pays for waking them: on a small VM a two-way rayon fork-join after other
//! work cost about as much as a 256³ product (BENCHMARKS.md). These workers spin, then yield, for
//! [`AWAKE`] after each job before they park (OpenBLAS's threads do the same, for longer),
//! and the calling thread claims tasks too (any task no worker has started by then), so a
//! worker the OS has not scheduled never holds a job up. Work below a few tens of
//! microseconds should stay on the calling thread.
//!
//! Jobs are plain parallel loops: `run(tasks, f)` calls `f(t)` once for every `t < tasks`,
//! in any order, and returns when all have returned. The tasks must not wait for one another
//! (they may run one after another): when the pool is busy with another caller's job, the
//! tasks run on rayon instead.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;
use web_time::Instant;

/// How long a worker stays awake (spinning, then yielding) after its last job, unless
/// `KILN_CPU_AWAKE_US` says otherwise (see [`awake`]).
const AWAKE: Duration = Duration::from_millis(2);

/// How long workers stay awake after a job: `KILN_CPU_AWAKE_US` microseconds if set (0: park
/// at once, for machines where idle spinning costs power or other processes' time), else
/// [`AWAKE`].
fn awake() -> Duration {
    static AWAKE_FOR: OnceLock<Duration> = OnceLock::new();
    *AWAKE_FOR.get_or_init(|| parse_awake(std::env::var("KILN_CPU_AWAKE_US").ok().as_deref()))
}

/// [`awake`]'s reading of the variable; a value that is not a number is ignored (and logged).
fn parse_awake(var: Option<&str>) -> Duration {
    let Some(v) = var.map(str::trim).filter(|v| !v.is_empty()) else {
        return AWAKE;
    };
    v.parse::<u64>().map_or_else(
        |_| {
            log::warn!("kiln: ignoring KILN_CPU_AWAKE_US={v:?} (not a number of microseconds)");
            AWAKE
        },
        Duration::from_micros,
    )
}
/// Of which the first part is a pure spin (no system calls).
const SPIN: Duration = Duration::from_micros(50);

/// A job as the workers see it: the task function, with its lifetime erased (see `run`).
type Job = &'static (dyn Fn(usize) + Sync);

struct Pool {
    /// Worker threads (the caller is one more participant).
    workers: usize,
    /// Generation of the latest job; workers wait for it to change.
    generation: AtomicU64,
    /// `generation << 32 | next task` of the latest job: every participant (the caller
    /// included) claims tasks by advancing it, so a task no worker has started yet is run by
    /// the caller instead of waited for, and a worker that wakes after the job is over finds a
    /// newer generation (or no task left) and touches nothing.
    claim: AtomicU64,
    /// Tasks of the latest job, and how many have finished.
    tasks: AtomicUsize,
    finished: AtomicUsize,
    /// The latest job; written by the caller only when no task of the previous job runs.
    job: UnsafeCell<Option<Job>>,
    /// Set when a task panicked on a worker.
    panicked: AtomicBool,
    /// Held by the caller whose job is running.
    busy: AtomicBool,
    /// Workers parked on `wake`.
    sleepers: AtomicUsize,
    /// Workers that have started running.
    started: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written by the one caller holding `busy`, before the release store of
// `claim` that opens the job, and only after every task of the previous job has finished
// (`finished` == `tasks`, acquire). A worker reads `job` only after claiming a task of the
// current generation (acquire), and the caller does not return (so the job stays alive) until
// that task has finished.
unsafe impl Sync for Pool {}

fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let workers = rayon::current_num_threads().saturating_sub(1);
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            workers,
            generation: AtomicU64::new(0),
            claim: AtomicU64::new(0),
            tasks: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            job: UnsafeCell::new(None),
            panicked: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }));
        let mut spawned = 0;
        for w in 0..workers {
            match std::thread::Builder::new()
                .name(format!("kiln-cpu-{}", w + 1))
                .spawn(move || worker(pool))
            {
                Ok(_) => spawned += 1,
                // Not fatal: the caller runs every task no worker claims.
                Err(e) => log::warn!("kiln: could not start a CPU worker thread ({e})"),
            }
        }
        // A new thread can take milliseconds to be scheduled for the first time (measured on
        // the 2-vCPU VM: the first few products ran without their worker); wait a little for
        // the workers here, once, rather than in the first ops' timings.
        let start = Instant::now();
        while pool.started.load(Ordering::Acquire) < spawned
            && start.elapsed() < Duration::from_millis(50)
        {
            std::thread::sleep(Duration::from_micros(100));
        }
        log::debug!(
            "kiln: CPU worker pool of {} threads ({} started in {:?})",
            workers + 1,
            pool.started.load(Ordering::Acquire),
            start.elapsed()
        );
        pool
    })
}

/// Starts the pool's workers now (they are otherwise started by the first parallel op).
pub(crate) fn start() {
    pool();
}

/// Threads a job can use: the workers and the caller.
pub(crate) fn width() -> usize {
    pool().workers + 1
}

/// Calls `f(t)` for every `t < tasks` and returns when all have returned. The caller runs
/// tasks too, and any task no worker has started; more tasks than threads, or a pool busy
/// with another caller's job, go to rayon. A panic in a task is resumed on the caller after
/// every task has finished.
pub(crate) fn run(tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    let p = pool();
    if tasks <= 1 || p.workers == 0 {
        (0..tasks).for_each(f);
        return;
    }
    if tasks > p.workers + 1
        || p.busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
    {
        use rayon::prelude::*;
        (0..tasks).into_par_iter().for_each(f);
        return;
    }
    // SAFETY: the lifetime is erased only until this function returns, and it returns only
    // after every claimed task has finished, even when a task panics (see `impl Sync`).
    let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f) };
    // SAFETY: we hold `busy` and every task of the previous job has finished.
    unsafe { *p.job.get() = Some(job) };
    p.tasks.store(tasks, Ordering::Relaxed);
    p.finished.store(0, Ordering::Relaxed);
    let generation = p.generation.load(Ordering::Relaxed) + 1;
    p.claim.store(claim_word(generation), Ordering::Release);
    p.generation.store(generation, Ordering::SeqCst);
    if p.sleepers.load(Ordering::SeqCst) > 0 {
        let _guard = p.lock.lock().unwrap_or_else(|e| e.into_inner());
        p.wake.notify_all();
    }
    let mut mine = Ok(());
    while let Some(t) = claim(p, generation) {
        if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(t))) {
            mine = Err(e);
        }
        p.finished.fetch_add(1, Ordering::Release);
    }
    wait_until(|| p.finished.load(Ordering::Acquire) == tasks);
    let theirs = p.panicked.swap(false, Ordering::Relaxed);
    p.busy.store(false, Ordering::Release);
    if let Err(payload) = mine {
        std::panic::resume_unwind(payload);
    }
    assert!(
        !theirs,
        "a task of a parallel CPU op panicked on a worker thread"
    );
}

/// The `claim` word that opens job `generation`: its low 32 bits in the high half (a
/// generation count that passes 2^32 after billions of jobs must still match), next task 0.
fn claim_word(generation: u64) -> u64 {
    (generation & 0xffff_ffff) << 32
}

/// The next unclaimed task of job `generation`, if that job is still open and has one.
fn claim(p: &Pool, generation: u64) -> Option<usize> {
    let mut current = p.claim.load(Ordering::Acquire);
    loop {
        if current >> 32 != claim_word(generation) >> 32 {
            return None;
        }
        let next = (current & 0xffff_ffff) as usize;
        // `tasks` was stored before the release store of `claim` we acquired.
        if next >= p.tasks.load(Ordering::Relaxed) {
            return None;
        }
        match p.claim.compare_exchange_weak(
            current,
            current + 1,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => return Some(next),
            Err(now) => current = now,
        }
    }
}

/// Splits `data` into pieces of `per` values (the last may be shorter) and calls
/// `f(index, piece)` for each on the pool. The pieces, any number of them, are claimed one at a
/// time from a shared counter by every thread of the pool, the caller included: a thread the
/// machine slows down (a busy neighbour on a VM) takes fewer pieces instead of holding the job
/// up. Pieces should be large enough that claiming one (an atomic add, a cache line that moves
/// between cores) is small beside its work.
pub(crate) fn run_claimed<T: Send>(
    data: &mut [T],
    per: usize,
    f: &(dyn Fn(usize, &mut [T]) + Sync),
) {
    let per = per.max(1);
    let pieces = data.len().div_ceil(per);
    let base = SharedPtr(data.as_mut_ptr());
    let len = data.len();
    let next = AtomicUsize::new(0);
    run(width().min(pieces), &|_| {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= pieces {
                break;
            }
            let start = i * per;
            let end = len.min(start + per);
            // SAFETY: each index is claimed once, so pieces are disjoint ranges inside `data`,
            // which stays mutably borrowed until every task has returned.
            let piece =
                unsafe { std::slice::from_raw_parts_mut(base.get().add(start), end - start) };
            f(i, piece);
        }
    });
}

/// A pointer to the start of a slice whose disjoint pieces the tasks of one job write.
struct SharedPtr<T>(*mut T);

impl<T> SharedPtr<T> {
    fn get(&self) -> *mut T {
        self.0
    }
}

// SAFETY: used only by `run_claimed`, whose tasks touch disjoint pieces of a `&mut [T]` with
// `T: Send`.
unsafe impl<T: Send> Sync for SharedPtr<T> {}

/// Waits for `done()`: a pure spin for up to [`WAIT_SPIN`], then yielding the CPU between
/// checks. Yielding early is worse than it looks: on a 2-vCPU VM, yielding after 4096 polls
/// (or 500 µs) made 256³ products several times slower, apparently because a yield lets the
/// awaited thread run on the waiter's CPU and the two then stay there, one job after another;
/// a spinning waiter keeps its CPU busy, so the scheduler moves the other thread to an idle
/// one. The yield is only a backstop for a thread that is not running at all.
pub(crate) fn wait_until(done: impl Fn() -> bool) {
    let mut since: Option<Instant> = None;
    let mut polls = 0u32;
    while !done() {
        polls = polls.wrapping_add(1);
        if !polls.is_multiple_of(64) {
            std::hint::spin_loop();
            continue;
        }
        if since.get_or_insert_with(Instant::now).elapsed() < WAIT_SPIN {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

/// How long [`wait_until`] spins before it starts yielding.
const WAIT_SPIN: Duration = Duration::from_millis(5);

fn worker(p: &'static Pool) {
    p.started.fetch_add(1, Ordering::Release);
    let mut seen = 0u64;
    loop {
        seen = wait_for_job(p, seen);
        while let Some(t) = claim(p, seen) {
            // SAFETY: a claimed task of the current job (see `impl Sync`).
            let job = unsafe { *p.job.get() };
            if let Some(f) = job
                && std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(t))).is_err()
            {
                p.panicked.store(true, Ordering::Relaxed);
            }
            p.finished.fetch_add(1, Ordering::Release);
        }
    }
}

/// The first job generation after `seen`: spinning, then yielding, then parked.
fn wait_for_job(p: &Pool, seen: u64) -> u64 {
    let start = Instant::now();
    let mut polls = 0u32;
    loop {
        let generation = p.generation.load(Ordering::Acquire);
        if generation != seen {
            return generation;
        }
        polls = polls.wrapping_add(1);
        if !polls.is_multiple_of(64) {
            std::hint::spin_loop();
            continue;
        }
        let idle = start.elapsed();
        let awake = awake();
        if idle < SPIN.min(awake) {
            continue;
        }
        if idle < awake {
            std::thread::yield_now();
            continue;
        }
        let mut guard = p.lock.lock().unwrap_or_else(|e| e.into_inner());
        p.sleepers.fetch_add(1, Ordering::SeqCst);
        while p.generation.load(Ordering::SeqCst) == seen {
            guard = p.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
        p.sleepers.fetch_sub(1, Ordering::SeqCst);
        drop(guard);
        return p.generation.load(Ordering::Acquire);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `run_claimed` hands every piece to exactly one call, with its index, whatever the
    /// number of pieces (fewer than the threads, many more, a short last one).
    #[test]
    fn claimed_pieces_are_each_visited_once() {
        for (len, per) in [(1usize, 4usize), (7, 4), (1000, 3), (10_000, 64), (64, 64)] {
            let mut data = vec![usize::MAX; len];
            let calls = AtomicUsize::new(0);
            run_claimed(&mut data, per, &|i, piece| {
                calls.fetch_add(1, Ordering::Relaxed);
                assert!(piece.len() <= per && !piece.is_empty());
                for v in piece.iter_mut() {
                    assert_eq!(*v, usize::MAX, "a value written twice");
                    *v = i;
                }
            });
            assert_eq!(calls.load(Ordering::Relaxed), len.div_ceil(per));
            for (j, &v) in data.iter().enumerate() {
                assert_eq!(v, j / per, "len {len}, per {per}: value {j}");
            }
        }
    }

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

    #[test]
    fn awake_time_comes_from_the_environment_variable() {
        assert_eq!(parse_awake(None), AWAKE);
        assert_eq!(parse_awake(Some("0")), Duration::ZERO);
        assert_eq!(parse_awake(Some(" 500 ")), Duration::from_micros(500));
        assert_eq!(parse_awake(Some("fast")), AWAKE);
        assert_eq!(parse_awake(Some("")), AWAKE);
    }

    /// The claim word keeps matching its job across the 2^32 wrap of the generation count.
    #[test]
    fn claim_words_survive_generation_wrap() {
        for g in [1u64, (1 << 32) - 1, 1 << 32, (1 << 32) + 5, u64::MAX >> 1] {
            let word = claim_word(g);
            assert_eq!(word & 0xffff_ffff, 0);
            assert_eq!(word >> 32, g & 0xffff_ffff);
            assert_ne!(claim_word(g + 1) >> 32, word >> 32);
        }
    }

    /// Callers on several threads at once (all but one fall back to rayon while the pool is
    /// busy), jobs nested inside tasks, and pieces from `run_claimed`: every value written once.
    #[test]
    fn concurrent_and_nested_jobs_all_complete() {
        std::thread::scope(|scope| {
            for caller in 0..4 {
                scope.spawn(move || {
                    for round in 0..100 {
                        let mut data = vec![0usize; 1000 + caller * 7 + round];
                        let per = data.len().div_ceil(width());
                        run_claimed(&mut data, per, &|t, piece| {
                            let total = AtomicUsize::new(0);
                            run(width(), &|_| {
                                total.fetch_add(1, Ordering::Relaxed);
                            });
                            assert_eq!(total.load(Ordering::Relaxed), width());
                            for (i, v) in piece.iter_mut().enumerate() {
                                *v += t * per + i + 1;
                            }
                        });
                        assert!(data.iter().enumerate().all(|(i, &v)| v == i + 1));
                    }
                });
            }
        });
    }
}
