// 2-D max or average pooling over NCHW planes. One invocation per output element.
// Max pooling ignores padding (it is -inf) and propagates NaN; average pooling counts padded
// positions as zeros and divides by kh·kw (PyTorch's count_include_pad = true).

// Prepended with activation.wgsl (for is_nan).

override WG: u32 = 256u;
override MAX: bool = true;

struct Params {
    n_out: u32,
    h: u32,
    w: u32,
    kh: u32,
    kw: u32,
    oh: u32,
    ow: u32,
    sh: u32,
    sw: u32,
    ph: u32,
    pw: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let o = (wid.y * nwg.x + wid.x) * WG + lid;
    if (o >= p.n_out) {
        return;
    }
    let ox = o % p.ow;
    let oy = (o / p.ow) % p.oh;
    let plane = (o / (p.ow * p.oh)) * p.h * p.w;
    var acc = select(0.0, bitcast<f32>(0xff800000u), MAX); // -inf for max
    var seen_nan = false;
    for (var ky = 0u; ky < p.kh; ky = ky + 1u) {
        let iy = i32(oy * p.sh + ky) - i32(p.ph);
        if (iy < 0 || iy >= i32(p.h)) {
            continue;
        }
        for (var kx = 0u; kx < p.kw; kx = kx + 1u) {
            let ix = i32(ox * p.sw + kx) - i32(p.pw);
            if (ix < 0 || ix >= i32(p.w)) {
                continue;
            }
            let v = x[plane + u32(iy) * p.w + u32(ix)];
            seen_nan = seen_nan || is_nan(v);
            acc = select(acc + v, max(acc, v), MAX);
        }
    }
    if (!MAX) {
        acc = acc / f32(p.kh * p.kw);
    }
    y[o] = select(acc, bitcast<f32>(0x7fc00000u), seen_nan && MAX);
}
