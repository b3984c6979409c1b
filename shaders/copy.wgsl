// Strided copy: out[out_offset + Σ idx_d · out_stride_d] = x[in_offset + Σ idx_d · in_stride_d]
// for every multi-index idx of `dims` (at most 8 dimensions). One kernel serves every layout op:
// permute/transpose (permuted input strides), narrow (an input offset), concat (an output offset
// per input), and making any strided view contiguous.
//
// ROWS = false: one invocation per element (neighbouring invocations touch neighbouring
// addresses: what hardware GPUs coalesce). ROWS = true: one invocation per row of the last
// dimension (`n` counts rows), walking the row with its strides, so the index arithmetic (an
// integer division per dimension, scalarised on CPU drivers) is paid once per row.

override WG: u32 = 256u;
override ROWS: bool = false;

struct Params {
    n: u32,
    rank: u32,
    in_offset: u32,
    out_offset: u32,
    // Packed four to a vec4 because uniform arrays have a 16-byte element stride.
    dims: array<vec4<u32>, 2>,
    in_strides: array<vec4<u32>, 2>,
    out_strides: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<storage, read> x: array<u32>;
@group(0) @binding(1) var<storage, read_write> y: array<u32>;
@group(0) @binding(2) var<uniform> p: Params;

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
    var src = p.in_offset;
    var dst = p.out_offset;
    // In row mode the last dimension is the walk, not part of the index.
    let last = i32(p.rank) - 1 - select(0, 1, ROWS);
    for (var d = last; d >= 0; d = d - 1) {
        let q = u32(d) / 4u;
        let r = u32(d) % 4u;
        let dim = p.dims[q][r];
        let idx = rem % dim;
        rem = rem / dim;
        src = src + idx * p.in_strides[q][r];
        dst = dst + idx * p.out_strides[q][r];
    }
    if (ROWS) {
        let q = (p.rank - 1u) / 4u;
        let r = (p.rank - 1u) % 4u;
        let si = p.in_strides[q][r];
        let so = p.out_strides[q][r];
        for (var j = 0u; j < p.dims[q][r]; j = j + 1u) {
            y[dst + j * so] = x[src + j * si];
        }
        return;
    }
    y[dst] = x[src];
}

// ---- constant padding ------------------------------------------------------------------------
// out[o] = x[o - before] where that index lies inside x's dims (x contiguous), else `value`,
// for every multi-index o of the output's dims: padding (before/after > 0) and cropping
// (< 0) along any dimensions in one pass. One invocation per output element.

struct PadParams {
    n: u32,
    rank: u32,
    value: u32,
    _pad: u32,
    dims: array<vec4<u32>, 2>,     // the output's extents
    src_dims: array<vec4<u32>, 2>, // x's extents
    before: array<vec4<i32>, 2>,   // output index minus x index, per dimension
}

@group(0) @binding(2) var<uniform> pp: PadParams;

@compute @workgroup_size(WG)
fn pad(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = folded_index(wid, nwg, lid, WG);
    if (i >= pp.n) {
        return;
    }
    var rem = i;
    var src = 0u;
    var stride = 1u;
    var inside = true;
    for (var d = i32(pp.rank) - 1; d >= 0; d = d - 1) {
        let q = u32(d) / 4u;
        let r = u32(d) % 4u;
        let o = rem % pp.dims[q][r];
        rem = rem / pp.dims[q][r];
        let at = i32(o) - pp.before[q][r];
        let extent = pp.src_dims[q][r];
        inside = inside && at >= 0 && at < i32(extent);
        src = src + u32(max(at, 0)) * stride;
        stride = stride * extent;
    }
    if (inside) {
        y[i] = x[src];
    } else {
        y[i] = pp.value;
    }
}
