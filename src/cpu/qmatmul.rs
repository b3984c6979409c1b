//! Products with a packed weight (`x · wᵀ`, `w` in f16, bf16, i8/u8 or a GGUF block type):
//! the weight is decoded in registers, a block at a time, never expanded to f32 in memory.
//!
//! q8_0 and q4_0 take ggml's route: each activation row is quantized to q8 blocks once, and a
//! weight block's dot product with it is an int8 one (`qdot`: AVX-512 VNNI, AVX2 or scalar,
//! chosen at run time), scaled by the two blocks' scales. Their weights are kept in groups of
//! eight rows (`row_groups`), multiplied eight rows at a time from one stream of bytes, for one
//! activation row (a decode step) or many (a prompt: no f32 route for them). The other types decode a chunk of
//! the weight row to f32 and take f32 dot products. Threads split the weight's rows, so each
//! weight byte is read once whatever the number of activation rows.

use super::qdot::{self, Q8KRow, Q8Row};
use super::row_groups::{self, GROUP, Layout};
use crate::dtype::DType;
use crate::error::Result;
use crate::matmul_plan::MatmulPlan;
use crate::quant;
use crate::shape::Shape;

/// Values of a weight row decoded at a time by the f32 path (one K-quant super-block).
const CHUNK: usize = 256;

/// Weight rows a thread claims at a time (`cpu::par_chunks_claimed`): rows are claimed, not
/// split in halves up front, so a core slowed by a neighbour takes fewer; 64 keeps the claims
/// (an atomic add whose cache line moves between cores) rare beside the work.
const ROWS_PER_CLAIM: usize = 64;

/// `x · wᵀ` for `x` of `m × k` (f32, row-major) and `w` of `n × k` values of `dtype` (`bytes`
/// in `layout`'s order, whole blocks per row): an `m × n` result.
pub(crate) fn matmul_packed(
    op: &'static str,
    x: &[f32],
    dtype: DType,
    w: &[u8],
    layout: Layout,
    (m, k, n): (usize, usize, usize),
) -> Result<Vec<f32>> {
    let row_bytes = quant::byte_len(op, dtype, k)?;
    let grouped = match layout {
        Layout::Rows => false,
        Layout::Grouped { row_bytes: r } if r == row_bytes => true,
        // Rows of another length (the weight reshaped): the file's order.
        Layout::Grouped { row_bytes: r } => {
            let mut file = super::alloc(op, w.len())?;
            row_groups::ungroup(dtype, r, w, &mut file);
            return matmul_packed(op, x, dtype, &file, Layout::Rows, (m, k, n));
        }
    };
    // Activations with NaN or ±inf take the f32 route too: 8-bit blocks cannot hold them (an
    // infinite block scale times a zero quant is NaN, a NaN quant is 0), and there they
    // propagate as IEEE arithmetic, as a GPU's products do.
    // Grouped rows stay in int8 for a prompt too: their products ran at 1.0-2.2× the
    // SGEMM's speed on the decoded weight from 128 to 512 rows (two Sapphire Rapids cores).
    // Half weights with a register tile stay on it for any number of rows: it ran 1.5-2× the
    // SGEMM's speed on the decoded weight at 256 and 512 rows (f16 4096×4096, two Zen 4 cores),
    // and K-quants with the lane kernel: 4096×4096 q4_K with 512 rows 59 ms, the SGEMM 82 (two
    // Sapphire Rapids cores).
    let tiled = match dtype {
        DType::F16 | DType::BF16 => qdot::half_quad(dtype).is_some(),
        DType::Q4K | DType::Q6K => qdot::k_lanes(dtype).is_some(),
        _ => false,
    };
    if x.iter().any(|v| !v.is_finite()) || (!grouped && !tiled && m >= f32_from_rows()) {
        return via_f32(op, x, dtype, w, grouped, (m, k, n));
    }
    if grouped {
        return grouped_product(op, x, dtype, w, (m, k, n));
    }
    let mut out_t = super::alloc::<f32>(op, n * m)?;
    match dtype {
        DType::Q8_0 | DType::Q4_0 => {
            q8_rows(dtype, w, row_bytes, &Q8Row::quantize(x), m, &mut out_t);
        }
        DType::Q4K | DType::Q6K => k_rows(dtype, w, row_bytes, &Q8KRow::quantize(x), m, &mut out_t),
        DType::F16 | DType::BF16 => half_rows(dtype, w, row_bytes, x, m, &mut out_t),
        _ => {
            super::par_chunks_claimed(&mut out_t, m, ROWS_PER_CLAIM, k * m, &|row, out| {
                let wrow = &w[row * row_bytes..(row + 1) * row_bytes];
                decoded_row_dots(dtype, wrow, x, k, out);
            });
        }
    }
    Ok(if m == 1 {
        out_t
    } else {
        transpose(&out_t, n, m)
    })
}

