//! Host side of the matmul shaders: version 1 (`matmul.wgsl`, 16 x 16 tiles, one output per
//! invocation; kept as the baseline), version 2 (`matmul_blocked.wgsl`, register-blocked with
//! tile sizes as override constants) and version 3 (`matmul_strip.wgsl`, column strips without
//! workgroup memory, for CPU-based drivers); versions 2 and 3 fuse a bias + activation
//! epilogue. Also the choice of a configuration per shape class (forced, heuristic or autotuned:
//! `tune.rs`), the templated variants (`variants.rs`) and the dispatch.

mod lanes;
mod tune;
mod variants;

use super::Family;
use crate::error::{Error, Result};
use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::{KernelSpec, shader};
use crate::gpu::pool::PooledBuffer;
use crate::matmul_plan::MatmulPlan;
use crate::op::UnaryOp;
use bytemuck::{Pod, Zeroable};
use std::fmt;
use std::str::FromStr;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct MatmulParams {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub batch0: u32,
    pub a_rs: u32,
    pub a_cs: u32,
    pub b_rs: u32,
    pub b_cs: u32,
    pub row_tile0: u32,
    pub alpha: f32,
    pub beta: f32,
    /// Version 4's epilogue, read at run time: bit 0 adds the bias, bit 31 the residual, the
    /// bits between hold the activation's selector (read by the plain entry point, which
    /// serves ReLU; `main` has its activation as an override). Others ignore it.
    pub epilogue: u32,
}

/// Which matmul kernel runs, with its tile sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatmulConfig {
    /// Version 1: 16 x 16 workgroup tiles, one output per invocation.
    Tiled16,
    /// Version 2: a `bm x bn` output tile per workgroup, 4 x 4 outputs per invocation, `bk`-deep
    /// slices of A and B staged in workgroup memory.
    Blocked {
        /// Rows of C per workgroup (a multiple of 4).
        bm: u32,
        /// Columns of C per workgroup (a multiple of 4).
        bn: u32,
        /// Depth of the k slice staged per step (a multiple of 4).
        bk: u32,
    },
    /// Version 2 with 8 x 8 outputs per invocation (two groups of 4 rows `bm / 2` apart, two of 4
    /// columns `bn / 2` apart): 64 multiply-adds per 4 vec4 reads of workgroup memory, where
    /// `Blocked` does 16 per 2. For GPUs with large register files.
    Wide {
        /// Rows of C per workgroup (a multiple of 8).
        bm: u32,
        /// Columns of C per workgroup (a multiple of 8).
        bn: u32,
        /// Depth of the k slice staged per step (a multiple of 4).
        bk: u32,
    },
    /// Version 2 with the A operand shared through subgroup shuffles (needs SUBGROUP, a
    /// subgroup size that divides `bn / 4`, and at least `bk` lanes per subgroup).
    Subgroup {
        /// Rows of C per workgroup (a multiple of 4).
        bm: u32,
        /// Columns of C per workgroup (a multiple of 4).
        bn: u32,
        /// Depth of the k slice staged per step (a multiple of 4).
        bk: u32,
    },
    /// Version 3: `rm` rows (at most 8) of one column per invocation, `wg` invocations per
    /// workgroup, no workgroup memory.
    Strip {
        /// Rows per invocation, 1 to 8.
        rm: u32,
        /// Invocations (columns) per workgroup.
        wg: u32,
    },
    /// Version 4 (`lanes.rs`): each subgroup of `sg` lanes computes `tm` rows by `sg · tn`
    /// columns in registers, A shared by subgroup broadcasts; no workgroup memory (needs
    /// SUBGROUP with a fixed subgroup size of `sg`).
    Lanes {
        /// Lanes per subgroup (the device's fixed subgroup size).
        sg: u32,
        /// Rows of C per subgroup.
        tm: u32,
        /// Columns of C per lane.
        tn: u32,
    },
}

