//! A row-major SGEMM for x86-64 CPUs, in the BLIS style: operands are packed into panels that
//! stay in cache, and a register-blocked micro-kernel does the arithmetic: 12 × 32 with AVX-512F
//! (`avx512.rs`: 24 zmm accumulators; per step of k it loads two vectors of B and broadcasts
//! twelve values of A), 6 × 16 with AVX2 and FMA (`avx2.rs`: 12 ymm accumulators, two vectors
//! of B, six broadcasts). The rows of C are split into one contiguous range per thread of
//! kiln's CPU worker pool (`spin_pool.rs`), and each thread runs the whole blocked loop on its
//! range; B is packed once, unit by unit, by whichever thread needs a unit first. One fork and
//! one join per product, no barrier.
//!
//! Used for products of at least 2^21 multiply-adds when the CPU has AVX-512F or AVX2 + FMA
//! (checked at run time; `KILN_CPU_GEMM=avx2` picks the AVX2 kernel on an AVX-512 machine,
//! `KILN_CPU_GEMM=matrixmultiply` opts out); everything else goes through `matrixmultiply`.

/// Declares a micro-kernel type `$name` whose [`Micro::kernel`] is the module's `tile`
/// function (compiled for the kernel's instruction set).
macro_rules! micro_kernel {
    ($(#[$doc:meta])* $name:ident, $mr:expr, $nr:expr) => {
        $(#[$doc])*
        pub(super) struct $name;

        impl super::Micro for $name {
            const MR: usize = $mr;
            const NR: usize = $nr;
            unsafe fn kernel(
                kc: usize,
                ap: *const f32,
                bp: *const f32,
                c: *mut f32,
                ldc: usize,
                rows: usize,
                cols: usize,
                accumulate: bool,
            ) {
                // SAFETY: the caller checked the instruction set and the pointer ranges.
                unsafe { tile(kc, ap, bp, c, ldc, rows, cols, accumulate) }
            }
        }
    };
}
use micro_kernel;

mod avx2;
mod avx512;

use super::{RowEpilogue, spin_pool};
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU8, Ordering};

/// A register-blocked micro-kernel: one `MR × NR` tile of C from packed panels.
pub(crate) trait Micro {
    /// Rows of C per micro-tile.
    const MR: usize;
    /// Columns of C per micro-tile.
    const NR: usize;
    /// C[0..rows, 0..cols] (row stride `ldc`) = or += the product of one packed A panel and
    /// one packed B panel over `kc`.
    ///
    /// # Safety
    /// The kernel's instruction set must be available; `ap` holds `MR * kc` values, `bp`
    /// `NR * kc`; `c` is valid for `rows` (≤ MR) rows of `cols` (≤ NR) values at stride `ldc`.
    #[allow(clippy::too_many_arguments)] // a micro-kernel's operands, kept in registers
    unsafe fn kernel(
        kc: usize,
        ap: *const f32,
        bp: *const f32,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        accumulate: bool,
    );
}

/// Depth of one packed block (a KC × NR panel of B is 32 KiB with AVX-512, 16 KiB with AVX2:
/// it stays in L1/L2).
const KC: usize = 256;
/// Most rows of A in one packed block (a multiple of every kernel's MR).
const MC_MAX: usize = 144;
/// Most columns of B in one packed block (1 MiB of packed B at KC: it stays in L2 while a
/// block of rows sweeps it).
const NC: usize = 1024;

/// The micro-kernels this crate has, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    /// 12 × 32, AVX-512F.
    Avx512,
    /// 6 × 16, AVX2 and FMA.
    Avx2,
}

impl Isa {
    /// Whether this CPU can run the kernel.
    fn supported(self) -> bool {
        match self {
            Isa::Avx512 => is_x86_feature_detected!("avx512f"),
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
        }
    }
}

/// The kernel kiln uses on this CPU, if any (see the module docs for `KILN_CPU_GEMM`).
pub(crate) fn available() -> Option<Isa> {
    static ON: std::sync::OnceLock<Option<Isa>> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        let choice = std::env::var("KILN_CPU_GEMM").unwrap_or_default();
        let isa = match choice.as_str() {
            "matrixmultiply" => None,
            "avx2" => Some(Isa::Avx2).filter(|i| i.supported()),
            _ => [Isa::Avx512, Isa::Avx2].into_iter().find(|i| i.supported()),
        };
        log::debug!("CPU SGEMM micro-kernel: {isa:?}");
        isa
    })
}

/// A strided matrix view: element (i, j) at `ptr + i*rs + j*cs`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub rs: usize,
    pub cs: usize,
}

impl View<'_> {
    #[inline(always)]
    fn at(&self, i: usize, j: usize) -> f32 {
        self.data[self.offset + i * self.rs + j * self.cs]
    }
}

