// Batched matrix multiply, version 3: column strips, no workgroup memory, no barriers.
// Compiled after the prelude (shaders/common.wgsl and the registry's
// `activate`, see src/op/).
//
// Each invocation computes RM consecutive rows of one column of C. Neighbouring invocations take
// neighbouring columns, so at each k step their loads of B are contiguous (one vector load when a
// driver runs invocations as SIMD lanes, as lavapipe/llvmpipe do) while the RM values of A they
// read are the same for the whole workgroup (a broadcast). With no barrier and no workgroup
// memory, CPU-based drivers run it as a plain vectorised loop; the register-blocked version 2
// suits hardware GPUs better. The autotuner decides per device.
//
// Rows past m read row m-1 (in bounds) and are not stored; columns past n return early.

override RM: u32 = 8u;   // rows per invocation, at most 8
override WG: u32 = 64u;  // invocations per workgroup (columns per workgroup)
override HAS_BIAS: bool = false;
// Adds `residual` (the output's shape) after the activation.
override HAS_RESIDUAL: bool = false;
override ACT: u32 = UNARY_NONE;

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

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<storage, read> offsets: array<u32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read> residual: array<f32>;
@group(0) @binding(6) var<uniform> p: Params;

@compute @workgroup_size(WG, 1, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let col = wid.x * WG + lid.x;
    if (col >= p.n) {
        return;
    }
    let batch = p.batch0 + wid.z;
    let a_off = offsets[2u * batch];
    let b_off = offsets[2u * batch + 1u];
    let c_off = batch * p.m * p.n;
    let row0 = (p.row_tile0 + wid.y) * RM;

    var rows: array<u32, 8>;
    for (var i = 0u; i < RM; i = i + 1u) {
        rows[i] = a_off + min(row0 + i, p.m - 1u) * p.a_rs;
    }
    var acc: array<f32, 8>;
    var bi = b_off + col * p.b_cs;
    for (var kk = 0u; kk < p.k; kk = kk + 1u) {
        let bv = b[bi];
        let ak = kk * p.a_cs;
        for (var i = 0u; i < RM; i = i + 1u) {
            acc[i] = acc[i] + a[rows[i] + ak] * bv;
        }
        bi = bi + p.b_rs;
    }
    var bias_v = 0.0;
    if (HAS_BIAS) {
        bias_v = bias[col];
    }
    for (var i = 0u; i < RM; i = i + 1u) {
        let r = row0 + i;
        if (r < p.m) {
            var v = activate(ACT, acc[i] + bias_v, p.alpha, p.beta);
            if (HAS_RESIDUAL) {
                v = v + residual[c_off + r * p.n + col];
            }
            c[c_off + r * p.n + col] = v;
        }
    }
}