/// The configurations the autotuner times. Every one is validated by `tests/shaders.rs` and run
/// through the op table by `tests/ops.rs`.
pub const CANDIDATES: [MatmulConfig; 18] = [
    MatmulConfig::Blocked {
        bm: 64,
        bn: 64,
        bk: 8,
    },
    MatmulConfig::Blocked {
        bm: 32,
        bn: 32,
        bk: 8,
    },
    MatmulConfig::Blocked {
        bm: 64,
        bn: 32,
        bk: 16,
    },
    MatmulConfig::Blocked {
        bm: 128,
        bn: 64,
        bk: 8,
    },
    MatmulConfig::Blocked {
        bm: 64,
        bn: 64,
        bk: 16,
    },
    MatmulConfig::Strip { rm: 8, wg: 64 },
    MatmulConfig::Strip { rm: 1, wg: 64 },
    // 8 x 8 outputs per invocation, as the fastest SGEMMs on NVIDIA and AMD hardware.
    MatmulConfig::Wide {
        bm: 128,
        bn: 128,
        bk: 8,
    },
    MatmulConfig::Wide {
        bm: 128,
        bn: 128,
        bk: 16,
    },
    MatmulConfig::Wide {
        bm: 128,
        bn: 64,
        bk: 16,
    },
    // Subgroups of 8 or 16 lanes (lavapipe, Intel), and of up to 32 (NVIDIA, AMD RDNA).
    MatmulConfig::Subgroup {
        bm: 128,
        bn: 64,
        bk: 8,
    },
    MatmulConfig::Subgroup {
        bm: 64,
        bn: 64,
        bk: 8,
    },
    MatmulConfig::Subgroup {
        bm: 32,
        bn: 128,
        bk: 8,
    },
    // Version 4, for drivers whose subgroups are fixed at 8 lanes (lavapipe on AVX2).
    MatmulConfig::Lanes {
        sg: 8,
        tm: 32,
        tn: 8,
    },
    MatmulConfig::Lanes {
        sg: 8,
        tm: 64,
        tn: 8,
    },
    MatmulConfig::Lanes {
        sg: 8,
        tm: 16,
        tn: 4,
    },
    MatmulConfig::Lanes {
        sg: 8,
        tm: 8,
        tn: 4,
    },
    MatmulConfig::Lanes {
        sg: 8,
        tm: 4,
        tn: 4,
    },
];

impl fmt::Display for MatmulConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MatmulConfig::Tiled16 => write!(f, "tiled16"),
            MatmulConfig::Blocked { bm, bn, bk } => write!(f, "blocked:{bm}x{bn}x{bk}"),
            MatmulConfig::Wide { bm, bn, bk } => write!(f, "wide:{bm}x{bn}x{bk}"),
            MatmulConfig::Subgroup { bm, bn, bk } => write!(f, "subgroup:{bm}x{bn}x{bk}"),
            MatmulConfig::Strip { rm, wg } => write!(f, "strip:{rm}x{wg}"),
            MatmulConfig::Lanes { sg, tm, tn } => write!(f, "lanes:{sg}x{tm}x{tn}"),
        }
    }
}

impl FromStr for MatmulConfig {
    type Err = Error;

    /// `tiled16`, `blocked:BMxBNxBK` or `subgroup:BMxBNxBK` (multiples of 4; (BM/4)·(BN/4)
    /// invocations per workgroup, within the device's limit), `wide:BMxBNxBK` (BM and BN
    /// multiples of 8, BK of 4), `strip:RMxWG` (RM from 1 to 8) or `lanes:SGxTMxTN`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidArgument {
            op: "KILN_MATMUL_CONFIG",
            reason: format!(
                "{s:?} is not `tiled16`, `blocked:BMxBNxBK` or `subgroup:BMxBNxBK` with multiples of 4, `wide:BMxBNxBK` with BM and BN multiples of 8, `strip:RMxWG` with RM in 1..=8, or `lanes:SGxTMxTN` with (SG, TM, TN) one of {:?}",
                lanes::SHAPES
            ),
        };
        if s == "tiled16" {
            return Ok(MatmulConfig::Tiled16);
        }
        if let Some(dims) = s.strip_prefix("strip:") {
            let v: Vec<u32> = dims
                .split('x')
                .map(|d| d.parse().map_err(|_| bad()))
                .collect::<Result<_>>()?;
            return match v[..] {
                [rm, wg] if (1..=8).contains(&rm) && wg > 0 => Ok(MatmulConfig::Strip { rm, wg }),
                _ => Err(bad()),
            };
        }
        if let Some(dims) = s.strip_prefix("lanes:") {
            let v: Vec<u32> = dims
                .split('x')
                .map(|d| d.parse().map_err(|_| bad()))
                .collect::<Result<_>>()?;
            return match v[..] {
                [sg, tm, tn] if lanes::SHAPES.contains(&(sg, tm, tn)) => {
                    Ok(MatmulConfig::Lanes { sg, tm, tn })
                }
                _ => Err(bad()),
            };
        }
        let (kind, dims) = s.split_once(':').ok_or_else(bad)?;
        let v: Vec<u32> = dims
            .split('x')
            .map(|d| d.parse().map_err(|_| bad()))
            .collect::<Result<_>>()?;
        let [bm, bn, bk] = v[..] else {
            return Err(bad());
        };
        // Rows and columns come in groups of 4 per invocation, 2 groups each in `wide`.
        let group = if kind == "wide" { 8 } else { 4 };
        if !(bm.is_multiple_of(group) && bn.is_multiple_of(group))
            || bm == 0
            || bn == 0
            || bk < 4
            || !bk.is_multiple_of(4)
        {
            return Err(bad());
        }
        match kind {
            "blocked" => Ok(MatmulConfig::Blocked { bm, bn, bk }),
            "subgroup" => Ok(MatmulConfig::Subgroup { bm, bn, bk }),
            "wide" => Ok(MatmulConfig::Wide { bm, bn, bk }),
            _ => Err(bad()),
        }
    }
}

