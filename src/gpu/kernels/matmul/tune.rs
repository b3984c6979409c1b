//! Choosing a matmul configuration: forced (`KILN_MATMUL_CONFIG` or `Device::set_matmul_config`),
//! a heuristic for small problems, or autotuned once per adapter and shape class, kept in memory
//! and in an on-disk cache (`KILN_CACHE_DIR`, else `$XDG_CACHE_HOME/kiln`, else `~/.cache/kiln`).
//!
//! Tuning is online: the products of a new class are themselves the trials. The first runs
//! at once the configuration the previous class settled on (or the heuristic's choice); each later one runs the next candidate (a first, untimed
//! call compiles its pipeline, a second is timed between two synchronizations); once every
//! candidate has a time, the two fastest are timed once more, and the one with the shortest
//! time is kept for the class and written to the cache. So a new class costs one ordinary
//! product up front, and about twenty calls (twelve on lavapipe), each one a real product, to
//! settle; nothing is run only to be timed. In the browser (wasm32) nothing is tuned and no
//! file is read: the heuristic picks there.

use super::{CANDIDATES, MatmulConfig};
use crate::gpu::context::GpuContext;
use crate::matmul_plan::MatmulPlan;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// Part of the tuning cache's file name: raised whenever the candidates change, since winners
/// measured against another set of kernels would pin a slower one (version 2: version 4
/// joined the candidates; version 3: the wide version-2 tiles joined them).
const CACHE_VERSION: u32 = 3;

/// Problems with fewer multiply-adds than this are not worth a tuning run: a heuristic picks.
const TUNE_MIN_WORK: usize = 1 << 24;

/// Shape class: each of m, n, k rounded up to a power of two, and whether there are batches.
pub(crate) type ShapeClass = (u32, u32, u32, bool);

fn class(plan: &MatmulPlan) -> ShapeClass {
    let up = |d: usize| d.next_power_of_two().trailing_zeros();
    (up(plan.m), up(plan.n), up(plan.k), plan.offsets.len() > 1)
}

pub(crate) struct Tuner {
    forced: Mutex<Option<MatmulConfig>>,
    tuned: Mutex<HashMap<ShapeClass, MatmulConfig>>,
    /// Classes being tuned.
    trials: Mutex<HashMap<ShapeClass, Trials>>,
    /// The configuration the last class settled on (or the cache's last line): a new large
    /// class tries it first, since on one adapter the winners of large classes agree more
    /// often than not.
    last_winner: Mutex<Option<MatmulConfig>>,
    file: Option<PathBuf>,
}

/// A class's tuning so far: candidates in the order they are tried, the times measured.
struct Trials {
    order: Vec<MatmulConfig>,
    /// The candidate the next call runs.
    next: usize,
    /// Candidates in the first pass; `order` then repeats the two fastest, timed once more
    /// (one timed call each is noisy: on an H200 it once kept a slower kernel).
    first_pass: usize,
    /// Whether that candidate's pipeline was compiled by an earlier (untimed) call.
    warm: bool,
    results: Vec<(Duration, MatmulConfig)>,
    /// Calls made so far.
    calls: usize,
}

