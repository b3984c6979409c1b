// Values of a storage type (f16, bf16, i8, u8, i32 and GGUF's q8_0, q4_0, q4_K, q6_K), read
// from their bytes in a u32 array and decoded in registers: `decode` writes them as f32 (a
// cast, or chosen rows of an embedding table) and `linear` multiplies an f32 activation by
// the transposed weight, never writing the weight as f32.
//
// DTYPE picks the format (the numbering of `gpu::kernels::packed::code`); it is an override
// constant, so each pipeline keeps one branch. Values are decoded four at a time: `quad(e)`
// is values e..e+4 of the flattened tensor, e a multiple of 4 (a quad never straddles a
// block: blocks hold 32 or 256 values).

override WG: u32 = 64u;
override DTYPE: u32 = 0u;

const F16: u32 = 0u;
const BF16: u32 = 1u;
const I8: u32 = 2u;
const U8: u32 = 3u;
const I32: u32 = 4u;
const Q8_0: u32 = 5u;
const Q4_0: u32 = 6u;
const Q4K: u32 = 7u;
const Q6K: u32 = 8u;

@group(0) @binding(0) var<storage, read> w: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

struct Params {
    // decode: values per row, rows, whether rows come from `x` (as u32 bits) and the total;
    // linear: m, k, n and the rows of x per workgroup.
    a: u32,
    b: u32,
    c: u32,
    d: u32,
}
@group(0) @binding(3) var<uniform> p: Params;

// Four bytes from byte offset `o` (any alignment), little-endian.
fn word_at(o: u32) -> u32 {
    let i = o >> 2u;
    let s = (o & 3u) * 8u;
    if (s == 0u) {
        return w[i];
    }
    return (w[i] >> s) | (w[i + 1u] << (32u - s));
}

fn byte_at(o: u32) -> u32 {
    return (w[o >> 2u] >> ((o & 3u) * 8u)) & 0xffu;
}

// The f16 at byte offset `o` (even).
fn half_at(o: u32) -> f32 {
    return unpack2x16float(w[o >> 2u] >> ((o & 2u) * 8u)).x;
}

// Four int8 in a word, sign-extended.
fn i8x4(v: u32) -> vec4<f32> {
    let s = bitcast<vec4<i32>>(vec4<u32>(v << 24u, v << 16u, v << 8u, v));
    return vec4<f32>(s >> vec4<u32>(24u));
}

fn u8x4(v: u32) -> vec4<f32> {
    return vec4<f32>(vec4<u32>(v, v >> 8u, v >> 16u, v >> 24u) & vec4<u32>(0xffu));
}

// q4_K's 6-bit scale and min of sub-block j of the super-block whose scales start at `o`.
fn scale_min_k4(j: u32, o: u32) -> vec2<f32> {
    if (j < 4u) {
        return vec2<f32>(f32(byte_at(o + j) & 63u), f32(byte_at(o + j + 4u) & 63u));
    }
    let a = byte_at(o + j + 4u);
    let lo = byte_at(o + j - 4u);
    let hi = byte_at(o + j);
    return vec2<f32>(f32((a & 0xfu) | ((lo >> 6u) << 4u)), f32((a >> 4u) | ((hi >> 6u) << 4u)));
}

