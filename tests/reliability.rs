//! Reliability: a lost device, a full memory budget, one device shared by many threads, and
//! checkpoints that resume training exactly (see the README's "Reliability" section).

#[macro_use]
mod common;

use common::*;
use kiln::{Device, Error, Tensor};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn lost(r: kiln::Result<impl std::fmt::Debug>, what: &str) {
    match r {
        Err(Error::DeviceLost(_)) => {}
        other => panic!("{what} after a loss gave {other:?}, not Error::DeviceLost"),
    }
}

/// After `Device::destroy` every call returns `Error::DeviceLost` (uploads, ops, pending
/// fused programs, readbacks, synchronize), nothing panics, and a device opened again on the
/// same adapter works.
#[test]
fn a_lost_device_fails_every_call_and_the_adapter_opens_again() {
    for dev in fresh_gpus() {
        let a = Tensor::from_vec(&dev, vec![1.0, -2.0, 3.0, -4.0], &[2, 2]).unwrap();
        let b = a.matmul(&a).unwrap();
        let pending = b.relu().unwrap().mul_scalar(2.0).unwrap(); // an unrun fused program
        assert!(!dev.is_lost());
        dev.destroy();
        assert!(dev.is_lost(), "{dev}");
        lost(pending.to_vec(), "reading a pending result");
        lost(b.to_vec(), "reading a computed result");
        lost(Tensor::from_vec(&dev, vec![1.0; 4], &[4]), "an upload");
        lost(Tensor::zeros(&dev, &[4]), "zeros");
        lost(a.matmul(&a), "matmul");
        lost(a.add(&a).and_then(|t| t.sum_all()), "add then sum");
        lost(dev.synchronize(), "synchronize");
        lost(dev.flush(), "flush");
        lost(pollster::block_on(b.to_vec_async()), "an async readback");
        lost(a.to_device(&Device::cpu()), "a copy to the CPU");
        dev.destroy(); // a second loss is harmless
        drop((a, b, pending));
        dev.trim();
        let _ = dev.memory();

        let again = fresh_gpus()
            .into_iter()
            .find(|d| d.info().name == dev.info().name && d.info().backend == dev.info().backend)
            .expect("the adapter opens again");
        assert!(!again.is_lost());
        let a = Tensor::from_vec(&again, vec![1.0, -2.0, 3.0, -4.0], &[2, 2]).unwrap();
        assert_eq!(
            a.matmul(&a).unwrap().to_vec().unwrap(),
            vec![-5.0, 6.0, -9.0, 10.0]
        );
        say!("{dev}: lost on purpose, every call gave DeviceLost, reopened and computed");
    }
}

