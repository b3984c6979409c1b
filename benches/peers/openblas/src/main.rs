//! kiln's CPU matmul against OpenBLAS's `cblas_sgemm`, alternating call by call in one
//! process, on the same operands. numpy's own BLAS is used (found through `python3 -c "import
//! numpy"`, or given as `--lib PATH`), so this is the peer `numpy_ref.py` measures, without
//! the interpreter and without the noise of separate runs:
//!
//!   cargo run --release -- --matmul 512 1024 2048 [--rounds 31] [--lib PATH]
//!
//! Both sides allocate their output on every call, as `x @ y` does in numpy (OpenBLAS into
//! uninitialised memory, kiln into a new tensor), and both use every core (OpenBLAS's default,
//! kiln's worker pool). Each round gives each side, in alternating order, a quiet pause, a
//! warm-up and a burst of timed calls (see `QUIET`, `WARM_UP`, `BURST` and
//! `OPENBLAS_THREAD_TIMEOUT`). Prints one JSON object per size: the median time of each side,
//! the ratio of the medians (OpenBLAS time / kiln time: above 1, kiln is faster) and the
//! quartiles of the per-pair ratios; and checks that the two products agree first.
//! `RAYON_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1` compares one thread against one.

use kiln::{Device, Tensor};
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::time::Instant;

unsafe extern "C" {
    fn dlopen(file: *const c_char, mode: c_int) -> *mut c_void;
    fn dlsym(handle: *mut c_void, name: *const c_char) -> *mut c_void;
    fn dlerror() -> *const c_char;
}

/// `cblas_sgemm` of an OpenBLAS built with 64-bit integers (numpy's `scipy_cblas_sgemm64_`).
type Sgemm = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    i64,
    i64,
    i64,
    f32,
    *const f32,
    i64,
    *const f32,
    i64,
    f32,
    *mut f32,
    i64,
);

/// Timed calls per side and round (back to back, as in a loop of products).
const BURST: usize = 5;
/// Untimed calls before them, for at least this long: after the pause the machine runs the
/// first milliseconds of work slowly (256³ products measured 1.0, 0.8, 0.6 ms in a row,
/// against 0.3 ms in a steady loop), for both sides alike.
const WARM_UP: std::time::Duration = std::time::Duration::from_millis(20);
/// Idle time before each burst: more than either side's threads spin after a call (kiln's
/// 2 ms; OpenBLAS's, set below).
const QUIET: std::time::Duration = std::time::Duration::from_millis(10);
/// OpenBLAS's idle threads spin (calling `sched_yield`) for 2^28 cycles after a call by
/// default, about 0.1 s, which in one process takes a core from kiln's threads. 2^22 cycles
/// (1.4 ms at 3 GHz) is about as long as kiln's own threads spin.
const OPENBLAS_THREAD_TIMEOUT: &str = "22";

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;

/// numpy's bundled OpenBLAS, as numpy itself reports it.
fn numpy_openblas() -> String {
    let code = "import glob, os, numpy; d = os.path.join(os.path.dirname(numpy.__file__), \
                os.pardir, 'numpy.libs'); print(glob.glob(os.path.join(d, 'libscipy_openblas*'))[0])";
    let out = std::process::Command::new("python3")
        .args(["-c", code])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "numpy's OpenBLAS not found (pip install numpy, or pass --lib PATH): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("a path")
        .trim()
        .to_owned()
}

fn load(path: &str) -> Sgemm {
    if std::env::var_os("OPENBLAS_THREAD_TIMEOUT").is_none() {
        // SAFETY: no other thread has started yet.
        unsafe { std::env::set_var("OPENBLAS_THREAD_TIMEOUT", OPENBLAS_THREAD_TIMEOUT) };
    }
    let c = CString::new(path).expect("a path");
    // SAFETY: dlopen/dlsym with valid C strings; the symbol has the signature of `Sgemm`
    // (OpenBLAS's cblas.h with 64-bit integers).
    unsafe {
        let h = dlopen(c.as_ptr(), 2 /* RTLD_NOW */);
        assert!(
            !h.is_null(),
            "dlopen {path}: {:?}",
            CStr::from_ptr(dlerror())
        );
        for name in [c"scipy_cblas_sgemm64_", c"cblas_sgemm64_"] {
            let f = dlsym(h, name.as_ptr());
            if !f.is_null() {
                return std::mem::transmute::<*mut c_void, Sgemm>(f);
            }
        }
        panic!("{path} has no 64-bit-integer cblas_sgemm (numpy's OpenBLAS has one)");
    }
}

