// gather along one dimension (PyTorch's `gather`): the output has the index tensor's shape, and
//   out[m] = x[m with m[dim] replaced by idx[m]]
// for every multi-index m of the index shape. The host has checked every index against x's
// extent along `dim`, and the index shape against x's shape, so reads stay in bounds. Elements
// move as u32 (bit-exact).

override WG: u32 = 256u;

struct Params {
    n: u32,
    rank: u32,
    dim: u32,
    _pad: u32,
    // Packed four to a vec4 because uniform arrays have a 16-byte element stride.
    dims: array<vec4<u32>, 2>,      // the index (and output) shape
    x_strides: array<vec4<u32>, 2>, // x's row-major strides
}

@group(0) @binding(0) var<storage, read> x: array<u32>;
@group(0) @binding(1) var<storage, read> idx: array<u32>;
@group(0) @binding(2) var<storage, read_write> y: array<u32>;
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
    var src = 0u;
    for (var d = i32(p.rank) - 1; d >= 0; d = d - 1) {
        let q = u32(d) / 4u;
        let r = u32(d) % 4u;
        let dim = p.dims[q][r];
        var at = rem % dim;
        rem = rem / dim;
        if (u32(d) == p.dim) {
            at = idx[i];
        }
        src = src + at * p.x_strides[q][r];
    }
    y[i] = x[src];
}
