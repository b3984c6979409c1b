//! q8_0 and q4_0 weights as the CPU keeps them for its products: groups of eight rows with
//! their blocks interleaved, so one stream of bytes feeds eight output rows at once (llama.cpp
//! repacks its CPU weights the same way; this layout is kiln's own).
//!
//! A group holds rows `8g..8g + 8`. Its bytes are, for each block index `b` of a row, the eight
//! rows' block `b` as one *group block*: their eight f16 scales, then their quantized bytes in
//! chunks: chunk `c` is bytes `c·len..(c + 1)·len` of row 0's quants, then of row 1's, ... of
//! row 7's, with `len` 8 for q4_0 (a 64-byte load takes one chunk of all eight rows) and 32 for
//! q8_0 (two rows' quants whole: its kernel sums each row in eight lanes, as ggml does, so that
//! logits agree with llama.cpp's bit for bit). A group block is as long as eight blocks. Rows
//! past the last whole group stay as they are in the file, after the groups. The layout is a
//! permutation of the file's bytes: the tensor holds them once, and [`ungroup`] gives the file's
//! bytes back.

use crate::dtype::DType;

/// Rows in a group.
pub(crate) const GROUP: usize = 8;

/// Bytes of a chunk of `dtype`'s quants (see the header).
fn chunk(dtype: DType) -> usize {
    if dtype == DType::Q8_0 { 32 } else { 8 }
}

/// How packed bytes are ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// Row after row, as in the file.
    Rows,
    /// Groups of eight rows of `row_bytes` bytes, as this module's header says.
    Grouped {
        /// Bytes of one row.
        row_bytes: usize,
    },
}

/// Whether weights of `dtype` with rows of `row_len` values are kept grouped: q8_0 and q4_0
/// with at least one whole group (`bytes` long in all), unless `KILN_CPU_ROW_GROUPS=0` (read
/// once) keeps every weight in the file's order (for comparisons).
pub(crate) fn groups(dtype: DType, row_len: usize, bytes: usize) -> Option<Layout> {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on = *ON.get_or_init(|| std::env::var("KILN_CPU_ROW_GROUPS").as_deref() != Ok("0"));
    if !on || !matches!(dtype, DType::Q8_0 | DType::Q4_0) || row_len == 0 {
        return None;
    }
    let row_bytes = row_len / 32 * dtype.block_bytes();
    (bytes / row_bytes >= GROUP).then_some(Layout::Grouped { row_bytes })
}

/// Where byte `at` of row `r`'s bytes (in the file's order) is in a grouped buffer of `dtype`
/// (`rows` rows of `row_bytes`).
#[inline]
fn position(dtype: DType, row_bytes: usize, rows: usize, r: usize, at: usize) -> usize {
    let group_rows = rows / GROUP * GROUP;
    if r >= group_rows {
        return r * row_bytes + at;
    }
    let block = dtype.block_bytes();
    let (g, i) = (r / GROUP, r % GROUP);
    let (b, j) = (at / block, at % block);
    let start = g * GROUP * row_bytes + b * GROUP * block;
    if j < 2 {
        start + 2 * i + j
    } else {
        let (q, len) = (j - 2, chunk(dtype));
        start + 2 * GROUP + (q / len) * GROUP * len + i * len + q % len
    }
}

/// `src` (the file's order: rows of `row_bytes`) into `dst` (as long) grouped.
pub(crate) fn group(dtype: DType, row_bytes: usize, src: &[u8], dst: &mut [u8]) {
    permute(dtype, row_bytes, src, dst, true);
}

/// `src` (grouped: rows of `row_bytes`) into `dst` (as long) in the file's order.
pub(crate) fn ungroup(dtype: DType, row_bytes: usize, src: &[u8], dst: &mut [u8]) {
    permute(dtype, row_bytes, src, dst, false);
}

/// Each piece of a row as the layout moves it: its offset in the row and its length (a block's
/// scale, then its quants a chunk at a time).
fn pieces(dtype: DType, row_bytes: usize) -> impl Iterator<Item = (usize, usize)> {
    let (block, len) = (dtype.block_bytes(), chunk(dtype));
    (0..row_bytes).step_by(block).flat_map(move |b| {
        std::iter::once((b, 2)).chain((b + 2..b + block).step_by(len).map(move |at| (at, len)))
    })
}

