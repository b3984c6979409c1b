//! Reductions along axes: the `Reduce*` ops, `Softmax`/`LogSoftmax`, `ArgMax`/`ArgMin`,
//! `Hardmax` (on the host: a readback) and `ReduceProd` (on the host).

use super::{Args, Ctx, around, like, strides};
use crate::value::{IntTensor, Value};
use kiln::Result;
use kiln::Tensor;

pub(super) fn softmax(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.float_input(args, 0)?;
    let log = ctx.node.op_type == "LogSoftmax";
    let r = x.rank();
    let f = |t: &Tensor, d: isize| if log { t.log_softmax(d) } else { t.softmax(d) };
    if ctx.opset >= 13 {
        let axis = ctx.axis(ctx.int("axis", -1), r)?;
        return Ok(vec![Value::Float(f(x, axis as isize)?)]);
    }
    // Before opset 13: the input is coerced to 2-D at `axis` (default 1).
    let axis = ctx.axis(ctx.int("axis", 1), r)?;
    let (head, tail) = x.shape().split_at(axis);
    let flat = x.reshape(&[head.iter().product(), tail.iter().product()])?;
    Ok(vec![Value::Float(f(&flat, 1)?.reshape(x.shape())?)])
}

/// The axes a reduction reduces (sorted, deduplicated), or `None` for "none: the identity".
fn reduce_axes(ctx: &Ctx, args: &Args, rank: usize) -> Result<Option<Vec<usize>>> {
    let given = match ctx.int_input(args, 1)? {
        Some(t) => Some(t.data),
        None => ctx.ints("axes"),
    };
    let mut axes: Vec<usize> = match given {
        Some(a) if !a.is_empty() => a
            .iter()
            .map(|&x| ctx.axis(x, rank))
            .collect::<Result<_>>()?,
        _ if ctx.int("noop_with_empty_axes", 0) != 0 => return Ok(None),
        _ => (0..rank).collect(),
    };
    axes.sort_unstable();
    axes.dedup();
    Ok(Some(axes))
}

pub(super) fn reduce(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let input = ctx.input(args, 0)?;
    let x = input.tensor("onnx")?;
    let op = ctx.node.op_type.as_str();
    let keep = ctx.int("keepdims", 1) != 0;
    let Some(axes) = reduce_axes(ctx, args, x.rank())? else {
        return Ok(vec![input.clone()]);
    };
    if axes.iter().any(|&a| x.shape()[a] == 0) {
        // An empty reduction: ONNX's identity element of each (opset 18).
        let fill = match op {
            "ReduceMax" | "ReduceLogSumExp" | "ReduceLogSum" => f32::NEG_INFINITY,
            "ReduceMin" => f32::INFINITY,
            "ReduceMean" => f32::NAN,
            _ => 0.0,
        };
        let dims: Vec<usize> = (0..x.rank())
            .filter(|d| keep || !axes.contains(d))
            .map(|d| if axes.contains(&d) { 1 } else { x.shape()[d] })
            .collect();
        let t = Tensor::full(ctx.dev, &dims, fill)?;
        return Ok(vec![match input {
            Value::Bool(_) => Value::Bool(t.clamp(0.0, 1.0)?),
            _ => Value::Float(t),
        }]);
    }
    // Consecutive axes are one axis of a reshaped view (every reduction here is the same over
    // them as over their product): one pass instead of one per axis, each writing its result.
    let kept: Vec<usize> = (0..x.rank())
        .map(|d| if axes.contains(&d) { 1 } else { x.shape()[d] })
        .collect();
    let (lo, hi) = (axes[0], axes[axes.len() - 1]);
    let run = axes.len() > 1 && hi - lo + 1 == axes.len();
    let each = |t: &Tensor, f: &dyn Fn(&Tensor, isize) -> Result<Tensor>| -> Result<Tensor> {
        if run {
            let s = t.shape();
            let part = |r: &[usize]| r.iter().product::<usize>();
            let merged = t.reshape(&[part(&s[..lo]), part(&s[lo..=hi]), part(&s[hi + 1..])])?;
            return f(&merged, 1)?.reshape(&kept);
        }
        axes.iter()
            .try_fold(t.clone(), |acc, &a| f(&acc, a as isize))
    };
    let sum = |t: &Tensor| each(t, &|t, a| t.sum(a, true));
    let y = match op {
        "ReduceSum" => sum(x)?,
        "ReduceMean" => each(x, &|t, a| t.mean(a, true))?,
        "ReduceMax" => each(x, &|t, a| t.max(a, true))?,
        "ReduceMin" => each(x, &|t, a| t.min(a, true))?,
        "ReduceSumSquare" => sum(&x.square()?)?,
        "ReduceL1" => sum(&x.abs()?)?,
        "ReduceL2" => sum(&x.square()?)?.sqrt()?,
        "ReduceLogSum" => sum(x)?.log()?,
        _ => {
            // log Σ exp, stably: m + log Σ exp(x - m).
            let m = each(x, &|t, a| t.max(a, true))?;
            let safe = Tensor::where_cond(
                &m.abs()?.eq(&Tensor::full(ctx.dev, &[1], f32::INFINITY)?)?,
                &Tensor::zeros(ctx.dev, &[1])?,
                &m,
            )?;
            sum(&x.sub(&safe)?.exp()?)?.log()?.add(&safe)?
        }
    };
    let y = if keep {
        y
    } else {
        let dims: Vec<usize> = (0..x.rank())
            .filter(|d| !axes.contains(d))
            .map(|d| y.shape()[d])
            .collect();
        y.reshape(&dims)?
    };
    Ok(vec![match input {
        Value::Bool(_) => Value::Bool(y),
        _ => Value::Float(y),
    }])
}

