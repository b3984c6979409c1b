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

mod math;
#[allow(unused_imports)]
pub use math::*;

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

/// Values of a tensor as f64.
pub fn to_f64(t: &Tensor) -> Vec<f64> {
    t.to_vec().unwrap().into_iter().map(f64::from).collect()
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