impl MatmulConfig {
    /// Whether this configuration fits the device's workgroup limits and, for the subgroup
    /// variant, its subgroups (`subgroups`: the (min, max) subgroup size where SUBGROUP is
    /// granted).
    pub(crate) fn fits(&self, limits: &wgpu::Limits, subgroups: Option<(u32, u32)>) -> bool {
        match *self {
            MatmulConfig::Tiled16 => limits.max_compute_invocations_per_workgroup >= 256,
            // Version 2: (bm / t)·(bn / t) invocations of t x t outputs, two k slices staged.
            MatmulConfig::Blocked { bm, bn, bk } | MatmulConfig::Wide { bm, bn, bk } => {
                let t = if matches!(self, MatmulConfig::Wide { .. }) {
                    8
                } else {
                    4
                };
                (bm / t) * (bn / t) <= limits.max_compute_invocations_per_workgroup
                    && (bm / t) * (bn / t) <= limits.max_compute_workgroup_size_x
                    && (bm + bn) * bk * 4 <= limits.max_compute_workgroup_storage_size
            }
            MatmulConfig::Subgroup { bm, bn, bk } => {
                // Subgroup sizes are powers of two: if the largest divides bn / 4, all do.
                MatmulConfig::Blocked { bm, bn, bk }.fits(limits, subgroups)
                    && subgroups.is_some_and(|(min, max)| {
                        min >= bk && max > 0 && (bn / 4).is_multiple_of(max)
                    })
            }
            MatmulConfig::Strip { wg, .. } => {
                wg <= limits.max_compute_invocations_per_workgroup
                    && wg <= limits.max_compute_workgroup_size_x
            }
            MatmulConfig::Lanes { sg, .. } => {
                sg <= limits.max_compute_invocations_per_workgroup
                    && sg <= limits.max_compute_workgroup_size_x
                    && subgroups == Some((sg, sg))
            }
        }
    }

    /// Output tile (rows, columns) of one workgroup.
    fn tile(&self) -> (u32, u32) {
        match *self {
            MatmulConfig::Tiled16 => (16, 16),
            MatmulConfig::Blocked { bm, bn, .. }
            | MatmulConfig::Subgroup { bm, bn, .. }
            | MatmulConfig::Wide { bm, bn, .. } => (bm, bn),
            MatmulConfig::Strip { rm, wg } => (rm, wg),
            MatmulConfig::Lanes { sg, tm, tn } => (tm, sg * tn),
        }
    }
}

/// What the epilogue adds (versions 2 to 4): a bias per output column, an activation, then a
/// residual of the output's shape; and the sums of A's rows into `row_sums` (`[batches, m]`;
/// version 4 only).
#[derive(Clone, Copy, Default)]
pub(crate) struct Epilogue<'a> {
    pub bias: Option<&'a PooledBuffer>,
    pub act: Option<UnaryOp>,
    pub residual: Option<&'a PooledBuffer>,
    pub row_sums: Option<&'a PooledBuffer>,
}

impl Epilogue<'_> {
    /// Whether it does anything to C (version 1 has no epilogue).
    fn any(&self) -> bool {
        self.bias.is_some() || self.act.is_some() || self.residual.is_some()
    }
}

