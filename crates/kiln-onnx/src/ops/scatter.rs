//! `ScatterElements`, `ScatterND` and the old `Scatter`, on the host: the data is read back,
//! updated in index order (so duplicate indices combine as ONNX specifies) and uploaded again.

use super::{Args, Ctx, like, strides};
use crate::value::{IntTensor, Value};
use kiln::Result;

/// How an update combines with the value it lands on.
fn combine(ctx: &Ctx) -> Result<fn(f64, f64) -> f64> {
    Ok(match ctx.string("reduction", "none").as_str() {
        "none" => |_, u| u,
        "add" => |d, u| d + u,
        "mul" => |d, u| d * u,
        "max" => f64::max,
        "min" => f64::min,
        other => return Err(ctx.invalid(format!("reduction {other}"))),
    })
}

/// An index along an extent of `dim` (see `wrap_index`), errors naming the node's op.
fn index(ctx: &Ctx, i: i64, dim: usize) -> Result<usize> {
    let op = if ctx.node.op_type == "ScatterND" {
        "onnx ScatterND"
    } else {
        "onnx ScatterElements"
    };
    super::wrap_index(op, i, dim)
}

/// The data and updates as f64 (integers and floats alike), and a way back to a value like
/// the data.
fn operands(ctx: &Ctx, args: &Args) -> Result<(Vec<f64>, Vec<f64>, IntTensor)> {
    let data = ctx.input(args, 0)?;
    let idx = ctx
        .int_input(args, 1)?
        .ok_or_else(|| ctx.invalid("no indices"))?;
    let updates = ctx.input(args, 2)?;
    if let (Value::Int(a), Value::Int(b)) = (data, updates)
        && (a.data.iter().chain(&b.data)).any(|v| v.unsigned_abs() > 1 << 53)
    {
        return Err(ctx.unsupported("integers beyond 2^53"));
    }
    Ok((data.to_f64()?, updates.to_f64()?, idx))
}

/// A value shaped like input 0 holding `out`.
fn like_data(ctx: &Ctx, args: &Args, out: Vec<f64>) -> Result<Vec<Value>> {
    let data = ctx.input(args, 0)?;
    Ok(vec![super::like(ctx, data, data.shape().to_vec(), out)?])
}

/// `ScatterElements` (and `Scatter`): `out[.., indices[c], ..] ⊕= updates[c]` along `axis`.
pub(super) fn scatter_elements(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let f = combine(ctx)?;
    let (mut out, upd, idx) = operands(ctx, args)?;
    let shape = ctx.input(args, 0)?.shape().to_vec();
    let r = shape.len();
    let axis = ctx.axis(ctx.int("axis", 0), r)?;
    let ushape = ctx.input(args, 2)?.shape();
    if idx.shape.len() != r || ushape != idx.shape.as_slice() {
        return Err(ctx.invalid(format!(
            "indices {:?} and updates {ushape:?} for data {shape:?}",
            idx.shape
        )));
    }
    if idx.shape.iter().zip(&shape).any(|(i, d)| i > d) {
        return Err(ctx.invalid(format!("indices {:?} pass data {shape:?}", idx.shape)));
    }
    let (st, ist) = (strides(&shape), strides(&idx.shape));
    for (k, (&i, &u)) in idx.data.iter().zip(&upd).enumerate() {
        let mut at = 0;
        for d in 0..r {
            let c = (k / ist[d]) % idx.shape[d];
            at += if d == axis {
                index(ctx, i, shape[d])?
            } else {
                c
            } * st[d];
        }
        out[at] = f(out[at], u);
    }
    like_data(ctx, args, out)
}

/// `ScatterND`: `out[indices[i]] ⊕= updates[i]`, each index tuple naming an element or a
/// slice of the data.
pub(super) fn scatter_nd(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let f = combine(ctx)?;
    let (mut out, upd, idx) = operands(ctx, args)?;
    let shape = ctx.input(args, 0)?.shape().to_vec();
    let ushape = ctx.input(args, 2)?.shape().to_vec();
    let Some((&k, lead)) = idx.shape.split_last() else {
        return Err(ctx.invalid("indices must have at least one dimension"));
    };
    let want: Vec<usize> = lead
        .iter()
        .chain(shape.get(k..).unwrap_or(&[]))
        .copied()
        .collect();
    if k == 0 || k > shape.len() || ushape != want {
        return Err(ctx.invalid(format!(
            "indices {:?} and updates {ushape:?} for data {shape:?}",
            idx.shape
        )));
    }
    let st = strides(&shape);
    let slice: usize = shape[k..].iter().product();
    for (t, tuple) in idx.data.chunks_exact(k).enumerate() {
        let mut at = 0;
        for (d, &i) in tuple.iter().enumerate() {
            at += index(ctx, i, shape[d])? * st[d];
        }
        for j in 0..slice {
            out[at + j] = f(out[at + j], upd[t * slice + j]);
        }
    }
    like_data(ctx, args, out)
}

pub(super) fn one_hot(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let idx = ctx
        .int_input(args, 0)?
        .ok_or_else(|| ctx.invalid("no indices"))?;
    let depth = ctx
        .input(args, 1)?
        .to_f64()?
        .first()
        .copied()
        .ok_or_else(|| ctx.invalid("no depth"))? as i64;
    let values = ctx.input(args, 2)?;
    let vv = values.to_f64()?;
    let (off, on) = (
        vv.first().copied().unwrap_or(0.0),
        vv.get(1).copied().unwrap_or(1.0),
    );
    if depth < 1 {
        return Err(ctx.invalid(format!("depth {depth}")));
    }
    let r = idx.shape.len() + 1;
    let axis = ctx.axis(ctx.int("axis", -1), r)?;
    let mut shape = idx.shape.clone();
    shape.insert(axis, depth as usize);
    let (outer, inner) = (
        idx.shape[..axis].iter().product::<usize>(),
        idx.shape[axis..].iter().product::<usize>(),
    );
    let d = depth as usize;
    let mut out = vec![off; outer * d * inner];
    for o in 0..outer {
        for i in 0..inner {
            let j = idx.data[o * inner + i];
            let j = if j < 0 { j + depth } else { j };
            if (0..depth).contains(&j) {
                out[(o * d + j as usize) * inner + i] = on;
            }
        }
    }
    Ok(vec![like(ctx, values, shape, out)?])
}
