// Elementwise functions of two tensors with numpy broadcasting. The formulas are `binary_op` of
// the prelude (generated from the op registry, src/op/binary.rs).
//
// The host coalesces the broadcast into at most MAX_RANK dimensions (src/shape.rs,
// BroadcastLayout) and passes the output dimensions and both operands' strides (0 on a broadcast
// dimension). The common same-shape case arrives as rank 1 with unit strides. The op is chosen by
// the `OP` override constant (a BINARY_* selector of the registry).

override OP: u32 = 0u;
override WG: u32 = 256u;

const MAX_RANK: u32 = 8u;

struct Params {
    n: u32,
    rank: u32,
    _pad0: u32,
    _pad1: u32,
    // Packed four to a vec4 because uniform arrays have a 16-byte element stride.
    dims: array<vec4<u32>, 2>,
    lhs_strides: array<vec4<u32>, 2>,
    rhs_strides: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = folded_index(wid, nwg, lid, WG);
    if (i >= p.n) {
        return;
    }
    var rem = i;
    var ia = 0u;
    var ib = 0u;
    for (var d = i32(p.rank) - 1; d >= 0; d = d - 1) {
        let q = u32(d) / 4u;
        let r = u32(d) % 4u;
        let dim = p.dims[q][r];
        let idx = rem % dim;
        rem = rem / dim;
        ia = ia + idx * p.lhs_strides[q][r];
        ib = ib + idx * p.rhs_strides[q][r];
    }
    c[i] = binary_op(OP, a[ia], b[ib]);
}
