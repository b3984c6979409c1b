// Batched matrix multiply, version 2: register-blocked, with a fused bias + activation epilogue.
// Compiled after the prelude (shaders/common.wgsl and the registry's
// `activate`, see src/op/).
//
// A workgroup of (BN/TN) x (BM/TM) invocations computes a BM x BN tile of C; each invocation holds a
// TM x TN block of C in registers (vec4 accumulators) and updates it with an outer product per
// k step, reading its rows of A and columns of B from workgroup memory as vec4 loads. The A
// tile is stored k-major (element (kk, row) at kk*BM + row) so that 4 rows are contiguous.
// TM = TN = 4 here; the wide variant ("matmul_blocked_wide.wgsl", TM = TN = 8, derived by
// src/gpu/kernels/matmul/variants.rs) gives each invocation 8 x 8 outputs as two groups of 4
// rows BM/2 apart and two groups of 4 columns BN/2 apart, so neighbouring invocations read
// neighbouring vec4s of workgroup memory.
// Tiles are loaded cooperatively, consecutive invocations reading consecutive elements of the
// (row-major) operands. Tile sizes are override constants, chosen per device and shape class by
// the autotuner (src/gpu/kernels/matmul.rs).
//
// CHECKED = false is only used when BM | m, BN | n and BK | k (the host guarantees it): then every
// index is in bounds and the checks disappear from the inner loops. Every element of both tiles is
// written before it is read, so workgroup memory needs no zero-initialisation.
//
// Operands are read through (row, column) strides, so a transposed operand needs no copy; batch
// offsets come from a host-built table, as in version 1.
//
// Subgroup variant ("matmul_blocked_sg.wgsl", derived from this file by src/gpu/pipelines.rs):
// lane l of a subgroup reads the A vector of k step l once, and every k step takes it from that
// lane with subgroupShuffle instead of each lane reading it from workgroup memory. The host uses
// it only where every subgroup has at least BK lanes and lies within one row of invocations
// (the subgroup size divides BN / 4), so the lanes sharing a shuffle need the same A values.

override BM: u32 = 64u;
override BN: u32 = 64u;
override BK: u32 = 8u;
override CHECKED: bool = true;
override HAS_BIAS: bool = false;
// Adds `residual` (the output's shape) after the activation.
override HAS_RESIDUAL: bool = false;
// Activation applied in the epilogue (UnaryOp::shader_id); any other value is the identity.
override ACT: u32 = UNARY_NONE;

const TM: u32 = 4u;
const TN: u32 = 4u;
// Groups of 4 rows and of 4 columns per invocation.
const GM: u32 = TM / 4u;
const GN: u32 = TN / 4u;

struct Params {
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
    _pad1: u32,
}

// The operands' element type. The registry builds an f16-storage variant
// ("matmul_blocked_f16.wgsl") by switching this alias to f16 and enabling the f16 extension;
// loads convert to f32, so accumulation is f32 either way.
alias Elem = f32;

@group(0) @binding(0) var<storage, read> a: array<Elem>;
@group(0) @binding(1) var<storage, read> b: array<Elem>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<storage, read> offsets: array<u32>; // [a_off, b_off] per batch
@group(0) @binding(4) var<storage, read> bias: array<f32>;    // n values; unused unless HAS_BIAS
@group(0) @binding(5) var<storage, read> residual: array<f32>; // unused unless HAS_RESIDUAL
@group(0) @binding(6) var<uniform> p: Params;

var<workgroup> tile_a: array<vec4<f32>, BK * BM / 4u>;
var<workgroup> tile_b: array<vec4<f32>, BK * BN / 4u>;

// One-dimensional workgroups (the invocation's place in the tile is computed from its index) so
// that the subgroup variant (below) may use subgroup builtins, which WGSL allows only there.
@compute @workgroup_size((BN / TN) * (BM / TM), 1, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let batch = p.batch0 + wid.z;
    let a_off = offsets[2u * batch];
    let b_off = offsets[2u * batch + 1u];
    let c_off = batch * p.m * p.n;
    let row0 = (p.row_tile0 + wid.y) * BM;
    let col0 = wid.x * BN;
    let threads = (BM / TM) * (BN / TN);
    let lid = vec2<u32>(tid % (BN / TN), tid / (BN / TN));

    // Row i of the invocation's block, column group g: acc[i * GN + g].
    var acc: array<vec4<f32>, TM * GN>;
    let tiles = (p.k + BK - 1u) / BK;
    for (var t = 0u; t < tiles; t = t + 1u) {
        let k0 = t * BK;
        for (var i = tid; i < BM * BK; i = i + threads) {
            let r = i / BK;
            let kk = i % BK;
            let gr = row0 + r;
            let gk = k0 + kk;
            var v = 0.0;
            if (!CHECKED || (gr < p.m && gk < p.k)) {
                v = f32(a[a_off + gr * p.a_rs + gk * p.a_cs]);
            }
            let j = kk * BM + r;
            tile_a[j / 4u][j % 4u] = v;
        }
        for (var i = tid; i < BK * BN; i = i + threads) {
            let kk = i / BN;
            let col = i % BN;
            let gk = k0 + kk;
            let gc = col0 + col;
            var v = 0.0;
            if (!CHECKED || (gk < p.k && gc < p.n)) {
                v = f32(b[b_off + gk * p.b_rs + gc * p.b_cs]);
            }
            let j = kk * BN + col;
            tile_b[j / 4u][j % 4u] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk = kk + 1u) {
            var bv: array<vec4<f32>, GN>;
            for (var g = 0u; g < GN; g = g + 1u) {
                bv[g] = tile_b[(kk * BN + g * (BN / GN) + lid.x * 4u) / 4u];
            }
            for (var h = 0u; h < GM; h = h + 1u) {
                let av = tile_a[(kk * BM + h * (BM / GM) + lid.y * 4u) / 4u];
                for (var g = 0u; g < GN; g = g + 1u) {
                    let o = h * 4u * GN + g;
                    acc[o] = acc[o] + av.x * bv[g];
                    acc[o + GN] = acc[o + GN] + av.y * bv[g];
                    acc[o + 2u * GN] = acc[o + 2u * GN] + av.z * bv[g];
                    acc[o + 3u * GN] = acc[o + 3u * GN] + av.w * bv[g];
                }
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < TM; i = i + 1u) {
        let r = row0 + (i / 4u) * (BM / GM) + lid.y * 4u + i % 4u;
        for (var j = 0u; j < TN; j = j + 1u) {
            let col = col0 + (j / 4u) * (BN / GN) + lid.x * 4u + j % 4u;
            if (!CHECKED || (r < p.m && col < p.n)) {
                var v = acc[i * GN + j / 4u][j % 4u];
                if (HAS_BIAS) {
                    v = v + bias[col];
                }
                v = activate(ACT, v, p.alpha, p.beta);
                if (HAS_RESIDUAL) {
                    v = v + residual[c_off + r * p.n + col];
                }
                c[c_off + r * p.n + col] = v;
            }
        }
    }
}
