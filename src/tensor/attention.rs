//! Scaled dot-product attention as one op: the heads are read in place (no layout copies),
//! the scores never reach memory, and the backward is one op too.

use super::Tensor;
use crate::attention::{AttentionOptions, AttnDims};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::shape::Shape;
use crate::storage::{Kernel, Storage};

impl Tensor {
    /// Scaled dot-product attention over heads, in the sequence-major layout FlashAttention
    /// takes: `self` is q `[batch, tq, heads, d]`, `k` is `[batch, tk, heads, d]` and `v` is
    /// `[batch, tk, heads, dv]`; the result is `[batch, tq, heads, dv]`, each query's
    /// `softmax(scale · q·kᵀ)`-weighted sum of the values (over keys `j ≤ i` when causal).
    ///
    /// One kernel forward and two backward on a GPU, with the scores kept in registers (an
    /// online softmax); head dimensions over 128, or rows too long for llvmpipe's loop limit,
    /// run as products and a softmax instead, with the same results. NaN in a row's scores
    /// makes that row NaN. Errors: `InvalidShape` for a rank other than 4 or queries with no
    /// keys, `ShapeMismatch` where the batch, heads, head dimension or key count disagree,
    /// `InvalidArgument` for a non-finite scale.
    pub fn attention(&self, k: &Tensor, v: &Tensor, options: AttentionOptions) -> Result<Tensor> {
        if let Some(r) = Tensor::via_f32(&[self, k, v], |t| t[0].attention(&t[1], &t[2], options)) {
            return r;
        }
        let dims = self.attention_problem(k, v, options, "attention")?;
        Self::attention_op(&[self, k, v], dims)
    }

    /// The checked problem of q (`self`), `k` and `v`.
    fn attention_problem(
        &self,
        k: &Tensor,
        v: &Tensor,
        options: AttentionOptions,
        op: &'static str,
    ) -> Result<AttnDims> {
        for t in [self, k, v] {
            self.same_device(t, op)?;
            t.expect(DType::F32, op)?;
            if t.rank() != 4 {
                return Err(Error::InvalidShape {
                    op,
                    reason: format!("q, k and v are [batch, time, heads, dim]; got {}", t.shape),
                });
            }
        }
        let (q, ks, vs) = (self.shape(), k.shape(), v.shape());
        let mismatch = |lhs: &[usize], rhs: &[usize]| Error::ShapeMismatch {
            op,
            lhs: lhs.to_vec(),
            rhs: rhs.to_vec(),
        };
        if q[0] != ks[0] || q[2] != ks[2] || q[3] != ks[3] {
            return Err(mismatch(q, ks));
        }
        if ks[..3] != vs[..3] {
            return Err(mismatch(ks, vs));
        }
        Self::attention_dims(q[0], q[1], ks[1], q[2], q[3], vs[3], options, false)
    }