/// A readback already waiting when another thread loses the device returns promptly, with the
/// values (if the GPU finished first) or `Error::DeviceLost`: never a hang.
#[test]
fn a_waiting_readback_ends_when_the_device_is_lost() {
    for dev in fresh_gpus() {
        let n = 256;
        let x = Tensor::from_vec(&dev, vec![0.01; n * n], &[n, n]).unwrap();
        let (tx, rx) = mpsc::channel();
        let worker = {
            let x = x.clone();
            std::thread::spawn(move || {
                let run = || {
                    let mut y = x.clone();
                    for _ in 0..30 {
                        y = y.matmul(&x)?.tanh()?;
                    }
                    y.to_vec().map(|v| v.len())
                };
                let _ = tx.send(run());
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        let start = Instant::now();
        dev.destroy();
        let got = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the readback hung after the device was lost");
        match got {
            Ok(len) => assert_eq!(len, n * n),
            Err(Error::DeviceLost(_)) => {}
            Err(e) => panic!("{dev}: the waiting readback gave {e:?}"),
        }
        worker.join().unwrap();
        say!(
            "{dev}: waiting readback ended {:.0?} after the loss ({})",
            start.elapsed(),
            if got.is_ok() {
                "finished first"
            } else {
                "DeviceLost"
            }
        );
    }
}

const MIB: u64 = 1 << 20;

/// With a budget, allocations past it fail with `Error::OutOfMemory`, the device stays usable,
/// freeing makes room again, and `memory()` accounts for every byte.
#[test]
fn out_of_memory_is_an_error_and_the_device_goes_on() {
    for dev in fresh_gpus() {
        dev.synchronize().unwrap();
        dev.trim();
        let base = dev.memory();
        assert_eq!(base.pooled_bytes, 0, "{dev}: trim left pooled bytes");
        let budget = base.live_bytes + 16 * MIB;
        dev.set_memory_budget(Some(budget));
        assert_eq!(dev.memory().budget, Some(budget));

        let n = (MIB / 4) as usize; // 1 MiB tensors
        let mut held = Vec::new();
        let err = loop {
            match Tensor::full(&dev, &[n], held.len() as f32) {
                Ok(t) => held.push(t),
                Err(e) => break e,
            }
            assert!(held.len() <= 16, "{dev}: the budget was not enforced");
        };
        assert!(
            matches!(err, Error::OutOfMemory(_)),
            "{dev}: filling the budget gave {err:?}"
        );
        let m = dev.memory();
        assert!(m.live_bytes + m.pooled_bytes <= budget, "{dev}: {m:?}");
        assert!(m.peak_bytes <= budget, "{dev}: {m:?}");
        say!(
            "{dev}: budget {} MiB held {} tensors of 1 MiB, then: {err}",
            budget / MIB,
            held.len()
        );
        // An op whose output does not fit fails the same way (when it runs: elementwise work
        // is fused and runs at the readback), and changes nothing.
        let r = held[0].add(&held[1]).and_then(|t| t.to_vec());
        assert!(matches!(r, Err(Error::OutOfMemory(_))), "{dev}: {r:?}");

        // Free half; the same work now succeeds and the survivors kept their values.
        let kept: Vec<Tensor> = held.drain(..).step_by(2).collect();
        let sum = kept[0].add(&kept[1]).unwrap().to_vec().unwrap();
        assert!(sum.iter().all(|&v| v == 2.0), "{dev}: {:?}", &sum[..2]);
        for (i, t) in kept.iter().enumerate() {
            assert_eq!(t.to_vec().unwrap()[n - 1], (2 * i) as f32);
        }

        // The pool trims itself: idle buffers of another size give way to a new one.
        drop(kept);
        dev.synchronize().unwrap();
        let m = dev.memory();
        assert!(
            m.live_bytes + m.pooled_bytes + 12 * MIB > budget,
            "{dev}: the 12 MiB below must make the pool trim: {m:?}"
        );
        let big = Tensor::full(&dev, &[(12 * MIB / 4) as usize], 1.0).unwrap();
        assert_eq!(
            big.sum_all().unwrap().to_vec().unwrap()[0],
            (3 * MIB) as f32
        );
        drop(big);

        // trim() returns pooled memory; lifting the budget lifts the bound.
        dev.trim();
        assert_eq!(dev.memory().pooled_bytes, 0, "{dev}");
        dev.set_memory_budget(None);
        let _ok: Vec<Tensor> = (0..20)
            .map(|_| Tensor::zeros(&dev, &[n]).unwrap())
            .collect();
    }
}

/// Tensors and devices can be shared across threads.
#[test]
fn tensors_and_devices_are_send_and_sync() {
    fn shared<T: Send + Sync>() {}
    shared::<Tensor>();
    shared::<Device>();
    shared::<Error>();
}

/// A mixed workload from `seed`: uploads, a matmul, a fused chain, reductions, softmax, a
/// backward pass, and reads of each result.
fn workload(dev: &Device, seed: u32) -> kiln::Result<Vec<Vec<f32>>> {
    let mut rng = Lcg(u64::from(seed) + 1);
    let (m, k, n) = (17 + (seed % 5) as usize, 33, 9);
    let a = Tensor::from_vec(dev, rng.vec(m * k, -1.0, 1.0), &[m, k])?;
    let w = Tensor::from_vec(dev, rng.vec(n * k, -1.0, 1.0), &[n, k])?.with_grad()?;
    let b = Tensor::from_vec(dev, rng.vec(n, -1.0, 1.0), &[n])?;
    let h = a.linear(&w, Some(&b), None)?;
    let chain = h.tanh()?.mul_scalar(1.5)?.add(&b)?.sigmoid()?;
    let loss = chain.softmax(-1)?.mul(&h)?.sum_all()?;
    loss.backward()?;
    let probs = h.log_softmax(0)?;
    Ok(vec![
        loss.to_vec()?,
        w.grad().expect("w has a gradient").to_vec()?,
        pollster::block_on(probs.to_vec_async())?,
        chain.max(0, false)?.to_vec()?,
        h.var(1, false)?.to_vec()?,
    ])
}

/// One device used by 8 threads at once (ops, sync and async readbacks, tensors dropped on
/// other threads than made them) gives the same answers as one thread, without deadlock.
#[test]
fn eight_threads_share_one_device() {
    const THREADS: u32 = 8;
    const ROUNDS: u32 = 6;
    let cpu = Device::cpu();
    let want: Vec<Vec<Vec<f32>>> = (0..THREADS * ROUNDS)
        .map(|s| workload(&cpu, s).unwrap())
        .collect();
    let mut devs = vec![cpu.clone()];
    devs.extend(fresh_gpus());
    for dev in devs {
        let start = Instant::now();
        let (tx, rx) = mpsc::channel::<Tensor>();
        // A thread that reads and drops tensors the workers made.
        let sink = std::thread::spawn(move || {
            let mut seen = 0;
            for t in rx {
                assert_eq!(t.to_vec().unwrap().len(), t.numel());
                seen += 1;
            }
            seen
        });
        let results: Vec<(u32, Vec<Vec<f32>>)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|i| {
                    let (dev, tx) = (dev.clone(), tx.clone());
                    s.spawn(move || {
                        let mut out = Vec::new();
                        for r in 0..ROUNDS {
                            let seed = i * ROUNDS + r;
                            out.push((seed, workload(&dev, seed).unwrap()));
                            let t = Tensor::full(&dev, &[64, 3], seed as f32).unwrap();
                            tx.send(t.relu().unwrap()).unwrap();
                        }
                        out
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("a worker panicked"))
                .collect()
        });
        drop(tx);
        assert_eq!(sink.join().unwrap(), THREADS * ROUNDS);
        for (seed, got) in results {
            for (part, (g, w)) in got.iter().zip(&want[seed as usize]).enumerate() {
                let wd: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
                assert_close(
                    &format!("seed {seed} part {part} on {dev}"),
                    g,
                    &wd,
                    1e-4,
                    1e-3,
                );
            }
        }
        dev.synchronize().unwrap();
        say!(
            "{dev}: {THREADS} threads x {ROUNDS} mixed rounds matched one thread in {:.2?}",
            start.elapsed()
        );
    }
}
