//! Version 4 of the matmul: a register tile per subgroup, no workgroup memory, no barriers. Its
//! WGSL is generated (`wgsl`) for each (subgroup size, rows, columns), because the subgroup
//! broadcasts that share A need constant lane indices and the tile is unrolled into registers.
//!
//! The design follows how CPU-based drivers (lavapipe/llvmpipe) run a shader: each subgroup is
//! one SIMD vector (8 lanes on AVX2), arithmetic is a vector instruction, but every load from a
//! storage buffer or workgroup memory is a loop over the lanes, dozens of instructions. So the
//! kernel spends its loads where each loaded value is used most:
//! - the `SG` lanes of a subgroup share `TM` rows of C and own `TN` columns each (column
//!   `col0 + t·SG + lane`, so neighbouring lanes read neighbouring addresses of B on GPUs that
//!   coalesce);
//! - per `SG`-deep step of k, each lane loads one value of A per row (`A[row, k0 + lane]`: `TM`
//!   loads give the subgroup a whole `TM x SG` block), and each k of the block is then
//!   broadcast to every lane (`subgroupBroadcast` with a constant lane: one extract and a
//!   splat);
//! - per k, each lane loads its `TN` values of B and does `TM x TN` multiply-adds.
//!
//! Loads per multiply-add: `(TM + SG·TN) / (SG·TM·TN)`; 32 x 8 on 8 lanes: 96 loads for 2,048
//! multiply-adds, against 8 for 16 in version 2's 4 x 4 tile. The accumulators far outnumber
//! the CPU's registers and spill, but a spill is one vector access where a load is a loop.
//! On lavapipe it is several times faster than the best version 2 configuration
//! (BENCHMARKS.md).
//!
//! Two entry points of one module serve every epilogue. `main_plain` serves a bias or none,
//! then ReLU or nothing (chosen at run time from `Params::epilogue`), with straight-line
//! stores: on lavapipe the loop below cost more than a 64-deep product itself (BENCHMARKS.md has
//! the shapes and gains). `main` applies
//! the bias, the activation and the residual in a loop over the tile after the product, so the
//! activation is compiled once (written out per output, it made the 32 x 8 tile an order of
//! magnitude slower to compile on lavapipe); its activation is the `ACT` override, fixed per
//! pipeline. llvmpipe appears to run the body of an `if` whose condition is uniform and false
//! under an empty mask (a residual branch that no product took, added to `main_plain`, made it
//! slower), so with the selector read from `Params` every activation's code would run for every
//! output; the override made a GELU MLP forward faster (BENCHMARKS.md).
//!
//! A variant (`_sums`) also writes the sums of A's rows (`[batches, m]`) from the same pass:
//! each lane adds up the values of A it loads, and the workgroups of the first column tile
//! reduce them across the subgroup. A linear layer's backward gets its bias gradient (the
//! column sums of the output gradient g, the row sums of gᵀ) from its weight gradient's product
//! this way, one dispatch instead of two; the other products keep the plain kernel.
//!
//! Indices are clamped (rows past m read row m-1, columns past n column n-1, k past the end
//! reads the last k and multiplies by an explicit zero), so every lane of a subgroup stays
//! active for the broadcasts; only the stores are guarded. The module keeps wgpu's runtime
//! checks: the clamps already keep every index inside the operands.

use crate::gpu::pipelines::Shader;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::{LazyLock, Mutex};

/// The (subgroup size, rows, columns per lane) shapes version 4 may be built with: the
/// heuristic's grid (rows 4 to 32 after m, columns per lane 2 to 8 after n) and one larger
/// tile for the tuner. Each is generated and compiled only when first used.
pub(super) const SHAPES: [Shape; 13] = [
    (8, 4, 2),
    (8, 4, 4),
    (8, 4, 8),
    (8, 8, 2),
    (8, 8, 4),
    (8, 8, 8),
    (8, 16, 2),
    (8, 16, 4),
    (8, 16, 8),
    (8, 32, 2),
    (8, 32, 4),
    (8, 32, 8),
    (8, 64, 8),
];

/// The subgroup size version 4 is built for on this device (the tuner tries only version 4
/// there, the heuristic picks it): 8, where the subgroups are fixed at 8 lanes (lavapipe on
/// AVX2); `None` elsewhere.
pub(super) fn fixed_lanes(subgroups: Option<(u32, u32)>) -> Option<u32> {
    (subgroups == Some((8, 8))).then_some(8)
}

