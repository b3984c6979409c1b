// Backward of the unary ops: dx = g · f'(x), one thread per element, the op chosen by the `OP`
// override constant (the selectors of `activate`). Compiled after the prelude, whose
// `derivative` the op registry generates (src/op/unary.rs). The grid may be folded into 2-D (see unary.wgsl).

override OP: u32 = 0u;
override WG: u32 = 256u;

struct Params {
    n: u32,
    alpha: f32,
    beta: f32,
    _pad0: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read_write> dx: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = folded_index(wid, nwg, lid, WG);
    if (i < p.n) {
        dx[i] = g[i] * derivative(OP, x[i], p.alpha, p.beta);
    }
}
