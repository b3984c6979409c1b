// Casts between f32 and the half-precision storage types (f16, bf16) on the device, bit for
// bit as the CPU's `half` crate does them: round to nearest even, overflow to infinity, NaN
// kept (quieted), subnormals exact. The conversions are integer arithmetic on the bits, so
// they need no SHADER_F16 and no f32 value passes through a float register (which could flush
// a subnormal or change a NaN). Half values sit two to a u32 word, value 2i in the low half,
// as the tensor's bytes do.
//
// DTYPE is 0 for f16 and 1 for bf16 (`gpu::kernels::packed::code`'s numbering).

override WG: u32 = 64u;
override DTYPE: u32 = 0u;

@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;

struct Params {
    // values
    n: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}
@group(0) @binding(2) var<uniform> p: Params;

// The f16 nearest an f32's bits (`half::f16::from_f32`).
fn f16_of(x: u32) -> u32 {
    let sign = (x & 0x80000000u) >> 16u;
    let e = x & 0x7f800000u;
    let m = x & 0x007fffffu;
    if (e == 0x7f800000u) {
        return sign | 0x7c00u | select(0u, 0x0200u, m != 0u) | (m >> 13u);
    }
    let he = i32(e >> 23u) - 127 + 15;
    if (he >= 0x1f) {
        return sign | 0x7c00u;
    }
    if (he <= 0) {
        if (14 - he > 24) {
            return sign;
        }
        let mm = m | 0x00800000u;
        let s = u32(14 - he);
        let round = 1u << (s - 1u);
        var hm = mm >> s;
        if ((mm & round) != 0u && (mm & (3u * round - 1u)) != 0u) {
            hm += 1u;
        }
        return sign | hm;
    }
    let h = sign | (u32(he) << 10u) | (m >> 13u);
    let round = 0x1000u;
    if ((m & round) != 0u && (m & (3u * round - 1u)) != 0u) {
        return h + 1u;
    }
    return h;
}

// The bf16 nearest an f32's bits (`half::bf16::from_f32`).
fn bf16_of(x: u32) -> u32 {
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        return (x >> 16u) | 0x0040u;
    }
    let round = 0x8000u;
    if ((x & round) != 0u && (x & (3u * round - 1u)) != 0u) {
        return (x >> 16u) + 1u;
    }
    return x >> 16u;
}

// An f16's value as f32 bits (`half::f16::to_f32`).
fn f32_of_f16(h: u32) -> u32 {
    let sign = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    if (e == 0x1fu) {
        return sign | select(0x7f800000u, 0x7fc00000u, m != 0u) | (m << 13u);
    }
    if (e == 0u) {
        if (m == 0u) {
            return sign;
        }
        // m·2^-24 with its top bit at position t: 1.f·2^(t-24).
        let t = 31u - countLeadingZeros(m);
        return sign | ((t + 103u) << 23u) | ((m << (23u - t)) & 0x007fffffu);
    }
    return sign | ((e + 112u) << 23u) | (m << 13u);
}

fn half_of(x: u32) -> u32 {
    if (DTYPE == 1u) {
        return bf16_of(x);
    }
    return f16_of(x);
}

fn f32_of(h: u32) -> u32 {
    if (DTYPE == 1u) {
        return h << 16u;
    }
    return f32_of_f16(h);
}

// Word i of the output: values 2i and 2i + 1 (the second 0 past the end).
@compute @workgroup_size(WG)
fn encode(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = folded_index(wid, nwg, lid, WG);
    let v = 2u * i;
    if (v >= p.n) {
        return;
    }
    var hi = 0u;
    if (v + 1u < p.n) {
        hi = half_of(src[v + 1u]);
    }
    dst[i] = half_of(src[v]) | (hi << 16u);
}

// Values 2i and 2i + 1 of the output from word i of the input.
@compute @workgroup_size(WG)
fn decode(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = folded_index(wid, nwg, lid, WG);
    let v = 2u * i;
    if (v >= p.n) {
        return;
    }
    let w = src[i];
    dst[v] = f32_of(w & 0xffffu);
    if (v + 1u < p.n) {
        dst[v + 1u] = f32_of(w >> 16u);
    }
}
