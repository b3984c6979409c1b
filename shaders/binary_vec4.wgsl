// binary.wgsl for two operands of the same shape (no broadcasting), contiguous, with a length
// that is a multiple of 4: one vec4 per invocation. OP is a BINARY_* selector of the registry,
// and the formula is the same `binary_op` as binary.wgsl's.

override OP: u32 = 0u;
override WG: u32 = 256u;

struct Params {
    n4: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> c: array<vec4<f32>>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = folded_index(wid, nwg, lid, WG);
    if (i >= p.n4) {
        return;
    }
    let x = a[i];
    let y = b[i];
    c[i] = vec4(
        binary_op(OP, x.x, y.x),
        binary_op(OP, x.y, y.y),
        binary_op(OP, x.z, y.z),
        binary_op(OP, x.w, y.w),
    );
}
