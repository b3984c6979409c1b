//! The matmul autotuner: the first product of a new shape class runs one kernel at once; the
//! following products of the class try the other candidates (each a correct product); then the
//! winner is written to the on-disk cache, and a new device on the same adapter reuses it
//! without tuning. (Its own test binary: it sets KILN_CACHE_DIR, which the tuner reads when a
//! device opens.)

#[macro_use]
mod common;

use common::*;
use kiln::{Device, Tensor};

#[test]
fn autotune_result_is_cached_on_disk_and_reused() {
    let dir = std::env::temp_dir().join(format!("kiln-tuning-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // SAFETY: the only test in this binary; no other thread reads the environment yet.
    unsafe { std::env::set_var("KILN_CACHE_DIR", &dir) };
    let n = 256; // m·n·k = 2^24: large enough to be tuned
    let a = Tensor::randn(&Device::cpu(), &[n, n], 1).unwrap();
    let b = Tensor::randn(&Device::cpu(), &[n, n], 2).unwrap();
    let want: Vec<f64> = a
        .matmul(&b)
        .unwrap()
        .to_vec()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect();
    for dev in fresh_gpus() {
        let (ga, gb) = (a.to_device(&dev).unwrap(), b.to_device(&dev).unwrap());
        let mut calls = 0;
        // Every call is a real product, trial or not; the class settles within 32 calls.
        while tuning_files(&dir).is_empty() {
            let got = ga.matmul(&gb).unwrap();
            assert_close(
                &format!("matmul on {dev}, call {calls}"),
                &got.to_vec().unwrap(),
                &want,
                1e-6 * 257.0,
                1e-5,
            );
            if calls == 0 {
                assert_eq!(
                    dev.pipeline_count(),
                    1,
                    "the first product of a new class runs one kernel at once"
                );
            }
            calls += 1;
            assert!(calls <= 32, "the class did not settle in 32 calls");
        }
        let tuned = dev.pipeline_count();
        assert!(
            tuned >= 3,
            "tuning should have tried several kernels, compiled {tuned}"
        );
        say!("matmul tuning on {dev} settled after {calls} products, {tuned} kernels tried");
        // Device::tune_matmul settles a class up front, once.
        assert_eq!(dev.tune_matmul(n, n, n).unwrap(), 0, "already settled");
        let runs = dev.tune_matmul(2 * n, n, n).unwrap();
        assert!(runs >= 2, "a new class takes trial runs: {runs}");
        assert_eq!(
            dev.tune_matmul(2 * n, n, n).unwrap(),
            0,
            "settled by the call above"
        );
        assert_eq!(Device::cpu().tune_matmul(n, n, n).unwrap(), 0);
        let files = tuning_files(&dir);
        assert_eq!(files.len(), 1, "one cache file per adapter: {files:?}");
        let text = std::fs::read_to_string(&files[0]).unwrap();
        assert!(text.starts_with("8 8 8 0\t"), "cache line: {text:?}");

        // A new device on the same adapter reads the cache: one pipeline, no tuning.
        let again = Device::all_gpus()
            .into_iter()
            .flatten()
            .find(|d| d.info().name == dev.info().name && d.info().backend == dev.info().backend)
            .unwrap();
        let got = a
            .to_device(&again)
            .unwrap()
            .matmul(&b.to_device(&again).unwrap())
            .unwrap();
        assert_close(
            "cached choice",
            &got.to_vec().unwrap(),
            &want,
            1e-6 * 257.0,
            1e-5,
        );
        assert_eq!(
            again.pipeline_count(),
            1,
            "the cached configuration should be used directly"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The matmul tuning files in `dir` (beside them: the driver's pipeline caches).
fn tuning_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir).map_or(Vec::new(), |d| {
        d.flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("matmul-"))
            })
            .collect()
    })
}
