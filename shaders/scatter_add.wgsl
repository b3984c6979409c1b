// Backward of gather: the gradient of the source is the output gradient g added back at the
// positions the indices picked,
//   out[c] = Σ_j [idx[c with c[dim] = j] == c[dim]] · g[c with c[dim] replaced by j]
// for every multi-index c of the source shape; the index tensor has g's shape. One thread per
// source element loops over the `count` indices along `dim`, so the sums are deterministic (no
// float atomics, which WGSL lacks) and in the same order as the CPU backend. Source elements
// outside g's extent (gather with a smaller index) get 0. index_select's backward is the `rows`
// entry point below.

override WG: u32 = 256u;

struct Params {
    n: u32,
    rank: u32,
    dim: u32,
    count: u32,
    // Packed four to a vec4 because uniform arrays have a 16-byte element stride.
    out_dims: array<vec4<u32>, 2>, // the source shape
    g_dims: array<vec4<u32>, 2>,   // g's shape (and the index's)
    g_strides: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<storage, read> g: array<f32>;
@group(0) @binding(1) var<storage, read> idx: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = folded_index(wid, nwg, lid, WG);
    if (i >= p.n) {
        return;
    }
    var rem = i;
    var base = 0u;
    var want = 0u;
    var inside = true;
    for (var d = i32(p.rank) - 1; d >= 0; d = d - 1) {
        let q = u32(d) / 4u;
        let r = u32(d) % 4u;
        let at = rem % p.out_dims[q][r];
        rem = rem / p.out_dims[q][r];
        if (u32(d) == p.dim) {
            want = at;
        } else {
            inside = inside && at < p.g_dims[q][r];
            base = base + at * p.g_strides[q][r];
        }
    }
    var acc = 0.0;
    if (inside) {
        let stride_j = p.g_strides[p.dim / 4u][p.dim % 4u];
        for (var j = 0u; j < p.count; j = j + 1u) {
            let at = base + j * stride_j;
            if (idx[at] == want) {
                acc = acc + g[at];
            }
        }
    }
    out[i] = acc;
}

// ---- index_select backward by rows ------------------------------------------------------
// With the indices grouped by the row they pick (a CSR built on the host from the indices the
// forward op already read back: `starts[r]..starts[r + 1]` index `order`, which lists the
// positions j with idx[j] == r in increasing order), each source element sums only its own
// contributions: out[o, r, i] = Σ_t g[o, order[t], i], O(source + g) work instead of
// O(source · count), in increasing j as the CPU twin sums.

struct RowParams {
    n: u32,
    len: u32,
    inner: u32,
    count: u32,
}

@group(0) @binding(0) var<storage, read> rg: array<f32>;
@group(0) @binding(1) var<storage, read> starts: array<u32>;
@group(0) @binding(2) var<storage, read> order: array<u32>;
@group(0) @binding(3) var<storage, read_write> rout: array<f32>;
@group(0) @binding(4) var<uniform> rp: RowParams;

@compute @workgroup_size(WG)
fn rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = folded_index(wid, nwg, lid, WG);
    if (e >= rp.n) {
        return;
    }
    let i = e % rp.inner;
    let r = (e / rp.inner) % rp.len;
    let o = e / (rp.inner * rp.len);
    var acc = 0.0;
    for (var t = starts[r]; t < starts[r + 1u]; t = t + 1u) {
        acc = acc + rg[(o * rp.count + order[t]) * rp.inner + i];
    }
    rout[e] = acc;
}

// ---- index_select backward by scanning ----------------------------------------------------
// Where the host may not group the indices (a captured step's input indices change at every
// replay), each source element scans all `count` picks: out[o, r, i] = Σ_{j: idx[j] == r}
// g[o, j, i], in increasing j as the other two forms sum; O(source · count) work.

@group(0) @binding(1) var<storage, read> sidx: array<u32>;
@group(0) @binding(2) var<storage, read_write> sout: array<f32>;
@group(0) @binding(3) var<uniform> sp: RowParams;

@compute @workgroup_size(WG)
fn rows_scan(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = folded_index(wid, nwg, lid, WG);
    if (e >= sp.n) {
        return;
    }
    let i = e % sp.inner;
    let r = (e / sp.inner) % sp.len;
    let o = e / (sp.inner * sp.len);
    var acc = 0.0;
    for (var j = 0u; j < sp.count; j = j + 1u) {
        if (sidx[j] == r) {
            acc = acc + rg[(o * sp.count + j) * sp.inner + i];
        }
    }
    sout[e] = acc;
}
