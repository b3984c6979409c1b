// Walks along one axis of [outer, len, inner], one invocation per (outer, inner) row (the host
// checks the loop's length against llvmpipe's limit). Compiled after the prelude
// (shaders/common.wgsl).
//
// `cumsum`: running sums in the axis's order (or from its end with `reverse`), each value
// included (or, with `exclusive`, the sum before it); the same additions in the same order as
// the CPU twin (`cpu/scan.rs`).
//
// `topk`: the k first values of the row in the order "larger first" (`largest`) or "smaller
// first", NaN counting as the largest value and ties going to the lower index, with their
// indices (u32). Pick r is the first element after pick r - 1 in that order: no scratch
// memory, k walks of the row.

override WG: u32 = 256u;

struct Params {
    outer: u32,
    len: u32,
    inner: u32,
    n_rows: u32,
    exclusive: u32,
    reverse: u32,
    k: u32,
    largest: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn cumsum(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let o = folded_index(wid, nwg, lid, WG);
    if (o >= p.n_rows) {
        return;
    }
    let base = (o / p.inner) * p.len * p.inner + o % p.inner;
    var acc = 0.0;
    for (var t = 0u; t < p.len; t = t + 1u) {
        let j = select(t, p.len - 1u - t, p.reverse != 0u);
        let at = base + j * p.inner;
        let v = x[at];
        if (p.exclusive != 0u) {
            y[at] = acc;
            acc = acc + v;
        } else {
            acc = acc + v;
            y[at] = acc;
        }
    }
}

@group(0) @binding(1) var<storage, read_write> values: array<f32>;
@group(0) @binding(2) var<storage, read_write> indices: array<u32>;
@group(0) @binding(3) var<uniform> tp: Params;

// Whether a (NaN the largest) is greater than b.
fn greater(a: f32, b: f32) -> bool {
    let an = is_nan(a);
    let bn = is_nan(b);
    if (an || bn) {
        return an && !bn;
    }
    return a > b;
}

// Whether (a at i) comes before (b at j) in topk's order.
fn before(a: f32, i: u32, b: f32, j: u32) -> bool {
    let tie = (is_nan(a) && is_nan(b)) || a == b;
    if (tie) {
        return i < j;
    }
    return select(greater(b, a), greater(a, b), tp.largest != 0u);
}

@compute @workgroup_size(WG)
fn topk(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let o = folded_index(wid, nwg, lid, WG);
    if (o >= tp.n_rows) {
        return;
    }
    let base = (o / tp.inner) * tp.len * tp.inner + o % tp.inner;
    let out = (o / tp.inner) * tp.k * tp.inner + o % tp.inner;
    var prev_v = 0.0;
    var prev_i = 0u;
    for (var r = 0u; r < tp.k; r = r + 1u) {
        var found = false;
        var best_v = 0.0;
        var best_i = 0u;
        for (var j = 0u; j < tp.len; j = j + 1u) {
            let v = x[base + j * tp.inner];
            let after_prev = r == 0u || before(prev_v, prev_i, v, j);
            if (after_prev && (!found || before(v, j, best_v, best_i))) {
                found = true;
                best_v = v;
                best_i = j;
            }
        }
        values[out + r * tp.inner] = best_v;
        indices[out + r * tp.inner] = best_i;
        prev_v = best_v;
        prev_i = best_i;
    }
}