/// What the caller of [`Tuner::choose`] must do around the product: nothing (the class is
/// settled or not tuned), or time it as a trial of the class.
#[derive(Clone, Copy)]
pub(crate) enum Trial {
    /// An ordinary call.
    No,
    /// A trial: run the product and report with [`Tuner::record`]; `timed` says whether the
    /// time counts (false for the call that compiles the candidate's pipeline), in which case
    /// the caller synchronizes before and after.
    Yes { key: ShapeClass, timed: bool },
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
        let file = crate::gpu::cache_dir()
            .filter(|_| !cfg!(target_arch = "wasm32"))
            .map(|d| d.join(format!("matmul-v{CACHE_VERSION}-{slug}.tsv")));
        let mut tuned = HashMap::new();
        let mut last_winner = None;
        if let Some(text) = file.as_ref().and_then(|f| std::fs::read_to_string(f).ok()) {
            for (class, c) in text.lines().filter_map(parse_line) {
                if c.fits(limits, subgroups) {
                    tuned.insert(class, c);
                    last_winner = Some(c);
                }
            }
            log::debug!(
                "matmul tuning cache: {} entries from {:?}",
                tuned.len(),
                file
            );
        }
        Tuner {
            forced: Mutex::new(forced),
            tuned: Mutex::new(tuned),
            trials: Mutex::new(HashMap::new()),
            last_winner: Mutex::new(last_winner),
            file,
        }
    }

    pub(crate) fn force(&self, config: Option<MatmulConfig>) {
        *self.forced.lock().unwrap_or_else(|e| e.into_inner()) = config;
    }

    /// The configuration for `plan`, and whether this call is a tuning trial (see the module
    /// docs).
    pub(crate) fn choose(
        &self,
        ctx: &GpuContext,
        plan: &MatmulPlan,
        epilogue: bool,
    ) -> (MatmulConfig, Trial) {
        let forced = *self.forced.lock().unwrap_or_else(|e| e.into_inner());
        let (config, trial) = match forced {
            Some(c) => (c, Trial::No),
            None => {
                let work = plan.m * plan.n * plan.k * plan.offsets.len();
                // In the browser a synchronization does not wait for the GPU (readback is
                // only asynchronous there), so a trial could not be timed: the heuristic picks.
                if work < TUNE_MIN_WORK || cfg!(target_arch = "wasm32") {
                    (heuristic(plan, ctx.subgroups), Trial::No)
                } else {
                    self.tuned_or_trial(ctx, plan)
                }
            }
        };
        // Version 1 has no epilogue: a fused op always runs on version 2.
        let config = match config {
            MatmulConfig::Tiled16 if epilogue => CANDIDATES[0],
            c if !c.fits(&ctx.limits, ctx.subgroups) => heuristic(plan, ctx.subgroups),
            c => c,
        };
        (config, trial)
    }

    /// The class's tuned configuration, or the candidate this call tries.
    fn tuned_or_trial(&self, ctx: &GpuContext, plan: &MatmulPlan) -> (MatmulConfig, Trial) {
        let key = class(plan);
        if let Some(c) = self
            .tuned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return (*c, Trial::No);
        }
        if ctx.capturing() {
            // A captured step keeps its kernels: no trial (a replay would repeat a candidate).
            return (heuristic(plan, ctx.subgroups), Trial::No);
        }
        let mut trials = self.trials.lock().unwrap_or_else(|e| e.into_inner());
        let t = trials.entry(key).or_insert_with(|| {
            // The last settled class's winner first (the first call runs it at once), else
            // the heuristic's choice, then the rest. Column strips only pay off for a few
            // rows: not tried otherwise.
            let last = *self.last_winner.lock().unwrap_or_else(|e| e.into_inner());
            let first = last
                .filter(|_| plan.m > 64)
                .unwrap_or_else(|| heuristic(plan, ctx.subgroups));
            // Where version 4 runs (fixed 8-lane subgroups: a CPU driver), it beat every other
            // version at every size measured (BENCHMARKS.md): only its shapes are
            // tried, which also makes the class settle in 12 calls instead of 32.
            let lanes_only = super::lanes::fixed_lanes(ctx.subgroups).is_some();
            let order: Vec<MatmulConfig> = std::iter::once(first)
                .chain(CANDIDATES.into_iter().filter(|c| *c != first))
                .filter(|c| c.fits(&ctx.limits, ctx.subgroups))
                .filter(|c| plan.m <= 64 || !matches!(c, MatmulConfig::Strip { .. }))
                .filter(|c| !lanes_only || matches!(c, MatmulConfig::Lanes { .. }))
                .collect();
            Trials {
                first_pass: order.len(),
                order,
                next: 0,
                warm: false,
                results: Vec::new(),
                calls: 0,
            }
        });
        let config = t.order[t.next];
        (config, Trial::Yes { key, timed: t.warm })
    }

    /// Reports a trial call of `config` for class `key` that took `took`.
    pub(crate) fn record(
        &self,
        key: ShapeClass,
        config: MatmulConfig,
        timed: bool,
        took: Duration,
    ) {
        let mut trials = self.trials.lock().unwrap_or_else(|e| e.into_inner());
        let Some(t) = trials.get_mut(&key) else {
            return; // settled by another thread meanwhile
        };
        t.calls += 1;
        if t.order.get(t.next) != Some(&config) {
            return; // another thread's trial moved on meanwhile
        }
        if !timed {
            t.warm = true;
            return;
        }
        t.results.push((took, config));
        t.next += 1;
        if t.next == t.first_pass && t.results.len() >= 2 {
            let mut ranked = t.results.clone();
            ranked.sort_by_key(|r| r.0);
            t.order.extend([ranked[0].1, ranked[1].1]);
        }
        // The repeats' pipelines are compiled already: no untimed call.
        t.warm = t.next >= t.first_pass;
        if t.next < t.order.len() {
            return;
        }
        let t = trials.remove(&key).expect("present above");
        drop(trials);
        let first = t.results[0];
        let mut results = t.results;
        results.sort_by_key(|r| r.0);
        let (best_time, best) = results[0];
        log::info!(
            "matmul autotune for class {key:?} settled after {} calls, each a real product; \
             the winner is {:.2}x the first choice's speed: {}",
            t.calls,
            first.0.as_secs_f64() / best_time.as_secs_f64().max(1e-9),
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
        *self.last_winner.lock().unwrap_or_else(|e| e.into_inner()) = Some(best);
        self.save(key, best);
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

/// Small problems: big tiles would leave most of a workgroup idle. On drivers whose subgroups
/// are fixed at 8 lanes (lavapipe on AVX2), version 4 with a register tile of about m's height,
/// the fastest kernel there from m = 1 to 64 (BENCHMARKS.md). Elsewhere, a few rows (batch-1
/// inference) go to the column-strip kernel with one strip row per matrix row (faster than the
/// smallest blocked tile for m = 1 and 4 on lavapipe), and the rest
/// to version 2.
fn heuristic(plan: &MatmulPlan, subgroups: Option<(u32, u32)>) -> MatmulConfig {
    if let Some(sg) = super::lanes::fixed_lanes(subgroups) {
        let (sg, tm, tn) = super::lanes::heuristic_shape(sg, plan.m, plan.n);
        return MatmulConfig::Lanes { sg, tm, tn };
    }
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
