//! Walks along an axis: `CumSum` and `TopK` (kiln's `cumsum` and `topk` for floats; integer
//! tensors and TopK's int64 indices on the host).

use super::{Args, Ctx, around, like};
use crate::value::{IntTensor, Value};
use kiln::Result;

pub(super) fn cumsum(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.input(args, 0)?;
    let (axis, exclusive, reverse) = scan_setup(ctx, args, x)?;
    if let Value::Float(t) = x {
        return Ok(vec![Value::Float(t.cumsum(
            axis as isize,
            exclusive,
            reverse,
        )?)]);
    }
    host_scan(ctx, x, axis, (exclusive, reverse), 0.0, |a, v| a + v)
}

/// `CumProd`: the running product, on the host (a readback for a float input).
pub(super) fn cumprod(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.input(args, 0)?;
    let (axis, exclusive, reverse) = scan_setup(ctx, args, x)?;
    host_scan(ctx, x, axis, (exclusive, reverse), 1.0, |a, v| a * v)
}

/// The axis input and the `exclusive` and `reverse` attributes of CumSum and CumProd.
fn scan_setup(ctx: &Ctx, args: &Args, x: &Value) -> Result<(usize, bool, bool)> {
    let a = ctx
        .int_input(args, 1)?
        .and_then(|t| t.data.first().copied())
        .ok_or_else(|| ctx.invalid("no axis"))?;
    let axis = ctx.axis(a, x.shape().len())?;
    Ok((
        axis,
        ctx.int("exclusive", 0) != 0,
        ctx.int("reverse", 0) != 0,
    ))
}

/// A running `step` along `axis` from `start`, on the host, in f64.
fn host_scan(
    ctx: &Ctx,
    x: &Value,
    axis: usize,
    (exclusive, reverse): (bool, bool),
    start: f64,
    step: fn(f64, f64) -> f64,
) -> Result<Vec<Value>> {
    let v = x.to_f64()?;
    let (outer, len, inner) = around(x.shape(), axis);
    let mut out = vec![0.0; v.len()];
    for o in 0..outer {
        for i in 0..inner {
            let mut acc = start;
            for k in 0..len {
                let j = if reverse { len - 1 - k } else { k };
                let at = (o * len + j) * inner + i;
                if exclusive {
                    out[at] = acc;
                    acc = step(acc, v[at]);
                } else {
                    acc = step(acc, v[at]);
                    out[at] = acc;
                }
            }
        }
    }
    Ok(vec![like(ctx, x, x.shape().to_vec(), out)?])
}

pub(super) fn topk(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.input(args, 0)?;
    let k = ctx
        .int_input(args, 1)?
        .and_then(|t| t.data.first().copied())
        .ok_or_else(|| ctx.invalid("no k"))?;
    let axis = ctx.axis(ctx.int("axis", -1), x.shape().len())?;
    let largest = ctx.int("largest", 1) != 0;
    let (outer, len, inner) = around(x.shape(), axis);
    if k < 0 || k as usize > len {
        return Err(ctx.invalid(format!("k = {k} for an axis of {len}")));
    }
    let k = k as usize;
    if let Value::Float(t) = x {
        // Values on the device; the indices are ONNX int64, which kiln keeps on the host.
        let (values, indices) = t.topk(k, axis as isize, largest)?;
        let idx = indices.to_vec_u32()?.into_iter().map(i64::from).collect();
        let shape = values.shape().to_vec();
        return Ok(vec![
            Value::Float(values),
            Value::Int(IntTensor::new(shape, idx)),
        ]);
    }
    let v = x.to_f64()?;
    let mut shape = x.shape().to_vec();
    shape[axis] = k;
    let (mut vals, mut idx) = (vec![0.0; outer * k * inner], vec![0i64; outer * k * inner]);
    for o in 0..outer {
        for i in 0..inner {
            let mut order: Vec<usize> = (0..len).collect();
            let at = |j: usize| v[(o * len + j) * inner + i];
            // Ties keep the lower index first (a stable sort); NaN counts as the largest.
            order.sort_by(|&p, &q| {
                let (a, b) = (at(p), at(q));
                let c = a
                    .partial_cmp(&b)
                    .unwrap_or_else(|| a.is_nan().cmp(&b.is_nan()));
                if largest { c.reverse() } else { c }
            });
            for (r, &j) in order.iter().take(k).enumerate() {
                vals[(o * k + r) * inner + i] = at(j);
                idx[(o * k + r) * inner + i] = j as i64;
            }
        }
    }
    Ok(vec![
        like(ctx, x, shape.clone(), vals)?,
        Value::Int(IntTensor::new(shape, idx)),
    ])
}