/// Packs rows `i0..i0+mc` and columns `p0..p0+kc` of A into `K::MR`-row panels, k-major,
/// zero-padded.
fn pack_a<K: Micro>(a: &View, i0: usize, mc: usize, p0: usize, kc: usize, out: &mut [f32]) {
    let mr = K::MR;
    for (panel, dst) in out.chunks_mut(mr * kc).enumerate().take(mc.div_ceil(mr)) {
        let r0 = panel * mr;
        let rows = mr.min(mc - r0);
        if a.cs == 1 && rows == mr {
            pack_a_rows(a, mr, i0 + r0, p0, kc, dst);
            continue;
        }
        for p in 0..kc {
            let d = &mut dst[p * mr..(p + 1) * mr];
            for (r, v) in d.iter_mut().enumerate() {
                *v = if r < rows {
                    a.at(i0 + r0 + r, p0 + p)
                } else {
                    0.0
                };
            }
        }
    }
}

/// Packs one full `mr`-row panel of a row-major A (rows `i0..i0+mr`, columns `p0..p0+kc`),
/// transposing 4 × 4 blocks in SSE registers: every load reads four consecutive values of a
/// row and every store writes four consecutive values of the panel. Two rows past the last
/// multiple of 4 (6-row panels) are interleaved in pairs, and a last odd row is copied one
/// value at a time.
fn pack_a_rows(a: &View, mr: usize, i0: usize, p0: usize, kc: usize, dst: &mut [f32]) {
    let start = a.offset + i0 * a.rs + p0;
    // Bounds: the last value read is row i0 + mr - 1, column p0 + kc - 1; the panel holds
    // mr·kc values.
    assert!(start + (mr - 1) * a.rs + kc <= a.data.len() && dst.len() >= mr * kc);
    let src = a.data[start..].as_ptr();
    let out = dst.as_mut_ptr();
    let quads = kc / 4;
    for g in 0..mr / 4 {
        for q in 0..quads {
            // SAFETY: rows 4g..4g+4 and columns 4q..4q+4 lie inside the block checked above;
            // the stores go to columns 4q..4q+4 of the panel, rows 4g..4g+4 (index p·mr + r).
            unsafe {
                let row = |r: usize| src.add((4 * g + r) * a.rs + 4 * q);
                let (mut r0, mut r1, mut r2, mut r3) = (
                    _mm_loadu_ps(row(0)),
                    _mm_loadu_ps(row(1)),
                    _mm_loadu_ps(row(2)),
                    _mm_loadu_ps(row(3)),
                );
                _MM_TRANSPOSE4_PS(&mut r0, &mut r1, &mut r2, &mut r3);
                let col = |p: usize| out.add((4 * q + p) * mr + 4 * g);
                _mm_storeu_ps(col(0), r0);
                _mm_storeu_ps(col(1), r1);
                _mm_storeu_ps(col(2), r2);
                _mm_storeu_ps(col(3), r3);
            }
        }
    }
    let mut r = mr / 4 * 4;
    while r + 2 <= mr {
        // Two rows left (6-row panels): interleave them in pairs, one 8-byte store per column.
        for q in 0..quads {
            // SAFETY: rows r, r + 1 and columns 4q..4q+4 lie inside the block checked above;
            // each store writes rows r, r + 1 of one of columns 4q..4q+4 of the panel.
            unsafe {
                let x = _mm_loadu_ps(src.add(r * a.rs + 4 * q));
                let y = _mm_loadu_ps(src.add((r + 1) * a.rs + 4 * q));
                let (lo, hi) = (_mm_unpacklo_ps(x, y), _mm_unpackhi_ps(x, y));
                let store = |p: usize, v: __m128| {
                    _mm_storel_epi64(out.add((4 * q + p) * mr + r).cast(), _mm_castps_si128(v))
                };
                store(0, lo);
                store(1, _mm_movehl_ps(lo, lo));
                store(2, hi);
                store(3, _mm_movehl_ps(hi, hi));
            }
        }
        r += 2;
    }
    for r in r..mr {
        for p in 0..quads * 4 {
            dst[p * mr + r] = a.data[start + r * a.rs + p];
        }
    }
    for p in quads * 4..kc {
        for r in 0..mr {
            dst[p * mr + r] = a.data[start + r * a.rs + p];
        }
    }
}

/// Packs rows `p0..p0+kc` and columns `c0..c0+cols` (cols ≤ nr) of B into one `nr`-column
/// panel, k-major, zero-padded.
fn pack_b_panel(
    b: &View,
    nr: usize,
    p0: usize,
    kc: usize,
    c0: usize,
    cols: usize,
    dst: &mut [f32],
) {
    for p in 0..kc {
        let d = &mut dst[p * nr..(p + 1) * nr];
        if b.cs == 1 && cols == nr {
            let s = b.offset + (p0 + p) * b.rs + c0;
            d.copy_from_slice(&b.data[s..s + nr]);
        } else {
            for (c, v) in d.iter_mut().enumerate() {
                *v = if c < cols { b.at(p0 + p, c0 + c) } else { 0.0 };
            }
        }
    }
}

