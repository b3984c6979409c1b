//! The page's code run natively: the same async training and op-table check that the browser
//! runs (scripts/browser_test.py drives them there), here on the CPU backend and every GPU
//! adapter, with futures driven by a blocking executor.

use kiln::Device;

fn devices() -> Vec<Device> {
    let mut all = vec![Device::cpu()];
    for d in Device::all_gpus() {
        match d {
            Ok(d) => all.push(d),
            Err(e) => eprintln!("kiln-web tests: an adapter failed to open: {e}"),
        }
    }
    if all.len() == 1 {
        assert!(
            std::env::var("KILN_REQUIRE_GPU").map_or(true, |v| v != "1"),
            "KILN_REQUIRE_GPU=1 but no GPU adapter could be opened"
        );
        eprintln!("!!!!! kiln-web tests: NO GPU ADAPTER — GPU half SKIPPED !!!!!");
    }
    all
}

/// The op table through the async runner: natively nothing needs to block, so every op runs
/// and agrees with its reference and the CPU backend.
#[test]
fn op_table_passes_through_the_async_runner_on_every_device() {
    for dev in devices() {
        let results = pollster::block_on(kiln_web::check::run(&dev, |_, _| {}));
        assert_eq!(results.len(), kiln_web::check::op_count());
        let failed: Vec<String> = results.iter().filter_map(|r| r.failure.clone()).collect();
        assert!(failed.is_empty(), "on {}: {failed:#?}", dev.info().name);
        let samples: usize = results.iter().map(|r| r.samples).sum();
        let halves: usize = results.iter().map(|r| r.half_samples).sum();
        assert!(
            halves > samples,
            "on {}: {halves} half samples",
            dev.info().name
        );
        let worst = results.iter().map(|r| r.max_vs_cpu).fold(0.0, f64::max);
        eprintln!(
            "kiln-web: op table on {}: {} ops, {samples} samples ({halves} in f16/bf16), largest relative difference from the CPU {worst:.1e}",
            dev.info().name,
            results.len()
        );
        if dev.is_cpu() {
            assert_eq!(worst, 0.0, "the CPU backend against itself");
        }
    }
}

/// A planted wrong answer is caught and named, on the device and on the CPU beside it, and
/// does not stop the other ops; a refusal to block is told apart from a wrong answer.
#[test]
fn a_planted_fault_is_reported_and_the_rest_still_run() {
    for dev in devices() {
        let results = pollster::block_on(kiln_web::check::run_replaced(
            &dev,
            "relu",
            |t| t[0].sigmoid(),
            |_, _| {},
        ));
        let relu = results.iter().find(|r| r.name == "relu").unwrap();
        let failure = relu.failure.as_deref().unwrap_or_default();
        assert!(
            failure.starts_with("relu sample ") && failure.contains("want"),
            "{failure}"
        );
        assert!(!relu.needs_blocking_read);
        assert!(
            results
                .iter()
                .filter(|r| r.name != "relu")
                .all(|r| r.failure.is_none())
        );
        let results = pollster::block_on(kiln_web::check::run_replaced(
            &dev,
            "tanh",
            |_| {
                Err(kiln::Error::Unsupported {
                    op: "to_vec",
                    reason: "a browser cannot block while the GPU works".into(),
                })
            },
            |_, _| {},
        ));
        let tanh = results.iter().find(|r| r.name == "tanh").unwrap();
        assert!(tanh.needs_blocking_read && tanh.failure.is_some());
    }
}

/// The page's digits training on every device: 30 epochs reach the native example's accuracy
/// (97.21% on the CPU) within noise, and at least 95%.
#[test]
fn digits_train_in_the_page_loop_on_every_device() {
    let (train, test) = kiln_web::digits::sizes();
    assert_eq!((train, test), (1438, 359));
    for dev in devices() {
        let mut epochs = Vec::new();
        let acc = pollster::block_on(kiln_web::digits::train(&dev, 30, |e| {
            epochs.push(e.clone())
        }))
        .unwrap();
        assert_eq!(epochs.len(), 30);
        assert!(epochs.iter().all(|e| e.losses.len() == train.div_ceil(32)));
        let first = epochs[0].losses[0];
        let last = epochs[29].losses.iter().sum::<f32>() / epochs[29].losses.len() as f32;
        eprintln!(
            "kiln-web: digits on {}: held-out {:.2}%, loss {first:.3} -> {last:.4}",
            dev.info().name,
            100.0 * acc
        );
        assert!(acc >= 0.95, "{}: {acc}", dev.info().name);
        assert!(last < first / 10.0);
    }
}
