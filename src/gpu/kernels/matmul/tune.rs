//! Choosing a matmul configuration: forced (`KILN_MATMUL_CONFIG` or `Device::set_matmul_config`),
//! a heuristic for small problems, or autotuned once per adapter and shape class, kept in memory
//! and in an on-disk cache (`KILN_CACHE_DIR`, else `$XDG_CACHE_HOME/kiln`, else `~/.cache/kiln`).

use super::{CANDIDATES, Epilogue, MatmulConfig};
use crate::error::Result;
use crate::gpu::context::GpuContext;
use crate::gpu::pool::PooledBuffer;
use crate::matmul_plan::MatmulPlan;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Problems with fewer multiply-adds than this are not worth a tuning run: a heuristic picks.
const TUNE_MIN_WORK: usize = 1 << 24;
/// Timed runs per candidate (after one warm-up run that also compiles the pipeline).
const TUNE_RUNS: usize = 3;

/// Shape class: each of m, n, k rounded up to a power of two, and whether there are batches.
type ShapeClass = (u32, u32, u32, bool);

fn class(plan: &MatmulPlan) -> ShapeClass {
    let up = |d: usize| d.next_power_of_two().trailing_zeros();
    (up(plan.m), up(plan.n), up(plan.k), plan.offsets.len() > 1)
}

pub(crate) struct Tuner {
    forced: Mutex<Option<MatmulConfig>>,
    tuned: Mutex<HashMap<ShapeClass, MatmulConfig>>,
    file: Option<PathBuf>,
}

fn cache_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("KILN_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("kiln")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("kiln")))
}

fn parse_line(line: &str) -> Option<(ShapeClass, MatmulConfig)> {
    let (key, config) = line.split_once('\t')?;
    let v: Vec<&str> = key.split(' ').collect();
    let [m, n, k, b] = v[..] else { return None };
    let class = (m.parse().ok()?, n.parse().ok()?, k.parse().ok()?, b == "1");
    Some((class, config.trim().parse().ok()?))
}

impl Tuner {
    /// A tuner for the device's adapter, loading what earlier runs measured on it.
    pub(crate) fn new(ctx: &GpuContext) -> Tuner {
        let (adapter_key, limits, subgroups) = (&ctx.adapter_key, &ctx.limits, ctx.subgroups);
        let forced = match std::env::var("KILN_MATMUL_CONFIG") {
            Ok(s) if !s.is_empty() => match s.parse::<MatmulConfig>() {
                Ok(c) => Some(c),
                Err(e) => {
                    log::warn!("ignoring {e}");
                    None
                }
            },
            _ => None,
        };
        let slug: String = adapter_key
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        let file = cache_dir().map(|d| d.join(format!("matmul-{slug}.tsv")));
        let mut tuned = HashMap::new();
        if let Some(text) = file.as_ref().and_then(|f| std::fs::read_to_string(f).ok()) {
            tuned.extend(
                text.lines()
                    .filter_map(parse_line)
                    .filter(|(_, c)| c.fits(limits, subgroups)),
            );
            log::debug!(
                "matmul tuning cache: {} entries from {:?}",
                tuned.len(),
                file
            );
        }
        Tuner {
            forced: Mutex::new(forced),
            tuned: Mutex::new(tuned),
            file,
        }
    }

    pub(crate) fn force(&self, config: Option<MatmulConfig>) {
        *self.forced.lock().unwrap_or_else(|e| e.into_inner()) = config;
    }

    /// The configuration for `plan`, tuning it on these operands if this class is new.
    pub(crate) fn choose(
        &self,
        ctx: &GpuContext,
        a: &PooledBuffer,
        b: &PooledBuffer,
        plan: &MatmulPlan,
        epilogue: bool,
    ) -> Result<MatmulConfig> {
        let forced = *self.forced.lock().unwrap_or_else(|e| e.into_inner());
        let config = match forced {
            Some(c) => c,
            None => {
                let work = plan.m * plan.n * plan.k * plan.offsets.len();
                if work < TUNE_MIN_WORK {
                    heuristic(plan)
                } else {
                    self.tuned_or_tune(ctx, a, b, plan)?
                }
            }
        };
        // Version 1 has no epilogue: a fused op always runs on version 2.
        Ok(match config {
            MatmulConfig::Tiled16 if epilogue => CANDIDATES[0],
            c if !c.fits(&ctx.limits, ctx.subgroups) => heuristic(plan),
            c => c,
        })
    }

    fn tuned_or_tune(
        &self,
        ctx: &GpuContext,
        a: &PooledBuffer,
        b: &PooledBuffer,
        plan: &MatmulPlan,
    ) -> Result<MatmulConfig> {
        let key = class(plan);
        if let Some(c) = self
            .tuned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(*c);
        }
        let start = Instant::now();
        let mut results: Vec<(Duration, MatmulConfig)> = Vec::new();
        // Column strips only pay off for a few rows; don't spend tuning time on them otherwise.
        let candidates = CANDIDATES
            .into_iter()
            .filter(|c| c.fits(&ctx.limits, ctx.subgroups))
            .filter(|c| plan.m <= 64 || !matches!(c, MatmulConfig::Strip { .. }));
        for config in candidates {
            let best = results.iter().map(|r| r.0).min();
            let mut times = Vec::with_capacity(TUNE_RUNS);
            for run in 0..=TUNE_RUNS {
                let t = Instant::now();
                drop(super::run(ctx, a, b, plan, config, Epilogue::default())?);
                ctx.synchronize()?;
                if run > 0 {
                    times.push(t.elapsed());
                    // Far behind the best so far after one timed run: stop spending time on it.
                    if best.is_some_and(|b| t.elapsed() > 2 * b) {
                        break;
                    }
                }
            }
            times.sort();
            results.push((times[times.len() / 2], config));
        }
        results.sort_by_key(|r| r.0);
        let best = results.first().map_or(CANDIDATES[0], |r| r.1);
        log::info!(
            "matmul autotune for {}x{}x{} (class {key:?}) took {:.0?}: {}",
            plan.m,
            plan.n,
            plan.k,
            start.elapsed(),
            results
                .iter()
                .map(|(t, c)| format!("{c} {t:.2?}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        self.tuned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, best);
        self.save(key, best);
        Ok(best)
    }

    fn save(&self, key: ShapeClass, config: MatmulConfig) {
        let Some(file) = &self.file else { return };
        let line = format!(
            "{} {} {} {}\t{config}\n",
            key.0,
            key.1,
            key.2,
            u8::from(key.3)
        );
        let written = file
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|_| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(file)
            })
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            log::warn!("could not write the matmul tuning cache {file:?}: {e}");
        }
    }
}

/// Small problems: big tiles would leave most of a workgroup idle. A few rows (batch-1 inference)
/// go to the column-strip kernel with one strip row per matrix row: measured 2.5–4x faster than
/// the smallest blocked tile for m = 1 and 4 on lavapipe (BENCHMARKS.md).
fn heuristic(plan: &MatmulPlan) -> MatmulConfig {
    if plan.m <= 8 {
        MatmulConfig::Strip {
            rm: plan.m.max(1) as u32,
            wg: 64,
        }
    } else {
        blocked_for(plan)
    }
}

/// The register-blocked configuration for `plan`: the smaller tile when either side of the
/// output is narrow, so that the workgroups are not mostly idle.
pub(super) fn blocked_for(plan: &MatmulPlan) -> MatmulConfig {
    if plan.m <= 32 || plan.n <= 32 {
        CANDIDATES[1]
    } else {
        CANDIDATES[0]
    }
}