pub(super) fn argmax(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.float_input(args, 0)?;
    let x = if ctx.node.op_type == "ArgMin" {
        x.neg()?
    } else {
        x.clone()
    };
    let axis = ctx.axis(ctx.int("axis", 0), x.rank())?;
    let keep = ctx.int("keepdims", 1) != 0;
    let len = x.shape()[axis];
    let last = ctx.int("select_last_index", 0) != 0;
    // The last maximum is the first one of the axis reversed.
    let x = if last && len > 1 {
        let rev: Vec<u32> = (0..len as u32).rev().collect();
        x.index_select(axis as isize, &Tensor::from_vec_u32(ctx.dev, rev, &[len])?)?
    } else {
        x
    };
    let i = x.argmax(axis as isize, keep)?;
    let data = i
        .to_vec_u32()?
        .into_iter()
        .map(|v| {
            if last {
                (len - 1) as i64 - i64::from(v)
            } else {
                i64::from(v)
            }
        })
        .collect();
    Ok(vec![Value::Int(IntTensor::new(i.shape().to_vec(), data))])
}

pub(super) fn hardmax(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.input(args, 0)?;
    let axis = ctx.axis(ctx.int("axis", -1), x.shape().len())?;
    let (outer, len, inner) = around(x.shape(), axis);
    let v = x.to_f64()?;
    let mut out = vec![0.0; v.len()];
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| (o * len + j) * inner + i;
            if let Some(best) = (0..len).reduce(|b, j| if v[at(j)] > v[at(b)] { j } else { b }) {
                out[at(best)] = 1.0;
            }
        }
    }
    Ok(vec![like(ctx, x, x.shape().to_vec(), out)?])
}

pub(super) fn reduce_prod(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.input(args, 0)?;
    let r = x.shape().len();
    let given = match ctx.int_input(args, 1)? {
        Some(t) => Some(t.data),
        None => ctx.ints("axes"),
    };
    let axes: Vec<usize> = match given {
        Some(a) if !a.is_empty() => a.iter().map(|&v| ctx.axis(v, r)).collect::<Result<_>>()?,
        _ if ctx.int("noop_with_empty_axes", 0) != 0 => return Ok(vec![x.clone()]),
        _ => (0..r).collect(),
    };
    let keep = ctx.int("keepdims", 1) != 0;
    let v = x.to_f64()?;
    let shape = x.shape();
    let out_full: Vec<usize> = (0..r)
        .map(|d| if axes.contains(&d) { 1 } else { shape[d] })
        .collect();
    let (st, ost) = (strides(shape), strides(&out_full));
    let mut out = vec![1.0; out_full.iter().product()];
    for (n, &val) in v.iter().enumerate() {
        let o: usize = (0..r)
            .map(|d| {
                if axes.contains(&d) {
                    0
                } else {
                    (n / st[d]) % shape[d] * ost[d]
                }
            })
            .sum();
        out[o] *= val;
    }
    let dims = if keep {
        out_full
    } else {
        (0..r)
            .filter(|d| !axes.contains(d))
            .map(|d| shape[d])
            .collect()
    };
    Ok(vec![like(ctx, x, dims, out)?])
}
