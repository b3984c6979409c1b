// 2-D max or average pooling over NCHW planes. One invocation per output element.
// Max pooling ignores padding (it is -inf) and propagates NaN; average pooling counts padded
// positions as zeros and divides by kh·kw (PyTorch's count_include_pad = true). The backward
// entry point (grad) follows.

// Compiled after the prelude (shaders/common.wgsl).

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
    let o = folded_index(wid, nwg, lid, WG);
    if (o >= p.n_out) {
        return;
    }
    let ox = o % p.ow;
    let oy = (o / p.ow) % p.oh;
    let plane = (o / (p.ow * p.oh)) * p.h * p.w;
    var acc = select(0.0, f32_bits(0xff800000u), MAX); // -inf for max
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
    y[o] = select(acc, f32_bits(0x7fc00000u), seen_nan && MAX);
}

// ---- backward -----------------------------------------------------------------------
// Backward of 2-D max and average pooling (pool2d.wgsl), one invocation per input element:
// the sum of the output gradients of every window that covers it, where for max pooling a
// window passes its gradient only to the position its maximum came from (the first maximum in
// window order, the first NaN if there is one: the same choice as the CPU twin in
// src/cpu/conv.rs), and for average pooling every position gets g / (kh·kw).
//
// The bindings repeat numbers of the forward entry point (x stays at 0), which never uses
// them together.

@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read_write> dx: array<f32>;
@group(0) @binding(3) var<uniform> gp: Params;

// Flat in-plane position of the maximum of window (oy, ox) of the plane at `base`.
fn window_argmax(base: u32, oy: u32, ox: u32) -> u32 {
    var best = f32_bits(0xff800000u); // -inf
    var at = 0xffffffffu;
    for (var ky = 0u; ky < gp.kh; ky = ky + 1u) {
        let iy = i32(oy * gp.sh + ky) - i32(gp.ph);
        if (iy < 0 || iy >= i32(gp.h)) {
            continue;
        }
        for (var kx = 0u; kx < gp.kw; kx = kx + 1u) {
            let ix = i32(ox * gp.sw + kx) - i32(gp.pw);
            if (ix < 0 || ix >= i32(gp.w)) {
                continue;
            }
            let pos = u32(iy) * gp.w + u32(ix);
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
fn grad(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = folded_index(wid, nwg, lid, WG);
    if (i >= gp.n_out) {
        return;
    }
    let ix = i % gp.w;
    let iy = (i / gp.w) % gp.h;
    let plane = i / (gp.w * gp.h);
    let base = plane * gp.h * gp.w;
    let g_base = plane * gp.oh * gp.ow;
    let me = iy * gp.w + ix;
    // Windows covering iy: oy·sh - ph <= iy <= oy·sh - ph + kh - 1.
    let oy_hi = min((iy + gp.ph) / gp.sh, gp.oh - 1u);
    let oy_lo = select(0u, (iy + gp.ph + 1u - gp.kh + gp.sh - 1u) / gp.sh, iy + gp.ph + 1u > gp.kh);
    let ox_hi = min((ix + gp.pw) / gp.sw, gp.ow - 1u);
    let ox_lo = select(0u, (ix + gp.pw + 1u - gp.kw + gp.sw - 1u) / gp.sw, ix + gp.pw + 1u > gp.kw);
    var acc = 0.0;
    for (var oy = oy_lo; oy <= oy_hi; oy = oy + 1u) {
        for (var ox = ox_lo; ox <= ox_hi; ox = ox + 1u) {
            let go = g[g_base + oy * gp.ow + ox];
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
        acc = acc / f32(gp.kh * gp.kw);
    }
    dx[i] = acc;
}