/// Packs rows `p0..p0+kc` and columns `j0..j0+nc` of B into `nr`-column panels.
fn pack_b(b: &View, nr: usize, p0: usize, kc: usize, j0: usize, nc: usize, out: &mut [f32]) {
    let full = nc / nr;
    if b.cs == 1 && full > 0 {
        // Row-major B: read each row once, front to back, and deal it out over the full
        // panels (a panel at a time would read 128 bytes per row, a row stride apart).
        for p in 0..kc {
            let s = b.offset + (p0 + p) * b.rs + j0;
            for (jp, chunk) in b.data[s..s + full * nr].chunks_exact(nr).enumerate() {
                out[jp * nr * kc + p * nr..][..nr].copy_from_slice(chunk);
            }
        }
        if full * nr < nc {
            let c0 = full * nr;
            pack_b_panel(b, nr, p0, kc, j0 + c0, nc - c0, &mut out[full * nr * kc..]);
        }
        return;
    }
    for (panel, dst) in out.chunks_mut(nr * kc).take(nc.div_ceil(nr)).enumerate() {
        let c0 = panel * nr;
        pack_b_panel(b, nr, p0, kc, j0 + c0, nr.min(nc - c0), dst);
    }
}

/// Largest packed copy of B (values) that the threads share; larger products pack B per
/// thread, block by block.
const SHARED_B_MAX: usize = 1 << 24;

/// Panels of B packed as one unit (each unit reads its rows of B front to back).
const PACK_PANELS: usize = 8;

/// All of B, packed once for every thread, one unit (a k block × `PACK_PANELS` panels) at a
/// time as the threads first need it: the first thread to need a unit claims and packs it, a
/// thread that needs a unit being packed waits for it. Packing thus overlaps the arithmetic
/// and needs no barrier (the tasks may even run one after another).
struct SharedB<'a> {
    b: View<'a>,
    k: usize,
    n: usize,
    kc: usize,
    /// Columns per panel (the kernel's NR).
    nr: usize,
    /// The packed copy: k block by k block, each `n.div_ceil(nr)` panels of nr·kc values.
    ptr: *mut f32,
    len: usize,
    /// Per unit, k block-major: [`FREE`], [`PACKING`], [`PACKED`] or [`FAILED`].
    state: Vec<AtomicU8>,
    groups: usize,
}

const FREE: u8 = 0;
const PACKING: u8 = 1;
const PACKED: u8 = 2;
/// The packing thread panicked (a bug): waiters panic too instead of waiting forever.
const FAILED: u8 = 3;

// SAFETY: the packed copy is written only by the thread that claimed a unit (FREE -> PACKING)
// and read only after the release store of PACKED, acquired by the reader.
unsafe impl Sync for SharedB<'_> {}

impl SharedB<'_> {
    /// The packed panels of unit (`p0`'s k block, group `g`), packing them first if needed.
    fn group(&self, p0: usize, g: usize) -> &[f32] {
        let kc = self.kc.min(self.k - p0);
        let nr = self.nr;
        let panels = self.n.div_ceil(nr);
        let first = g * PACK_PANELS;
        let count = PACK_PANELS.min(panels - first);
        let start = p0 * panels * nr + first * nr * kc;
        let len = count * nr * kc;
        assert!(start + len <= self.len);
        let state = &self.state[p0 / self.kc * self.groups + g];
        if state.load(Ordering::Acquire) != PACKED {
            if state
                .compare_exchange(FREE, PACKING, Ordering::Acquire, Ordering::Acquire)
                .is_ok()
            {
                /// Marks the unit FAILED if packing unwinds.
                struct Failed<'s>(&'s AtomicU8);
                impl Drop for Failed<'_> {
                    fn drop(&mut self) {
                        self.0.store(FAILED, Ordering::Release);
                    }
                }
                let failed = Failed(state);
                // SAFETY: inside the buffer (asserted above); this thread claimed the unit, so
                // no other thread touches these values until it stores PACKED.
                let dst = unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) };
                let j0 = first * nr;
                pack_b(&self.b, nr, p0, kc, j0, (count * nr).min(self.n - j0), dst);
                std::mem::forget(failed);
                state.store(PACKED, Ordering::Release);
            } else {
                spin_pool::wait_until(|| state.load(Ordering::Acquire) != PACKING);
                assert!(
                    state.load(Ordering::Acquire) == PACKED,
                    "kiln SGEMM: another thread failed to pack B"
                );
            }
        }
        // SAFETY: packed (PACKED acquired above); nothing writes it again during this product.
        unsafe { std::slice::from_raw_parts(self.ptr.add(start), len) }
    }
}

