// unary.wgsl for contiguous tensors whose length is a multiple of 4: one vec4 per invocation
// (a quarter of the invocations, full-width loads). Compiled after the prelude; OP is
// a UNARY_* selector of the registry.

override OP: u32 = 0u;
override WG: u32 = 256u;

struct Params {
    n4: u32,
    alpha: f32,
    beta: f32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> y: array<vec4<f32>>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = folded_index(wid, nwg, lid, WG);
    if (i < p.n4) {
        let v = x[i];
        y[i] = vec4(
            activate(OP, v.x, p.alpha, p.beta),
            activate(OP, v.y, p.alpha, p.beta),
            activate(OP, v.z, p.alpha, p.beta),
            activate(OP, v.w, p.alpha, p.beta),
        );
    }
}
