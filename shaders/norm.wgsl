// layer_norm and rms_norm over the last dimension. One invocation per row of `len` values.
//   layer_norm: (x - mean) / sqrt(var + eps) * w + b   (biased variance, as PyTorch)
//   rms_norm:   x / sqrt(mean(x²) + eps) * w
// Weight and bias are optional (HAS_WEIGHT, HAS_BIAS); when absent the host binds the input in
// their place, and they are not read.

override WG: u32 = 256u;
override RMS: bool = false;
override HAS_WEIGHT: bool = false;
override HAS_BIAS: bool = false;

struct Params {
    rows: u32,
    len: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

// The row at `base` of `len` values: its mean (0 for rms_norm) and 1/sqrt(var + eps).
fn row_stats(base: u32, len: u32, eps: f32) -> vec2<f32> {
    let n = f32(len);
    var mean = 0.0;
    if (!RMS) {
        for (var j = 0u; j < len; j = j + 1u) {
            mean = mean + x[base + j];
        }
        mean = mean / n;
    }
    var ss = 0.0;
    for (var j = 0u; j < len; j = j + 1u) {
        let d = x[base + j] - mean;
        ss = ss + d * d;
    }
    return vec2<f32>(mean, 1.0 / sqrt(ss / n + eps));
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = folded_index(wid, nwg, lid, WG);
    if (row >= p.rows) {
        return;
    }
    let base = row * p.len;
    let stats = row_stats(base, p.len, p.eps);
    let mean = stats.x;
    let inv = stats.y;
    for (var j = 0u; j < p.len; j = j + 1u) {
        var v = (x[base + j] - mean) * inv;
        if (HAS_WEIGHT) {
            v = v * w[j];
        }
        if (HAS_BIAS) {
            v = v + b[j];
        }
        y[base + j] = v;
    }
}

// ---- backward ------------------------------------------------------------------------------
// The input gradient of layer_norm (rms_norm with RMS) for one row per invocation, from x, the
// weight (HAS_WEIGHT) and the output gradient g (bound where the forward binds the bias):
//   x̂ = (x - mean) · r,  r = 1/sqrt(var + eps),  d = g · w (or g)
//   dx = (d - mean(d) - x̂ · mean(d · x̂)) · r        (rms_norm: without the mean(d) term)
// It also writes each row's mean and r, from which the host forms the weight's gradient.

@group(0) @binding(4) var<storage, read_write> row_mean: array<f32>;
@group(0) @binding(5) var<storage, read_write> row_r: array<f32>;
@group(0) @binding(6) var<uniform> bp: Params;

@compute @workgroup_size(WG)
fn backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = folded_index(wid, nwg, lid, WG);
    if (row >= bp.rows) {
        return;
    }
    let base = row * bp.len;
    let n = f32(bp.len);
    let stats = row_stats(base, bp.len, bp.eps);
    let mean = stats.x;
    let r = stats.y;
    var sum_d = 0.0;
    var sum_dx = 0.0;
    for (var j = 0u; j < bp.len; j = j + 1u) {
        var d = b[base + j];
        if (HAS_WEIGHT) {
            d = d * w[j];
        }
        sum_d = sum_d + d;
        sum_dx = sum_dx + d * (x[base + j] - mean) * r;
    }
    let mean_d = select(sum_d / n, 0.0, RMS);
    let proj = sum_dx / n;
    for (var j = 0u; j < bp.len; j = j + 1u) {
        var d = b[base + j];
        if (HAS_WEIGHT) {
            d = d * w[j];
        }
        let xhat = (x[base + j] - mean) * r;
        y[base + j] = (d - mean_d - xhat * proj) * r;
    }
    row_mean[row] = mean;
    row_r[row] = r;
}

// ---- the weight's and bias's gradients ------------------------------------------------------
// One invocation per column j: dw_j = Σ_i g_ij · (x_ij - mean_i) · r_i and db_j = Σ_i g_ij over
// the `rows` rows, from the row statistics `backward` wrote (the host bounds the walk as it
// bounds one pass of reduce.wgsl).

@group(0) @binding(1) var<storage, read> pg: array<f32>;
@group(0) @binding(2) var<storage, read> pmean: array<f32>;
@group(0) @binding(3) var<storage, read> pr: array<f32>;
@group(0) @binding(4) var<storage, read_write> dw: array<f32>;
@group(0) @binding(5) var<storage, read_write> db: array<f32>;

@compute @workgroup_size(WG)
fn param_grads(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let j = folded_index(wid, nwg, lid, WG);
    if (j >= bp.len) {
        return;
    }
    var sw = 0.0;
    var sb = 0.0;
    for (var i = 0u; i < bp.rows; i = i + 1u) {
        let at = i * bp.len + j;
        let g = pg[at];
        sw = sw + g * ((x[at] - pmean[i]) * pr[i]);
        sb = sb + g;
    }
    dw[j] = sw;
    db[j] = sb;
}