/// Where a thread writes its tiles of C: `len` values from `ptr`, row-major with the product's
/// `n` columns. The threads' tiles are disjoint: each has its rows (split by rows) or its
/// columns of every row (split by columns).
#[derive(Clone, Copy)]
struct Out {
    ptr: super::Shared<f32>,
    len: usize,
}

/// Where a thread finds B's packed panels.
enum PackedB<'a> {
    /// All of B, packed once for every thread.
    Shared(&'a SharedB<'a>),
    /// Packed by the thread itself, NC columns and KC rows at a time.
    Own(&'a View<'a>),
}

/// `c (m × n, row-major, dense) = a (m × k) · b (k × n)`, with k > 0: every element of `c` is
/// written (the first k block stores, later ones add to what it stored), so `c` may start
/// uninitialised. Callers check [`available`] first, which picks the micro-kernel.
///
/// The rows of C are split into one contiguous range per thread of kiln's SGEMM pool
/// (`spin_pool`), and each thread runs the blocked loop on its range; B is packed once, unit by
/// unit, by whichever thread needs a unit first (unless it is larger than `SHARED_B_MAX`, when
/// each thread packs its own blocks). One fork-join per product.
///
/// `epilogue`, when given, is applied to every finished row of `c` (n values) by the thread
/// that computed it, while the row is still in its cache (bias and activation of `linear`).
pub(crate) fn gemm(
    m: usize,
    k: usize,
    n: usize,
    a: View,
    b: View,
    c: &mut [MaybeUninit<f32>],
    epilogue: Option<RowEpilogue>,
) {
    let (bl, threads) = (Blocking::DEFAULT, usize::MAX);
    match available() {
        Some(Isa::Avx512) => gemm_with::<avx512::Avx512>(m, k, n, a, b, c, bl, threads, epilogue),
        Some(Isa::Avx2) => gemm_with::<avx2::Avx2>(m, k, n, a, b, c, bl, threads, epilogue),
        None => panic!("kiln SGEMM called on a CPU without a micro-kernel"),
    }
}

/// Block sizes of the loops around the micro-kernel.
#[derive(Clone, Copy, Debug)]
struct Blocking {
    /// Depth of one packed block.
    kc: usize,
    /// Rows of A in one packed block (a multiple of every kernel's MR).
    mc: usize,
    /// Columns of B swept per block of rows, when B is shared (a multiple of every kernel's
    /// NR·PACK_PANELS).
    nc: usize,
}

impl Blocking {
    const DEFAULT: Blocking = Blocking {
        kc: KC,
        mc: MC_MAX,
        nc: NC,
    };
}

/// [`gemm`] with micro-kernel `K`, which the caller has checked this CPU supports.
#[allow(clippy::too_many_arguments)]
fn gemm_with<K: Micro>(
    m: usize,
    k: usize,
    n: usize,
    a: View,
    b: View,
    c: &mut [MaybeUninit<f32>],
    bl: Blocking,
    max_threads: usize,
    epilogue: Option<RowEpilogue>,
) {
    assert!(c.len() >= m * n && k > 0);
    let (mr, nr) = (K::MR, K::NR);
    let tasks = spin_pool::width().min(max_threads).clamp(1, m.div_ceil(mr));
    let per = m.div_ceil(mr).div_ceil(tasks) * mr;
    // Each thread would meet every panel of B with one panel of rows (a few rows against a
    // wide B: a classifier's 20 rows and 18,710 classes): the threads take ranges of columns
    // instead, every row each, and pack their own blocks of B, so that B is read once in all
    // rather than once per thread. Each thread then writes its columns of every row of C.
    let threads = spin_pool::width().min(max_threads);
    let col_tasks = n.div_ceil(nr).min(threads);
    if per <= mr && col_tasks > 1 && n >= 4 * nr * col_tasks {
        let cols_per = n.div_ceil(nr).div_ceil(col_tasks) * nr;
        let col_tasks = n.div_ceil(cols_per);
        let out = Out {
            ptr: super::Shared(c.as_mut_ptr().cast::<f32>()),
            len: m * n,
        };
        let own = PackedB::Own(&b);
        spin_pool::run(col_tasks, &|t| {
            let cols = t * cols_per..((t + 1) * cols_per).min(n);
            gemm_rows::<K>(0, m, k, n, cols, &a, &own, out, bl, (t, col_tasks));
        });
        if let Some(f) = epilogue {
            // SAFETY: the tasks wrote every value of C's m rows.
            let c = unsafe { super::assume_init(&mut c[..m * n]) };
            super::par_chunks_mut(c, n, n, &|i, row| f(i, row));
        }
        return;
    }
    let panels = n.div_ceil(nr);
    let shared_len = k * panels * nr;
    let mut buffer = Vec::new();
    let shared = (shared_len <= SHARED_B_MAX).then(|| {
        buffer = take_shared(shared_len);
        let groups = panels.div_ceil(PACK_PANELS);
        SharedB {
            b,
            k,
            n,
            kc: bl.kc,
            nr,
            ptr: aligned(&mut buffer).as_mut_ptr(),
            len: shared_len,
            state: (0..k.div_ceil(bl.kc) * groups)
                .map(|_| AtomicU8::new(FREE))
                .collect(),
            groups,
        }
    });
    let source = match &shared {
        Some(s) => PackedB::Shared(s),
        None => PackedB::Own(&b),
    };
    spin_pool::run_claimed(&mut c[..m * n], per * n, &|t, c| {
        let (i0, rows) = (t * per, c.len() / n);
        let out = Out {
            ptr: super::Shared(c.as_mut_ptr().cast::<f32>()),
            len: c.len(),
        };
        gemm_rows::<K>(i0, rows, k, n, 0..n, &a, &source, out, bl, (t, tasks));
        if let Some(f) = epilogue {
            // SAFETY: gemm_rows wrote every value of these rows.
            unsafe { super::assume_init(c) }
                .chunks_exact_mut(n)
                .enumerate()
                .for_each(|(j, row)| f(i0 + j, row));
        }
    });
    drop(shared);
    if !buffer.is_empty() {
        *SHARED_B.lock().unwrap_or_else(|e| e.into_inner()) = buffer;
    }
}

