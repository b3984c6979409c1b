//! The GPU runtime: buffer reuse hazards, batching, readback, transfer, seeding.

#[macro_use]
mod common;

use common::*;
use kiln::{Device, Tensor};

/// A buffer freed while a recorded (unsubmitted) dispatch still reads it must not be reused by
/// an upload: `write_buffer` would land before the dispatch runs and the dispatch would read the
/// new data.
#[test]
fn freed_buffer_is_not_overwritten_before_pending_read() {
    for dev in fresh_gpus() {
        dev.synchronize().unwrap();
        let n = 1000;
        let a = Tensor::from_vec(&dev, vec![-2.0; n], &[n]).unwrap();
        dev.synchronize().unwrap(); // a's upload is done; the batch is empty
        let b = a.relu().unwrap(); // recorded, not submitted: reads a's buffer
        drop(a); // a's buffer goes back to the pool while b's dispatch is pending
        let c = Tensor::from_vec(&dev, vec![7.0; n], &[n]).unwrap(); // same size class as a
        let got = b.to_vec().unwrap();
        assert!(
            got.iter().all(|&v| v == 0.0),
            "relu read the later upload on {dev}: {:?}",
            &got[..4]
        );
        assert_eq!(c.to_vec().unwrap(), vec![7.0; n]);
        // And once the batch has been submitted, the pool does reuse buffers.
        let created = dev.memory().created;
        drop(c);
        dev.synchronize().unwrap();
        let _d = Tensor::from_vec(&dev, vec![1.0; n], &[n]).unwrap();
        assert_eq!(
            dev.memory().created,
            created,
            "a released buffer was not reused on {dev}"
        );
    }
}

/// Many dispatches recorded between readbacks (more than one batch) give the right answer, and
/// tensors dropped along the way are recycled instead of leaking.
#[test]
fn long_chains_batch_and_recycle() {
    let mut devs = vec![Device::cpu()];
    devs.extend(fresh_gpus());
    for dev in devs {
        let mut x = Tensor::from_vec(&dev, vec![0.0, 1.0, -1.0, 2.0], &[4]).unwrap();
        let one = Tensor::ones(&dev, &[1]).unwrap();
        for _ in 0..300 {
            x = x.add(&one).unwrap();
        }
        assert_eq!(
            x.to_vec().unwrap(),
            vec![300.0, 301.0, 299.0, 302.0],
            "on {dev}"
        );
        dev.synchronize().unwrap();
        let stats = dev.memory();
        if !dev.is_cpu() {
            assert!(
                stats.live <= 4,
                "live buffers after the chain on {dev}: {stats:?}"
            );
            assert!(
                stats.created < 10,
                "buffers were not reused on {dev}: {stats:?}"
            );
        }
    }
}

#[test]
fn async_readback_matches_blocking() {
    for dev in devices() {
        let t = Tensor::randn(&dev, &[33, 7], 5).unwrap().tanh().unwrap();
        let a = pollster::block_on(t.to_vec_async()).unwrap();
        assert_eq!(a, t.to_vec().unwrap(), "on {dev}");
    }
}

#[test]
fn random_tensors_are_identical_on_every_device() {
    let want_n = Tensor::randn(&Device::cpu(), &[17, 31], 42)
        .unwrap()
        .to_vec()
        .unwrap();
    let want_u = Tensor::rand(&Device::cpu(), &[1000], 9)
        .unwrap()
        .to_vec()
        .unwrap();
    assert!(want_u.iter().all(|v| (0.0..1.0).contains(v)));
    for dev in gpus() {
        assert_eq!(
            Tensor::randn(&dev, &[17, 31], 42)
                .unwrap()
                .to_vec()
                .unwrap(),
            want_n,
            "randn on {dev}"
        );
        assert_eq!(
            Tensor::rand(&dev, &[1000], 9).unwrap().to_vec().unwrap(),
            want_u,
            "rand on {dev}"
        );
    }
}

#[test]
fn to_device_round_trips_and_reshape_shares() {
    let cpu = Device::cpu();
    let x = Tensor::randn(&cpu, &[4, 6], 3).unwrap();
    for dev in fresh_gpus() {
        let g = x.to_device(&dev).unwrap();
        assert!(g.device().same(&dev));
        let r = g.reshape(&[2, 12]).unwrap();
        assert_eq!(r.shape(), &[2, 12]);
        let back = r.to_device(&cpu).unwrap();
        assert_eq!(back.to_vec().unwrap(), x.to_vec().unwrap(), "on {dev}");
        // reshape makes no copy: no new buffer is taken from the pool.
        let live = dev.memory().live;
        let _v = g.reshape(&[24]).unwrap();
        assert_eq!(dev.memory().live, live);
    }
}

