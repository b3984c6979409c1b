// where(mask, a, b): a where mask != 0, else b, with numpy broadcasting of all three operands.
// The host drops unit dimensions (at most 8 remain) and passes each operand's strides (0 on a
// broadcast dimension). A NaN mask counts as true (it is not 0), as in PyTorch's `where` on a
// float mask converted with `!= 0`.

override WG: u32 = 256u;

struct Params {
    n: u32,
    rank: u32,
    _pad0: u32,
    _pad1: u32,
    dims: array<vec4<u32>, 2>,
    mask_strides: array<vec4<u32>, 2>,
    a_strides: array<vec4<u32>, 2>,
    b_strides: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<storage, read> mask: array<f32>;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

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
    var im = 0u;
    var ia = 0u;
    var ib = 0u;
    for (var d = i32(p.rank) - 1; d >= 0; d = d - 1) {
        let q = u32(d) / 4u;
        let r = u32(d) % 4u;
        let dim = p.dims[q][r];
        let idx = rem % dim;
        rem = rem / dim;
        im = im + idx * p.mask_strides[q][r];
        ia = ia + idx * p.a_strides[q][r];
        ib = ib + idx * p.b_strides[q][r];
    }
    // Test the mask's bits, not its value: -0.0 is false, NaN is true.
    let m = bitcast<u32>(mask[im]) & 0x7fffffffu;
    y[i] = select(b[ib], a[ia], m != 0u);
}
