// Scaled dot-product attention, one invocation per (batch, head, row), reading q, k and v through
// views (offset and strides of batch, time and head; a head's values are contiguous), so that
// the heads of a packed [batch, t, 3, heads, d] tensor or of three [batch, t, heads, d] tensors
// are read in place. The host checks each invocation's loop lengths against llvmpipe's limit.
// Compiled after the prelude (shaders/common.wgsl). The CPU twin is src/cpu/attention.rs: the
// same operations in the same order.
//
// `forward`: query row i of head h attends to keys 0..keys(i) with an online softmax whose
// running maximum starts at the first key's score (equal maxima weigh 1, so scores of -inf
// before a finite one weigh nothing in the end), writing the output row
// [batch, tq, heads, DV] and the row's logsumexp [batch, tq, heads].
//
// `backward_q`: with g the output's gradient and δ_i = Σ g_i·o_i, p_ij = exp(s_ij - lse_i),
// ds_ij = p_ij (g_i·v_j - δ_i): dq_i = scale Σ_j ds_ij k_j; writes δ too.
// `backward_kv`: dv_j = Σ_i p_ij g_i and dk_j = scale Σ_i ds_ij q_i over the queries that see
// key j. The gradients are written through the inputs' views (in place in a packed gradient).

override WG: u32 = 256u;
// Head dimensions of q and k (D) and of v (DV); at most MAXD.
override D: u32 = 16u;
override DV: u32 = 16u;
const MAXD: u32 = 128u;

struct View {
    off: u32,
    sb: u32,
    st: u32,
    sh: u32,
}

struct Params {
    batch: u32,
    heads: u32,
    tq: u32,
    tk: u32,
    causal: u32,
    scale: f32,
    rows: u32,
    // forward_split: the chunks of CHUNK keys per query row, and whether `slens` limits them.
    splits: u32,
    q: View,
    k: View,
    v: View,
    limited: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

fn at(view: View, b: u32, t: u32, h: u32) -> u32 {
    return view.off + b * view.sb + t * view.st + h * view.sh;
}

// (batch, head, row) of invocation r, rows of one head adjacent.
fn split(r: u32, rows: u32, heads: u32) -> vec3<u32> {
    let bh = r / rows;
    return vec3<u32>(bh / heads, bh % heads, r % rows);
}

// Where query row i's output, logsumexp and δ are.
fn stat(b: u32, i: u32, h: u32, tq: u32, heads: u32) -> u32 {
    return (b * tq + i) * heads + h;
}

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read_write> o: array<f32>;
@group(0) @binding(4) var<storage, read_write> lse: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;

fn keys_of(i: u32, causal: u32, tk: u32) -> u32 {
    return select(tk, min(i + 1u, tk), causal != 0u);
}

// The online softmax of query row i of head h in batch b over keys j0..j1 (j0 < j1): the
// largest score m (starting at key j0's), the sum l of exp(s - m), and the values weighted
// the same way, unnormalised.
struct Walk {
    m: f32,
    l: f32,
    acc: array<f32, MAXD>,
}

fn walk(a: Params, b: u32, h: u32, i: u32, j0: u32, j1: u32) -> Walk {
    var qi: array<f32, MAXD>;
    let qa = at(a.q, b, i, h);
    for (var x = 0u; x < D; x = x + 1u) {
        qi[x] = q[qa + x] * a.scale;
    }
    var acc: array<f32, MAXD>;
    var ka = at(a.k, b, j0, h);
    var va = at(a.v, b, j0, h);
    var m = 0.0;
    for (var x = 0u; x < D; x = x + 1u) {
        m = m + qi[x] * k[ka + x];
    }
    for (var x = 0u; x < DV; x = x + 1u) {
        acc[x] = v[va + x];
    }
    var l = 1.0;
    for (var j = j0 + 1u; j < j1; j = j + 1u) {
        ka = at(a.k, b, j, h);
        va = at(a.v, b, j, h);
        var s = 0.0;
        for (var x = 0u; x < D; x = x + 1u) {
            s = s + qi[x] * k[ka + x];
        }
        let m2 = max(m, s);
        // Equal maxima weigh 1, not exp(-inf - -inf): keys whose scores are all -inf so far
        // keep a placeholder weight that the first finite score wipes out (and a row left at
        // -inf is NaN in the end, as softmax makes it).
        let c = select(exp(m - m2), 1.0, m == m2);
        let e = select(exp(s - m2), 1.0, s == m2);
        l = l * c + e;
        for (var x = 0u; x < DV; x = x + 1u) {
            acc[x] = acc[x] * c + e * v[va + x];
        }
        m = m2;
    }
    return Walk(m, l, acc);
}

// How many keys query i sees when its batch element holds `len` (at most tk): all `len`, or
// when causal those up to its own position, the queries being the last tq (AttnDims::keys_limited).
fn keys_limited(i: u32, len: u32, a: Params) -> u32 {
    if (a.causal == 0u) {
        return len;
    }
    return min(select(0u, len + i + 1u - a.tq, len + i + 1u > a.tq), len);
}

// Query row i of head h in batch b attends to its first n keys (n > 0: the row's output and
// logsumexp; n = 0: zeros and -inf).
fn attend(a: Params, b: u32, h: u32, i: u32, n: u32) {
    let row = stat(b, i, h, a.tq, a.heads);
    if (n == 0u) {
        for (var x = 0u; x < DV; x = x + 1u) {
            o[row * DV + x] = 0.0;
        }
        lse[row] = f32_bits(0xff800000u);
        return;
    }
    let w = walk(a, b, h, i, 0u, n);
    // The row is NaN, as softmax makes it, where the largest score is NaN or infinite (or
    // every score -inf), whatever key came first; tested on the bits (drivers may fold m - m).
    let l = select(nan_f32(), w.l, is_finite(w.m));
    for (var x = 0u; x < DV; x = x + 1u) {
        o[row * DV + x] = w.acc[x] / l;
    }
    lse[row] = w.m + log(l);
}

@compute @workgroup_size(WG)
fn forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let r = folded_index(wid, nwg, lid, WG);
    if (r >= p.rows) {
        return;
    }
    let at3 = split(r, p.tq, p.heads);
    attend(p, at3.x, at3.y, at3.z, keys_of(at3.z, p.causal, p.tk));
}