/// Rows `i0..i0 + m` of the product into `c` (those rows only, dense), on this thread, which
/// is task `t` of `tasks` (it starts each sweep over B's panels at its own fraction of them,
/// so that the tasks pack different units of a shared B).
#[allow(clippy::too_many_arguments)]
fn gemm_rows<K: Micro>(
    i0: usize,
    m: usize,
    k: usize,
    n: usize,
    cols: std::ops::Range<usize>,
    a: &View,
    b: &PackedB,
    c: Out,
    bl: Blocking,
    (t, tasks): (usize, usize),
) {
    let (mr, nr) = (K::MR, K::NR);
    let nc_step = match b {
        PackedB::Shared(_) => bl.nc,
        PackedB::Own(_) => NC,
    };
    let mut own = match b {
        PackedB::Shared(_) => Vec::new(),
        PackedB::Own(_) => take_buffer(&B_PACK, bl.kc * nr * NC.min(n).div_ceil(nr)),
    };
    let mut apack_buf = take_buffer(&A_PACK, bl.kc * bl.mc.div_ceil(mr) * mr);
    let apack = aligned(&mut apack_buf);
    // Blocks of rows of equal size (at most `bl.mc`, a multiple of mr): 512 rows go as 4 × 128
    // instead of 3 × 144 + 80, whose last block would sweep all of B for fewer rows.
    let mc_step = m.div_ceil(m.div_ceil(bl.mc)).div_ceil(mr) * mr;
    let own_len = own.len();
    let own_block = aligned(&mut own[..own_len]);
    let me = (t, tasks);
    for j0 in cols.clone().step_by(nc_step) {
        let nc = nc_step.min(cols.end - j0);
        for p0 in (0..k).step_by(bl.kc) {
            let kc = bl.kc.min(k - p0);
            let packed: &[f32] = match b {
                PackedB::Shared(_) => &[],
                PackedB::Own(view) => {
                    pack_b(view, nr, p0, kc, j0, nc, own_block);
                    own_block
                }
            };
            let group = |g: usize| match b {
                PackedB::Shared(shared) => shared.group(p0, j0 / (nr * PACK_PANELS) + g),
                PackedB::Own(_) => &packed[g * PACK_PANELS * nr * kc..],
            };
            for ib in (0..m).step_by(mc_step) {
                let mc = mc_step.min(m - ib);
                pack_a::<K>(a, i0 + ib, mc, p0, kc, apack);
                let at = Tile {
                    ib,
                    mc,
                    j0,
                    nc,
                    p0,
                    kc,
                };
                sweep::<K>(at, apack, &group, c, n, me);
            }
        }
    }
    A_PACK.with(|slot| *slot.borrow_mut() = apack_buf);
    if !own.is_empty() {
        B_PACK.with(|slot| *slot.borrow_mut() = own);
    }
}

/// Where one call of [`sweep`] works: rows `ib..ib + mc` of the thread's range, columns
/// `j0..j0 + nc`, the k block `p0..p0 + kc`.
#[derive(Clone, Copy)]
struct Tile {
    ib: usize,
    mc: usize,
    j0: usize,
    nc: usize,
    p0: usize,
    kc: usize,
}

