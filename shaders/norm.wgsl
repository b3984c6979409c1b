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
    let n = f32(p.len);
    var mean = 0.0;
    if (!RMS) {
        for (var j = 0u; j < p.len; j = j + 1u) {
            mean = mean + x[base + j];
        }
        mean = mean / n;
    }
    var ss = 0.0;
    for (var j = 0u; j < p.len; j = j + 1u) {
        let d = x[base + j] - mean;
        ss = ss + d * d;
    }
    let inv = 1.0 / sqrt(ss / n + p.eps);
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
