// argmax along one axis of [outer, len, inner] (len > 0): the index of the first maximum, or of
// the first NaN if there is one (NaN counts as the largest value, as in PyTorch). The result is a
// u32 tensor, written as u32 so that no float path can flush or change it.

// Compiled after the prelude (shaders/common.wgsl).

override WG: u32 = 256u;

// The first four words of reduce.wgsl's Params; the rest is unused here.
struct Params {
    outer: u32,
    len: u32,
    inner: u32,
    n_out: u32,
    _unused: vec4<u32>,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<u32>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let o = folded_index(wid, nwg, lid, WG);
    if (o >= p.n_out) {
        return;
    }
    let base = (o / p.inner) * p.len * p.inner + o % p.inner;
    var best = x[base];
    var at = 0u;
    for (var j = 0u; j < p.len; j = j + 1u) {
        let v = x[base + j * p.inner];
        if (is_nan(v)) {
            at = j;
            break;
        }
        if (v > best) {
            best = v;
            at = j;
        }
    }
    y[o] = at;
}
