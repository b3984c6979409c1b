// Backward of the direct 2-D convolution (conv2d.wgsl), NCHW, groups = 1. Same Params as the
// forward kernel; `n_out` is the number of elements this entry point writes.
//
// grad_input, one invocation per input element (b, ci, iy, ix):
//   dx = Σ_{co, ky, kx} g[b, co, oy, ox] · w[co, ci, ky, kx]
// over the taps where iy = oy·sh - ph + ky·dh (and the same in x) for a whole output position.
// grad_weight, one invocation per weight element (co, ci, ky, kx):
//   dw = Σ_{b, oy, ox} g[b, co, oy, ox] · x[b, ci, oy·sh - ph + ky·dh, ox·sw - pw + kx·dw]
// Both loop in a fixed order, so results are deterministic; the CPU twin is src/cpu/conv.rs.

override WG: u32 = 256u;

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
    batch: u32, // the forward kernel's padding word
}

@group(0) @binding(0) var<storage, read> g: array<f32>;
@group(0) @binding(1) var<storage, read> other: array<f32>; // w for grad_input, x for grad_weight
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

// The output index along one axis that tap `k` of input position `i` belongs to, or -1.
fn out_pos(i: u32, k: u32, pad: u32, dil: u32, stride: u32, extent: u32) -> i32 {
    let t = i32(i + pad) - i32(k * dil);
    if (t < 0 || t % i32(stride) != 0) {
        return -1;
    }
    let o = t / i32(stride);
    return select(-1, o, o < i32(extent));
}

@compute @workgroup_size(WG)
fn grad_input(
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
    let ci = (i / (p.w * p.h)) % p.c_in;
    let b = i / (p.w * p.h * p.c_in);
    var acc = 0.0;
    for (var co = 0u; co < p.c_out; co = co + 1u) {
        let g_plane = (b * p.c_out + co) * p.oh * p.ow;
        let w_plane = (co * p.c_in + ci) * p.kh * p.kw;
        for (var ky = 0u; ky < p.kh; ky = ky + 1u) {
            let oy = out_pos(iy, ky, p.ph, p.dh, p.sh, p.oh);
            if (oy < 0) {
                continue;
            }
            for (var kx = 0u; kx < p.kw; kx = kx + 1u) {
                let ox = out_pos(ix, kx, p.pw, p.dw, p.sw, p.ow);
                if (ox < 0) {
                    continue;
                }
                acc = acc + g[g_plane + u32(oy) * p.ow + u32(ox)] * other[w_plane + ky * p.kw + kx];
            }
        }
    }
    out[i] = acc;
}

@compute @workgroup_size(WG)
fn grad_weight(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= p.n_out) {
        return;
    }
    let kx = i % p.kw;
    let ky = (i / p.kw) % p.kh;
    let ci = (i / (p.kw * p.kh)) % p.c_in;
    let co = i / (p.kw * p.kh * p.c_in);
    var acc = 0.0;
    for (var b = 0u; b < p.batch; b = b + 1u) {
        let g_plane = (b * p.c_out + co) * p.oh * p.ow;
        let x_plane = (b * p.c_in + ci) * p.h * p.w;
        for (var oy = 0u; oy < p.oh; oy = oy + 1u) {
            let iy = i32(oy * p.sh + ky * p.dh) - i32(p.ph);
            if (iy < 0 || iy >= i32(p.h)) {
                continue;
            }
            for (var ox = 0u; ox < p.ow; ox = ox + 1u) {
                let ix = i32(ox * p.sw + kx * p.dw) - i32(p.pw);
                if (ix < 0 || ix >= i32(p.w)) {
                    continue;
                }
                acc = acc + g[g_plane + oy * p.ow + ox] * other[x_plane + u32(iy) * p.w + u32(ix)];
            }
        }
    }
    out[i] = acc;
}