/// `x · wᵀ` for a q8_0 or q4_0 `w` in groups of eight rows (`row_groups`): the groups by
/// [`qdot::groups_kernel`], threads taking a claim's groups at a time and writing their columns
/// of the `m × n` result, then the rows after the groups.
fn grouped_product(
    op: &'static str,
    x: &[f32],
    dtype: DType,
    w: &[u8],
    (m, k, n): (usize, usize, usize),
) -> Result<Vec<f32>> {
    let row_bytes = quant::byte_len(op, dtype, k)?;
    let xq = Q8Row::quantize(x);
    let blocks = k / 32;
    let mut out = super::alloc::<f32>(op, m * n)?;
    let groups = n / GROUP;
    let run = qdot::groups_kernel(dtype);
    let xs: Vec<_> = (0..m)
        .map(|i| xq.blocks(i * blocks, (i + 1) * blocks))
        .collect();
    let size = GROUP * row_bytes;
    let per_call = ROWS_PER_CLAIM / GROUP;
    let at = super::Shared(out.as_mut_ptr());
    let mut units = vec![(); groups];
    super::par_chunks_claimed(&mut units, per_call, 1, ROWS_PER_CLAIM * k * m, &|c, u| {
        let g0 = c * per_call;
        // SAFETY: `out` has `m` rows of `n`; this call writes columns 8·g0.. of its groups
        // only, which no other call writes.
        unsafe {
            run(
                &w[g0 * size..(g0 + u.len()) * size],
                blocks,
                &xs,
                at.ptr().add(g0 * GROUP),
                n,
            )
        };
    });
    let split = groups * GROUP;
    if split < n {
        let mut tail = super::alloc::<f32>(op, (n - split) * m)?;
        q8_rows(dtype, &w[split * row_bytes..], row_bytes, &xq, m, &mut tail);
        for (r, col) in tail.chunks_exact(m).enumerate() {
            for (i, &v) in col.iter().enumerate() {
                out[i * n + split + r] = v;
            }
        }
    }
    Ok(out)
}

/// The q8_0 or q4_0 rows of `w` (the file's order, `row_bytes` each) with every activation
/// row of `xq` (`m` of them): `out[r·m + i]`.
fn q8_rows(dtype: DType, w: &[u8], row_bytes: usize, xq: &Q8Row, m: usize, out_t: &mut [f32]) {
    if out_t.is_empty() {
        return;
    }
    let blocks = row_bytes / dtype.block_bytes();
    let k = 32 * blocks;
    if m == 1 {
        // A decode step: one weight row at a time (see below), a claim's rows in one call.
        let (run, xs) = (qdot::rows_kernel(dtype), xq.blocks(0, blocks));
        super::par_chunks_claimed(out_t, ROWS_PER_CLAIM, 1, ROWS_PER_CLAIM * k, &|c, out| {
            let r0 = c * ROWS_PER_CLAIM;
            run(
                &w[r0 * row_bytes..(r0 + out.len()) * row_bytes],
                row_bytes,
                xs,
                out,
            );
        });
        return;
    }
    let (one, four, tile) = (qdot::kernel(dtype), qdot::kernel4(dtype), qdot::tile(dtype));
    // With several activation rows, four weight rows per piece: each activation row is read
    // once for four of them, and the four rows stay in L1 while every activation row passes.
    // With one (a decode step), one weight row at a time: four concurrent weight streams per
    // thread halved the speed on weights larger than the caches (q8_0 11008×4096: 2.0 ms
    // against 1.0), where one stream keeps the prefetcher ahead.
    super::par_chunks_claimed(out_t, 4 * m, ROWS_PER_CLAIM / 4, 4 * k * m, &|quad, out| {
        let row = |r: usize| &w[r * row_bytes..(r + 1) * row_bytes];
        let r0 = 4 * quad;
        let rows = out.len() / m;
        let mut i0 = 0;
        // Several activation rows at a time where a register tile exists.
        if let (Some(t), 4) = (tile, rows) {
            let quad = [row(r0), row(r0 + 1), row(r0 + 2), row(r0 + 3)];
            let mut vals = [0f32; 16];
            let mut xs = Vec::with_capacity(t.rows());
            while i0 + t.rows() <= m {
                xs.clear();
                xs.extend((i0..i0 + t.rows()).map(|i| xq.blocks(i * blocks, (i + 1) * blocks)));
                t.run(&quad, &xs, &mut vals[..4 * t.rows()]);
                for (i, v) in vals[..4 * t.rows()].chunks_exact(4).enumerate() {
                    for (r, &x) in v.iter().enumerate() {
                        out[r * m + i0 + i] = x;
                    }
                }
                i0 += t.rows();
            }
        }
        for i in i0..m {
            let xs = xq.blocks(i * blocks, (i + 1) * blocks);
            if rows == 4 {
                let d = four([row(r0), row(r0 + 1), row(r0 + 2), row(r0 + 3)], xs);
                for (r, v) in d.into_iter().enumerate() {
                    out[r * m + i] = v;
                }
            } else {
                for r in 0..rows {
                    out[r * m + i] = one(row(r0 + r), xs);
                }
            }
        }
    });
}