/// The pipeline for `config` with f16-storage operands (version 2 only).
fn spec_f16(config: MatmulConfig, checked: bool) -> KernelSpec {
    let mut spec = spec(config, checked, false, None);
    spec.shader = variants::F16;
    spec
}

/// The f32 -> f16 cast used to store the operands of `matmul_f16`.
fn cast_spec() -> KernelSpec {
    KernelSpec {
        shader: shader!("cast_f16.wgsl"),
        entry: "main",
        constants: vec![("WG", 256.0)],
        unchecked: false,
    }
}

/// The pipeline for `config`; `checked` = false only when the tile sizes divide the problem.
fn spec(config: MatmulConfig, checked: bool, has_bias: bool, act: Option<UnaryOp>) -> KernelSpec {
    spec_with(config, checked, has_bias, act, false)
}

/// Version 4's kernel for an epilogue: the module of the shape (with or without row sums), at
/// its plain entry point where the epilogue is one it serves, else at `main` with the
/// activation fixed by its `ACT` override (a pipeline per activation).
fn lanes_spec(
    (sg, tm, tn): (u32, u32, u32),
    sums: bool,
    act: Option<UnaryOp>,
    has_residual: bool,
) -> KernelSpec {
    let plain = lanes::plain(act, has_residual);
    KernelSpec {
        shader: lanes::shader(sg, tm, tn, sums),
        entry: if plain { lanes::PLAIN } else { "main" },
        constants: if plain {
            vec![]
        } else {
            let act = act.map_or(crate::op::NO_ACTIVATION, UnaryOp::shader_id);
            vec![("ACT", f64::from(act))]
        },
        unchecked: false,
    }
}

/// [`spec`] with the residual's switch (versions 2 and 3 specialise on it; version 4 reads it
/// from its uniform).
fn spec_with(
    config: MatmulConfig,
    checked: bool,
    has_bias: bool,
    act: Option<UnaryOp>,
    has_residual: bool,
) -> KernelSpec {
    match config {
        MatmulConfig::Tiled16 => KernelSpec {
            shader: shader!("matmul.wgsl"),
            entry: "main",
            constants: vec![],
            unchecked: false,
        },
        // Version 2's variants: its constants, another shader.
        MatmulConfig::Wide { bm, bn, bk } | MatmulConfig::Subgroup { bm, bn, bk } => KernelSpec {
            shader: if matches!(config, MatmulConfig::Wide { .. }) {
                variants::WIDE
            } else {
                variants::SUBGROUP
            },
            ..spec_with(
                MatmulConfig::Blocked { bm, bn, bk },
                checked,
                has_bias,
                act,
                has_residual,
            )
        },
        MatmulConfig::Blocked { bm, bn, bk } => KernelSpec {
            shader: variants::BLOCKED,
            entry: "main",
            constants: vec![
                ("BM", f64::from(bm)),
                ("BN", f64::from(bn)),
                ("BK", f64::from(bk)),
                ("CHECKED", f64::from(u8::from(checked))),
                ("HAS_BIAS", f64::from(u8::from(has_bias))),
                ("HAS_RESIDUAL", f64::from(u8::from(has_residual))),
                (
                    "ACT",
                    f64::from(act.map_or(crate::op::NO_ACTIVATION, UnaryOp::shader_id)),
                ),
            ],
            // The unchecked variant indexes only inside the operands (see the shader's header),
            // so wgpu's runtime bounds checks can go; tests/ops.rs runs it on divisible shapes.
            unchecked: !checked,
        },
        MatmulConfig::Lanes { sg, tm, tn } => lanes_spec((sg, tm, tn), false, act, has_residual),
        MatmulConfig::Strip { rm, wg } => KernelSpec {
            shader: shader!("matmul_strip.wgsl"),
            entry: "main",
            constants: vec![
                ("RM", f64::from(rm)),
                ("WG", f64::from(wg)),
                ("HAS_BIAS", f64::from(u8::from(has_bias))),
                ("HAS_RESIDUAL", f64::from(u8::from(has_residual))),
                (
                    "ACT",
                    f64::from(act.map_or(crate::op::NO_ACTIVATION, UnaryOp::shader_id)),
                ),
            ],
            unchecked: false,
        },
    }
}

