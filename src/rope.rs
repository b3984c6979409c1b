//! Rotary position embedding ([`crate::Tensor::rope`]): the validated problem the backends run.

/// How [`crate::Tensor::rope`] pairs the values of a head's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Neighbours `(2p, 2p + 1)`: GPT-J's and Llama's original layout (llama.cpp's "normal"
    /// RoPE).
    Adjacent,
    /// The two halves of the rotated part, `(p, p + half)`: GPT-NeoX's layout (Hugging Face's
    /// `rotate_half`, llama.cpp's NeoX RoPE).
    Halves,
}

/// A validated RoPE problem: `total` values of x `[..., t, heads, d]`, tables `[t, half]`
/// (`2·half ≤ d` values of each row rotated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RopeDims {
    pub total: usize,
    pub t: usize,
    pub heads: usize,
    pub d: usize,
    pub half: usize,
    pub halves: bool,
}

impl RopeDims {
    /// Value `j` of a row: its pair's index, whether it is the pair's first, and its partner.
    pub(crate) fn pair(&self, j: usize) -> (usize, bool, usize) {
        if self.halves {
            match j < self.half {
                true => (j, true, j + self.half),
                false => (j - self.half, false, j - self.half),
            }
        } else {
            (j / 2, j.is_multiple_of(2), j ^ 1)
        }
    }
}