/// Activation rows from which K-quant products take the lane kernel ([`qdot::k_lanes`]: sixteen
/// rows a pass, so fewer leave lanes idle). Measured (4096×4096, two Sapphire Rapids cores):
/// q4_K with 4 rows 1.0 ms by the one-row kernels, 1.5 by the lanes; with 7 rows 1.9 and 1.5.
const LANES_FROM: usize = 6;

/// The q4_K or q6_K rows of `w` (`row_bytes` each) with every activation row of `xq` (`m`
/// of them): `out[r·m + i]`. From [`LANES_FROM`] activation rows, eight weight rows at a time
/// take the lane kernel where the CPU has one (the rows after the last eight and other CPUs:
/// each weight row's super-blocks unpacked once for four activation rows, [`qdot::k_kernel4`]).
fn k_rows(dtype: DType, w: &[u8], row_bytes: usize, xq: &Q8KRow, m: usize, out_t: &mut [f32]) {
    let blocks = row_bytes / dtype.block_bytes();
    let k = 256 * blocks;
    let xs = |i: usize| xq.blocks(i * blocks, (i + 1) * blocks);
    let (one, four) = (qdot::k_kernel(dtype), qdot::k_kernel4(dtype));
    let row_by_row = |row: usize, out: &mut [f32]| {
        let wrow = &w[row * row_bytes..(row + 1) * row_bytes];
        let mut i = 0;
        while i + 4 <= m {
            out[i..i + 4].copy_from_slice(&four(wrow, [xs(i), xs(i + 1), xs(i + 2), xs(i + 3)]));
            i += 4;
        }
        for (j, o) in out.iter_mut().enumerate().skip(i) {
            *o = one(wrow, xs(j));
        }
    };
    if let Some(lanes) = qdot::k_lanes(dtype).filter(|_| m >= LANES_FROM) {
        let x = qdot::LaneRows::new(xq, m, blocks);
        super::par_chunks_claimed(out_t, 8 * m, ROWS_PER_CLAIM / 8, 8 * k * m, &|g, out| {
            let r0 = 8 * g;
            if out.len() == 8 * m {
                lanes(&w[r0 * row_bytes..(r0 + 8) * row_bytes], &x, out);
            } else {
                for (r, o) in out.chunks_exact_mut(m).enumerate() {
                    row_by_row(r0 + r, o);
                }
            }
        });
        return;
    }
    super::par_chunks_claimed(out_t, m, ROWS_PER_CLAIM, k * m, &row_by_row);
}