/// Every configuration a device may run: the tuner's candidates, version 1, and the shapes of
/// version 4 that only the heuristic picks. The op table runs each one.
pub fn configs() -> Vec<MatmulConfig> {
    let mut all = vec![MatmulConfig::Tiled16];
    all.extend(CANDIDATES);
    for (sg, tm, tn) in lanes::SHAPES {
        let c = MatmulConfig::Lanes { sg, tm, tn };
        if !all.contains(&c) {
            all.push(c);
        }
    }
    all
}

/// Every specialization the host may build (for `tests/shaders.rs`).
pub(crate) fn specs() -> Vec<KernelSpec> {
    let mut out = vec![spec(MatmulConfig::Tiled16, true, false, None)];
    for c in CANDIDATES {
        for checked in [true, false] {
            out.push(spec(c, checked, false, None));
            out.push(spec(c, checked, true, Some(UnaryOp::Relu)));
            out.push(spec_with(c, checked, true, None, true));
        }
    }
    for act in UnaryOp::ALL {
        out.push(spec(CANDIDATES[0], true, true, Some(act)));
        out.push(spec(CANDIDATES[0], false, false, Some(act)));
        out.push(spec(
            MatmulConfig::Strip { rm: 8, wg: 64 },
            true,
            true,
            Some(act),
        ));
    }
    for c in [CANDIDATES[0], CANDIDATES[1]] {
        for checked in [true, false] {
            out.push(spec_f16(c, checked));
        }
    }
    out.push(cast_spec());
    // Version 4, every shape: both entry points (any epilogue; the plain ones), with and
    // without row sums.
    for shape in lanes::SHAPES {
        for sums in [false, true] {
            for (act, residual) in [(None, false), (Some(UnaryOp::Gelu), false), (None, true)] {
                out.push(lanes_spec(shape, sums, act, residual));
            }
        }
    }
    // The heuristic's skinny choices: one strip row per matrix row, m = 1..8.
    for rm in 1..=8 {
        out.push(spec(MatmulConfig::Strip { rm, wg: 64 }, true, false, None));
        out.push(spec_with(
            MatmulConfig::Strip { rm, wg: 64 },
            true,
            true,
            None,
            true,
        ));
        out.push(spec(
            MatmulConfig::Strip { rm, wg: 64 },
            true,
            true,
            Some(UnaryOp::Relu),
        ));
    }
    out
}

/// Whether `config`'s tiles divide the problem exactly.
fn divides(config: MatmulConfig, plan: &MatmulPlan) -> bool {
    match config {
        MatmulConfig::Tiled16 | MatmulConfig::Strip { .. } | MatmulConfig::Lanes { .. } => false,
        MatmulConfig::Blocked { bm, bn, bk }
        | MatmulConfig::Subgroup { bm, bn, bk }
        | MatmulConfig::Wide { bm, bn, bk } => {
            plan.m.is_multiple_of(bm as usize)
                && plan.n.is_multiple_of(bn as usize)
                && plan.k.is_multiple_of(bk as usize)
        }
    }
}

/// `C = A x B` (plus the epilogue) with `config`, for a plan with `m, n, k > 0`.
pub(crate) fn run(
    ctx: &GpuContext,
    a: &PooledBuffer,
    b: &PooledBuffer,
    plan: &MatmulPlan,
    config: MatmulConfig,
    epilogue: Epilogue,
) -> Result<PooledBuffer> {
    let spec = match config {
        MatmulConfig::Lanes { sg, tm, tn } if epilogue.row_sums.is_some() => lanes_spec(
            (sg, tm, tn),
            true,
            epilogue.act,
            epilogue.residual.is_some(),
        ),
        _ => spec_with(
            config,
            !divides(config, plan),
            epilogue.bias.is_some(),
            epilogue.act,
            epilogue.residual.is_some(),
        ),
    };
    // Only version 4 writes row sums.
    let epilogue = Epilogue {
        row_sums: epilogue
            .row_sums
            .filter(|_| matches!(config, MatmulConfig::Lanes { .. })),
        ..epilogue
    };
    run_with(ctx, a, b, plan, config, epilogue, spec)
}

