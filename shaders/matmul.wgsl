// Batched matrix multiply C[b] = A[b] x B[b], with A[b] m x k and B[b] k x n, in f32.
//
// Version 1: the workgroup-tiled kernel. A 16 x 16 workgroup computes a 16 x 16 tile of C, one
// element per invocation, staging 16 x 16 tiles of A and B in workgroup memory. Loads outside the
// matrix read 0 and stores outside are skipped, so any m, n, k is correct (k = 0 gives zeros).
//
// Operands are read through strides (row stride, column stride), so a transposed operand needs no
// copy. Batch dimensions (broadcast included) are resolved by the host into a table of per-batch
// element offsets for A and B; C is dense, batch after batch. Large grids are split by the host
// into several dispatches, each with its own first row tile (`row_tile0`) and batch (`batch0`).

const TILE: u32 = 16u;

struct Params {
    m: u32,
    n: u32,
    k: u32,
    batch0: u32,
    a_rs: u32,
    a_cs: u32,
    b_rs: u32,
    b_cs: u32,
    row_tile0: u32,
    alpha: f32, // alpha and beta: the epilogue's op parameters (versions 2 and 3 only)
    beta: f32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<storage, read> offsets: array<u32>; // [a_off, b_off] per batch
@group(0) @binding(4) var<uniform> p: Params;

var<workgroup> tile_a: array<array<f32, TILE>, TILE>;
var<workgroup> tile_b: array<array<f32, TILE>, TILE>;

@compute @workgroup_size(TILE, TILE, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let batch = p.batch0 + wid.z;
    let a_off = offsets[2u * batch];
    let b_off = offsets[2u * batch + 1u];
    let c_off = batch * p.m * p.n;
    let row = (p.row_tile0 + wid.y) * TILE + lid.y;
    let col = wid.x * TILE + lid.x;

    var acc = 0.0;
    let tiles = (p.k + TILE - 1u) / TILE;
    for (var t = 0u; t < tiles; t = t + 1u) {
        let ka = t * TILE + lid.x;
        var va = 0.0;
        if (row < p.m && ka < p.k) {
            va = a[a_off + row * p.a_rs + ka * p.a_cs];
        }
        tile_a[lid.y][lid.x] = va;
        let kb = t * TILE + lid.y;
        var vb = 0.0;
        if (kb < p.k && col < p.n) {
            vb = b[b_off + kb * p.b_rs + col * p.b_cs];
        }
        tile_b[lid.y][lid.x] = vb;
        workgroupBarrier();
        for (var i = 0u; i < TILE; i = i + 1u) {
            acc = acc + tile_a[lid.y][i] * tile_b[i][lid.x];
        }
        workgroupBarrier();
    }
    if (row < p.m && col < p.n) {
        c[c_off + row * p.n + col] = acc;
    }
}