// forward with a key count per batch element: batch b sees its first min(lens[b], tk) keys,
// its queries being the last tq of them when causal (Tensor::attention_cached).
@group(0) @binding(5) var<storage, read> lens: array<u32>;
@group(0) @binding(6) var<uniform> lp: Params;

@compute @workgroup_size(WG)
fn forward_lens(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let r = folded_index(wid, nwg, lid, WG);
    if (r >= lp.rows) {
        return;
    }
    let at3 = split(r, lp.tq, lp.heads);
    attend(lp, at3.x, at3.y, at3.z, keys_limited(at3.z, min(lens[at3.x], lp.tk), lp));
}

// Flash-decoding, for rows too few to fill a device and keys too many for one invocation: one
// invocation per (query row, chunk of CHUNK keys) walks its chunk with the same online softmax
// and writes the partial state [seen, m, l, acc[DV]] (`forward_split`: seen is 0 for a chunk
// past the row's keys), then one invocation per row merges its chunks (`merge`) into the output
// and logsumexp. NaN is tested on the bits, as drivers may assume it away.
override CHUNK: u32 = 64u;

@group(0) @binding(3) var<storage, read_write> part: array<f32>;
@group(0) @binding(4) var<storage, read> slens: array<u32>;

@compute @workgroup_size(WG)
fn forward_split(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let u = folded_index(wid, nwg, lid, WG);
    if (u >= p.rows * p.splits) {
        return;
    }
    let at3 = split(u / p.splits, p.tq, p.heads);
    let b = at3.x;
    let h = at3.y;
    let i = at3.z;
    var n = keys_of(i, p.causal, p.tk);
    if (p.limited != 0u) {
        n = keys_limited(i, min(slens[b], p.tk), p);
    }
    let j0 = (u % p.splits) * CHUNK;
    let j1 = min(j0 + CHUNK, n);
    let base = u * (DV + 3u);
    if (j0 >= j1) {
        part[base] = 0.0;
        return;
    }
    let w = walk(p, b, h, i, j0, j1);
    part[base] = 1.0;
    part[base + 1u] = w.m;
    part[base + 2u] = w.l;
    for (var x = 0u; x < DV; x = x + 1u) {
        part[base + 3u + x] = w.acc[x];
    }
}