/// Dispatch `spec` (a specialization of `config`) over the plan.
fn run_with(
    ctx: &GpuContext,
    a: &PooledBuffer,
    b: &PooledBuffer,
    plan: &MatmulPlan,
    config: MatmulConfig,
    epilogue: Epilogue,
    spec: KernelSpec,
) -> Result<PooledBuffer> {
    ctx.check_walk("matmul", walk(plan.k))?;
    let out = ctx.alloc("matmul", plan.out_numel())?;
    let table: Vec<u32> = plan
        .offsets
        .iter()
        .flat_map(|&(oa, ob)| [oa as u32, ob as u32])
        .collect();
    let offsets = ctx.upload("matmul", bytemuck::cast_slice(&table))?;
    let max = ctx.limits.max_compute_workgroups_per_dimension;
    let (tm, tn) = config.tile();
    let col_tiles = (plan.n as u32).div_ceil(tn);
    let row_tiles = (plan.m as u32).div_ceil(tm);
    if col_tiles > max {
        return Err(Error::TooLarge {
            op: "matmul",
            requested: plan.n as u64,
            limit: u64::from(max) * u64::from(tn),
        });
    }
    let bias = epilogue.bias.unwrap_or(&offsets);
    let residual = epilogue.residual.unwrap_or(&offsets);
    let mut buffers = vec![&a.buffer, &b.buffer, &out.buffer, &offsets.buffer];
    if !matches!(config, MatmulConfig::Tiled16) {
        buffers.push(&bias.buffer);
        buffers.push(&residual.buffer);
    }
    // Version 4's row-sums variant (the only spec `run` asks row sums of) binds them next.
    if let Some(sums) = epilogue.row_sums {
        buffers.push(&sums.buffer);
    }
    let batches = plan.offsets.len() as u32;
    // Split grids past the per-dimension limit into several dispatches.
    let mut batch0 = 0;
    while batch0 < batches {
        let nb = (batches - batch0).min(max);
        let mut row0 = 0;
        while row0 < row_tiles {
            let nr = (row_tiles - row0).min(max);
            let params = MatmulParams {
                m: plan.m as u32,
                n: plan.n as u32,
                k: plan.k as u32,
                batch0,
                a_rs: plan.a_strides.0 as u32,
                a_cs: plan.a_strides.1 as u32,
                b_rs: plan.b_strides.0 as u32,
                b_cs: plan.b_strides.1 as u32,
                row_tile0: row0,
                alpha: epilogue.act.map_or(0.0, |a| a.params().0),
                beta: epilogue.act.map_or(0.0, |a| a.params().1),
                epilogue: u32::from(epilogue.bias.is_some())
                    | (epilogue
                        .act
                        .map_or(crate::op::NO_ACTIVATION, UnaryOp::shader_id)
                        << 1)
                    | (u32::from(epilogue.residual.is_some()) << 31),
            };
            ctx.dispatch(
                &spec,
                &buffers,
                bytemuck::bytes_of(&params),
                [col_tiles, nr, nb],
            )?;
            row0 += nr;
        }
        batch0 += nb;
    }
    Ok(out)
}

/// Whether the device can run `matmul_f16`.
pub(crate) fn f16_supported(ctx: &GpuContext) -> bool {
    ctx.features.contains(wgpu::Features::SHADER_F16)
}

/// A new buffer holding `x`'s `n` values rounded to f16 (2 bytes each).
fn to_f16(ctx: &GpuContext, x: &PooledBuffer, n: usize) -> Result<PooledBuffer> {
    let out = ctx.alloc("matmul_f16", n.div_ceil(2))?;
    let params: [u32; 4] = [n as u32, 0, 0, 0];
    ctx.dispatch_1d(
        "matmul_f16",
        &cast_spec(),
        &[&x.buffer, &out.buffer],
        bytemuck::cast_slice(&params),
        n,
    )?;
    Ok(out)
}

/// `C = A x B` with both operands stored as f16 and f32 accumulation (`m, n, k > 0`); the
/// caller has checked `f16_supported`. `a_len` and `b_len` are the operands' element counts.
pub(crate) fn matmul_f16(
    ctx: &GpuContext,
    a: &PooledBuffer,
    b: &PooledBuffer,
    a_len: usize,
    b_len: usize,
    plan: &MatmulPlan,
) -> Result<PooledBuffer> {
    let (a16, b16) = (to_f16(ctx, a, a_len)?, to_f16(ctx, b, b_len)?);
    let config = tune::blocked_for(plan);
    let spec = spec_f16(config, !divides(config, plan));
    run_with(ctx, &a16, &b16, plan, config, Epilogue::default(), spec)
}

