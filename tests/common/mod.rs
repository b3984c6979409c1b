//! Shared by the integration tests: the devices to run on, f64 references, and comparison.
#![allow(dead_code)]

use kiln::{Device, Tensor};

/// Like eprintln!, but written to the stderr handle itself: the test harness captures eprintln!
/// and hides it for passing tests, and a skipped GPU half must be visible.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
use std::sync::OnceLock;

/// Logging for tests: `RUST_LOG=kiln=debug cargo test`.
pub fn init_logging() {
    let _ = env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("warn,wgpu_hal=off"),
    )
    .is_test(true)
    .try_init();
}

fn gpu_devices() -> &'static Vec<Device> {
    static GPUS: OnceLock<Vec<Device>> = OnceLock::new();
    GPUS.get_or_init(|| {
        init_logging();
        let mut gpus = Vec::new();
        for d in Device::all_gpus() {
            match d {
                Ok(d) => {
                    say!(
                        "kiln tests: GPU device {} ({:?}, {})",
                        d.info().name,
                        d.info().kind,
                        d.info().backend
                    );
                    gpus.push(d);
                }
                Err(e) => say!("kiln tests: an adapter failed to open: {e}"),
            }
        }
        gpus
    })
}

/// The GPU devices to test on. With `KILN_REQUIRE_GPU=1`, finding none fails the test; without
/// it, the skip is announced loudly on stderr.
pub fn gpus() -> Vec<Device> {
    let gpus = gpu_devices().clone();
    if gpus.is_empty() {
        if std::env::var("KILN_REQUIRE_GPU").is_ok_and(|v| v == "1") {
            panic!(
                "KILN_REQUIRE_GPU=1 but no GPU adapter could be opened (install mesa-vulkan-drivers for lavapipe)"
            );
        }
        say!(
            "!!!!! kiln tests: NO GPU ADAPTER — GPU cases SKIPPED (set KILN_REQUIRE_GPU=1 to fail instead) !!!!!"
        );
    }
    gpus
}

/// The CPU backend, then every GPU device.
pub fn devices() -> Vec<Device> {
    let mut all = vec![Device::cpu()];
    all.extend(gpus());
    all
}

/// A deterministic stream of test values (not kiln's RNG, so the tests do not trust it).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next_u32(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * (self.next_u32() as f32 / (1u64 << 31) as f32)
    }

    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }

    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.next_u32() as usize % xs.len()]
    }
}

/// |x - y| <= atol + rtol * |ref|, NaN where the reference is NaN, exact infinities.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0.0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = f64::from(g);
        if w.is_nan() {
            assert!(g.is_nan(), "{what}[{i}]: got {g}, want NaN");
            continue;
        }
        if w.is_infinite() || (w.abs() > f64::from(f32::MAX)) {
            assert_eq!(
                g,
                w.clamp(f64::NEG_INFINITY, f64::INFINITY).signum() * f64::INFINITY,
                "{what}[{i}]: want {w}"
            );
            continue;
        }
        let err = (g - w).abs();
        let tol = atol + rtol * w.abs();
        assert!(
            err <= tol,
            "{what}[{i}]: got {g}, want {w} (error {err:.3e} > tolerance {tol:.3e})"
        );
        if err > worst.0 {
            worst = (err, i);
        }
    }
}

/// Values of a tensor as f64.
pub fn to_f64(t: &Tensor) -> Vec<f64> {
    t.to_vec().unwrap().into_iter().map(f64::from).collect()
}

/// erf in f64: Taylor series below 3, continued fraction for erfc above (error < 1e-13).
pub fn erf(x: f64) -> f64 {
    let a = x.abs();
    let r = if a < 3.0 {
        let mut term = a;
        let mut sum = a;
        let mut n = 0.0;
        loop {
            n += 1.0;
            term *= -a * a / n;
            let add = term / (2.0 * n + 1.0);
            sum += add;
            if add.abs() <= 1e-17 * sum.abs() || n > 200.0 {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc(a) = exp(-a²)/√π · 1/(a + 1/2/(a + 1/(a + 3/2/(a + ...)))), evaluated bottom-up.
        let mut f = 0.0;
        for k in (1..60).rev() {
            f = (k as f64 / 2.0) / (a + f);
        }
        1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + f)
    };
    if x < 0.0 { -r } else { r }
}

/// Row-major strides.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// numpy broadcast of two shapes, or None.
pub fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    let get = |s: &[usize], i: usize| {
        if i + s.len() >= r {
            s[i + s.len() - r]
        } else {
            1
        }
    };
    (0..r)
        .map(|i| match (get(a, i), get(b, i)) {
            (x, y) if x == y => Some(x),
            (1, y) => Some(y),
            (x, 1) => Some(x),
            _ => None,
        })
        .collect()
}

/// Index into `shape` (broadcast to `out`) for the output multi-index `idx`.
pub fn bcast_index(shape: &[usize], out: &[usize], idx: &[usize]) -> usize {
    let st = strides(shape);
    let off = out.len() - shape.len();
    (0..shape.len())
        .map(|i| {
            if shape[i] == 1 {
                0
            } else {
                idx[i + off] * st[i]
            }
        })
        .sum()
}

/// Multi-index of linear index `i` in `shape`.
pub fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = i % shape[d];
        i /= shape[d];
    }
    idx
}

/// Newly opened GPU devices, one per adapter, for tests that read the pool's counters and must
/// not share a device with tests running in parallel.
pub fn fresh_gpus() -> Vec<Device> {
    if gpus().is_empty() {
        return vec![];
    }
    // Under WGPU_BACKEND=gl, wgpu-hal's EGL code can panic (BadAccess) when two threads open
    // devices at once: one test at a time.
    static OPENING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = OPENING.lock().unwrap_or_else(|e| e.into_inner());
    Device::all_gpus()
        .into_iter()
        .filter_map(|d| d.ok())
        .collect()
}