@group(0) @binding(0) var<storage, read> mpart: array<f32>;
@group(0) @binding(1) var<storage, read_write> mo: array<f32>;
@group(0) @binding(2) var<storage, read_write> mlse: array<f32>;
@group(0) @binding(3) var<uniform> mp: Params;

@compute @workgroup_size(WG)
fn merge(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let r = folded_index(wid, nwg, lid, WG);
    if (r >= mp.rows) {
        return;
    }
    let at3 = split(r, mp.tq, mp.heads);
    let row = stat(at3.x, at3.z, at3.y, mp.tq, mp.heads);
    let first = r * mp.splits;
    // The largest finite chunk maximum. A chunk whose scores were all -inf (a maximum of -inf)
    // weighs nothing beside a finite one, and makes the row NaN when every chunk is so, as
    // softmax does; a chunk whose maximum is +inf or NaN, or whose sum is not finite, makes
    // the row NaN. (-inf is tested on the bits: llvmpipe may assume comparisons see no NaN.)
    var big = 0.0;
    var any = false;
    var found = false;
    var bad = false;
    for (var s = 0u; s < mp.splits; s = s + 1u) {
        let base = (first + s) * (DV + 3u);
        if (mpart[base] != 0.0) {
            any = true;
            let m = mpart[base + 1u];
            if (!is_finite(mpart[base + 2u])) {
                bad = true;
            } else if (is_finite(m)) {
                if (!found || m > big) {
                    big = m;
                }
                found = true;
            } else if (bitcast<u32>(m) != 0xff800000u) {
                bad = true;
            }
        }
    }
    if (!any) {
        for (var x = 0u; x < DV; x = x + 1u) {
            mo[row * DV + x] = 0.0;
        }
        mlse[row] = f32_bits(0xff800000u);
        return;
    }
    bad = bad || !found;
    var acc: array<f32, MAXD>;
    var l = 0.0;
    for (var s = 0u; s < mp.splits; s = s + 1u) {
        let base = (first + s) * (DV + 3u);
        if (mpart[base] != 0.0 && !bad && is_finite(mpart[base + 1u])) {
            let c = exp(mpart[base + 1u] - big);
            l = l + mpart[base + 2u] * c;
            for (var x = 0u; x < DV; x = x + 1u) {
                acc[x] = acc[x] + c * mpart[base + 3u + x];
            }
        }
    }
    l = select(l, nan_f32(), bad);
    for (var x = 0u; x < DV; x = x + 1u) {
        mo[row * DV + x] = acc[x] / l;
    }
    mlse[row] = big + log(l);
}

@group(0) @binding(3) var<storage, read> bo: array<f32>;
@group(0) @binding(4) var<storage, read> bg: array<f32>;
@group(0) @binding(5) var<storage, read> blse: array<f32>;
@group(0) @binding(6) var<storage, read_write> dq: array<f32>;
@group(0) @binding(7) var<storage, read_write> delta: array<f32>;
@group(0) @binding(8) var<uniform> bp: Params;