/// One k block of one block of packed rows of A against columns j0..j0 + nc: the micro-kernel
/// over every panel, a group of panels (from `group`) at a time, starting at this task's
/// fraction of the groups.
///
/// Within a group, each panel of A (MR rows) meets the group's PACK_PANELS panels of B in
/// turn: the A panel stays in L1 while the B panels (128 KiB with AVX2) come from L2, and
/// consecutive calls write neighbouring tiles of the same rows of C. The other order (a B panel
/// in L1 against every A panel) writes tiles of successive rows, n values apart: at n = 2048
/// every row of C a sweep touched fell in one L1 set. The measurements against OpenBLAS are in
/// BENCHMARKS.md ("CPU SGEMM against OpenBLAS in one process").
fn sweep<'g, K: Micro>(
    Tile {
        ib,
        mc,
        j0,
        nc,
        p0,
        kc,
    }: Tile,
    apack: &[f32],
    group: &dyn Fn(usize) -> &'g [f32],
    c: Out,
    n: usize,
    (t, tasks): (usize, usize),
) {
    let (mr, nr) = (K::MR, K::NR);
    let groups = nc.div_ceil(nr * PACK_PANELS);
    for g in (0..groups).map(|g| (g + t * groups / tasks) % groups) {
        let bg = group(g);
        let first = g * PACK_PANELS;
        for ip in 0..mc.div_ceil(mr) {
            let rows = mr.min(mc - ip * mr);
            for jp in first..(first + PACK_PANELS).min(nc.div_ceil(nr)) {
                let cols = nr.min(nc - jp * nr);
                let bp = &bg[(jp - first) * nr * kc..][..nr * kc];
                let at = (ib + ip * mr) * n + j0 + jp * nr;
                let ap = &apack[ip * mr * kc..][..mr * kc];
                assert!(at + (rows - 1) * n + cols <= c.len);
                // SAFETY: the caller of `gemm_with` checked K's instruction set; the packed
                // panels hold mr·kc and nr·kc values; the `rows` × `cols` tile at `at` lies
                // inside `c` (asserted), and no other thread writes it (`Out`).
                unsafe {
                    K::kernel(
                        kc,
                        ap.as_ptr(),
                        bp.as_ptr(),
                        c.ptr.ptr().add(at),
                        n,
                        rows,
                        cols,
                        p0 > 0,
                    );
                }
            }
        }
    }
}

/// The shared packed-B buffer kept between products (taken by one product at a time; a
/// concurrent product allocates its own).
static SHARED_B: std::sync::Mutex<Vec<f32>> = std::sync::Mutex::new(Vec::new());

fn take_shared(len: usize) -> Vec<f32> {
    let mut v = std::mem::take(&mut *SHARED_B.lock().unwrap_or_else(|e| e.into_inner()));
    if v.len() < len + ALIGN_PAD {
        v.resize(len + ALIGN_PAD, 0.0);
    }
    v
}

/// Spare values at the end of every packing buffer, so that [`aligned`] can start it on a
/// 64-byte boundary.
const ALIGN_PAD: usize = 16;

/// The part of a packing buffer that starts on a cache line. Large allocations from the
/// system allocator start 16 bytes past a page boundary: unaligned, every 64-byte load of a
/// packed panel would straddle two cache lines.
fn aligned(v: &mut [f32]) -> &mut [f32] {
    let skip = v.as_ptr().align_offset(64).min(ALIGN_PAD).min(v.len());
    &mut v[skip..]
}

