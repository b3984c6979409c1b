// Cross-entropy from logits, fused: the forward pass gives each row's loss
//   loss[b] = logsumexp(x[b, :]) - x[b, t[b]]
// (and keeps logsumexp for backward), the backward pass gives
//   dx[b, c] = g[b] · (exp(x[b, c] - lse[b]) - [c == t[b]])
// in one dispatch each, instead of log_softmax, gather, their backward kernels and the
// reductions between them. Targets were checked on the host (t[b] < classes). The CPU twin is
// src/cpu/reduce.rs (`cross_entropy_rows`, `cross_entropy_grad`).

override WG: u32 = 256u;

struct Params {
    rows: u32,
    classes: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> t: array<u32>;
@group(0) @binding(2) var<storage, read_write> loss: array<f32>;
@group(0) @binding(3) var<storage, read_write> lse: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

// One invocation per row.
@compute @workgroup_size(WG)
fn forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let b = folded_index(wid, nwg, lid, WG);
    if (b >= p.rows) {
        return;
    }
    let row = b * p.classes;
    var m = x[row];
    for (var c = 1u; c < p.classes; c = c + 1u) {
        m = max(m, x[row + c]);
    }
    var s = 0.0;
    for (var c = 0u; c < p.classes; c = c + 1u) {
        s = s + exp(x[row + c] - m);
    }
    let l = m + log(s);
    lse[b] = l;
    loss[b] = l - x[row + t[b]];
}

@group(0) @binding(0) var<storage, read> gx: array<f32>;
@group(0) @binding(1) var<storage, read> gt: array<u32>;
@group(0) @binding(2) var<storage, read> glse: array<f32>;
@group(0) @binding(3) var<storage, read> gg: array<f32>;
@group(0) @binding(4) var<storage, read_write> dx: array<f32>;
@group(0) @binding(5) var<uniform> gp: Params;

// One invocation per logit.
@compute @workgroup_size(WG)
fn backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = folded_index(wid, nwg, lid, WG);
    if (e >= gp.rows * gp.classes) {
        return;
    }
    let b = e / gp.classes;
    let c = e % gp.classes;
    let hit = select(0.0, 1.0, gt[b] == c);
    dx[e] = gg[b] * (exp(gx[e] - glse[b]) - hit);
}