/// `C = A x B` (plus the epilogue) with the configuration the device's tuner picks.
pub(crate) fn matmul(
    ctx: &GpuContext,
    a: &PooledBuffer,
    b: &PooledBuffer,
    plan: &MatmulPlan,
    epilogue: Epilogue,
) -> Result<PooledBuffer> {
    Ok(matmul_with(ctx, a, b, plan, epilogue)?.0)
}

/// `C = A x B` as [`matmul`], and the sums of A's rows (`[batches, m]`: a linear layer's bias
/// gradient beside its weight gradient) where the kernel the tuner picks adds them in the same
/// pass (version 4); `None` where it does not.
pub(crate) fn matmul_row_sums(
    ctx: &GpuContext,
    a: &PooledBuffer,
    b: &PooledBuffer,
    plan: &MatmulPlan,
) -> Result<(PooledBuffer, Option<PooledBuffer>)> {
    let sums = ctx.alloc("matmul", plan.offsets.len() * plan.m)?;
    let epilogue = Epilogue {
        row_sums: Some(&sums),
        ..Epilogue::default()
    };
    let (out, config) = matmul_with(ctx, a, b, plan, epilogue)?;
    Ok((
        out,
        matches!(config, MatmulConfig::Lanes { .. }).then_some(sums),
    ))
}

/// [`matmul`], with the configuration that ran.
fn matmul_with(
    ctx: &GpuContext,
    a: &PooledBuffer,
    b: &PooledBuffer,
    plan: &MatmulPlan,
    epilogue: Epilogue,
) -> Result<(PooledBuffer, MatmulConfig)> {
    let has_epilogue = epilogue.any();
    let tuner = tuner(ctx);
    let (config, trial) = tuner.choose(ctx, plan, has_epilogue);
    let tune::Trial::Yes { key, timed } = trial else {
        return Ok((run(ctx, a, b, plan, config, epilogue)?, config));
    };
    // A tuning trial: a timed one runs alone between two synchronizations.
    if timed {
        ctx.synchronize()?;
    }
    let start = web_time::Instant::now();
    let out = run(ctx, a, b, plan, config, epilogue)?;
    if timed {
        ctx.synchronize()?;
    }
    tuner.record(key, config, timed, start.elapsed());
    Ok((out, config))
}

/// The device's tuner (made on first use: it reads the tuning cache).
fn tuner(ctx: &GpuContext) -> std::sync::Arc<tune::Tuner> {
    ctx.state(tune::Tuner::new)
}

/// Settles the tuner for `plan`'s shape class by running products of zeros until it has
/// chosen (see `Device::tune_matmul`); returns the products run.
pub(crate) fn settle(ctx: &GpuContext, plan: &MatmulPlan) -> Result<usize> {
    let trial = || {
        matches!(
            tuner(ctx).choose(ctx, plan, false).1,
            tune::Trial::Yes { .. }
        )
    };
    if !trial() {
        return Ok(0);
    }
    let a = ctx.upload("tune_matmul", &vec![0.0; plan.m * plan.k])?;
    let b = ctx.upload("tune_matmul", &vec![0.0; plan.k * plan.n])?;
    let mut runs = 0;
    while trial() {
        drop(matmul(ctx, &a, &b, plan, Epilogue::default())?);
        runs += 1;
    }
    ctx.synchronize()?;
    Ok(runs)
}

/// Force one configuration for every matmul on the device (`None`: choose again).
pub(crate) fn force_config(ctx: &GpuContext, config: Option<MatmulConfig>) {
    tuner(ctx).force(config);
}

