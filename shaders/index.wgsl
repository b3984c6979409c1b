// index_select: out[o, j, i] = x[o, idx[j], i] for a source viewed as [outer, len, inner] and
// `count` indices. The host has checked every index against `len` before dispatching, so reads
// stay in bounds. Elements move as u32 (bit-exact for any element type).
//
// argmax lives in reduce.wgsl; this file holds the ops that read u32 index tensors.

override WG: u32 = 256u;

struct Params {
    n: u32,
    len: u32,
    inner: u32,
    count: u32,
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
    let o = folded_index(wid, nwg, lid, WG);
    if (o >= p.n) {
        return;
    }
    let i = o % p.inner;
    let j = (o / p.inner) % p.count;
    let outer = o / (p.inner * p.count);
    y[o] = x[(outer * p.len + idx[j]) * p.inner + i];
}

// index_copy (in place): y[outer, idx[j], i] = x[o] for a source viewed as [outer, count, inner]
// and a destination as [outer, len, inner]. One invocation per source element; an index at or
// past `len` writes nothing (the host checks them, and a replayed graph's new indices too).
@compute @workgroup_size(WG)
fn copy_in(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let o = folded_index(wid, nwg, lid, WG);
    if (o >= p.n) {
        return;
    }
    let i = o % p.inner;
    let j = (o / p.inner) % p.count;
    let outer = o / (p.inner * p.count);
    let at = idx[j];
    if (at < p.len) {
        y[(outer * p.len + at) * p.inner + i] = x[o];
    }
}

// The u32 values of `cx` as f32 (a cast on the device): cy[o] = f32(cx[o]), rounded to nearest
// even above 2^24 as the CPU's `as f32` does. Its own bindings (value in, value out, params).
@group(0) @binding(0) var<storage, read> cx: array<u32>;
@group(0) @binding(1) var<storage, read_write> cy: array<f32>;
@group(0) @binding(2) var<uniform> cp: Params;

@compute @workgroup_size(WG)
fn to_f32(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let o = folded_index(wid, nwg, lid, WG);
    if (o >= cp.n) {
        return;
    }
    cy[o] = f32(cx[o]);
}