    /// [`Tensor::attention`] over a key/value cache: batch element `b` attends to the first
    /// `lens[b]` keys of `k` and `v` only (those written so far in a cache preallocated to its
    /// capacity, `tk`), where `lens` is a u32 tensor `[batch]` that may live only on the device
    /// (a captured decode step's input). When causal, the `tq` queries are the *last* `tq` of
    /// those keys' positions, so query `i` sees keys `j ≤ lens[b] − tq + i` (flash-attention's
    /// `cache_seqlens`): a prompt appended to a cache that already holds tokens, or one new
    /// token, attends as a whole sequence would. A query that sees no key gives zeros.
    ///
    /// Inference only: `Unsupported` where an input requires gradients. Lengths are checked
    /// (`IndexOutOfRange` past `tk`) from their host copy where they were made on the host.
    /// Other errors as [`Tensor::attention`], and `ShapeMismatch` for `lens` not `[batch]`.
    pub fn attention_cached(
        &self,
        k: &Tensor,
        v: &Tensor,
        lens: &Tensor,
        options: AttentionOptions,
    ) -> Result<Tensor> {
        const OP: &str = "attention_cached";
        if let Some(r) = Tensor::via_f32(&[self, k, v], |t| {
            t[0].attention_cached(&t[1], &t[2], lens, options)
        }) {
            return r;
        }
        if Tensor::tracking(&[self, k, v]) {
            return Err(Error::Unsupported {
                op: OP,
                reason: "no gradients through a cache: detach q, k and v".into(),
            });
        }
        self.same_device(lens, OP)?;
        lens.expect(DType::U32, OP)?;
        let batch = self.shape().first().copied().unwrap_or(0);
        if lens.shape() != [batch] {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: vec![batch],
                rhs: lens.shape().to_vec(),
            });
        }
        let mut dims = self.attention_problem(k, v, options, OP)?;
        dims.limited = true;
        dims.inference = true;
        if lens.host_indices().is_some() {
            lens.checked_indices(OP, dims.tk + 1)?;
        }
        let out_shape = Shape::new(&[dims.batch, dims.tq, dims.heads, dims.dv])?;
        if out_shape.numel() == 0 || !self.storage.takes(Kernel::Attention(&dims)) {
            return Self::attention_composite(&[self, k, v], Some(lens), &dims);
        }
        let s = [&self.storage, &k.storage, &v.storage];
        let (o, _) = Storage::attention(s, Some(&lens.storage), &dims)?;
        Ok(self.with(o, out_shape))
    }

    /// [`Tensor::attention`] over one packed `[batch, t, 3, heads, d]` tensor holding q, k and
    /// v (a fused projection's output, reshaped): the result is `[batch, t, heads, d]` and the
    /// gradient is one tensor in the packed layout, so no part is ever copied out or back.
    pub fn attention_packed(&self, options: AttentionOptions) -> Result<Tensor> {
        const OP: &str = "attention_packed";
        if let Some(r) = Tensor::via_f32(&[self], |t| t[0].attention_packed(options)) {
            return r;
        }
        self.expect(DType::F32, OP)?;
        let s = self.shape();
        if s.len() != 5 || s[2] != 3 {
            return Err(Error::InvalidShape {
                op: OP,
                reason: format!(
                    "the packed input is [batch, time, 3, heads, dim]; got {}",
                    self.shape
                ),
            });
        }
        let dims = Self::attention_dims(s[0], s[1], s[1], s[3], s[4], s[4], options, true)?;
        Self::attention_op(&[self], dims)
    }

    #[allow(clippy::too_many_arguments)]
    fn attention_dims(
        batch: usize,
        tq: usize,
        tk: usize,
        heads: usize,
        d: usize,
        dv: usize,
        options: AttentionOptions,
        packed: bool,
    ) -> Result<AttnDims> {
        let op = if packed {
            "attention_packed"
        } else {
            "attention"
        };
        if tk == 0 && batch * heads * tq > 0 {
            return Err(Error::InvalidShape {
                op,
                reason: format!("{tq} queries have no keys to attend to"),
            });
        }
        let scale = options
            .scale
            .unwrap_or_else(|| 1.0 / (d.max(1) as f32).sqrt());
        if !scale.is_finite() {
            return Err(Error::InvalidArgument {
                op,
                reason: format!("the scale must be finite, got {scale}"),
            });
        }
        Ok(AttnDims {
            batch,
            heads,
            tq,
            tk,
            d,
            dv,
            causal: options.causal,
            scale,
            packed,
            limited: false,
            inference: false,
        })
    }

    /// The op over q, k and v (or the packed tensor), recorded for autograd.
    fn attention_op(inputs: &[&Tensor], mut dims: AttnDims) -> Result<Tensor> {
        let first = inputs[0];
        dims.inference = !Tensor::tracking(inputs);
        let out_shape = Shape::new(&[dims.batch, dims.tq, dims.heads, dims.dv])?;
        let storages = |ts: &[&Tensor]| -> [Storage; 3] {
            std::array::from_fn(|i| ts[i.min(ts.len() - 1)].storage.clone())
        };
        // An empty output, or a problem this backend's kernel does not take: products and a
        // softmax.
        if out_shape.numel() == 0 || !first.storage.takes(Kernel::Attention(&dims)) {
            return Self::attention_composite(inputs, None, &dims);
        }
        let s = storages(inputs);
        let (o, lse) = Storage::attention([&s[0], &s[1], &s[2]], None, &dims)?;
        let out = first.with(o, out_shape);
        if !Tensor::tracking(inputs) {
            return Ok(out);
        }
        let saved: Vec<Tensor> = inputs.iter().map(|t| t.detach()).collect();
        let lse = first.with(lse, Shape::new(&[dims.batch, dims.tq, dims.heads])?);
        let o = out.detach();
        Ok(out.record("attention", inputs, move |g, _| {
            let s = storages(&saved.iter().collect::<Vec<_>>());
            let grads = Storage::attention_backward(
                [&s[0], &s[1], &s[2]],
                [&o.storage, &g.storage, &lse.storage],
                &dims,
            )?;
            Ok(grads
                .into_iter()
                .zip(&saved)
                .map(|(s, x)| Some(x.with(s, x.shape.clone())))
                .collect())
        }))
    }

    /// The same attention from layout ops, products and a softmax, tracked op by op: for
    /// shapes the kernels do not take and for empty outputs; `lens` limits each batch
    /// element's keys as [`Tensor::attention_cached`] does.
    fn attention_composite(
        inputs: &[&Tensor],
        lens: Option<&Tensor>,
        a: &AttnDims,
    ) -> Result<Tensor> {
        let heads = |t: Tensor| t.permute(&[0, 2, 1, 3]);
        let (q, k, v) = match inputs {
            [qkv] => {
                let part = |i: usize| qkv.narrow(2, i, 1)?.reshape(&[a.batch, a.tq, a.heads, a.d]);
                (heads(part(0)?)?, heads(part(1)?)?, heads(part(2)?)?)
            }
            [q, k, v] => (
                heads((*q).clone())?,
                heads((*k).clone())?,
                heads((*v).clone())?,
            ),
            _ => unreachable!("attention takes q, k and v or one packed tensor"),
        };
        // q scaled first, as the kernels do: (q·s)·k, so that the two overflow alike.
        let mut scores = q.mul_scalar(a.scale)?.matmul_transposed(&k, false, true)?;
        if a.causal && lens.is_none() {
            // Keys after the query are selected away (not added -inf: an infinite score there
            // must not make the row NaN, as the kernels never read it).
            let keep: Vec<f32> = (0..a.tq * a.tk)
                .map(|n| f32::from(u8::from(n % a.tk.max(1) <= n / a.tk.max(1))))
                .collect();
            let keep = Tensor::from_vec(q.device(), keep, &[a.tq, a.tk])?;
            let none = Tensor::full(q.device(), &[], f32::NEG_INFINITY)?;
            scores = Tensor::where_cond(&keep, &scores, &none)?;
        }
        if let Some(lens) = lens {
            // Key j is seen by query i of batch b where j < lens[b] + (i + 1 − tq when causal).
            let dev = q.device();
            let keys: Vec<f32> = (0..a.tk).map(|j| j as f32).collect();
            let keys = Tensor::from_vec(dev, keys, &[1, 1, 1, a.tk])?;
            let shift: Vec<f32> = (0..a.tq)
                .map(|i| match a.causal {
                    true => i as f32 + 1.0 - a.tq as f32,
                    false => 0.0,
                })
                .collect();
            let shift = Tensor::from_vec(dev, shift, &[1, 1, a.tq, 1])?;
            let lens = lens.to_dtype(DType::F32)?.reshape(&[a.batch, 1, 1, 1])?;
            let keep = keys.lt(&lens.add(&shift)?)?;
            let none = Tensor::full(dev, &[], f32::NEG_INFINITY)?;
            let zero = Tensor::full(dev, &[], 0.0)?;
            // A row that sees no key is all -inf (NaN after the softmax): zeros there.
            let p = Tensor::where_cond(&keep, &scores, &none)?.softmax(-1)?;
            let p = Tensor::where_cond(&keep, &p, &zero)?;
            // Values past a sequence's length (a cache's unwritten or stale rows) are zeroed
            // first, as the kernels never read them: a NaN there must not reach the product.
            let written = keys.reshape(&[1, 1, a.tk, 1])?.lt(&lens)?;
            let v = Tensor::where_cond(&written, &v, &zero)?;
            return p.matmul(&v)?.permute(&[0, 2, 1, 3]);
        }
        scores.softmax(-1)?.matmul(&v)?.permute(&[0, 2, 1, 3])
    }
}
