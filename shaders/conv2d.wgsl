// Direct 2-D convolution (cross-correlation, as PyTorch), NCHW, grouped, zero padding.
// One invocation per output element (b, co, oy, ox):
//   y = bias[co] + Σ_{ci, ky, kx} x[b, ci, oy·sh - ph + ky·dh, ox·sw - pw + kx·dw] · w[co, ci, ky, kx]
// Taps that fall in the padding contribute nothing. The host runs these direct kernels only
// where the column buffer of the matrix-product form (conv_gemm.wgsl) would be too large.
// The backward entry points (grad_input, grad_weight) follow.

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
    batch: u32, // read by the backward entry points
    groups: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
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
    let o = folded_index(wid, nwg, lid, WG);
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
    // With groups, output channel co sees input channels first .. first + cig.
    let cig = p.c_in / p.groups;
    let first = (co / (p.c_out / p.groups)) * cig;
    // The padding's zeros times a non-finite weight give NaN (ONNX's and PyTorch's zero
    // padding; the matrix-product form computes them as products).
    var pad_nan = false;
    for (var cl = 0u; cl < cig; cl = cl + 1u) {
        let x_plane = (b * p.c_in + first + cl) * p.h * p.w;
        let w_plane = (co * cig + cl) * p.kh * p.kw;
        for (var ky = 0u; ky < p.kh; ky = ky + 1u) {
            // Signed arithmetic: the tap may sit in the padding above or left of the image.
            let iy = i32(oy * p.sh + ky * p.dh) - i32(p.ph);
            let row_out = iy < 0 || iy >= i32(p.h);
            for (var kx = 0u; kx < p.kw; kx = kx + 1u) {
                let wv = wt[w_plane + ky * p.kw + kx];
                let ix = i32(ox * p.sw + kx * p.dw) - i32(p.pw);
                if (row_out || ix < 0 || ix >= i32(p.w)) {
                    pad_nan = pad_nan || !is_finite(wv);
                    continue;
                }
                acc = acc + x[x_plane + u32(iy) * p.w + u32(ix)] * wv;
            }
        }
    }
    y[o] = select(acc, nan_f32(), pad_nan);
}

// ---- backward -----------------------------------------------------------------------
// Backward, with the same Params; `n_out` is the number of elements the entry point writes.
// The bindings repeat numbers of the forward entry point, which never uses them together.
//
// grad_input, one invocation per input element (b, ci, iy, ix):
//   dx = Σ_{co, ky, kx} g[b, co, oy, ox] · w[co, ci, ky, kx]
// over the taps where iy = oy·sh - ph + ky·dh (and the same in x) for a whole output position.
// grad_weight, one invocation per weight element (co, ci, ky, kx):
//   dw = Σ_{b, oy, ox} g[b, co, oy, ox] · x[b, ci, oy·sh - ph + ky·dh, ox·sw - pw + kx·dw]
// Both loop in a fixed order, so results are deterministic; the CPU twin is src/cpu/conv.rs.

@group(0) @binding(0) var<storage, read> g: array<f32>;
@group(0) @binding(1) var<storage, read> other: array<f32>; // w for grad_input, x for grad_weight
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> gp: Params;

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
    let i = folded_index(wid, nwg, lid, WG);
    if (i >= gp.n_out) {
        return;
    }
    let ix = i % gp.w;
    let iy = (i / gp.w) % gp.h;
    let ci = (i / (gp.w * gp.h)) % gp.c_in;
    let b = i / (gp.w * gp.h * gp.c_in);
    let cig = gp.c_in / gp.groups;
    let cog = gp.c_out / gp.groups;
    let group = ci / cig;
    var acc = 0.0;
    for (var co = group * cog; co < (group + 1u) * cog; co = co + 1u) {
        let g_plane = (b * gp.c_out + co) * gp.oh * gp.ow;
        let w_plane = (co * cig + ci % cig) * gp.kh * gp.kw;
        for (var ky = 0u; ky < gp.kh; ky = ky + 1u) {
            let oy = out_pos(iy, ky, gp.ph, gp.dh, gp.sh, gp.oh);
            if (oy < 0) {
                continue;
            }
            for (var kx = 0u; kx < gp.kw; kx = kx + 1u) {
                let ox = out_pos(ix, kx, gp.pw, gp.dw, gp.sw, gp.ow);
                if (ox < 0) {
                    continue;
                }
                acc = acc + g[g_plane + u32(oy) * gp.ow + u32(ox)] * other[w_plane + ky * gp.kw + kx];
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
    let i = folded_index(wid, nwg, lid, WG);
    if (i >= gp.n_out) {
        return;
    }
    let kx = i % gp.kw;
    let ky = (i / gp.kw) % gp.kh;
    let cig = gp.c_in / gp.groups;
    let cl = (i / (gp.kw * gp.kh)) % cig;
    let co = i / (gp.kw * gp.kh * cig);
    let ci = (co / (gp.c_out / gp.groups)) * cig + cl;
    var acc = 0.0;
    var pad_nan = false; // the padding's zeros times a non-finite gradient (see main)
    for (var b = 0u; b < gp.batch; b = b + 1u) {
        let g_plane = (b * gp.c_out + co) * gp.oh * gp.ow;
        let x_plane = (b * gp.c_in + ci) * gp.h * gp.w;
        for (var oy = 0u; oy < gp.oh; oy = oy + 1u) {
            let iy = i32(oy * gp.sh + ky * gp.dh) - i32(gp.ph);
            let row_out = iy < 0 || iy >= i32(gp.h);
            for (var ox = 0u; ox < gp.ow; ox = ox + 1u) {
                let gv = g[g_plane + oy * gp.ow + ox];
                let ix = i32(ox * gp.sw + kx * gp.dw) - i32(gp.pw);
                if (row_out || ix < 0 || ix >= i32(gp.w)) {
                    pad_nan = pad_nan || !is_finite(gv);
                    continue;
                }
                acc = acc + gv * other[x_plane + u32(iy) * gp.w + u32(ix)];
            }
        }
    }
    out[i] = select(acc, nan_f32(), pad_nan);
}