/// This family's specializations and uniform params structs (see `kernels::Family`).
pub(crate) const FAMILY: Family = Family {
    specs,
    params: &[
        ("matmul.wgsl", "Params", size_of::<MatmulParams>()),
        ("matmul_blocked.wgsl", "Params", size_of::<MatmulParams>()),
        ("matmul_strip.wgsl", "Params", size_of::<MatmulParams>()),
        ("cast_f16.wgsl", "Params", size_of::<[u32; 4]>()),
        (
            "matmul_blocked_f16.wgsl",
            "Params",
            size_of::<MatmulParams>(),
        ),
        (
            "matmul_blocked_sg.wgsl",
            "Params",
            size_of::<MatmulParams>(),
        ),
        (
            "matmul_blocked_wide.wgsl",
            "Params",
            size_of::<MatmulParams>(),
        ),
        (
            "matmul_lanes_8_4x2.wgsl",
            "Params",
            size_of::<MatmulParams>(),
        ),
        (
            "matmul_lanes_8_4x4.wgsl",
            "Params",
            size_of::<MatmulParams>(),
        ),
        (
            "matmul_lanes_8_4x8.wgsl",
            "Params",
            size_of::<MatmulParams>(),
        ),
        (
            "matmul_lanes_8_8x2.wgsl",
            "Params",
            size_of::<MatmulParams>(),
        ),
        (
            "matmul_lanes_8_8x4.wgsl",
            "Params",
            size_of::<MatmulParams>(),
        ),
        (
            "matmul_lanes_8_8x8.wgsl",
            "Params",
            size_of::<MatmulParams>(),
        ),
        (
            "matmul_lanes_8_16x2.wgsl",
            "Params",
            size_of::<MatmulParams>(),
        ),
        (
            "matmul_lanes_8_16x4.wgsl",
            "Params",
            size_of::<MatmulParams>(),
        ),
        (
            "matmul_lanes_8_16x8.wgsl",
            "Params",
            size_of::<MatmulParams>(),
        ),
        (
            "matmul_lanes_8_32x2.wgsl",
            "Params",
            size_of::<MatmulParams>(),
        ),
        (
            "matmul_lanes_8_32x4.wgsl",
            "Params",
            size_of::<MatmulParams>(),
        ),
        (
            "matmul_lanes_8_32x8.wgsl",
            "Params",
            size_of::<MatmulParams>(),
        ),
        (
            "matmul_lanes_8_64x8.wgsl",
            "Params",
            size_of::<MatmulParams>(),
        ),
        (
            "matmul_lanes_8_4x2_sums.wgsl",
            "Params",
            size_of::<MatmulParams>(),
        ),
        (
            "matmul_lanes_8_4x4_sums.wgsl",
            "Params",
            size_of::<MatmulParams>(),
        ),
        (
            "matmul_lanes_8_4x8_sums.wgsl",
            "Params",
            size_of::<MatmulParams>(),
        ),
        (
            "matmul_lanes_8_8x2_sums.wgsl",
            "Params",
            size_of::<MatmulParams>(),
        ),
        (
            "matmul_lanes_8_8x4_sums.wgsl",
            "Params",
            size_of::<MatmulParams>(),
        ),
        (
            "matmul_lanes_8_8x8_sums.wgsl",
            "Params",
            size_of::<MatmulParams>(),
        ),
        (
            "matmul_lanes_8_16x2_sums.wgsl",
            "Params",
            size_of::<MatmulParams>(),
        ),
        (
            "matmul_lanes_8_16x4_sums.wgsl",
            "Params",
            size_of::<MatmulParams>(),
        ),
        (
            "matmul_lanes_8_16x8_sums.wgsl",
            "Params",
            size_of::<MatmulParams>(),
        ),
        (
            "matmul_lanes_8_32x2_sums.wgsl",
            "Params",
            size_of::<MatmulParams>(),
        ),
        (
            "matmul_lanes_8_32x4_sums.wgsl",
            "Params",
            size_of::<MatmulParams>(),
        ),
        (
            "matmul_lanes_8_32x8_sums.wgsl",
            "Params",
            size_of::<MatmulParams>(),
        ),
        (
            "matmul_lanes_8_64x8_sums.wgsl",
            "Params",
            size_of::<MatmulParams>(),
        ),
    ],
};

/// Loop iterations of one invocation of any matmul variant summing over `k`: every variant
/// walks K once, plus its tile loads, at most twice K in all.
pub(crate) fn walk(k: usize) -> usize {
    2 * k + 64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_round_trip_through_their_names() {
        for c in configs() {
            assert_eq!(c.to_string().parse::<MatmulConfig>().unwrap(), c);
        }
        for bad in [
            "",
            "blocked:64x64",
            "blocked:63x64x8",
            "strip:9x64",
            "subgroup:64x64",
            "strip:0x64",
            "lanes:8x3x4",
            "lanes:16x32x8",
            "lanes:8x32",
            "fast",
        ] {
            assert!(bad.parse::<MatmulConfig>().is_err(), "{bad}");
        }
    }
}