thread_local! {
    /// Packing buffers kept per thread between calls, so a product does not pay for fresh
    /// (page-faulting) allocations.
    static A_PACK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static B_PACK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// This thread's buffer from `slot`, at least `len` long (contents arbitrary: packing writes
/// every value it later reads, padding included).
fn take_buffer(slot: &'static std::thread::LocalKey<RefCell<Vec<f32>>>, len: usize) -> Vec<f32> {
    let mut v = slot.with(|s| std::mem::take(&mut *s.borrow_mut()));
    if v.len() < len + ALIGN_PAD {
        v.resize(len + ALIGN_PAD, 0.0);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Not a test: a throughput comparison of block sizes, interleaved in one process (this
    /// machine is too noisy for separate runs), after timing the packing alone. Run with
    /// `KILN_GEMM_N=1024 KILN_GEMM_THREADS=2 KILN_GEMM_CONFIGS=384:96:1024,128:144:512
    /// cargo test --release --lib gemm_throughput -- --ignored --nocapture` (each config
    /// `KC:MC:NC`, compared with the defaults; `KILN_GEMM_ROUNDS` rounds, 15 by default).
    #[test]
    #[ignore]
    fn gemm_throughput() {
        let n: usize = std::env::var("KILN_GEMM_N").map_or(1024, |v| v.parse().unwrap());
        let threads: usize = std::env::var("KILN_GEMM_THREADS").map_or(1, |v| v.parse().unwrap());
        let a: Vec<f32> = (0..n * n).map(|i| (i % 7) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..n * n).map(|i| (i % 5) as f32 * 0.1).collect();
        let view = |d| View {
            data: d,
            offset: 0,
            rs: n,
            cs: 1,
        };
        let mut configs = vec![Blocking::DEFAULT];
        for spec in std::env::var("KILN_GEMM_CONFIGS")
            .unwrap_or_default()
            .split(',')
        {
            let f: Vec<&str> = spec.split(':').collect();
            if f.len() == 3 {
                configs.push(Blocking {
                    kc: f[0].parse().unwrap(),
                    mc: f[1].parse().unwrap(),
                    nc: f[2].parse().unwrap(),
                });
            }
        }
        {
            // Packing alone, one thread: all of B (panel by panel) and all of A (block by block).
            let mut buf = vec![0.0f32; n.div_ceil(16) * 16 * n.div_ceil(KC) * KC + 4096];
            let mut tb = Vec::new();
            let mut ta = Vec::new();
            for _ in 0..15 {
                let t0 = web_time::Instant::now();
                let mut off = 0;
                for p0 in (0..n).step_by(KC) {
                    pack_b(&view(&b), 16, p0, KC.min(n - p0), 0, n, &mut buf[off..]);
                    off += n.div_ceil(16) * 16 * KC;
                }
                tb.push(t0.elapsed().as_secs_f64());
                let t0 = web_time::Instant::now();
                for p0 in (0..n).step_by(KC) {
                    for ib in (0..n).step_by(MC_MAX) {
                        pack_a::<avx2::Avx2>(
                            &view(&a),
                            ib,
                            MC_MAX.min(n - ib),
                            p0,
                            KC.min(n - p0),
                            &mut buf[..KC * MC_MAX],
                        );
                    }
                }
                ta.push(t0.elapsed().as_secs_f64());
            }
            tb.sort_by(f64::total_cmp);
            ta.sort_by(f64::total_cmp);
            println!(
                "pack B {:.3} ms, pack A {:.3} ms (medians, one thread)",
                tb[7] * 1e3,
                ta[7] * 1e3
            );
        }
        let mut c = vec![MaybeUninit::new(0.0f32); n * n];
        let mut times = vec![Vec::new(); configs.len()];
        let rounds: usize = std::env::var("KILN_GEMM_ROUNDS").map_or(15, |v| v.parse().unwrap());
        for _round in 0..rounds {
            for (cfg, t) in configs.iter().zip(&mut times) {
                let start = web_time::Instant::now();
                match available().expect("a CPU with a micro-kernel") {
                    Isa::Avx512 => gemm_with::<avx512::Avx512>(
                        n,
                        n,
                        n,
                        view(&a),
                        view(&b),
                        &mut c,
                        *cfg,
                        threads,
                        None,
                    ),
                    Isa::Avx2 => gemm_with::<avx2::Avx2>(
                        n,
                        n,
                        n,
                        view(&a),
                        view(&b),
                        &mut c,
                        *cfg,
                        threads,
                        None,
                    ),
                }
                t.push(start.elapsed().as_secs_f64());
            }
        }
        for (cfg, t) in configs.iter().zip(&mut times) {
            t.sort_by(f64::total_cmp);
            let med = t[t.len() / 2];
            println!(
                "{cfg:?}: {:.1} GFLOP/s (median), best {:.1}",
                2.0 * (n as f64).powi(3) / med / 1e9,
                2.0 * (n as f64).powi(3) / t[0] / 1e9
            );
        }
    }

    /// Not a test: the micro-kernel's throughput on panels already in L1 (kc = KC, one
    /// thread), beside a chain of dependent adds that measures the clock. Run with
    /// `cargo test --release --lib kernel_in_l1 -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn kernel_in_l1() {
        /// Median and best GFLOP/s of seven timings of 20,000 calls.
        fn probe<K: Micro>() -> (f64, f64) {
            let ap = vec![0.5f32; K::MR * KC];
            let bp = vec![0.25f32; K::NR * KC];
            let mut c = vec![0.0f32; K::MR * K::NR];
            let calls = 20_000;
            let mut rates = Vec::new();
            for _ in 0..7 {
                let t0 = web_time::Instant::now();
                for _ in 0..calls {
                    // SAFETY: the panels hold MR·KC and NR·KC values, c one MR × NR tile; the
                    // caller checked the instruction set.
                    unsafe {
                        K::kernel(
                            KC,
                            ap.as_ptr(),
                            bp.as_ptr(),
                            c.as_mut_ptr(),
                            K::NR,
                            K::MR,
                            K::NR,
                            true,
                        )
                    };
                }
                let flops = 2.0 * (K::MR * K::NR * KC * calls) as f64;
                rates.push(flops / t0.elapsed().as_secs_f64() / 1e9);
            }
            std::hint::black_box(&c);
            rates.sort_by(f64::total_cmp);
            (rates[3], rates[6])
        }
        // The clock: chains of eight dependent integer adds (one a cycle), 5e7 times.
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t0 = web_time::Instant::now();
            let (mut x, mut left) = (0u64, 50_000_000u64);
            // SAFETY: register arithmetic only.
            unsafe {
                std::arch::asm!(
                    "2:",
                    "add {x}, 1", "add {x}, 1", "add {x}, 1", "add {x}, 1",
                    "add {x}, 1", "add {x}, 1", "add {x}, 1", "add {x}, 1",
                    "dec {left}", "jnz 2b",
                    x = inout(reg) x, left = inout(reg) left,
                );
            }
            std::hint::black_box((x, left));
            best = best.min(t0.elapsed().as_secs_f64());
        }
        let ghz = 0.4 / best;
        println!("clock ~{ghz:.2} GHz (dependent adds)");
        // Peak: two FMA units of 8 (AVX2) or 16 (AVX-512) lanes. Cores that split 512-bit
        // operations into two 256-bit halves (AMD Zen 4) have AVX2's peak for AVX-512 too, so
        // 50% is their ceiling there (BENCHMARKS.md has what both kernels reach on Zen 4).
        for (isa, lanes) in [(Isa::Avx2, 8.0), (Isa::Avx512, 16.0)] {
            if isa.supported() {
                let (median, best) = match isa {
                    Isa::Avx2 => probe::<avx2::Avx2>(),
                    Isa::Avx512 => probe::<avx512::Avx512>(),
                };
                let peak = ghz * 2.0 * lanes * 2.0;
                println!(
                    "{isa:?}: median {median:.1}, best {best:.1} GFLOP/s; peak {peak:.1} \
                     (median {:.0}%)",
                    100.0 * median / peak
                );
            }
        }
    }

    /// Every micro-kernel this CPU supports against an f64 reference: edge tiles in every
    /// direction (m, n not multiples of MR, NR; k across several KC blocks), operands read
    /// through transposed strides (both packing paths), threads split by rows or by columns,
    /// and an epilogue on every row.
    #[test]
    fn matches_a_reference_on_ragged_and_strided_operands() {
        let isas: Vec<Isa> = [Isa::Avx512, Isa::Avx2]
            .into_iter()
            .filter(|i| i.supported())
            .collect();
        eprintln!("micro-kernels tested on this CPU: {isas:?}");
        if isas.is_empty() {
            eprintln!("!!! no AVX2+FMA or AVX-512F on this CPU: the kernels are not used here");
            return;
        }
        let mut seed = 1u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        for &(m, k, n, ta, tb) in &[
            (37, 600, 45, false, false),
            (12, 256, 32, false, false),
            (1, 3, 1, false, false),
            (50, 257, 70, true, false),
            (29, 513, 33, false, true),
            (13, 100, 65, true, true),
            // Wider than NC: two column blocks of the shared B.
            (40, 300, 1100, false, false),
            // B larger than SHARED_B_MAX: each thread packs its own blocks.
            (3, 4100, 4100, false, false),
            // A few rows against a wide B: the threads split the columns (a partial last
            // panel, k over two blocks; B row-major and transposed).
            (20, 300, 1000, false, false),
            (17, 120, 2100, true, true),
        ] {
            let a: Vec<f32> = (0..m * k).map(|_| next()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| next()).collect();
            // Stored transposed when t: element (i, j) at j * rows + i.
            let (ars, acs) = if ta { (1, m) } else { (k, 1) };
            let (brs, bcs) = if tb { (1, k) } else { (n, 1) };
            let va = View {
                data: &a,
                offset: 0,
                rs: ars,
                cs: acs,
            };
            let vb = View {
                data: &b,
                offset: 0,
                rs: brs,
                cs: bcs,
            };
            // Every row gets 1 + its index added afterwards, by the threads (`linear`'s bias).
            let epilogue =
                |i: usize, row: &mut [f32]| row.iter_mut().for_each(|v| *v += 1.0 + i as f32);
            for &isa in &isas {
                let mut c = vec![MaybeUninit::new(f32::NAN); m * n];
                let (bl, threads, e) = (Blocking::DEFAULT, usize::MAX, Some(&epilogue as _));
                match isa {
                    Isa::Avx512 => {
                        gemm_with::<avx512::Avx512>(m, k, n, va, vb, &mut c, bl, threads, e)
                    }
                    Isa::Avx2 => gemm_with::<avx2::Avx2>(m, k, n, va, vb, &mut c, bl, threads, e),
                }
                // SAFETY: initialised above (and overwritten by gemm).
                let c: Vec<f32> = c.into_iter().map(|v| unsafe { v.assume_init() }).collect();
                for i in 0..m {
                    for j in 0..n {
                        let want: f64 = (0..k)
                            .map(|p| f64::from(va.at(i, p)) * f64::from(vb.at(p, j)))
                            .sum::<f64>()
                            + 1.0
                            + i as f64;
                        let got = f64::from(c[i * n + j]);
                        assert!(
                            (got - want).abs() <= 1e-5 * k as f64,
                            "{isa:?} {m}x{k}x{n} (ta {ta}, tb {tb}) at ({i}, {j}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