fn main() -> kiln::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let list = |flag: &str| -> Vec<String> {
        let Some(i) = args.iter().position(|a| a == flag) else {
            return vec![];
        };
        args[i + 1..]
            .iter()
            .take_while(|a| !a.starts_with("--"))
            .cloned()
            .collect()
    };
    let sizes: Vec<usize> = list("--matmul")
        .iter()
        .map(|v| v.parse().expect("a size"))
        .collect();
    let rounds: usize = list("--rounds")
        .first()
        .map_or(31, |v| v.parse().expect("a count"));
    let lib = list("--lib")
        .first()
        .cloned()
        .unwrap_or_else(numpy_openblas);
    let sgemm = load(&lib);
    eprintln!("OpenBLAS: {lib}");
    let dev = Device::cpu();
    for n in sizes {
        let a = Tensor::randn(&dev, &[n, n], 1)?;
        let b = Tensor::randn(&dev, &[n, n], 2)?;
        let (av, bv) = (a.to_vec()?, b.to_vec()?);
        let blas = || {
            let mut c: Vec<f32> = Vec::with_capacity(n * n);
            let ni = n as i64;
            // SAFETY: a, b and c hold n·n values each; beta = 0, so c is written, not read.
            unsafe {
                sgemm(
                    ROW_MAJOR,
                    NO_TRANS,
                    NO_TRANS,
                    ni,
                    ni,
                    ni,
                    1.0,
                    av.as_ptr(),
                    ni,
                    bv.as_ptr(),
                    ni,
                    0.0,
                    c.as_mut_ptr(),
                    ni,
                );
                c.set_len(n * n);
            }
            c
        };
        let ours = a.matmul(&b)?.to_vec()?;
        let theirs = blas();
        let diff = ours
            .iter()
            .zip(&theirs)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(
            diff <= 1e-3 * (n as f32).sqrt(),
            "kiln and OpenBLAS differ by {diff} at {n}"
        );
        let (mut tk, mut tb, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
        for r in 0..rounds + 2 {
            // Alternate which side goes first, so neither always follows the other. Each side
            // gets WARM_UP of untimed calls and then a burst of BURST calls, after QUIET of
            // idleness (by then the other side's threads have stopped spinning); the burst's
            // median counts.
            let mut pair = [0.0; 2];
            for side in [r % 2, 1 - r % 2] {
                std::thread::sleep(QUIET);
                let call = || -> kiln::Result<f64> {
                    let start = Instant::now();
                    if side == 0 {
                        std::hint::black_box(a.matmul(&b)?);
                    } else {
                        std::hint::black_box(blas());
                    }
                    Ok(start.elapsed().as_secs_f64())
                };
                let warm = Instant::now();
                while warm.elapsed() < WARM_UP {
                    call()?;
                }
                let mut burst = [0.0; BURST];
                for t in &mut burst {
                    *t = call()?;
                }
                burst.sort_by(f64::total_cmp);
                pair[side] = burst[BURST / 2];
            }
            if r >= 2 {
                tk.push(pair[0]);
                tb.push(pair[1]);
                ratio.push(pair[1] / pair[0]);
            }
        }
        for v in [&mut tk, &mut tb, &mut ratio] {
            v.sort_by(f64::total_cmp);
        }
        let q = |v: &[f64], f: f64| v[((v.len() - 1) as f64 * f).round() as usize];
        let med = |v: &[f64]| q(v, 0.5);
        let gf = |s: f64| 2.0 * (n as f64).powi(3) / s / 1e9;
        println!(
            r#"{{"op": "matmul", "n": {n}, "kiln_seconds": {}, "openblas_seconds": {}, "kiln_gflops": {:.1}, "openblas_gflops": {:.1}, "speed": {:.3}, "pair_ratio_q1": {:.3}, "pair_ratio_median": {:.3}, "pair_ratio_q3": {:.3}, "rounds": {rounds}}}"#,
            med(&tk),
            med(&tb),
            gf(med(&tk)),
            gf(med(&tb)),
            med(&tb) / med(&tk),
            q(&ratio, 0.25),
            med(&ratio),
            q(&ratio, 0.75),
        );
    }
    Ok(())
}
