//! Geometry of scaled dot-product attention, shared by both backends: where each head's rows of
//! q, k and v sit in their buffers (three tensors, or one packed tensor).

/// How [`crate::Tensor::attention`] masks and scales its scores.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AttentionOptions {
    /// Query `i` attends to keys `j ≤ i` only (the mask's diagonal starts at the top left, as
    /// PyTorch's `is_causal`; queries past the last key see every key).
    pub causal: bool,
    /// The factor on `q·k`; `None` is `1/√D` (1 when `D` is 0).
    pub scale: Option<f32>,
}

/// Where one operand's head rows are: element `d` of head `h` at time `t` of batch `b` is at
/// `off + b·sb + t·st + h·sh + d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct View {
    pub off: usize,
    pub sb: usize,
    pub st: usize,
    pub sh: usize,
}

impl View {
    /// The first element of head `h`'s row `t` in batch `b`.
    pub(crate) fn at(&self, b: usize, t: usize, h: usize) -> usize {
        self.off + b * self.sb + t * self.st + h * self.sh
    }
}

/// A validated attention problem: q `[batch, tq, heads, d]`, k `[batch, tk, heads, d]`,
/// v `[batch, tk, heads, dv]` (or one packed `[batch, t, 3, heads, d]`), output
/// `[batch, tq, heads, dv]`, and per-row statistics `[batch, tq, heads]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct AttnDims {
    pub batch: usize,
    pub heads: usize,
    pub tq: usize,
    pub tk: usize,
    pub d: usize,
    pub dv: usize,
    pub causal: bool,
    pub scale: f32,
    /// q, k and v are the three parts of one `[batch, t, 3, heads, d]` tensor.
    pub packed: bool,
    /// Batch element `b` sees only its first `lens[b]` keys (a u32 operand), its queries being
    /// the last `tq` of them when causal ([`crate::Tensor::attention_cached`]).
    pub limited: bool,
    /// No backward will run (no input requires gradients): a backend may pick a forward that
    /// a backward could not follow on its device.
    pub inference: bool,
}

impl AttnDims {
    /// The views of q, k and v.
    pub(crate) fn views(&self) -> [View; 3] {
        let (h, d) = (self.heads, self.d);
        if self.packed {
            let st = 3 * h * d;
            let at = |part: usize| View {
                off: part * h * d,
                sb: self.tq * st,
                st,
                sh: d,
            };
            return [at(0), at(1), at(2)];
        }
        let dense = |t: usize, d: usize| View {
            off: 0,
            sb: t * h * d,
            st: h * d,
            sh: d,
        };
        [
            dense(self.tq, self.d),
            dense(self.tk, self.d),
            dense(self.tk, self.dv),
        ]
    }

    /// Query rows (`batch · heads · tq`): one value each in the row statistics.
    pub(crate) fn rows(&self) -> usize {
        self.batch * self.heads * self.tq
    }

    /// How many keys query `i` attends to (without a length operand).
    pub(crate) fn keys(&self, i: usize) -> usize {
        if self.causal {
            (i + 1).min(self.tk)
        } else {
            self.tk
        }
    }

    /// How many keys query `i` attends to when its batch element has `len` keys: the first
    /// `len` (at most `tk`), and, when causal, those up to the query's own position, the
    /// queries being the last `tq` of the `len` (none for a query before the first key).
    pub(crate) fn keys_limited(&self, i: usize, len: usize) -> usize {
        let len = len.min(self.tk);
        if self.causal {
            (len + i + 1).saturating_sub(self.tq).min(len)
        } else {
            len
        }
    }

    /// Values in each of q's, k's and v's buffers (the packed tensor's for all three).
    pub(crate) fn sizes(&self) -> [usize; 3] {
        let (b, h) = (self.batch, self.heads);
        if self.packed {
            return [b * self.tq * 3 * h * self.d; 3];
        }
        [
            b * self.tq * h * self.d,
            b * self.tk * h * self.d,
            b * self.tk * h * self.dv,
        ]
    }
}