#[test]
fn constructors_fill_and_empty_tensors_dispatch_nothing() {
    let mut devs = vec![Device::cpu()];
    devs.extend(fresh_gpus());
    for dev in devs {
        assert_eq!(
            Tensor::full(&dev, &[3, 2], 2.5).unwrap().to_vec().unwrap(),
            vec![2.5; 6]
        );
        assert_eq!(
            Tensor::zeros(&dev, &[5]).unwrap().to_vec().unwrap(),
            vec![0.0; 5]
        );
        let e = Tensor::zeros(&dev, &[0, 3]).unwrap();
        let before = dev.memory().created;
        let r = e
            .gelu()
            .unwrap()
            .add(&Tensor::ones(&dev, &[3]).unwrap())
            .unwrap();
        assert_eq!(r.shape(), &[0, 3]);
        assert_eq!(r.to_vec().unwrap(), Vec::<f32>::new());
        assert!(
            dev.memory().created <= before + 1,
            "empty ops allocated on {dev}"
        );
        let s = Tensor::from_vec(&dev, vec![4.0], &[]).unwrap();
        assert_eq!(s.rank(), 0);
        assert_eq!(s.mul(&s).unwrap().to_vec().unwrap(), vec![16.0]);
    }
}

/// More than 65,535 workgroups in one dimension: the grid folds into 2-D.
#[test]
fn elementwise_past_65535_workgroups() {
    let n = 65_536 * 256 + 3;
    let data: Vec<f32> = (0..n).map(|i| (i % 1000) as f32 - 500.0).collect();
    for dev in gpus() {
        let y = Tensor::from_slice(&dev, &data, &[n])
            .unwrap()
            .relu()
            .unwrap()
            .to_vec()
            .unwrap();
        for i in [0, 499, 500, 501, n / 2, n - 2, n - 1] {
            assert_eq!(y[i], data[i].max(0.0), "element {i} on {dev}");
        }
        assert!(
            y.iter().zip(&data).all(|(a, b)| *a == b.max(0.0)),
            "on {dev}"
        );
    }
}

#[test]
fn the_same_program_gives_the_same_answer_on_every_device() {
    let run = |dev: &Device| {
        let x = Tensor::randn(dev, &[8, 64], 1).unwrap();
        let w1 = Tensor::randn(dev, &[64, 32], 2).unwrap();
        let b1 = Tensor::randn(dev, &[32], 3).unwrap();
        let w2 = Tensor::randn(dev, &[32, 10], 4).unwrap();
        let h = x.matmul(&w1).unwrap().add(&b1).unwrap().gelu().unwrap();
        h.matmul(&w2).unwrap().sigmoid().unwrap().to_vec().unwrap()
    };
    let want: Vec<f64> = run(&Device::cpu()).into_iter().map(f64::from).collect();
    for dev in gpus() {
        assert_close(&format!("mlp on {dev}"), &run(&dev), &want, 1e-5, 1e-4);
    }
}

/// u32 tensors keep every bit pattern (including ones that are NaN or subnormal as f32) through
/// upload, readback, transfer and the layout ops, on every device.
#[test]
fn u32_tensors_are_bit_exact() {
    let vals: Vec<u32> = vec![
        0,
        1,
        2,
        7,
        0x7f80_0001,
        0xffc0_0000,
        0x8000_0000,
        u32::MAX,
        123_456_789,
    ];
    let cpu = Tensor::from_vec_u32(&Device::cpu(), vals.clone(), &[3, 3]).unwrap();
    for dev in devices() {
        let t = cpu.to_device(&dev).unwrap();
        assert_eq!(t.dtype(), kiln::DType::U32);
        assert_eq!(t.to_vec_u32().unwrap(), vals, "round trip on {dev}");
        let tt = t.transpose(0, 1).unwrap().transpose(0, 1).unwrap();
        assert_eq!(tt.to_vec_u32().unwrap(), vals, "transpose twice on {dev}");
        let c = Tensor::cat(&[&t, &t.narrow(0, 1, 1).unwrap()], 0).unwrap();
        assert_eq!(
            c.to_vec_u32().unwrap()[9..],
            vals[3..6],
            "cat/narrow on {dev}"
        );
        assert_eq!(
            t.to_device(&Device::cpu()).unwrap().to_vec_u32().unwrap(),
            vals
        );
        assert!(t.to_vec().is_err(), "reading u32 as f32 must be refused");
        let f = Tensor::zeros(&dev, &[3, 3]).unwrap();
        assert!(matches!(
            Tensor::cat(&[&f, &t], 0),
            Err(kiln::Error::DTypeMismatch { op: "cat", .. })
        ));
    }
}

