//! ONNX ops computed on the host: ones whose work is small next to a readback, or that kiln
//! has no device op for yet (`Hardmax`, `OneHot`, `ReduceProd`); float results are uploaded to
//! the model's device. `CumSum`, `TopK` (its values; ONNX's int64 indices live on the host) and
//! `Pad` (constant: one `pad`; edge, reflect, wrap: a selection per axis) run on the device
//! for float tensors, on the host for integer ones.

use super::{Args, Ctx, strides};
use crate::value::{IntTensor, Value};
use kiln::Result;
use kiln::Tensor;

/// A value of the input's kind (float or integer) from host values.
pub(super) fn like(ctx: &Ctx, x: &Value, shape: Vec<usize>, data: Vec<f64>) -> Result<Value> {
    Ok(match x {
        Value::Int(i) => Value::Int(IntTensor {
            shape,
            data: data.into_iter().map(|v| v as i64).collect(),
            elem: i.elem,
        }),
        Value::Bool(_) => Value::Bool(Tensor::from_vec(
            ctx.dev,
            data.into_iter().map(|v| v as f32).collect(),
            &shape,
        )?),
        Value::Float(_) => Value::Float(Tensor::from_vec(
            ctx.dev,
            data.into_iter().map(|v| v as f32).collect(),
            &shape,
        )?),
    })
}

/// `(outer, len, inner)` around `axis`.
fn around(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    )
}

