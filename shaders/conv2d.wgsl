// Direct 2-D convolution (cross-correlation, as PyTorch), NCHW, groups = 1, zero padding.
// One invocation per output element (b, co, oy, ox):
//   y = bias[co] + Σ_{ci, ky, kx} x[b, ci, oy·sh - ph + ky·dh, ox·sw - pw + kx·dw] · w[co, ci, ky, kx]
// Taps that fall in the padding contribute nothing. Correctness first: a tiled (im2col-style)
// kernel is the later speed step.

override WG: u32 = 256u;
override HAS_BIAS: bool = false;

struct Params {
    n_out: u32,
    c_in: u32,
    h: u32,
    w: u32,
    c_out: u32,
    kh: u32,
    kw: u32,
    oh: u32,
    ow: u32,
    sh: u32,
    sw: u32,
    ph: u32,
    pw: u32,
    dh: u32,
    dw: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> wt: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

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
    let co = (o / (p.ow * p.oh)) % p.c_out;
    let b = o / (p.ow * p.oh * p.c_out);
    var acc = 0.0;
    if (HAS_BIAS) {
        acc = bias[co];
    }
    for (var ci = 0u; ci < p.c_in; ci = ci + 1u) {
        let x_plane = (b * p.c_in + ci) * p.h * p.w;
        let w_plane = (co * p.c_in + ci) * p.kh * p.kw;
        for (var ky = 0u; ky < p.kh; ky = ky + 1u) {
            // Signed arithmetic: the tap may sit in the padding above or left of the image.
            let iy = i32(oy * p.sh + ky * p.dh) - i32(p.ph);
            if (iy < 0 || iy >= i32(p.h)) {
                continue;
            }
            for (var kx = 0u; kx < p.kw; kx = kx + 1u) {
                let ix = i32(ox * p.sw + kx * p.dw) - i32(p.pw);
                if (ix < 0 || ix >= i32(p.w)) {
                    continue;
                }
                acc = acc + x[x_plane + u32(iy) * p.w + u32(ix)] * wt[w_plane + ky * p.kw + kx];
            }
        }
    }
    y[o] = acc;
}