/// The f16 or bf16 rows of `w` (`row_bytes` each) with every activation row of `x` (`m` of
/// them): `out[r·m + i]`, four weight rows at a time through the register tile
/// ([`qdot::half_quad`]), which widens each weight value once for all of a tile's activation
/// rows. A decode step (one activation row) takes it for long rows only: four weight streams
/// a thread kept two Zen 4 cores' reads ahead better than one for rows of 11,008 values (f16
/// 4096×11008, medians of 3 alternating rounds: 3.69 ms a row at a time, 2.33 four at a
/// time), worse for rows of 4,096 (4096×4096 0.80 → 0.87, 11008×4096 2.52 → 2.73).
fn half_rows(dtype: DType, w: &[u8], row_bytes: usize, x: &[f32], m: usize, out_t: &mut [f32]) {
    /// Row length from which one activation row takes the tile (between the two measured).
    const QUAD_DECODE_FROM: usize = 8192;
    let k = row_bytes / 2;
    let dot = qdot::half_kernel(dtype);
    let quad = qdot::half_quad(dtype).filter(|_| m > 1 || k >= QUAD_DECODE_FROM);
    let Some(quad) = quad else {
        super::par_chunks_claimed(out_t, m, ROWS_PER_CLAIM, k * m, &|row, out| {
            let wrow = &w[row * row_bytes..(row + 1) * row_bytes];
            for (i, o) in out.iter_mut().enumerate() {
                *o = dot(wrow, &x[i * k..(i + 1) * k]);
            }
        });
        return;
    };
    super::par_chunks_claimed(out_t, 4 * m, ROWS_PER_CLAIM / 4, 4 * k * m, &|q, out| {
        let row = |r: usize| &w[r * row_bytes..(r + 1) * row_bytes];
        let r0 = 4 * q;
        if out.len() == 4 * m {
            quad(&[row(r0), row(r0 + 1), row(r0 + 2), row(r0 + 3)], x, m, out);
        } else {
            for (r, o) in out.chunks_exact_mut(m).enumerate() {
                for (i, v) in o.iter_mut().enumerate() {
                    *v = dot(row(r0 + r), &x[i * k..(i + 1) * k]);
                }
            }
        }
    });
}

