// Fused optimizer updates, in place on the parameter and the optimizer state, one thread per
// element. The formulas are PyTorch's (torch.optim.SGD, Adam, AdamW); the CPU twin is
// src/cpu/optim.rs.
//   sgd:          p -= lr · (g + wd·p)
//   sgd_momentum: d = g + wd·p; buf = first ? d : momentum·buf + d;
//                 p -= lr · (nesterov ? d + momentum·buf : buf)
//   adam:         d = g + wd·p (Adam) or p *= 1 - lr·wd first (AdamW, DECOUPLED);
//                 m = b1·m + (1-b1)·d; v = b2·v + (1-b2)·d²;
//                 p -= lr · (m / bc1) / (sqrt(v / bc2) + eps), bc = 1 - beta^step
//
// The formulas are functions of values, written once: the single-tensor entry points below call
// them, and so do the multi-tensor kernels that src/gpu/kernels/optim.rs generates (one dispatch
// updating several parameters), which take this file up to the MULTI-TENSOR CUT line.

override WG: u32 = 256u;

struct Params {
    n: u32,
    lr: f32,
    weight_decay: f32,
    momentum: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    bc1: f32,
    bc2: f32,
    flags: u32, // bit 0: nesterov, bit 1: first step, bit 2: decoupled weight decay
    _pad0: u32,
    _pad1: u32,
}

// The new parameter value.
fn sgd_value(p: Params, w: f32, g: f32) -> f32 {
    return w - p.lr * (g + p.weight_decay * w);
}

// (new parameter value, new momentum buffer value).
fn momentum_value(p: Params, w: f32, g: f32, buf: f32) -> vec2<f32> {
    let d = g + p.weight_decay * w;
    var b = d;
    if ((p.flags & 2u) == 0u) {
        b = p.momentum * buf + d;
    }
    let upd = select(b, d + p.momentum * b, (p.flags & 1u) != 0u);
    return vec2<f32>(w - p.lr * upd, b);
}

// (new parameter value, new m, new v).
fn adam_value(p: Params, w0: f32, g: f32, m0: f32, v0: f32) -> vec3<f32> {
    var w = w0;
    var d = g;
    if ((p.flags & 4u) != 0u) {
        w = w * (1.0 - p.lr * p.weight_decay);
    } else {
        d = d + p.weight_decay * w;
    }
    let m = p.beta1 * m0 + (1.0 - p.beta1) * d;
    let v = p.beta2 * v0 + (1.0 - p.beta2) * d * d;
    return vec3<f32>(w - p.lr * (m / p.bc1) / (sqrt(v / p.bc2) + p.eps), m, v);
}

// ---- MULTI-TENSOR CUT: the single-tensor kernels follow ----

@group(0) @binding(0) var<storage, read_write> param: array<f32>;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> s1: array<f32>; // momentum buffer, or m
@group(0) @binding(3) var<storage, read_write> s2: array<f32>; // v
@group(0) @binding(4) var<uniform> p: Params;
// Each entry point binds its buffers first and its params right after (bindings may repeat
// across entry points that do not share them).
@group(0) @binding(2) var<uniform> p_sgd: Params;
@group(0) @binding(3) var<uniform> p_momentum: Params;

@compute @workgroup_size(WG)
fn sgd(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = folded_index(wid, nwg, lid, WG);
    if (i < p_sgd.n) {
        param[i] = sgd_value(p_sgd, param[i], grad[i]);
    }
}

@compute @workgroup_size(WG)
fn sgd_momentum(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = folded_index(wid, nwg, lid, WG);
    if (i < p_momentum.n) {
        let r = momentum_value(p_momentum, param[i], grad[i], s1[i]);
        s1[i] = r.y;
        param[i] = r.x;
    }
}

@compute @workgroup_size(WG)
fn adam(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = folded_index(wid, nwg, lid, WG);
    if (i < p.n) {
        let r = adam_value(p, param[i], grad[i], s1[i], s2[i]);
        s1[i] = r.y;
        s2[i] = r.z;
        param[i] = r.x;
    }
}