/// Reductions with more than 65,535 workgroups of outputs fold their grid. (One f32 per output
/// row: 2^24 + 5 values fill most of lavapipe's 128 MiB binding limit.)
#[test]
fn reductions_past_65535_workgroups() {
    let rows = 65_536 * 256 + 5;
    let data: Vec<f32> = (0..rows).map(|i| (i % 7) as f32).collect();
    for dev in gpus() {
        let x = Tensor::from_slice(&dev, &data, &[rows, 1]).unwrap();
        let s = x.sum(-1, false).unwrap().to_vec().unwrap();
        assert_eq!(s, data, "sum over a unit axis on {dev}");
        let a = x.argmax(-1, false).unwrap().to_vec_u32().unwrap();
        assert!(a.iter().all(|&i| i == 0), "argmax on {dev}");
        let m = x.softmax(-1).unwrap().to_vec().unwrap();
        assert!(
            m.iter().all(|&v| v == 1.0),
            "softmax over a unit axis on {dev}"
        );
    }
}

/// Timestamp-query timing: where granted it reports a positive GPU time for the recorded passes
/// and the work still gives the right answer; elsewhere it reports None and still runs the work.
#[test]
fn gpu_timestamps_measure_recorded_work() {
    let cpu = Device::cpu();
    assert_eq!(cpu.time_gpu(|| Ok(())).unwrap(), None);
    for dev in fresh_gpus() {
        let a = Tensor::randn(&dev, &[128, 96], 1).unwrap();
        let b = Tensor::randn(&dev, &[96, 64], 2).unwrap();
        let mut out = None;
        let t = dev
            .time_gpu(|| {
                out = Some(a.matmul(&b)?.relu()?);
                Ok(())
            })
            .unwrap();
        let want = a
            .to_device(&cpu)
            .unwrap()
            .matmul(&b.to_device(&cpu).unwrap())
            .unwrap()
            .relu()
            .unwrap();
        let want: Vec<f64> = want.to_vec().unwrap().into_iter().map(f64::from).collect();
        assert_close(
            &format!("timed matmul on {dev}"),
            &out.unwrap().to_vec().unwrap(),
            &want,
            1e-4,
            1e-5,
        );
        let granted = dev.info().features.iter().any(|f| f == "timestamp-query");
        match t {
            Some(d) => {
                assert!(granted, "timing without the feature on {dev}");
                assert!(
                    d > std::time::Duration::ZERO && d < std::time::Duration::from_secs(10),
                    "{d:?} on {dev}"
                );
            }
            None => assert!(!granted, "timestamp-query granted but no time on {dev}"),
        }
    }
}

/// Where a Vulkan adapter exists, listing adapters and opening every GPU never loads an EGL
/// driver into the process. On an NVIDIA H200, NVIDIA's EGL driver loaded beside its Vulkan
/// driver (wgpu's GL instance loads it) let concurrent device and pipeline creation deadlock
/// inside the driver; kiln looks for GL adapters only where no native one exists.
#[cfg(target_os = "linux")]
#[test]
fn no_egl_driver_is_loaded_beside_a_vulkan_adapter() {
    let gpus = gpus();
    let listed = Device::adapters();
    if !gpus.iter().any(|d| d.info().backend == "vulkan") {
        say!("no Vulkan adapter here: the EGL check has nothing to check");
        return;
    }
    assert!(listed.iter().all(|a| a.backend != "gl"), "{listed:?}");
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let egl: Vec<&str> = maps.lines().filter(|l| l.contains("libEGL")).collect();
    assert!(egl.is_empty(), "an EGL library is loaded: {egl:?}");
}
