//! `DataParallel` over MPI ranks: `mpirun -np N kiln-dist-check` for N = 1, 2, 3 (one CPU
//! replica per rank) gives the same losses and parameters as one process training on the
//! whole batch; a run checkpointed by 2 ranks and resumed by 1 or 3 ends where an
//! uninterrupted one does; and a rank that fails (an error or a panic) ends the job within
//! seconds.
//! Without `mpirun` the tests say so loudly and pass; under `KILN_REQUIRE_MPI=1` (CI) they fail.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn mpirun(ranks: usize, args: &[&str]) -> Option<(Output, Duration)> {
    let start = Instant::now();
    let out = Command::new("timeout")
        .args([
            "120",
            "mpirun",
            "--oversubscribe",
            "-np",
            &ranks.to_string(),
        ])
        .arg(env!("CARGO_BIN_EXE_kiln-dist-check"))
        .args(args)
        // mpirun refuses to start as root without these (CI containers run as root).
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output();
    match out {
        Ok(o) if o.status.code() != Some(127) => Some((o, start.elapsed())),
        _ if std::env::var("KILN_REQUIRE_MPI").is_ok_and(|v| v == "1") => {
            panic!("KILN_REQUIRE_MPI=1 but mpirun could not run (apt-get install openmpi-bin)")
        }
        _ => {
            eprintln!("!!!!! kiln-dist: NO mpirun — MPI tests SKIPPED !!!!!");
            None
        }
    }
}

/// Rank 0's report: every step's loss, then each parameter's values.
fn report(path: &std::path::Path) -> (Vec<f32>, Vec<Vec<f32>>) {
    let text = std::fs::read_to_string(path).unwrap();
    let list = |s: &str| -> Vec<f32> {
        let inner = s.trim().trim_start_matches('[').trim_end_matches(']');
        inner
            .split(',')
            .map(|v| v.trim().parse().unwrap())
            .collect()
    };
    let mut losses = Vec::new();
    let mut params = Vec::new();
    for line in text.lines() {
        let (key, rest) = line.split_once(' ').unwrap();
        match key {
            "ranks" => {}
            "losses" => losses = list(rest),
            _ => params.push(list(rest)),
        }
    }
    (losses, params)
}

#[test]
fn ranks_train_as_one_process_on_the_whole_batch() {
    let dir = std::env::temp_dir().join(format!("kiln-dist-mpi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for adam in [false, true] {
        let mut runs = Vec::new();
        // 2 ranks twice: with one bucket, and with 85 buckets of 8 values (64 bytes) in
        // flight at once.
        for (ranks, bucket) in [(1, None), (2, None), (2, Some("64")), (3, None)] {
            let out = dir.join(format!("r{ranks}-{adam}-{bucket:?}.txt"));
            let mut args = vec![
                "--steps",
                "30",
                "--batch",
                "47",
                "--out",
                out.to_str().unwrap(),
            ];
            if adam {
                args.push("--adam");
            }
            if let Some(b) = bucket {
                args.extend(["--bucket-bytes", b]);
            }
            let Some((o, _)) = mpirun(ranks, &args) else {
                return;
            };
            assert!(
                o.status.success(),
                "{ranks} ranks: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            runs.push((ranks, report(&out)));
        }
        let (_, (want_losses, want)) = &runs[0];
        assert!(
            want_losses[29] < 0.7 * want_losses[0],
            "did not learn: {want_losses:?}"
        );
        for (ranks, (losses, params)) in &runs[1..] {
            for (s, (a, b)) in losses.iter().zip(want_losses).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5,
                    "{ranks} ranks, adam {adam}: step {s}: {a} vs {b}"
                );
            }
            let diff = params
                .iter()
                .flatten()
                .zip(want.iter().flatten())
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                diff <= 1e-5,
                "{ranks} ranks, adam {adam}: parameters {diff} apart"
            );
            eprintln!(
                "kiln-dist: {ranks} ranks, adam {adam}: parameters within {diff:.1e} of one rank's"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn assert_close(
    what: &str,
    (la, pa): &(Vec<f32>, Vec<Vec<f32>>),
    (lb, pb): &(Vec<f32>, Vec<Vec<f32>>),
) {
    assert_eq!(la.len(), lb.len(), "{what}: steps");
    for (s, (a, b)) in la.iter().zip(lb).enumerate() {
        assert!((a - b).abs() <= 1e-5, "{what}: step {s}: {a} vs {b}");
    }
    let diff = pa
        .iter()
        .flatten()
        .zip(pb.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(diff <= 1e-5, "{what}: parameters {diff} apart");
    eprintln!("kiln-dist: {what}: parameters within {diff:.1e}");
}

/// 2 ranks train 15 of 30 steps and checkpoint (rank 0 writes the model, Adam's state and the
/// losses so far); 1 rank and 3 ranks each resume from it and end with the losses and
/// parameters of 2 ranks that ran all 30 steps.
#[test]
fn a_checkpoint_resumes_on_another_number_of_ranks() {
    let dir = std::env::temp_dir().join(format!("kiln-dist-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let common = ["--steps", "30", "--batch", "47", "--adam"];
    let run = |ranks: usize, extra: &[&str]| -> Option<()> {
        let args: Vec<&str> = common
            .iter()
            .copied()
            .chain(extra.iter().copied())
            .collect();
        let (o, _) = mpirun(ranks, &args)?;
        assert!(
            o.status.success(),
            "{ranks} ranks {extra:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Some(())
    };
    let (whole, ck) = (path("whole.txt"), path("ck.safetensors"));
    if run(2, &["--out", &whole]).is_none() {
        return;
    }
    run(2, &["--checkpoint", &ck, "--stop-after", "15"]).unwrap();
    let want = report(whole.as_ref());
    for ranks in [1, 3] {
        let out = path(&format!("resumed{ranks}.txt"));
        run(ranks, &["--resume", &ck, "--out", &out]).unwrap();
        assert_close(
            &format!("2 ranks, then {ranks} from the checkpoint"),
            &report(out.as_ref()),
            &want,
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failing_rank_ends_the_job_within_seconds() {
    for (flag, says) in [
        ("--fail-at", "rank 1 failed a step, aborting the job"),
        ("--panic-at", "rank 1 panics at step 3"),
    ] {
        let Some((o, took)) = mpirun(2, &["--steps", "30", flag, "3"]) else {
            return;
        };
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{flag}: the job succeeded");
        assert_ne!(
            o.status.code(),
            Some(124),
            "{flag}: the job hung until the time-out"
        );
        assert!(err.contains(says), "{flag}: {err}");
        assert!(took < Duration::from_secs(20), "{flag}: took {took:?}");
        eprintln!("kiln-dist: {flag} 3 ended the 2-rank job in {took:.2?}");
    }
}