/// [`group`] (`forward`) or [`ungroup`], a row's pieces at a time.
fn permute(dtype: DType, row_bytes: usize, src: &[u8], dst: &mut [u8], forward: bool) {
    debug_assert_eq!(src.len(), dst.len());
    let rows = src.len() / row_bytes;
    for r in 0..rows {
        for (at, len) in pieces(dtype, row_bytes) {
            let (file, grouped) = (r * row_bytes + at, position(dtype, row_bytes, rows, r, at));
            let (from, to) = if forward {
                (file, grouped)
            } else {
                (grouped, file)
            };
            dst[to..to + len].copy_from_slice(&src[from..from + len]);
        }
    }
}

/// `bytes` (rows of `row_bytes` in the file's order) grouped in place, a group at a time
/// through a copy of its rows.
pub(crate) fn group_in_place(dtype: DType, row_bytes: usize, bytes: &mut [u8]) {
    let size = GROUP * row_bytes;
    let mut rows = vec![0u8; size];
    let whole = bytes.len() / size * size;
    for g in bytes[..whole].chunks_exact_mut(size) {
        rows.copy_from_slice(g);
        group(dtype, row_bytes, &rows, g);
    }
}

/// Row `r` of a grouped buffer (rows of `row_bytes`) in the file's order, into `out`.
pub(crate) fn row(dtype: DType, row_bytes: usize, bytes: &[u8], r: usize, out: &mut [u8]) {
    let rows = bytes.len() / row_bytes;
    for (at, len) in pieces(dtype, row_bytes) {
        let from = position(dtype, row_bytes, rows, r, at);
        out[at..at + len].copy_from_slice(&bytes[from..from + len]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping_is_a_permutation_that_ungroups() {
        for (dtype, blocks, rows) in [
            (DType::Q4_0, 3, 8),
            (DType::Q4_0, 1, 19),
            (DType::Q8_0, 2, 17),
            (DType::Q8_0, 5, 24),
        ] {
            let row_bytes = blocks * dtype.block_bytes();
            let file: Vec<u8> = (0..rows * row_bytes)
                .map(|i| (i * 7 + i / 251) as u8)
                .collect();
            let mut grouped = file.clone();
            group_in_place(dtype, row_bytes, &mut grouped);
            assert_ne!(grouped, file, "{dtype}: nothing moved");
            let mut sorted = grouped.clone();
            sorted.sort_unstable();
            let mut expect = file.clone();
            expect.sort_unstable();
            assert_eq!(sorted, expect, "{dtype}: not a permutation");
            let mut back = vec![0; file.len()];
            ungroup(dtype, row_bytes, &grouped, &mut back);
            assert_eq!(back, file, "{dtype}");
            let mut one = vec![0; row_bytes];
            for r in 0..rows {
                row(dtype, row_bytes, &grouped, r, &mut one);
                assert_eq!(
                    one,
                    file[r * row_bytes..(r + 1) * row_bytes],
                    "{dtype} row {r}"
                );
            }
        }
    }

    #[test]
    fn a_group_block_puts_scales_then_chunks_of_eight_rows() {
        let dtype = DType::Q4_0;
        let row_bytes = 18;
        // Byte j of row i is 32·i + j.
        let file: Vec<u8> = (0..8 * 18)
            .map(|n| (32 * (n / 18) + n % 18) as u8)
            .collect();
        let mut g = vec![0; file.len()];
        group(dtype, row_bytes, &file, &mut g);
        assert_eq!(&g[..4], &[0, 1, 32, 33]);
        // Chunk 0: quant bytes 0..8 (block bytes 2..10) of rows 0, 1, ...
        assert_eq!(&g[16..24], &[2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(&g[24..26], &[34, 35]);
        // Chunk 1 of row 7: block bytes 10..18.
        assert_eq!(&g[136..144], &[234, 235, 236, 237, 238, 239, 240, 241]);
        // q8_0: each row's 32 quants whole, row after row.
        let file: Vec<u8> = (0..8 * 34).map(|n| (n / 34 * 30 + n % 34) as u8).collect();
        let mut g = vec![0; file.len()];
        group(DType::Q8_0, 34, &file, &mut g);
        assert_eq!(&g[..4], &[0, 1, 30, 31]);
        assert_eq!(&g[16..18], &[2, 3]);
        assert_eq!(&g[48..50], &[32, 33]);
        let row7: Vec<u8> = (212..244).collect();
        assert_eq!(&g[240..272], &row7[..]);
    }
}
