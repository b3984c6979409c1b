// Backward of 2-D max and average pooling (pool2d.wgsl), one invocation per input element:
// the sum of the output gradients of every window that covers it, where for max pooling a
// window passes its gradient only to the position its maximum came from (the first maximum in
// window order, the first NaN if there is one: the same choice as the CPU twin in
// src/cpu/conv.rs), and for average pooling every position gets g / (kh·kw).
//
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
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read_write> dx: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

// Flat in-plane position of the maximum of window (oy, ox) of the plane at `base`.
fn window_argmax(base: u32, oy: u32, ox: u32) -> u32 {
    var best = bitcast<f32>(0xff800000u); // -inf
    var at = 0xffffffffu;
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
            let pos = u32(iy) * p.w + u32(ix);
            let v = x[base + pos];
            if (is_nan(v)) {
                return pos;
            }
            if (at == 0xffffffffu || v > best) {
                best = v;
                at = pos;
            }
        }
    }
    return at;
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= p.n_out) {
        return;
    }
    let ix = i % p.w;
    let iy = (i / p.w) % p.h;
    let plane = i / (p.w * p.h);
    let base = plane * p.h * p.w;
    let g_base = plane * p.oh * p.ow;
    let me = iy * p.w + ix;
    // Windows covering iy: oy·sh - ph <= iy <= oy·sh - ph + kh - 1.
    let oy_hi = min((iy + p.ph) / p.sh, p.oh - 1u);
    let oy_lo = select(0u, (iy + p.ph + 1u - p.kh + p.sh - 1u) / p.sh, iy + p.ph + 1u > p.kh);
    let ox_hi = min((ix + p.pw) / p.sw, p.ow - 1u);
    let ox_lo = select(0u, (ix + p.pw + 1u - p.kw + p.sw - 1u) / p.sw, ix + p.pw + 1u > p.kw);
    var acc = 0.0;
    for (var oy = oy_lo; oy <= oy_hi; oy = oy + 1u) {
        for (var ox = ox_lo; ox <= ox_hi; ox = ox + 1u) {
            let go = g[g_base + oy * p.ow + ox];
            if (MAX) {
                if (window_argmax(base, oy, ox) == me) {
                    acc = acc + go;
                }
            } else {
                acc = acc + go;
            }
        }
    }
    if (!MAX) {
        acc = acc / f32(p.kh * p.kw);
    }
    dx[i] = acc;
}
