// Elementwise functions of one tensor, and `fill`.
//
// One thread per element. The grid may be folded into 2-D (x * y workgroups) because some drivers
// cap a dimension at 65,535 workgroups; `flat_index` undoes the fold. The op is chosen by the `OP`
// override constant (values in src/op.rs), so each op is its own specialised pipeline with no
// branch at run time.

override OP: u32 = 0u;
override WG: u32 = 256u;

struct Params {
    n: u32,
    alpha: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

fn flat_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

// Overflow-free logistic function.
fn sigmoid(v: f32) -> f32 {
    if (v >= 0.0) {
        return 1.0 / (1.0 + exp(-v));
    }
    let e = exp(v);
    return e / (1.0 + e);
}

// Overflow-free tanh: the builtin may return NaN for large |v| on some drivers.
fn tanh_stable(v: f32) -> f32 {
    let t = exp(-2.0 * abs(v));
    let r = (1.0 - t) / (1.0 + t);
    return select(r, -r, v < 0.0);
}

// Abramowitz & Stegun 7.1.26, absolute error below 1.5e-7 (WGSL has no erf builtin).
fn erf(v: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.3275911 * abs(v));
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    let r = 1.0 - poly * exp(-v * v);
    return select(r, -r, v < 0.0);
}

// NaN by bit pattern: some drivers compile with finite-math assumptions, under which `v != v`
// and comparisons with NaN may be folded away.
fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

fn apply(v: f32) -> f32 {
    switch OP {
        case 0u: { return select(v, 0.0, v < 0.0); }                 // relu (NaN passes through)
        case 1u: { return select(v, p.alpha * v, v < 0.0); }         // leaky_relu
        case 2u: { return 0.5 * v * (1.0 + erf(v * 0.70710678118654752)); } // gelu (erf)
        case 3u: { return 0.5 * v * (1.0 + tanh_stable(0.7978845608028654 * (v + 0.044715 * v * v * v))); }
        case 4u: { return sigmoid(v); }
        case 5u: { return tanh_stable(v); }
        case 6u: { return v * sigmoid(v); }                          // silu
        default: { return v; }
    }
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_index(wid, nwg, lid);
    if (i < p.n) {
        let v = x[i];
        // Every unary op maps NaN to NaN (the README's numerics contract).
        y[i] = select(apply(v), v, is_nan(v));
    }
}

struct FillParams {
    n: u32,
    value: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read_write> out: array<f32>;
@group(0) @binding(1) var<uniform> fp: FillParams;

@compute @workgroup_size(WG)
fn fill(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_index(wid, nwg, lid);
    if (i < fp.n) {
        out[i] = fp.value;
    }
}
