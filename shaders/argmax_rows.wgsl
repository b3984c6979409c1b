// argmax along the last axis of [rows, len] (len a positive multiple of 4): one subgroup per
// row, lanes reading the row's vec4s in turn, then subgroup reductions. The same result as
// argmax.wgsl: the index of the first maximum, or of the first NaN if there is one.
//
// Needs subgroups of exactly SG lanes (a workgroup is ROWS subgroups, one per row): the host
// uses it only where the driver's subgroup size is fixed. On lavapipe every lane's load from a
// storage buffer is a loop over the lanes, so the cost is per value loaded; vec4 loads two at
// a time (one branch per eight values in the common case) measured 2.4x faster at 1024 x 4096
// than one invocation walking each row (argmax.wgsl), which strides 16 KiB between lanes.

// Compiled after the prelude (shaders/common.wgsl).

override SG: u32 = 8u;
// Rows per workgroup, one subgroup each.
override ROWS: u32 = 8u;

// The first four words of reduce.wgsl's Params; the rest is unused here.
struct Params {
    outer: u32,
    len: u32,
    inner: u32,
    n_out: u32,
    _unused: vec4<u32>,
}

@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> y: array<u32>;
@group(0) @binding(2) var<uniform> p: Params;

const NONE: u32 = 0xffffffffu;

// Folds v (values i..i+3) into the lane's maximum; true at a NaN (recorded in nan_at).
fn scan(v: vec4<f32>, i: u32, best: ptr<function, f32>, at: ptr<function, u32>, nan_at: ptr<function, u32>) -> bool {
    let nan = (bitcast<vec4<u32>>(v) & vec4<u32>(0x7fffffffu)) > vec4<u32>(0x7f800000u);
    if (any(nan)) {
        *nan_at = i + select(select(select(3u, 2u, nan.z), 1u, nan.y), 0u, nan.x);
        return true;
    }
    if (v.x > *best || *at == NONE) {
        *best = v.x;
        *at = i;
    }
    if (v.y > *best) {
        *best = v.y;
        *at = i + 1u;
    }
    if (v.z > *best) {
        *best = v.z;
        *at = i + 2u;
    }
    if (v.w > *best) {
        *best = v.w;
        *at = i + 3u;
    }
    return false;
}

@compute @workgroup_size(SG * ROWS)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_id) sid: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let row = (wid.y * nwg.x + wid.x) * ROWS + sid;
    if (row >= p.n_out) {
        return;
    }
    let n4 = p.len / 4u;
    let base = row * n4;
    // Each lane's first maximum (strictly greater values replace it, so ties keep the first).
    var best = f32_bits(0xff800000u);
    var at = NONE;
    var nan_at = NONE;
    // Two vec4s per iteration: the common case (neither holds a NaN or a new maximum) costs one
    // branch per 8 values.
    var j = lane;
    loop {
        if (j >= n4) {
            break;
        }
        let j1 = min(j + SG, n4 - 1u);
        let v0 = x[base + j];
        let v1 = x[base + j1];
        let b = vec4<f32>(best);
        if (all(v0 <= b) && all(v1 <= b) && at != NONE) {
            j = j + 2u * SG;
            continue;
        }
        if (scan(v0, 4u * j, &best, &at, &nan_at)) {
            break;
        }
        if (j + SG < n4 && scan(v1, 4u * j1, &best, &at, &nan_at)) {
            break;
        }
        j = j + 2u * SG;
    }
    let first_nan = subgroupMin(nan_at);
    let m = subgroupMax(select(best, f32_bits(0xff800000u), at == NONE));
    let first = subgroupMin(select(NONE, at, at != NONE && best == m));
    if (lane == 0u) {
        y[row] = select(first, first_nan, first_nan != NONE);
    }
}

