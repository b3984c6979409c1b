// Elementwise functions of one tensor, and `fill`.
//
// Compiled after the prelude (shaders/common.wgsl and the registry's `activate`, src/op/). One
// thread per element; the grid may be folded into 2-D (see `folded_index`). The op is chosen by
// the `OP` override constant (a UNARY_* selector of the registry), so each op is its own
// specialised pipeline with no branch at run time.

override OP: u32 = 0u;
override WG: u32 = 256u;

struct Params {
    n: u32,
    alpha: f32,
    beta: f32,
    _pad0: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = folded_index(wid, nwg, lid, WG);
    if (i < p.n) {
        y[i] = activate(OP, x[i], p.alpha, p.beta);
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
    let i = folded_index(wid, nwg, lid, WG);
    if (i < fp.n) {
        out[i] = fp.value;
    }
}