/// From this many activation rows (a prompt), a product decodes its weight to f32, a band of
/// rows at a time, and runs kiln's SGEMM on it: its register tiles reuse each weight value for
/// many rows, where the int8 row dots above decode and multiply every weight block once per
/// activation row. The arithmetic is then the exact product with the decoded weight (as on a
/// GPU); fewer rows quantize activations to 8 bits as llama.cpp's CPU backend does.
/// `KILN_CPU_PACKED_F32_ROWS` overrides it (read once).
/// Measured (SmolLM-135M's and TinyLlama-1.1B's shapes, q8_0 and q4_0, 2 Zen 4 cores): the
/// int8 register tiles win to about 128 rows, the SGEMM from about 256.
fn f32_from_rows() -> usize {
    static ROWS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *ROWS.get_or_init(|| {
        std::env::var("KILN_CPU_PACKED_F32_ROWS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(192)
    })
}

/// Weight rows decoded to f32 at a time by [`via_f32`]: a band of 256 rows of 4,096 values is
/// 4 MiB, so the decoded weight never exists whole.
const BAND_ROWS: usize = 256;

/// `x · wᵀ` through the SGEMM, the weight (`grouped` or in the file's order) decoded a band
/// of rows at a time.
fn via_f32(
    op: &'static str,
    x: &[f32],
    dtype: DType,
    w: &[u8],
    grouped: bool,
    (m, k, n): (usize, usize, usize),
) -> Result<Vec<f32>> {
    let row_bytes = quant::byte_len(op, dtype, k)?;
    let mut out = super::alloc::<f32>(op, m * n)?;
    let xs = Shape::new(&[m, k])?;
    let mut band = super::alloc::<f32>(op, BAND_ROWS.min(n) * k)?;
    for r0 in (0..n).step_by(BAND_ROWS) {
        let rows = BAND_ROWS.min(n - r0);
        let dec = &mut band[..rows * k];
        super::par_chunks_claimed(dec, k, 16, k, &|r, o| {
            let row = r0 + r;
            if grouped {
                let mut file = vec![0u8; row_bytes];
                row_groups::row(dtype, row_bytes, w, row, &mut file);
                quant::decode(dtype, &file, o);
            } else {
                quant::decode(dtype, &w[row * row_bytes..(row + 1) * row_bytes], o);
            }
        });
        let plan = MatmulPlan::with_transposed_rhs(&xs, &Shape::new(&[rows, k])?)?;
        let part = super::matmul::matmul(x, dec, &plan)?;
        for (o, p) in out.chunks_exact_mut(n).zip(part.chunks_exact(rows)) {
            o[r0..r0 + rows].copy_from_slice(p);
        }
    }
    Ok(out)
}

/// `x · wᵀ` for f32 `x` (`m × k`) and `w` (`n × k`), by dot products along `w`'s rows
/// (threaded over them): for a few rows of `x`, where this reads `w` once.
pub(crate) fn matmul_rows(
    x: &[f32],
    w: &[f32],
    (m, k, n): (usize, usize, usize),
) -> Result<Vec<f32>> {
    let out_t = row_dots(x, w, (m, k, n))?;
    Ok(if m == 1 {
        out_t
    } else {
        transpose(&out_t, n, m)
    })
}

/// [`matmul_rows`]' product transposed, `w · xᵀ` (`n × m`), as the dot products make it.
pub(crate) fn row_dots(x: &[f32], w: &[f32], (m, k, n): (usize, usize, usize)) -> Result<Vec<f32>> {
    let mut out_t = super::alloc::<f32>("matmul", n * m)?;
    super::par_chunks_claimed(&mut out_t, m, ROWS_PER_CLAIM, k * m, &|row, out| {
        let wrow = &w[row * k..(row + 1) * k];
        for (i, o) in out.iter_mut().enumerate() {
            *o = qdot::dot_f32(wrow, &x[i * k..(i + 1) * k]);
        }
    });
    Ok(out_t)
}

/// `out[i] = x_i · w` for one weight row `w` (bytes of `dtype`) and every row `x_i` of `x`,
/// decoding `w` a chunk at a time.
fn decoded_row_dots(dtype: DType, w: &[u8], x: &[f32], k: usize, out: &mut [f32]) {
    out.fill(0.0);
    let chunk = if dtype.block_len() > 1 {
        dtype.block_len()
    } else {
        CHUNK
    };
    let mut buf = [0f32; CHUNK];
    let mut start = 0;
    while start < k {
        let len = chunk.min(k - start);
        let bytes = dtype.block_bytes() * len / dtype.block_len();
        let off = dtype.block_bytes() * start / dtype.block_len();
        quant::decode(dtype, &w[off..off + bytes], &mut buf[..len]);
        for (i, o) in out.iter_mut().enumerate() {
            *o += qdot::dot_f32(&buf[..len], &x[i * k + start..i * k + start + len]);
        }
        start += len;
    }
}

/// `a` (`rows × cols`) transposed, threads taking sixteen output rows at a time (each reads
/// one 64-byte piece of every input row). Single-threaded and row by row, it was 18% of a
/// 512-row q4_K product (4096×4096, two Sapphire Rapids cores).
fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const BAND: usize = 16;
    let mut t = vec![0f32; a.len()];
    super::par_chunks_mut(&mut t, BAND * rows, BAND * rows, &|ci, band| {
        let (c0, nc) = (BAND * ci, band.len() / rows.max(1));
        for r in 0..rows {
            for (j, &v) in a[r * cols + c0..][..nc].iter().enumerate() {
                band[j * rows + r] = v;
            }
        }
    });
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Weight bytes of `rows × 32·blocks` q8_0 values, deterministic and varied: scales of
    /// assorted sizes and every quant value.
    fn q8_0_weight(rows: usize, blocks: usize) -> Vec<u8> {
        let mut w = Vec::new();
        for i in 0..rows * blocks {
            let d = half::f16::from_f32(0.01 + (i % 7) as f32 * 0.013);
            w.extend(d.to_bits().to_le_bytes());
            w.extend((0..32).map(|j| ((i * 37 + j * 11) % 255) as u8));
        }
        w
    }

    /// A decode step's q8_0 product is the same to the bit grouped as in the file's order,
    /// whose row kernel sums as ggml's `vec_dot_q8_0_q8_0` does (so logits match llama.cpp's).
    #[test]
    fn grouped_q8_0_rows_sum_as_the_file_order_kernel_does() {
        let (n, blocks) = (19, 5);
        let k = 32 * blocks;
        let file = q8_0_weight(n, blocks);
        let row_bytes = 34 * blocks;
        let mut grouped = vec![0; file.len()];
        row_groups::group(DType::Q8_0, row_bytes, &file, &mut grouped);
        let x: Vec<f32> = (0..k)
            .map(|i| ((i * 29 % 97) as f32 - 48.0) * 0.037)
            .collect();
        let mkn = (1, k, n);
        let rows = matmul_packed("t", &x, DType::Q8_0, &file, Layout::Rows, mkn).unwrap();
        let layout = Layout::Grouped { row_bytes };
        let groups = matmul_packed("t", &x, DType::Q8_0, &grouped, layout, mkn).unwrap();
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&groups), bits(&rows));
    }
}