/// The heuristic's shape for an `m x n` output: a tile about as tall as m (up to 32 rows) and
/// about as wide as n (up to 8 columns per lane), so that few lanes compute padding.
pub(super) fn heuristic_shape(sg: u32, m: usize, n: usize) -> Shape {
    let tm = match m {
        0..=4 => 4,
        5..=8 => 8,
        9..=16 => 16,
        _ => 32,
    };
    let tn = match n {
        0..=16 => 2,
        17..=32 => 4,
        _ => 8,
    };
    (sg, tm, tn)
}

/// A (subgroup size, rows, columns per lane) shape.
type Shape = (u32, u32, u32);

/// The shader for one shape (with `sums`, the variant that also writes A's row sums),
/// generated once and kept for the life of the process.
pub(super) fn shader(sg: u32, tm: u32, tn: u32, sums: bool) -> Shader {
    type Key = (Shape, bool);
    static MADE: LazyLock<Mutex<HashMap<Key, Shader>>> = LazyLock::new(Default::default);
    let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    *made.entry(((sg, tm, tn), sums)).or_insert_with(|| {
        let name: &'static str = Box::leak(name(sg, tm, tn, sums).into_boxed_str());
        let body: &'static str = Box::leak(wgsl(sg, tm, tn, sums).into_boxed_str());
        Shader::file(name, body)
    })
}

/// The entry point that serves the plain epilogues (see `entry`).
pub(super) const PLAIN: &str = "main_plain";

/// Whether an epilogue is one `PLAIN` serves: a bias or none, then ReLU or nothing, no residual.
pub(super) fn plain(act: Option<crate::UnaryOp>, has_residual: bool) -> bool {
    !has_residual && matches!(act, None | Some(crate::UnaryOp::Relu))
}

/// The shader's name, as `tests/shaders.rs` lists it.
pub(super) fn name(sg: u32, tm: u32, tn: u32, sums: bool) -> String {
    let variant = if sums { "_sums" } else { "" };
    format!("matmul_lanes_{sg}_{tm}x{tn}{variant}.wgsl")
}

/// The WGSL of version 4 for `SG`-lane subgroups and a `tm x (sg·tn)` tile per subgroup.
fn wgsl(sg: u32, tm: u32, tn: u32, sums: bool) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "// Batched matrix multiply, version 4 (generated by src/gpu/kernels/matmul/lanes.rs,
// whose docs explain it): {tm} rows x {sg}x{tn} columns per subgroup of {sg} lanes.

struct Params {{
    m: u32,
    n: u32,
    k: u32,
    batch0: u32,
    a_rs: u32,
    a_cs: u32,
    b_rs: u32,
    b_cs: u32,
    row_tile0: u32,
    alpha: f32,
    beta: f32,
    epilogue: u32, // bit 0: add the bias; bit 31: add the residual; between: the activation
}}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<storage, read> offsets: array<u32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read> residual: array<f32>;
{sums_binding}@group(0) @binding({params_at}) var<uniform> p: Params;

// `main`'s activation, fixed when the pipeline is made (see the generator's docs: on llvmpipe a
// selector read from `p` would run every activation's code for every output).
override ACT: u32 = UNARY_NONE;
",
        sums_binding = if sums {
            "@group(0) @binding(6) var<storage, read_write> sums: array<f32>;\n"
        } else {
            ""
        },
        params_at = if sums { 7 } else { 6 },
    );
    for plain in [false, true] {
        entry(&mut s, (sg, tm, tn), sums, plain);
    }
    s
}