@compute @workgroup_size(WG)
fn backward_q(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let r = folded_index(wid, nwg, lid, WG);
    if (r >= bp.rows) {
        return;
    }
    let at3 = split(r, bp.tq, bp.heads);
    let b = at3.x;
    let h = at3.y;
    let i = at3.z;
    let row = stat(b, i, h, bp.tq, bp.heads);
    var gi: array<f32, MAXD>;
    var di = 0.0;
    for (var x = 0u; x < DV; x = x + 1u) {
        gi[x] = bg[row * DV + x];
        di = di + gi[x] * bo[row * DV + x];
    }
    var qi: array<f32, MAXD>;
    let qa = at(bp.q, b, i, h);
    for (var x = 0u; x < D; x = x + 1u) {
        qi[x] = q[qa + x] * bp.scale;
    }
    let li = blse[row];
    var acc: array<f32, MAXD>;
    let n = keys_of(i, bp.causal, bp.tk);
    for (var j = 0u; j < n; j = j + 1u) {
        let ka = at(bp.k, b, j, h);
        let va = at(bp.v, b, j, h);
        var kj: array<f32, MAXD>;
        var s = 0.0;
        for (var x = 0u; x < D; x = x + 1u) {
            kj[x] = k[ka + x];
            s = s + qi[x] * kj[x];
        }
        let pr = exp(s - li);
        var dp = 0.0;
        for (var x = 0u; x < DV; x = x + 1u) {
            dp = dp + gi[x] * v[va + x];
        }
        let ds = pr * (dp - di);
        for (var x = 0u; x < D; x = x + 1u) {
            acc[x] = acc[x] + ds * kj[x];
        }
    }
    let out = at(bp.q, b, i, h);
    for (var x = 0u; x < D; x = x + 1u) {
        dq[out + x] = acc[x] * bp.scale;
    }
    delta[row] = di;
}

@group(0) @binding(3) var<storage, read> kg: array<f32>;
@group(0) @binding(4) var<storage, read> klse: array<f32>;
@group(0) @binding(5) var<storage, read> kdelta: array<f32>;
@group(0) @binding(6) var<storage, read_write> dk: array<f32>;
@group(0) @binding(7) var<storage, read_write> dv: array<f32>;
@group(0) @binding(8) var<uniform> kp: Params;

@compute @workgroup_size(WG)
fn backward_kv(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let r = folded_index(wid, nwg, lid, WG);
    if (r >= kp.rows) {
        return;
    }
    let at3 = split(r, kp.tk, kp.heads);
    let b = at3.x;
    let h = at3.y;
    let j = at3.z;
    var kj: array<f32, MAXD>;
    var vj: array<f32, MAXD>;
    let ka = at(kp.k, b, j, h);
    let va = at(kp.v, b, j, h);
    for (var x = 0u; x < D; x = x + 1u) {
        kj[x] = k[ka + x];
    }
    for (var x = 0u; x < DV; x = x + 1u) {
        vj[x] = v[va + x];
    }
    var gk: array<f32, MAXD>;
    var gv: array<f32, MAXD>;
    let first = select(0u, j, kp.causal != 0u);
    for (var i = first; i < kp.tq; i = i + 1u) {
        let qa = at(kp.q, b, i, h);
        var qi: array<f32, MAXD>;
        var s = 0.0;
        for (var x = 0u; x < D; x = x + 1u) {
            qi[x] = q[qa + x];
            s = s + (qi[x] * kp.scale) * kj[x];
        }
        let row = stat(b, i, h, kp.tq, kp.heads);
        let pr = exp(s - klse[row]);
        var dp = 0.0;
        for (var x = 0u; x < DV; x = x + 1u) {
            let g = kg[row * DV + x];
            dp = dp + g * vj[x];
            gv[x] = gv[x] + pr * g;
        }
        let ds = pr * (dp - kdelta[row]);
        for (var x = 0u; x < D; x = x + 1u) {
            gk[x] = gk[x] + ds * qi[x];
        }
    }
    for (var x = 0u; x < D; x = x + 1u) {
        dk[ka + x] = gk[x] * kp.scale;
    }
    for (var x = 0u; x < DV; x = x + 1u) {
        dv[va + x] = gv[x];
    }
}