fn quad(e: u32) -> vec4<f32> {
    switch DTYPE {
        case F16: {
            let o = e * 2u;
            return vec4<f32>(unpack2x16float(word_at(o)), unpack2x16float(word_at(o + 4u)));
        }
        case BF16: {
            let a = word_at(e * 2u);
            let b = word_at(e * 2u + 4u);
            return bitcast<vec4<f32>>(vec4<u32>(a << 16u, a & 0xffff0000u, b << 16u, b & 0xffff0000u));
        }
        case I8: {
            return i8x4(word_at(e));
        }
        case U8: {
            return u8x4(word_at(e));
        }
        case I32: {
            let i = vec4<u32>(e, e + 1u, e + 2u, e + 3u);
            return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(w[i.x], w[i.y], w[i.z], w[i.w])));
        }
        case Q8_0: {
            let o = (e >> 5u) * 34u;
            return half_at(o) * i8x4(word_at(o + 2u + (e & 31u)));
        }
        case Q4_0: {
            let o = (e >> 5u) * 18u;
            let j = e & 31u;
            let v = word_at(o + 2u + (j & 15u)) >> ((j >> 4u) * 4u);
            let q = vec4<u32>(v, v >> 8u, v >> 16u, v >> 24u) & vec4<u32>(0xfu);
            return half_at(o) * (vec4<f32>(q) - 8.0);
        }
        case Q4K: {
            let o = (e >> 8u) * 144u;
            let j = e & 255u;
            let chunk = j >> 6u;
            let upper = (j >> 5u) & 1u;
            let sm = scale_min_k4(2u * chunk + upper, o + 4u);
            let v = word_at(o + 16u + 32u * chunk + (j & 31u)) >> (upper * 4u);
            let q = vec4<f32>(vec4<u32>(v, v >> 8u, v >> 16u, v >> 24u) & vec4<u32>(0xfu));
            return half_at(o) * sm.x * q - half_at(o + 2u) * sm.y;
        }
        default: { // Q6K
            let o = (e >> 8u) * 210u;
            let j = e & 255u;
            let h = j >> 7u;
            let quarter = (j >> 5u) & 3u;
            let l = j & 31u;
            let lo = word_at(o + 64u * h + l + (quarter & 1u) * 32u) >> ((quarter >> 1u) * 4u);
            let hi = word_at(o + 128u + 32u * h + l) >> (2u * quarter);
            let q = (vec4<u32>(lo, lo >> 8u, lo >> 16u, lo >> 24u) & vec4<u32>(0xfu))
                | ((vec4<u32>(hi, hi >> 8u, hi >> 16u, hi >> 24u) & vec4<u32>(3u)) << vec4<u32>(4u));
            let sc = i8x4(byte_at(o + 192u + 8u * h + (l >> 4u) + 2u * quarter)).x;
            return half_at(o + 208u) * sc * (vec4<f32>(q) - 32.0);
        }
    }
}

// decode: y[r * len + j] = value (row(r) * len + j), four values per invocation; rows are
// x's u32 bits when p.c is 1 (an embedding's indices, checked by the host), else r.
@compute @workgroup_size(WG)
fn decode(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = folded_index(wid, nwg, lid, WG) * 4u;
    if (i >= p.d) {
        return;
    }
    let r = i / p.a;
    let j = i % p.a;
    var row = r;
    if (p.c == 1u) {
        row = bitcast<u32>(x[r]);
    }
    let v = quad(row * p.a + j);
    y[i] = v.x;
    y[i + 1u] = v.y;
    y[i + 2u] = v.z;
    y[i + 3u] = v.w;
}

const MB: u32 = 4u;

// The products of weight row r's quad at e (values e..e+4, decoded once) with the same four
// values of activation rows i0..i0 + rows (rows ≤ MB), one per component.
fn quad_products(r: u32, e: u32, i0: u32, rows: u32, k: u32) -> vec4<f32> {
    let q = quad(r * k + e);
    var p = vec4<f32>(0.0);
    for (var i = 0u; i < rows; i++) {
        let b = (i0 + i) * k + e;
        p[i] = dot(q, vec4<f32>(x[b], x[b + 1u], x[b + 2u], x[b + 3u]));
    }
    return p;
}
var<workgroup> partial: array<vec4<f32>, WG>;

// linear: y[i, r] = x[i, :] · w[r, :] for the MB rows i of x from wid.z * MB, one
// workgroup per weight row r (wid.x, folded into wid.y): each invocation decodes every WG-th
// quad of the row once and multiplies it with those rows of x; a tree over workgroup memory
// sums the invocations' partial dot products.
@compute @workgroup_size(WG)
fn linear(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let m = p.a;
    let k = p.b;
    let n = p.c;
    let r = wid.y * nwg.x + wid.x;
    let i0 = wid.z * MB;
    let rows = min(MB, m - i0);
    var acc = vec4<f32>(0.0);
    if (r < n) {
        for (var e = lid * 4u; e < k; e += WG * 4u) {
            acc += quad_products(r, e, i0, rows, k);
        }
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            partial[lid] += partial[lid + s];
        }
        workgroupBarrier();
    }
    if (lid < rows && r < n) {
        y[(i0 + lid) * n + r] = partial[0][lid];
    }
}

// linear_rows: the same product with one invocation per weight row r (for adapters that run
// invocations as SIMD lanes of a CPU, like lavapipe): no workgroup memory and no barriers, and
// the activation's values are the same address in every lane (one load, broadcast).
@compute @workgroup_size(WG)
fn linear_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let m = p.a;
    let k = p.b;
    let n = p.c;
    let r = (wid.y * nwg.x + wid.x) * WG + lid;
    let i0 = wid.z * MB;
    let rows = min(MB, m - i0);
    if (r >= n) {
        return;
    }
    var acc = vec4<f32>(0.0);
    for (var e = 0u; e < k; e += 4u) {
        acc += quad_products(r, e, i0, rows, k);
    }
    for (var i = 0u; i < rows; i++) {
        y[(i0 + i) * n + r] = acc[i];
    }
}
