// The data movement around convolution as matrix products (src/gpu/kernels/conv.rs): the
// products themselves run on the tuned matmul kernels.
//
// Layouts (NCHW, G groups, cig = c_in / G input channels per group, P = oh·ow output pixels,
// KG = cig·kh·kw taps per output):
//   cols[b, g, t, p] with t = (ci·kh + ky)·kw + kx: the input value tap t of output pixel p
//   reads (zero in the padding). Then y[b, g·cog + co, p] = Σ_t w[g·cog + co, t] · cols[b, g, t, p].
//
// Entry points (`p.n_out` invocations: rows, except for sum_batches):
//   im2col      src = x,      dst = cols, one invocation per row (b, g, t, oy)
//   col2im      src = cols,   dst = dx, one per input row (b, c, iy): each value gathers the
//               taps that read it
//   add_bias    src = bias,   dst = y (in place), one per output row: y[b, c, p] += bias[c]
//   sum_batches src = partial weight gradients [batch, n_out], dst = their sum over the batch

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
    batch: u32,
    groups: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn im2col(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // One invocation per row (b, g, t, oy) of ow values: the divisions happen once per row
    // (CPU drivers have no vector integer division).
    let r = folded_index(wid, nwg, lid, WG);
    if (r >= p.n_out) {
        return;
    }
    let cig = p.c_in / p.groups;
    let taps = p.kh * p.kw;
    let kg = cig * taps;
    let oy = r % p.oh;
    let t = (r / p.oh) % kg;
    let bg = r / (p.oh * kg); // b·groups + g
    let kx = t % p.kw;
    let ky = (t / p.kw) % p.kh;
    let c = (bg % p.groups) * cig + t / taps;
    let b = bg / p.groups;
    let out = r * p.ow;
    // Signed arithmetic: the tap may sit in the padding above or left of the image.
    let iy = i32(oy * p.sh + ky * p.dh) - i32(p.ph);
    if (iy < 0 || iy >= i32(p.h)) {
        for (var ox = 0u; ox < p.ow; ox = ox + 1u) {
            dst[out + ox] = 0.0;
        }
        return;
    }
    let plane = ((b * p.c_in + c) * p.h + u32(iy)) * p.w;
    var ix = i32(kx * p.dw) - i32(p.pw);
    for (var ox = 0u; ox < p.ow; ox = ox + 1u) {
        var v = 0.0;
        if (ix >= 0 && ix < i32(p.w)) {
            v = src[plane + u32(ix)];
        }
        dst[out + ox] = v;
        ix = ix + i32(p.sw);
    }
}

@compute @workgroup_size(WG)
fn col2im(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // One invocation per input row (b, c, iy) of w values; each value gathers the taps that
    // read it.
    let r = folded_index(wid, nwg, lid, WG);
    if (r >= p.n_out) {
        return;
    }
    let iy = r % p.h;
    let c = (r / p.h) % p.c_in;
    let b = r / (p.h * p.c_in);
    let cig = p.c_in / p.groups;
    let np = p.oh * p.ow;
    let taps = p.kh * p.kw;
    let base = ((b * p.groups + c / cig) * cig + c % cig) * taps;
    let out = r * p.w;
    for (var ix = 0u; ix < p.w; ix = ix + 1u) {
        dst[out + ix] = 0.0;
    }
    for (var ky = 0u; ky < p.kh; ky = ky + 1u) {
        let ty = i32(iy + p.ph) - i32(ky * p.dh);
        if (ty < 0 || u32(ty) % p.sh != 0u || u32(ty) / p.sh >= p.oh) {
            continue;
        }
        let oy = u32(ty) / p.sh;
        for (var kx = 0u; kx < p.kw; kx = kx + 1u) {
            let row = (base + ky * p.kw + kx) * np + oy * p.ow;
            // Output column ox reads input column ox·sw - pw + kx·dw.
            var ix = i32(kx * p.dw) - i32(p.pw);
            for (var ox = 0u; ox < p.ow; ox = ox + 1u) {
                if (ix >= 0 && ix < i32(p.w)) {
                    dst[out + u32(ix)] = dst[out + u32(ix)] + src[row + ox];
                }
                ix = ix + i32(p.sw);
            }
        }
    }
}

@compute @workgroup_size(WG)
fn add_bias(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // One invocation per output row (b, c, oy).
    let r = folded_index(wid, nwg, lid, WG);
    if (r >= p.n_out) {
        return;
    }
    let v = src[(r / p.oh) % p.c_out];
    let out = r * p.ow;
    for (var ox = 0u; ox < p.ow; ox = ox + 1u) {
        dst[out + ox] = dst[out + ox] + v;
    }
}

@compute @workgroup_size(WG)
fn sum_batches(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = folded_index(wid, nwg, lid, WG);
    if (i >= p.n_out) {
        return;
    }
    var acc = 0.0;
    for (var b = 0u; b < p.batch; b = b + 1u) {
        acc = acc + src[b * p.n_out + i];
    }
    dst[i] = acc;
}
