// Rotary position embedding (RoPE) over the last dimension of x [..., t, heads, d]: the first
// 2·HALF values of each head's row are HALF pairs, each rotated by its position's angle,
//   (a, b) -> (a·cos − b·sin, a·sin + b·cos),
// with cos and sin from tables [t, HALF] (row = the value's position along t); the rest of the
// row passes through. Pairs are adjacent values (2p, 2p + 1), or when HALVES the two halves
// (p, p + HALF) (GPT-NeoX's layout). One invocation per value. The CPU twin is
// src/cpu/rope.rs.

override WG: u32 = 256u;
override HALVES: bool = false;

struct Params {
    total: u32,
    t: u32,
    heads: u32,
    d: u32,
    half: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> c: array<f32>;
@group(0) @binding(2) var<storage, read> s: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = folded_index(wid, nwg, lid, WG);
    if (e >= p.total) {
        return;
    }
    let j = e % p.d;
    if (j >= 2u * p.half) {
        y[e] = x[e];
        return;
    }
    var pair = j / 2u;
    var first = j % 2u == 0u;
    var partner = j ^ 1u;
    if (HALVES) {
        first = j < p.half;
        pair = select(j - p.half, j, first);
        partner = select(j - p.half, j + p.half, first);
    }
    let pos = (e / p.d / p.heads) % p.t;
    let cs = c[pos * p.half + pair];
    let sn = s[pos * p.half + pair];
    let v = x[e];
    let w = x[e - j + partner];
    y[e] = select(v * cs + w * sn, v * cs - w * sn, first);
}
