// Reductions and softmax along one axis. Compiled after the prelude
// (shaders/common.wgsl and the registry's REDUCE_* selectors).
//
// The input is viewed as [outer, len, inner] (the reduced axis in the middle; the host computes
// the three extents). The `reduce` entry splits the axis into `chunks` chunks of `chunk` values:
// one invocation owns one (outer, chunk, inner) position and walks its chunk, so neighbouring
// invocations read neighbouring elements whenever inner > 1, and no invocation walks more than
// `chunk` values (llvmpipe stops every shader loop after 65,535 iterations in all). The output is
// [outer, chunks, inner]; with more than one chunk the host reduces the partial results again
// (`var_combine` for the variance). OP (override) picks the reduction: sum, mean (the sum divided
// by `count`, the whole axis's length), max, min, variance (unbiased, two passes over the axis;
// with several chunks each writes its chunk's mean, and its sum of squared deviations at
// n_out + o). Max and min propagate NaN. The grid may be folded into 2-D past 65,535 workgroups.
// (argmax, whose output is u32, lives in argmax.wgsl.)

override OP: u32 = 0u;
override WG: u32 = 256u;
// softmax entry: 0 softmax, 1 log_softmax
override LOG: bool = false;

struct Params {
    outer: u32,
    len: u32,
    inner: u32,
    n_out: u32,
    chunks: u32,
    chunk: u32,
    count: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn reduce(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let o = folded_index(wid, nwg, lid, WG);
    if (o >= p.n_out) {
        return;
    }
    let c = (o / p.inner) % p.chunks;
    let base = (o / (p.inner * p.chunks)) * p.len * p.inner + c * p.chunk * p.inner + o % p.inner;
    let n = min(p.chunk, p.len - c * p.chunk);
    let nan = f32_bits(0x7fc00000u);
    var acc = 0.0;
    switch OP {
        case REDUCE_MAX, REDUCE_MIN: {
            acc = x[base];
            var seen_nan = false;
            for (var j = 0u; j < n; j = j + 1u) {
                let v = x[base + j * p.inner];
                seen_nan = seen_nan || is_nan(v);
                acc = select(min(acc, v), max(acc, v), OP == REDUCE_MAX);
            }
            acc = select(acc, nan, seen_nan);
        }
        case REDUCE_VAR: {
            var sum = 0.0;
            for (var j = 0u; j < n; j = j + 1u) {
                sum = sum + x[base + j * p.inner];
            }
            let mean = sum / f32(n);
            for (var j = 0u; j < n; j = j + 1u) {
                let d = x[base + j * p.inner] - mean;
                acc = acc + d * d;
            }
            if (p.chunks > 1u) {
                y[p.n_out + o] = acc;
                acc = mean;
            } else {
                acc = acc / (f32(n) - 1.0);
            }
        }
        case REDUCE_SUM, REDUCE_MEAN: {
            for (var j = 0u; j < n; j = j + 1u) {
                acc = acc + x[base + j * p.inner];
            }
            if (OP == REDUCE_MEAN) {
                acc = acc / f32(p.count);
            }
        }
        default: { acc = nan; } // a selector the registry does not know
    }
    y[o] = acc;
}

// The variance from per-chunk means (x[0 .. n_in]) and sums of squared deviations
// (x[n_in ..]), laid out [outer, len (the chunks), inner], each chunk `chunk` values of an axis
// of `count` (Chan et al.'s pairwise update). One invocation per (outer, inner).
@compute @workgroup_size(WG)
fn var_combine(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let o = folded_index(wid, nwg, lid, WG);
    if (o >= p.n_out) {
        return;
    }
    let n_in = p.outer * p.len * p.inner;
    let base = (o / p.inner) * p.len * p.inner + o % p.inner;
    var n = 0.0;
    var mean = 0.0;
    var m2 = 0.0;
    for (var c = 0u; c < p.len; c = c + 1u) {
        let i = base + c * p.inner;
        let nc = f32(min(p.chunk, p.count - c * p.chunk));
        let d = x[i] - mean;
        let total = n + nc;
        mean = mean + d * nc / total;
        m2 = m2 + x[n_in + i] + d * d * n * nc / total;
        n = total;
    }
    y[o] = m2 / (n - 1.0);
}

@compute @workgroup_size(WG)
fn softmax(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let o = folded_index(wid, nwg, lid, WG);
    if (o >= p.n_out) {
        return;
    }
    let base = (o / p.inner) * p.len * p.inner + o % p.inner;
    var m = x[base];
    var seen_nan = false;
    for (var j = 0u; j < p.len; j = j + 1u) {
        let v = x[base + j * p.inner];
        seen_nan = seen_nan || is_nan(v);
        m = max(m, v);
    }
    var sum = 0.0;
    for (var j = 0u; j < p.len; j = j + 1u) {
        sum = sum + exp(x[base + j * p.inner] - m);
    }
    let log_sum = log(sum);
    let nan = f32_bits(0x7fc00000u);
    for (var j = 0u; j < p.len; j = j + 1u) {
        let i = base + j * p.inner;
        let d = x[i] - m;
        var r = select(exp(d) / sum, d - log_sum, LOG);
        y[i] = select(r, nan, seen_nan);
    }
}
