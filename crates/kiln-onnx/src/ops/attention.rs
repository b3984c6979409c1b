//! ONNX `Attention` (opset 23): scaled dot-product attention over kiln's matmul and softmax,
//! with 3-D or 4-D inputs, grouped-query heads, a boolean or additive mask, causal and local
//! windows, a KV cache (past and present keys and values), padding lengths and a softcap.

use super::{Args, Ctx};
use crate::value::Value;
use kiln::Result;
use kiln::Tensor;

/// `[b, l, h·d]` as `[b, h, l, d]`.
fn heads(t: &Tensor, h: usize) -> Result<Tensor> {
    let s = t.shape().to_vec();
    t.reshape(&[s[0], s[1], h, s[2] / h])?
        .permute(&[0, 2, 1, 3])
}

pub(super) fn attention(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let (q, k, v) = (
        ctx.float_input(args, 0)?,
        ctx.float_input(args, 1)?,
        ctx.float_input(args, 2)?,
    );
    let three_d = q.rank() == 3;
    let (q, k, v) = if three_d {
        let (hq, hkv) = (ctx.int("q_num_heads", 0), ctx.int("kv_num_heads", 0));
        if hq <= 0 || hkv <= 0 {
            return Err(ctx.invalid("3-D inputs need q_num_heads and kv_num_heads"));
        }
        (
            heads(q, hq as usize)?,
            heads(k, hkv as usize)?,
            heads(v, hkv as usize)?,
        )
    } else {
        (q.clone(), k.clone(), v.clone())
    };
    let input = |i: usize| args.get(i).and_then(Option::as_ref);
    let past = input(4).map_or(0, |p| p.shape().get(2).copied().unwrap_or(0));
    let (k, v) = match (input(4), input(5)) {
        (Some(pk), Some(pv)) => (
            Tensor::cat(&[pk.tensor("onnx")?, &k], 2)?,
            Tensor::cat(&[pv.tensor("onnx")?, &v], 2)?,
        ),
        _ => (k, v),
    };
    let (b, hq, l, d) = (q.shape()[0], q.shape()[1], q.shape()[2], q.shape()[3]);
    let (hkv, s) = (k.shape()[1], k.shape()[2]);
    if hkv == 0 || hq % hkv != 0 {
        return Err(ctx.invalid(format!("{hq} query heads over {hkv} key heads")));
    }
    // Grouped-query attention: each key head serves hq / hkv query heads.
    let expand = |t: &Tensor| -> Result<Tensor> {
        if hq == hkv {
            return Ok(t.clone());
        }
        let ids: Vec<u32> = (0..hq).map(|h| (h / (hq / hkv)) as u32).collect();
        t.index_select(1, &Tensor::from_vec_u32(ctx.dev, ids, &[hq])?)
    };
    let (ke, ve) = (expand(&k)?, expand(&v)?);
    let scale = ctx.float("scale", 1.0 / (d as f32).sqrt());
    let mode = ctx.int("qk_matmul_output_mode", 0);
    let mut scores = q.matmul_transposed(&ke, false, true)?.mul_scalar(scale)?;
    // The softcap bounds the scores before the bias is added, so masked entries stay -inf.
    let cap = ctx.float("softcap", 0.0);
    if cap > 0.0 {
        scores = scores.div_scalar(cap)?.tanh()?.mul_scalar(cap)?;
    }
    let mut qk_out = Some(scores.clone());
    // The additive bias: the mask (padded to the keys with -inf), the causal and local
    // windows (bottom-right aligned: past keys first, or each batch's padding length), and
    // the padding lengths.
    let mut bias: Option<Tensor> = None;
    let mut add = |t: Tensor| -> Result<()> {
        bias = Some(match bias.take() {
            Some(a) => a.add(&t)?,
            None => t,
        });
        Ok(())
    };
    if let Some(m) = input(3) {
        let mut t = match m {
            Value::Bool(t) => {
                let zero = Tensor::zeros(ctx.dev, &[1])?;
                let neg = Tensor::full(ctx.dev, &[1], f32::NEG_INFINITY)?;
                Tensor::where_cond(t, &zero, &neg)?
            }
            other => other.float_on(ctx.dev)?,
        };
        let short = s.saturating_sub(*t.shape().last().unwrap_or(&s));
        if short > 0 {
            let mut fill = t.shape().to_vec();
            *fill.last_mut().expect("a mask has a last axis") = short;
            let neg = Tensor::full(ctx.dev, &fill, f32::NEG_INFINITY)?;
            t = Tensor::cat(&[&t, &neg], -1)?;
        }
        add(t)?;
    }
    let lens = input(6).map(|v| v.ints().map(|t| t.data)).transpose()?;
    let causal = ctx.int("is_causal", 0) != 0;
    let (left, right) = (
        ctx.int("left_window_size", -1),
        ctx.int("right_window_size", -1),
    );
    if causal || left >= 0 || right >= 0 {
        let offsets: Vec<i64> = match (&lens, past) {
            (Some(n), 0) => (0..b)
                .map(|i| n.get(i).copied().unwrap_or(s as i64) - l as i64)
                .collect(),
            _ => vec![past as i64; b],
        };
        let data: Vec<f32> = (0..b * l * s)
            .map(|n| {
                let (bi, i, j) = (n / (l * s), ((n / s) % l) as i64, (n % s) as i64);
                let c = i + offsets[bi];
                let blocked = (causal && j > c)
                    || (left >= 0 && j < c - left)
                    || (right >= 0 && j > c + right);
                if blocked { f32::NEG_INFINITY } else { 0.0 }
            })
            .collect();
        add(Tensor::from_vec(ctx.dev, data, &[b, 1, l, s])?)?;
    }
    if let Some(lens) = &lens {
        let data: Vec<f32> = (0..b * s)
            .map(|n| {
                let valid = lens.get(n / s).copied().unwrap_or(s as i64);
                if ((n % s) as i64) < valid {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
        add(Tensor::from_vec(ctx.dev, data, &[b, 1, 1, s])?)?;
    }
    let probs = match &bias {
        Some(bias) => {
            scores = scores.add(bias)?;
            if mode == 2 {
                qk_out = Some(scores.clone());
            }
            // A row the bias masks everywhere attends to nothing: zeros, not NaN.
            let none = bias
                .max(-1, true)?
                .eq(&Tensor::full(ctx.dev, &[1], f32::NEG_INFINITY)?)?;
            Tensor::where_cond(&none, &Tensor::zeros(ctx.dev, &[1])?, &scores.softmax(-1)?)?
        }
        None => scores.softmax(-1)?,
    };
    if bias.is_none() && mode == 2 {
        qk_out = Some(scores.clone());
    }
    if mode == 3 {
        qk_out = Some(probs.clone());
    }
    if !(0..=3).contains(&mode) {
        qk_out = None;
    }
    let y = probs.matmul(&ve)?;
    let y = if three_d {
        let dv = y.shape()[3];
        y.permute(&[0, 2, 1, 3])?.reshape(&[b, l, hq * dv])?
    } else {
        y
    };
    let mut out = vec![Value::Float(y)];
    for (i, extra) in [Some(k), Some(v), qk_out].into_iter().enumerate() {
        if ctx.node.output.len() > i + 1 {
            let t =
                extra.ok_or_else(|| ctx.unsupported(format!("qk_matmul_output_mode {mode}")))?;
            out.push(Value::Float(t));
        }
    }
    Ok(out)
}

/// `RotaryEmbedding` (opset 23): rotates pairs of each head's first `rotary_embedding_dim`
/// values (all of them by default) by the angles whose cosines and sines the caches hold,
/// looked up by `position_ids` when given; pairs are the two halves of the rotated part, or
/// neighbours with `interleaved`. Input `[b, h, s, d]`, or `[b, s, h·d]` with `num_heads`.
pub(super) fn rotary_embedding(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.float_input(args, 0)?;
    let (cos, sin) = (ctx.float_input(args, 1)?, ctx.float_input(args, 2)?);
    let shape = x.shape().to_vec();
    // As [b, s, h, d].
    let x4 = match shape[..] {
        [_, _, _, _] => x.permute(&[0, 2, 1, 3])?,
        [b, s, hidden] => {
            let h = ctx.int("num_heads", 0);
            if h <= 0 || hidden % h as usize != 0 {
                return Err(ctx.invalid(format!("num_heads {h} for a hidden size of {hidden}")));
            }
            x.reshape(&[b, s, h as usize, hidden / h as usize])?
        }
        _ => return Err(ctx.invalid(format!("an input of shape {shape:?}"))),
    };
    let [b, s, h, d] = x4.shape()[..] else {
        unreachable!("made 4-D above")
    };
    let rot = match ctx.int("rotary_embedding_dim", 0) {
        0 => d,
        r if r > 0 && r as usize <= d && r % 2 == 0 => r as usize,
        r => return Err(ctx.invalid(format!("rotary_embedding_dim {r} for heads of {d}"))),
    };
    let half = rot / 2;
    // The caches as [b, s, 1, half].
    let lookup = |cache: &Tensor| -> Result<Tensor> {
        let table = match ctx.int_input(args, 3)? {
            Some(ids) => {
                let rows = cache.shape()[0];
                if ids.data.len() != b * s || cache.rank() != 2 {
                    return Err(ctx.invalid(format!(
                        "position_ids {:?} with a cache of {:?}",
                        ids.shape,
                        cache.shape()
                    )));
                }
                let idx = ids
                    .data
                    .iter()
                    .map(|&p| {
                        if (0..rows as i64).contains(&p) {
                            Ok(p as u32)
                        } else {
                            Err(kiln::Error::IndexOutOfRange {
                                op: "RotaryEmbedding",
                                index: p.clamp(0, i64::from(u32::MAX)) as u32,
                                size: rows,
                            })
                        }
                    })
                    .collect::<Result<Vec<u32>>>()?;
                cache.index_select(0, &Tensor::from_vec_u32(ctx.dev, idx, &[b * s])?)?
            }
            None => cache.clone(),
        };
        if table.numel() != b * s * half {
            return Err(ctx.invalid(format!(
                "a cache of {:?} for {b}x{s} positions of {half} angles",
                cache.shape()
            )));
        }
        table.reshape(&[b, s, 1, half])
    };
    let (cos, sin) = (lookup(cos)?, lookup(sin)?);
    let rotated = x4.narrow(3, 0, rot)?;
    let interleaved = ctx.int("interleaved", 0) != 0;
    let (x1, x2) = if interleaved {
        let pairs = rotated.reshape(&[b, s, h, half, 2])?;
        let lane = |i| pairs.narrow(4, i, 1)?.reshape(&[b, s, h, half]);
        (lane(0)?, lane(1)?)
    } else {
        (rotated.narrow(3, 0, half)?, rotated.narrow(3, half, half)?)
    };
    let real = cos.mul(&x1)?.sub(&sin.mul(&x2)?)?;
    let imag = sin.mul(&x1)?.add(&cos.mul(&x2)?)?;
    let rotated = if interleaved {
        let as_pair = |t: &Tensor| t.reshape(&[b, s, h, half, 1]);
        Tensor::cat(&[&as_pair(&real)?, &as_pair(&imag)?], 4)?.reshape(&[b, s, h, rot])?
    } else {
        Tensor::cat(&[&real, &imag], 3)?
    };
    let y = if rot < d {
        Tensor::cat(&[&rotated, &x4.narrow(3, rot, d - rot)?], 3)?
    } else {
        rotated
    };
    let y = if shape.len() == 4 {
        y.permute(&[0, 2, 1, 3])?
    } else {
        y.reshape(&shape)?
    };
    Ok(vec![Value::Float(y)])
}
