//! The storage seam's attention: the CPU twin or the WGSL kernels, chosen by where the operands
//! are.

use super::{Storage, backends, cpu_f32, gpu_bound, host};
use crate::attention::AttnDims;
use crate::cpu;
use crate::dtype::DType;
use crate::error::Result;
use crate::gpu::kernels::attention;

impl Storage {
    /// Attention over the views `dims` describes of `qkv` (the same storage three times when
    /// packed): the output `[batch, tq, heads, dv]` and each query row's logsumexp
    /// `[batch, tq, heads]`. Every extent > 0 except the head dimensions. `Unsupported` where
    /// the device's kernel cannot take the problem (the caller composes it instead).
    pub(crate) fn attention(qkv: [&Storage; 3], dims: &AttnDims) -> Result<(Storage, Storage)> {
        const OP: &str = "attention";
        match qkv {
            [Storage::Cpu(q), Storage::Cpu(k), Storage::Cpu(v)] => {
                let (q, k, v) = (q.f32s(OP)?, k.f32s(OP)?, v.f32s(OP)?);
                let (o, lse) = cpu::attention([q, k, v], dims)?;
                Ok((cpu_f32(o), cpu_f32(lse)))
            }
            [Storage::Gpu(q), Storage::Gpu(k), Storage::Gpu(v)] => {
                let bound = [q, k, v].map(|s| s.bound(OP, DType::F32));
                let [bq, bk, bv] = bound;
                let (o, lse) = attention::forward(&q.ctx, [bq?, bk?, bv?], dims)?;
                Ok((q.filled(o, DType::F32), q.filled(lse, DType::F32)))
            }
            _ => Err(backends(OP)),
        }
    }

    /// The gradients of attention's inputs from its output `o`, the output's gradient `g` and
    /// the forward's `lse`: one storage in the packed layout, or three.
    pub(crate) fn attention_backward(
        qkv: [&Storage; 3],
        [o, g, lse]: [&Storage; 3],
        dims: &AttnDims,
    ) -> Result<Vec<Storage>> {
        const OP: &str = "attention backward";
        match qkv {
            [Storage::Gpu(q), Storage::Gpu(k), Storage::Gpu(v)] => {
                let [bq, bk, bv] = [q, k, v].map(|s| s.bound(OP, DType::F32));
                let stats = [gpu_bound(OP, o)?, gpu_bound(OP, g)?, gpu_bound(OP, lse)?];
                let grads = attention::backward(&q.ctx, [bq?, bk?, bv?], stats, dims)?;
                Ok(grads.into_iter().map(|b| q.filled(b, DType::F32)).collect())
            }
            _ => {
                fn f(s: &Storage) -> Result<&[f32]> {
                    Ok(host(OP, s)?.f32s(OP)?.as_slice())
                }
                let grads = cpu::attention_backward(
                    [f(qkv[0])?, f(qkv[1])?, f(qkv[2])?],
                    f(o)?,
                    f(g)?,
                    f(lse)?,
                    dims,
                )?;
                Ok(grads.into_iter().map(cpu_f32).collect())
            }
        }
    }
}
