//! Rotary position embedding.

use super::Tensor;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::rope::{RopeDims, RopeLayout};
use crate::storage::Storage;

impl Tensor {
    /// Rotary position embedding (RoPE) of `self` `[..., t, heads, d]` (f32): in each head's
    /// row at position `i` along `t`, the first `2·half` values form `half` pairs (neighbours,
    /// or the two halves: [`RopeLayout`]), pair `p` rotated by the angle whose cosine and sine
    /// are `cos[i, p]` and `sin[i, p]`,
    /// `(a, b) → (a·cos − b·sin, a·sin + b·cos)`;
    /// the rest of the row passes through. `cos` and `sin` are `[t, half]` f32 tables with
    /// `2·half ≤ d` (llama.cpp's `n_rot`: a partial rotation when less). One kernel on a GPU.
    ///
    /// Gradients flow to `self` (the rotation by the opposite angle); the tables take none
    /// (`Unsupported` where they require gradients). Errors: `DTypeMismatch` for a tensor
    /// that is not f32, `InvalidShape` for a rank below 3 or tables not `[t, half]` with
    /// `2·half ≤ d`, `DeviceMismatch`.
    pub fn rope(&self, cos: &Tensor, sin: &Tensor, layout: RopeLayout) -> Result<Tensor> {
        const OP: &str = "rope";
        if let Some(r) = Tensor::via_f32(&[self, cos, sin], |t| t[0].rope(&t[1], &t[2], layout)) {
            return r;
        }
        for t in [self, cos, sin] {
            self.same_device(t, OP)?;
            t.expect(DType::F32, OP)?;
        }
        let s = self.shape();
        if s.len() < 3 {
            return Err(Error::InvalidShape {
                op: OP,
                reason: format!("x must be [..., t, heads, d], got shape {}", self.shape),
            });
        }
        let (t, heads, d) = (s[s.len() - 3], s[s.len() - 2], s[s.len() - 1]);
        let half = cos.shape().get(1).copied().unwrap_or(0);
        if cos.shape() != [t, half] || sin.shape() != [t, half] || 2 * half > d {
            return Err(Error::InvalidShape {
                op: OP,
                reason: format!(
                    "cos {} and sin {} must both be [t, half] = [{t}, half] with 2·half ≤ {d} \
                     for x {}",
                    cos.shape, sin.shape, self.shape
                ),
            });
        }
        if Tensor::tracking(&[cos, sin]) {
            return Err(Error::Unsupported {
                op: OP,
                reason: "the tables take no gradients: detach them".into(),
            });
        }
        let dims = RopeDims {
            total: self.numel(),
            t,
            heads,
            d,
            half,
            halves: layout == RopeLayout::Halves,
        };
        // Nothing to rotate (no values, or tables of no pairs): the values as they are.
        let out = match dims.total * half {
            0 => self.clone(),
            _ => {
                let storage = Storage::rope([&self.storage, &cos.storage, &sin.storage], &dims)?;
                self.with(storage, self.shape.clone())
            }
        };
        if !Tensor::tracking(&[self]) {
            return Ok(out);
        }
        let (cos, back) = (cos.detach(), sin.detach().neg()?);
        Ok(out.record(OP, &[self], move |g, _| {
            Ok(vec![Some(g.rope(&cos, &back, layout)?)])
        }))
    }
}