/// One entry point of the module: `main` applies any epilogue (bias, the `ACT` activation,
/// residual) in a loop over the tile; `main_plain` serves the common ones (a bias or none, then
/// ReLU or nothing, no residual) with straight-line stores (why: the module docs). Both are in
/// one module because they share its bindings and its params struct.
fn entry(s: &mut String, (sg, tm, tn): Shape, sums: bool, plain: bool) {
    let rows = 0..tm;
    let cols = 0..tn;
    let _ = write!(
        s,
        "
@compute @workgroup_size({sg}, 1, 1)
fn {name}(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {{
    let row0 = (p.row_tile0 + wid.y) * {tm}u;
    let batch = p.batch0 + wid.z;
    let a_off = offsets[2u * batch];
    let b_off = offsets[2u * batch + 1u];
    let c_off = batch * p.m * p.n;
    let cbase = wid.x * {w}u + lane;
",
        name = if plain { PLAIN } else { "main" },
        w = sg * tn,
    );
    for r in rows.clone() {
        let _ = writeln!(
            s,
            "    let ar{r} = a_off + min(row0 + {r}u, p.m - 1u) * p.a_rs;"
        );
    }
    for t in cols.clone() {
        let _ = writeln!(
            s,
            "    let bc{t} = b_off + min(cbase + {o}u, p.n - 1u) * p.b_cs;",
            o = t * sg
        );
    }
    for r in rows.clone() {
        for t in cols.clone() {
            let _ = writeln!(s, "    var c{r}_{t} = 0.0;");
        }
        if sums {
            let _ = writeln!(s, "    var rs{r} = 0.0;");
        }
    }
    let _ = writeln!(
        s,
        "    for (var k0 = 0u; k0 < p.k; k0 = k0 + {sg}u) {{
        let ka = min(k0 + lane, p.k - 1u) * p.a_cs;
        let a_in = k0 + lane < p.k;"
    );
    for r in rows.clone() {
        let _ = writeln!(s, "        let a{r} = select(0.0, a[ar{r} + ka], a_in);");
        if sums {
            let _ = writeln!(s, "        rs{r} = rs{r} + a{r};");
        }
    }
    for kk in 0..sg {
        let _ = writeln!(
            s,
            "        {{
            let kr = min(k0 + {kk}u, p.k - 1u) * p.b_rs;
            let b_in = k0 + {kk}u < p.k;"
        );
        for t in cols.clone() {
            let _ = writeln!(
                s,
                "            let b{t} = select(0.0, b[bc{t} + kr], b_in);"
            );
        }
        for r in rows.clone() {
            let _ = writeln!(s, "            let s{r} = subgroupBroadcast(a{r}, {kk}u);");
            for t in cols.clone() {
                let _ = writeln!(s, "            c{r}_{t} = fma(s{r}, b{t}, c{r}_{t});");
            }
        }
        let _ = writeln!(s, "        }}");
    }
    let _ = writeln!(s, "    }}");
    if sums {
        // Each lane summed the k values it loaded; the subgroup adds the lanes' sums.
        let _ = writeln!(s, "    if (wid.x == 0u) {{");
        for r in rows.clone() {
            let _ = writeln!(
                s,
                "        let sum{r} = subgroupAdd(rs{r});
        if (lane == 0u && row0 + {r}u < p.m) {{
            sums[batch * p.m + row0 + {r}u] = sum{r};
        }}"
            );
        }
        let _ = writeln!(s, "    }}");
    }
    if plain {
        let _ = writeln!(
            s,
            "    let relu = ((p.epilogue >> 1u) & 0x3fffffffu) == UNARY_RELU;
    let has_bias = (p.epilogue & 1u) != 0u;"
        );
        for t in cols.clone() {
            let _ = writeln!(
                s,
                "    let col{t} = cbase + {o}u;
    let bias{t} = select(0.0, bias[min(col{t}, p.n - 1u)], has_bias);",
                o = t * sg
            );
        }
        for r in rows {
            // The row's bounds check is the same for every lane.
            let _ = writeln!(
                s,
                "    if (row0 + {r}u < p.m) {{
        let o{r} = c_off + (row0 + {r}u) * p.n;"
            );
            for t in cols.clone() {
                let _ = writeln!(
                    s,
                    "        if (col{t} < p.n) {{
            let v = c{r}_{t} + bias{t};
            c[o{r} + col{t}] = select(v, 0.0, relu && v < 0.0);
        }}"
                );
            }
            let _ = writeln!(s, "    }}");
        }
        // The host binds the same buffers for both entry points: the residual's binding must
        // stay in this one's layout.
        let _ = writeln!(s, "    _ = residual[0];\n}}");
        return;
    }
    let _ = writeln!(s, "    var tile: array<f32, {n}>;", n = tm * tn);
    for r in rows {
        for t in cols.clone() {
            let _ = writeln!(s, "    tile[{i}] = c{r}_{t};", i = r * tn + t);
        }
    }
    let _ = writeln!(
        s,
        "    for (var i = 0u; i < {n}u; i = i + 1u) {{
        let row = row0 + i / {tn}u;
        let col = cbase + (i % {tn}u) * {sg}u;
        if (row < p.m && col < p.n) {{
            var v = tile[i];
            if ((p.epilogue & 1u) != 0u) {{
                v = v + bias[col];
            }}
            v = activate(ACT, v, p.alpha, p.beta);
            if ((p.epilogue & 0x80000000u) != 0u) {{
                v = v + residual[c_off + row * p.n + col];
            }}
            c[c_off + row * p.n + col] = v;
        }}
    }}",
        n = tm * tn
    );
    s.push_str("}\n");
}