pub(super) fn cumsum(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.input(args, 0)?;
    let a = ctx
        .int_input(args, 1)?
        .and_then(|t| t.data.first().copied())
        .ok_or_else(|| ctx.invalid("no axis"))?;
    let axis = ctx.axis(a, x.shape().len())?;
    let (exclusive, reverse) = (ctx.int("exclusive", 0) != 0, ctx.int("reverse", 0) != 0);
    if let Value::Float(t) = x {
        return Ok(vec![Value::Float(t.cumsum(
            axis as isize,
            exclusive,
            reverse,
        )?)]);
    }
    let v = x.to_f64()?;
    let (outer, len, inner) = around(x.shape(), axis);
    let mut out = vec![0.0; v.len()];
    for o in 0..outer {
        for i in 0..inner {
            let mut acc = 0.0;
            for step in 0..len {
                let j = if reverse { len - 1 - step } else { step };
                let at = (o * len + j) * inner + i;
                if exclusive {
                    out[at] = acc;
                    acc += v[at];
                } else {
                    acc += v[at];
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

pub(super) fn pad(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.input(args, 0)?;
    let r = x.shape().len();
    let pads = ctx
        .int_input(args, 1)?
        .map(|t| t.data)
        .or_else(|| ctx.ints("pads"))
        .ok_or_else(|| ctx.invalid("no pads"))?;
    let fill = match args.get(2).and_then(Option::as_ref) {
        Some(v) => v.to_f64()?.first().copied().unwrap_or(0.0),
        None => f64::from(ctx.float("value", 0.0)),
    };
    let axes: Vec<usize> = match ctx.int_input(args, 3)? {
        Some(t) => t
            .data
            .iter()
            .map(|&a| ctx.axis(a, r))
            .collect::<Result<_>>()?,
        None => (0..r).collect(),
    };
    if pads.len() != 2 * axes.len() {
        return Err(ctx.invalid(format!("{} pads for {} axes", pads.len(), axes.len())));
    }
    let mode = ctx.string("mode", "constant");
    let shape = x.shape().to_vec();
    let mut out_shape = shape.clone();
    let mut begin = vec![0i64; r];
    for (k, &a) in axes.iter().enumerate() {
        begin[a] = pads[k];
        let n = shape[a] as i64 + pads[k] + pads[k + axes.len()];
        if n < 0 {
            return Err(ctx.invalid(format!("pads {pads:?} for {shape:?}")));
        }
        out_shape[a] = n as usize;
    }
    // Each output position's source index along each axis (None: the constant).
    let source = |a: usize, p: usize| -> Option<usize> {
        let dim = shape[a] as i64;
        let i = p as i64 - begin[a];
        if (0..dim).contains(&i) {
            return Some(i as usize);
        }
        if dim == 0 {
            return None;
        }
        match mode.as_str() {
            "edge" => Some(i.clamp(0, dim - 1) as usize),
            "wrap" => Some(i.rem_euclid(dim) as usize),
            "reflect" if dim > 1 => {
                let period = 2 * (dim - 1);
                let m = i.rem_euclid(period);
                Some(if m < dim { m } else { period - m } as usize)
            }
            "reflect" => Some(0),
            _ => None,
        }
    };
    if !matches!(mode.as_str(), "constant" | "edge" | "wrap" | "reflect") {
        return Err(ctx.unsupported(format!("mode {mode}")));
    }
    let n_out = out_shape.iter().product::<usize>();
    if let Value::Float(t) | Value::Bool(t) = x
        && t.numel() > 0
        && n_out > 0
    {
        let y = if mode == "constant" {
            // One padding (or cropping) pass: kiln's `pad`.
            let pairs: Vec<(isize, isize)> = (0..r)
                .map(|a| {
                    let after = out_shape[a] as i64 - shape[a] as i64 - begin[a];
                    (begin[a] as isize, after as isize)
                })
                .collect();
            t.pad(&pairs, fill as f32)?
        } else {
            // Edge, reflect, wrap: per padded axis, one selection of the source rows (every
            // output position has one: the input is not empty).
            let mut y = t.clone();
            for a in 0..r {
                let idx: Vec<u32> = (0..out_shape[a])
                    .map(|p| source(a, p).map(|i| i as u32))
                    .collect::<Option<_>>()
                    .ok_or_else(|| ctx.invalid("a padded position without a source"))?;
                if idx.len() != shape[a] || idx.iter().enumerate().any(|(i, &k)| k as usize != i) {
                    let n = idx.len();
                    y = y.index_select(a as isize, &Tensor::from_vec_u32(ctx.dev, idx, &[n])?)?;
                }
            }
            y
        };
        return Ok(vec![match x {
            Value::Bool(_) => Value::Bool(y),
            _ => Value::Float(y),
        }]);
    }
    let v = x.to_f64()?;
    let st = strides(&shape);
    let ost = strides(&out_shape);
    let out: Vec<f64> = (0..n_out)
        .map(|n| {
            let mut at = 0;
            for d in 0..r {
                match source(d, (n / ost[d]) % out_shape[d]) {
                    Some(i) => at += i * st[d],
                    None => return fill,
                }
            }
            v[at]
        })
        .collect();
    Ok(vec![like(ctx, x, out_shape, out)?])
}

/// `NegativeLogLikelihoodLoss` of `input` (`[n, c, d...]`, log-probabilities) against integer
/// `target` (`[n, d...]`), with optional class weights, `ignore_index` and a reduction.
fn nll(ctx: &Ctx, input: &Value, target: &IntTensor, weight: Option<&Value>) -> Result<Value> {
    let shape = input.shape().to_vec();
    if shape.len() < 2 {
        return Err(ctx.invalid(format!("input {shape:?} (at least [n, c])")));
    }
    let (n, c) = (shape[0], shape[1]);
    let inner: usize = shape[2..].iter().product();
    if target.data.len() != n * inner {
        return Err(ctx.invalid(format!("target {:?} for input {shape:?}", target.shape)));
    }
    let x = input.to_f64()?;
    let w = weight.map(Value::to_f64).transpose()?;
    let ignore = ctx
        .attr_present("ignore_index")
        .then(|| ctx.int("ignore_index", 0));
    let mut losses = Vec::with_capacity(n * inner);
    let (mut total, mut weights) = (0.0, 0.0);
    for b in 0..n {
        for i in 0..inner {
            let t = target.data[b * inner + i];
            if Some(t) == ignore {
                losses.push(0.0);
                continue;
            }
            if !(0..c as i64).contains(&t) {
                return Err(kiln::Error::IndexOutOfRange {
                    op: "onnx NegativeLogLikelihoodLoss",
                    index: t.clamp(0, u32::MAX as i64) as u32,
                    size: c,
                });
            }
            let wt = w.as_ref().map_or(1.0, |w| w[t as usize]);
            let l = -x[(b * c + t as usize) * inner + i] * wt;
            losses.push(l);
            total += l;
            weights += wt;
        }
    }
    let (out_shape, out): (Vec<usize>, Vec<f64>) = match ctx.string("reduction", "mean").as_str() {
        "none" => (target.shape.clone(), losses),
        "sum" => (vec![], vec![total]),
        "mean" => (vec![], vec![total / weights]),
        other => return Err(ctx.unsupported(format!("reduction {other}"))),
    };
    like(ctx, input, out_shape, out)
}

pub(super) fn nll_loss(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let input = ctx.input(args, 0)?;
    let target = ctx
        .int_input(args, 1)?
        .ok_or_else(|| ctx.invalid("no target"))?;
    let weight = args.get(2).and_then(Option::as_ref);
    Ok(vec![nll(ctx, input, &target, weight)?])
}

pub(super) fn softmax_cross_entropy(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let scores = ctx.float_input(args, 0)?;
    let labels = ctx
        .int_input(args, 1)?
        .ok_or_else(|| ctx.invalid("no labels"))?;
    let log_prob = Value::Float(scores.log_softmax(1)?);
    let weight = args.get(2).and_then(Option::as_ref);
    let loss = nll(ctx, &log_prob, &labels, weight)?;
    let mut out = vec![loss];
    if ctx.node.output.len() > 1 {
        out.push(log_prob);
    }
    Ok(out)
}
