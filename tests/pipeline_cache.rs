//! The driver's compiled pipelines on disk: a device that compiled pipelines writes its
//! driver's pipeline cache beside the tuning cache when it is dropped, where the adapter has
//! `pipeline-cache`; the next device on that adapter loads it; a truncated or damaged file is
//! ignored and replaced, never handed to the driver; `KILN_PIPELINE_CACHE=0` turns it off.
//! (Its own test binary: it sets KILN_CACHE_DIR and KILN_PIPELINE_CACHE, which a device reads
//! when it opens.)

#[macro_use]
mod common;

use common::*;
use kiln::{Device, Tensor};
use std::path::{Path, PathBuf};

/// The pipeline cache files in `dir`.
fn cache_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).map_or(Vec::new(), |d| {
        d.flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("pipelines-"))
            })
            .collect()
    })
}

/// Whether `bytes` are a whole file as kiln writes it: magic, the data's length and its
/// 64-bit FNV-1a hash, then the data (the hash computed here, independently).
fn whole(bytes: &[u8]) -> bool {
    let fnv = |d: &[u8]| {
        d.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    bytes.len() >= 24
        && &bytes[..8] == b"KILNPC01"
        && u64::from_le_bytes(bytes[8..16].try_into().unwrap()) == (bytes.len() - 24) as u64
        && u64::from_le_bytes(bytes[16..24].try_into().unwrap()) == fnv(&bytes[24..])
}

/// A new device on the adapter `like` runs on.
fn reopen(like: &kiln::DeviceInfo) -> Device {
    fresh_gpus()
        .into_iter()
        .find(|d| d.info().name == like.name && d.info().backend == like.backend)
        .expect("the adapter opens again")
}

#[test]
fn pipeline_caches_are_written_read_and_survive_damage() {
    let dir = std::env::temp_dir().join(format!("kiln-pipeline-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // SAFETY: the only test in this binary; no other thread reads the environment yet.
    unsafe { std::env::set_var("KILN_CACHE_DIR", &dir) };
    let x = Tensor::randn(&Device::cpu(), &[64, 96], 1).unwrap();
    let want = to_f64(&x.softmax(-1).unwrap().relu().unwrap());
    // Compiles pipelines on `dev` and checks their results.
    let run = |dev: &Device, what: &str| {
        let got = x
            .to_device(dev)
            .unwrap()
            .softmax(-1)
            .unwrap()
            .relu()
            .unwrap();
        assert_close(what, &got.to_vec().unwrap(), &want, 1e-6, 1e-5);
    };
    for dev in gpus() {
        let info = dev.info().clone();
        let fresh = reopen(&info);
        drop(dev);
        run(&fresh, &format!("{fresh}, no cache file"));
        drop(fresh);
        let files = cache_files(&dir);
        if !info.features.iter().any(|f| f == "pipeline-cache") {
            assert!(files.is_empty(), "{info:?}: no feature, no file: {files:?}");
            say!("{}: no pipeline-cache feature, nothing written", info.name);
            continue;
        }
        assert_eq!(files.len(), 1, "one file per adapter: {files:?}");
        let file = &files[0];
        let bytes = std::fs::read(file).unwrap();
        assert!(
            whole(&bytes),
            "{file:?} is a whole file ({} bytes)",
            bytes.len()
        );
        say!(
            "{}: pipeline cache of {} bytes in {file:?}",
            info.name,
            bytes.len() - 24
        );
        // The file is read back; then damaged copies: cut short, a byte changed in the data,
        // a byte changed in the hash, another program's file. Each device runs correctly and
        // leaves a whole file behind.
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let mut hashed = bytes.clone();
        hashed[20] ^= 0x80;
        let damaged: [(&str, Vec<u8>); 5] = [
            ("as written", bytes.clone()),
            ("cut short", bytes[..bytes.len() / 2].to_vec()),
            ("data byte changed", flipped),
            ("hash byte changed", hashed),
            ("not kiln's", b"\x7fELF garbage".repeat(40)),
        ];
        for (what, content) in damaged {
            std::fs::write(file, &content).unwrap();
            let dev = reopen(&info);
            run(&dev, &format!("{dev}, cache file {what}"));
            drop(dev);
            let after = std::fs::read(file).unwrap();
            assert!(whole(&after), "{what}: replaced by a whole file");
        }
    }
    // Turned off: no file.
    let _ = std::fs::remove_dir_all(&dir);
    // SAFETY: as above; every device of this test is dropped.
    unsafe { std::env::set_var("KILN_PIPELINE_CACHE", "0") };
    for dev in fresh_gpus() {
        run(&dev, &format!("{dev}, cache off"));
    }
    assert!(
        cache_files(&dir).is_empty(),
        "KILN_PIPELINE_CACHE=0 writes nothing"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
