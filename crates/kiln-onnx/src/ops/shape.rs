//! Shape and layout ONNX ops. Float (and bool) tensors go through kiln's layout ops on the
//! device; integer tensors (shapes, indices) are rearranged on the host.

use super::elementwise::broadcast_shape;
use super::{Args, Ctx, strides};
use crate::value::{IntTensor, Value, from_proto};
use kiln::Result;
use kiln::Tensor;

/// A value with the same kind as `like` (float, bool) from a device tensor.
fn same_kind(like: &Value, t: Tensor) -> Value {
    match like {
        Value::Bool(_) => Value::Bool(t),
        _ => Value::Float(t),
    }
}

/// Host integers gathered by source flat index for every output position.
fn remap(i: &IntTensor, shape: Vec<usize>, src: impl Fn(&[usize]) -> usize) -> IntTensor {
    let n: usize = shape.iter().product();
    let mut coord = vec![0; shape.len()];
    let mut data = Vec::with_capacity(n);
    for _ in 0..n {
        data.push(i.data[src(&coord)]);
        for d in (0..shape.len()).rev() {
            coord[d] += 1;
            if coord[d] < shape[d] {
                break;
            }
            coord[d] = 0;
        }
    }
    IntTensor {
        shape,
        data,
        elem: i.elem,
    }
}

pub(super) fn shape(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let dims = ctx.input(args, 0)?.shape();
    let r = dims.len() as i64;
    let clampi = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let (s, e) = (clampi(ctx.int("start", 0)), clampi(ctx.int("end", r)));
    let part: Vec<i64> = dims[s..e.max(s)].iter().map(|&d| d as i64).collect();
    Ok(vec![Value::Int(IntTensor::new(vec![part.len()], part))])
}

pub(super) fn size(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let n: usize = ctx.input(args, 0)?.shape().iter().product();
    Ok(vec![Value::Int(IntTensor::new(vec![], vec![n as i64]))])
}

/// `x` reshaped to `dims` (already resolved).
fn reshaped(x: &Value, dims: &[usize]) -> Result<Value> {
    Ok(match x {
        Value::Int(i) => Value::Int(IntTensor {
            shape: dims.to_vec(),
            ..i.clone()
        }),
        v => same_kind(v, v.tensor("onnx")?.reshape(dims)?),
    })
}

pub(super) fn reshape(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.input(args, 0)?;
    let want = ctx
        .int_input(args, 1)?
        .ok_or_else(|| ctx.invalid("the shape input is missing"))?;
    let allowzero = ctx.int("allowzero", 0) != 0;
    let n: usize = x.shape().iter().product();
    let mut dims = Vec::with_capacity(want.data.len());
    let mut infer = None;
    for (k, &d) in want.data.iter().enumerate() {
        match d {
            -1 if infer.is_none() => {
                infer = Some(k);
                dims.push(1);
            }
            0 if !allowzero => {
                dims.push(*x.shape().get(k).ok_or_else(|| {
                    ctx.invalid(format!("dimension {k} copies one the input lacks"))
                })?)
            }
            d if d >= 0 => dims.push(d as usize),
            d => return Err(ctx.invalid(format!("dimension {d} in {:?}", want.data))),
        }
    }
    if let Some(k) = infer {
        let rest: usize = dims.iter().product();
        if rest == 0 || !n.is_multiple_of(rest) {
            return Err(ctx.invalid(format!("cannot infer -1 in {:?} for {n} values", want.data)));
        }
        dims[k] = n / rest;
    }
    Ok(vec![reshaped(x, &dims)?])
}

pub(super) fn flatten(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.input(args, 0)?;
    let r = x.shape().len();
    let a = ctx.int("axis", 1);
    let axis = if a < 0 { a + r as i64 } else { a };
    if axis < 0 || axis > r as i64 {
        return Err(ctx.invalid(format!("axis {a} for rank {r}")));
    }
    let (head, tail) = x.shape().split_at(axis as usize);
    let dims = [head.iter().product(), tail.iter().product()];
    Ok(vec![reshaped(x, &dims)?])
}

/// The axes of a Squeeze/Unsqueeze: the attribute before opset 13, the input from 13.
fn axes_of(ctx: &Ctx, args: &Args) -> Result<Option<Vec<i64>>> {
    if ctx.opset < 13 {
        return Ok(ctx.ints("axes"));
    }
    Ok(ctx.int_input(args, 1)?.map(|t| t.data))
}

pub(super) fn squeeze(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.input(args, 0)?;
    let shape = x.shape();
    let drop: Vec<usize> = match axes_of(ctx, args)? {
        Some(axes) => axes
            .iter()
            .map(|&a| ctx.axis(a, shape.len()))
            .collect::<Result<_>>()?,
        None => (0..shape.len()).filter(|&d| shape[d] == 1).collect(),
    };
    if let Some(&d) = drop.iter().find(|&&d| shape[d] != 1) {
        return Err(ctx.invalid(format!("axis {d} of {shape:?} is not 1")));
    }
    let dims: Vec<usize> = (0..shape.len())
        .filter(|d| !drop.contains(d))
        .map(|d| shape[d])
        .collect();
    Ok(vec![reshaped(x, &dims)?])
}

pub(super) fn unsqueeze(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.input(args, 0)?;
    let axes = axes_of(ctx, args)?.ok_or_else(|| ctx.invalid("no axes"))?;
    let r = x.shape().len() + axes.len();
    let mut at: Vec<usize> = axes
        .iter()
        .map(|&a| ctx.axis(a, r))
        .collect::<Result<_>>()?;
    at.sort_unstable();
    if at.windows(2).any(|w| w[0] == w[1]) {
        return Err(ctx.invalid(format!("repeated axes {axes:?}")));
    }
    let mut rest = x.shape().iter();
    let dims: Vec<usize> = (0..r)
        .map(|d| {
            if at.contains(&d) {
                1
            } else {
                *rest.next().unwrap_or(&1)
            }
        })
        .collect();
    Ok(vec![reshaped(x, &dims)?])
}

pub(super) fn transpose(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.input(args, 0)?;
    let r = x.shape().len();
    let perm: Vec<usize> = match ctx.ints("perm") {
        Some(p) => p.iter().map(|&a| ctx.axis(a, r)).collect::<Result<_>>()?,
        None => (0..r).rev().collect(),
    };
    Ok(vec![match x {
        Value::Int(i) => {
            let shape: Vec<usize> = perm.iter().map(|&p| i.shape[p]).collect();
            let st = strides(&i.shape);
            remap(i, shape, |c| {
                c.iter().zip(&perm).map(|(&c, &p)| c * st[p]).sum()
            })
        }
        .into_value(),
        v => same_kind(v, v.tensor("onnx")?.permute(&perm)?),
    }])
}

trait IntoValue {
    fn into_value(self) -> Value;
}

impl IntoValue for IntTensor {
    fn into_value(self) -> Value {
        Value::Int(self)
    }
}

/// Host concatenation of integer tensors along `axis`.
fn concat_ints(parts: &[IntTensor], axis: usize) -> IntTensor {
    let mut shape = parts[0].shape.clone();
    shape[axis] = parts.iter().map(|p| p.shape[axis]).sum();
    let outer: usize = shape[..axis].iter().product();
    let mut data = Vec::with_capacity(shape.iter().product());
    for o in 0..outer {
        for p in parts {
            let block: usize = p.shape[axis..].iter().product();
            data.extend_from_slice(&p.data[o * block..(o + 1) * block]);
        }
    }
    IntTensor {
        shape,
        data,
        elem: parts[0].elem,
    }
}

pub(super) fn concat(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let parts: Vec<&Value> = args.iter().flatten().collect();
    let first = parts.first().ok_or_else(|| ctx.invalid("no inputs"))?;
    let axis = ctx.axis(ctx.int("axis", 0), first.shape().len())?;
    if parts.iter().all(|v| matches!(v, Value::Int(_))) {
        let ints: Vec<IntTensor> = parts.iter().map(|v| v.ints()).collect::<Result<_>>()?;
        for p in &ints {
            let same = p.shape.len() == ints[0].shape.len()
                && (0..p.shape.len()).all(|d| d == axis || p.shape[d] == ints[0].shape[d]);
            if !same {
                return Err(ctx.invalid(format!("shapes {:?} and {:?}", ints[0].shape, p.shape)));
            }
        }
        return Ok(vec![Value::Int(concat_ints(&ints, axis))]);
    }
    let ts: Vec<Tensor> = parts
        .iter()
        .map(|v| v.float_on(ctx.dev))
        .collect::<Result<_>>()?;
    let refs: Vec<&Tensor> = ts.iter().collect();
    Ok(vec![same_kind(first, Tensor::cat(&refs, axis as isize)?)])
}

/// Elements `start, start+step, ...` of an axis (a Python slice already clamped).
fn picks(start: i64, end: i64, step: i64) -> Vec<usize> {
    let mut v = Vec::new();
    let mut i = start;
    while (step > 0 && i < end) || (step < 0 && i > end) {
        v.push(i as usize);
        i += step;
    }
    v
}

/// `x` restricted to `idx` along `axis` (a contiguous run is a narrow; anything else a gather).
fn take(x: &Value, axis: usize, idx: &[usize]) -> Result<Value> {
    if let Value::Int(i) = x {
        let mut shape = i.shape.clone();
        shape[axis] = idx.len();
        let st = strides(&i.shape);
        return Ok(Value::Int(remap(i, shape, |c| {
            c.iter()
                .enumerate()
                .map(|(d, &v)| if d == axis { idx[v] } else { v } * st[d])
                .sum()
        })));
    }
    let t = x.tensor("onnx")?;
    let run = idx.windows(2).all(|w| w[1] == w[0] + 1);
    let r = if run && !idx.is_empty() {
        t.narrow(axis as isize, idx[0], idx.len())?
    } else {
        let ids: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
        let ids = Tensor::from_vec_u32(t.device(), ids, &[idx.len()])?;
        t.index_select(axis as isize, &ids)?
    };
    Ok(same_kind(x, r))
}

pub(super) fn split(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.input(args, 0)?;
    let axis = ctx.axis(ctx.int("axis", 0), x.shape().len())?;
    let len = x.shape()[axis];
    let outs = ctx.node.output.len();
    let sizes: Vec<usize> = match (ctx.int_input(args, 1)?, ctx.ints("split")) {
        (Some(s), _) => s.data.iter().map(|&v| v.max(0) as usize).collect(),
        (None, Some(s)) if ctx.opset < 13 => s.iter().map(|&v| v.max(0) as usize).collect(),
        _ => {
            let each = len.div_ceil(outs.max(1));
            (0..outs)
                .map(|k| each.min(len.saturating_sub(k * each)))
                .collect()
        }
    };
    if sizes.iter().sum::<usize>() != len || sizes.len() != outs {
        return Err(ctx.invalid(format!("split {sizes:?} of an axis of {len} into {outs}")));
    }
    let mut start = 0;
    sizes
        .iter()
        .map(|&n| {
            let idx: Vec<usize> = (start..start + n).collect();
            start += n;
            take(x, axis, &idx)
        })
        .collect()
}

pub(super) fn slice(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.input(args, 0)?;
    let shape = x.shape().to_vec();
    let r = shape.len();
    let (starts, ends, axes, steps) = if ctx.opset < 10 {
        (
            ctx.ints("starts").unwrap_or_default(),
            ctx.ints("ends").unwrap_or_default(),
            ctx.ints("axes"),
            None,
        )
    } else {
        let get = |i| ctx.int_input(args, i).map(|o| o.map(|t| t.data));
        (
            get(1)?.ok_or_else(|| ctx.invalid("no starts"))?,
            get(2)?.ok_or_else(|| ctx.invalid("no ends"))?,
            get(3)?,
            get(4)?,
        )
    };
    let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err(ctx.invalid("starts, ends, axes and steps differ in length"));
    }
    let mut v = x.clone();
    for k in 0..starts.len() {
        let axis = ctx.axis(axes[k], r)?;
        let dim = shape[axis] as i64;
        let step = steps[k];
        if step == 0 {
            return Err(ctx.invalid("a step of 0"));
        }
        let norm = |p: i64| if p < 0 { p + dim } else { p };
        let (lo, hi) = if step > 0 { (0, dim) } else { (-1, dim - 1) };
        let start = norm(starts[k].clamp(-dim - 1, dim + 1)).clamp(lo, hi);
        let end = norm(ends[k].clamp(-dim - 1, dim + 1)).clamp(lo, hi);
        let idx = picks(start, end, step);
        if idx.len() as i64 != dim || step != 1 {
            v = take(&v, axis, &idx)?;
        }
    }
    Ok(vec![v])
}

pub(super) fn gather(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.input(args, 0)?;
    let idx = ctx
        .int_input(args, 1)?
        .ok_or_else(|| ctx.invalid("no indices"))?;
    let r = x.shape().len();
    let axis = ctx.axis(ctx.int("axis", 0), r)?;
    let dim = x.shape()[axis];
    let flat: Vec<usize> = idx
        .data
        .iter()
        .map(|&i| super::wrap_index("onnx Gather", i, dim))
        .collect::<Result<_>>()?;
    let picked = take(x, axis, &flat)?;
    let mut dims = x.shape()[..axis].to_vec();
    dims.extend_from_slice(&idx.shape);
    dims.extend_from_slice(&x.shape()[axis + 1..]);
    Ok(vec![reshaped(&picked, &dims)?])
}

pub(super) fn gather_elements(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.input(args, 0)?;
    let idx = ctx
        .int_input(args, 1)?
        .ok_or_else(|| ctx.invalid("no indices"))?;
    let r = x.shape().len();
    let axis = ctx.axis(ctx.int("axis", 0), r)?;
    let dim = x.shape()[axis];
    let norm = |i: i64| super::wrap_index("onnx GatherElements", i, dim);
    if idx.shape.len() != r {
        return Err(ctx.invalid(format!("indices {:?} for data {:?}", idx.shape, x.shape())));
    }
    let flat: Vec<usize> = idx.data.iter().map(|&v| norm(v)).collect::<Result<_>>()?;
    if let Value::Int(i) = x {
        let st = strides(&i.shape);
        let ist = strides(&idx.shape);
        return Ok(vec![Value::Int(remap(i, idx.shape.clone(), |c| {
            let at: usize = c.iter().zip(&ist).map(|(a, b)| a * b).sum();
            c.iter()
                .enumerate()
                .map(|(d, &v)| if d == axis { flat[at] } else { v } * st[d])
                .sum()
        }))]);
    }
    let ids: Vec<u32> = flat.iter().map(|&j| j as u32).collect();
    let ids = Tensor::from_vec_u32(ctx.dev, ids, &idx.shape)?;
    let t = x.tensor("onnx")?.gather(axis as isize, &ids)?;
    Ok(vec![same_kind(x, t)])
}

/// `Trilu`: the upper (or lower) triangle of the last two dimensions, from diagonal `k`.
pub(super) fn trilu(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.input(args, 0)?;
    let k = ctx
        .int_input(args, 1)?
        .and_then(|t| t.data.first().copied())
        .unwrap_or(0);
    let upper = ctx.int("upper", 1) != 0;
    let s = x.shape().to_vec();
    if s.len() < 2 {
        return Err(ctx.invalid(format!("rank {} (at least 2)", s.len())));
    }
    let (rows, cols) = (s[s.len() - 2].max(1), s[s.len() - 1].max(1));
    let keep = |n: usize| {
        let (i, j) = ((n / cols) % rows, n % cols);
        let d = j as i64 - i as i64;
        if upper { d >= k } else { d <= k }
    };
    if let Value::Int(t) = x {
        let data = t
            .data
            .iter()
            .enumerate()
            .map(|(n, &v)| if keep(n) { v } else { 0 })
            .collect();
        return Ok(vec![Value::Int(IntTensor { data, ..t.clone() })]);
    }
    let mask: Vec<f32> = (0..rows * cols)
        .map(|n| f32::from(u8::from(keep(n))))
        .collect();
    let mask = Tensor::from_vec(ctx.dev, mask, &[rows, cols])?;
    let t = x.tensor("onnx")?;
    let y = Tensor::where_cond(&mask, t, &Tensor::zeros(ctx.dev, &[1])?)?;
    Ok(vec![same_kind(x, y)])
}

/// `Tile`: each axis repeated `repeats[axis]` times (concatenations on the device).
pub(super) fn tile(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.input(args, 0)?;
    let reps = ctx
        .int_input(args, 1)?
        .ok_or_else(|| ctx.invalid("no repeats"))?
        .data;
    if reps.len() != x.shape().len() || reps.iter().any(|&r| r < 0) {
        return Err(ctx.invalid(format!("repeats {reps:?} for {:?}", x.shape())));
    }
    let mut v = x.clone();
    for (axis, &r) in reps.iter().enumerate() {
        let idx: Vec<usize> = (0..r as usize).flat_map(|_| 0..v.shape()[axis]).collect();
        if r != 1 {
            v = take(&v, axis, &idx)?;
        }
    }
    Ok(vec![v])
}

pub(super) fn expand(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.input(args, 0)?;
    let want = ctx
        .int_input(args, 1)?
        .ok_or_else(|| ctx.invalid("no shape"))?;
    let want: Vec<usize> = want.data.iter().map(|&d| d.max(0) as usize).collect();
    let out = broadcast_shape(x.shape(), &want)
        .ok_or_else(|| ctx.invalid(format!("{:?} cannot expand to {want:?}", x.shape())))?;
    Ok(vec![match x {
        Value::Int(i) => {
            let st = strides(&i.shape);
            let off = out.len() - i.shape.len();
            remap(i, out.clone(), |c| {
                (0..i.shape.len())
                    .map(|d| {
                        if i.shape[d] == 1 {
                            0
                        } else {
                            c[d + off] * st[d]
                        }
                    })
                    .sum()
            })
            .into_value()
        }
        v => same_kind(v, v.tensor("onnx")?.broadcast_to(&out)?),
    }])
}

pub(super) fn constant(ctx: &Ctx, _: &Args) -> Result<Vec<Value>> {
    let a = ctx
        .node
        .attribute
        .first()
        .ok_or_else(|| ctx.invalid("no value"))?;
    let v = match a.name.as_str() {
        "value" => from_proto(
            a.t.as_ref().ok_or_else(|| ctx.invalid("no tensor"))?,
            ctx.dev,
        )?,
        "value_float" => Value::Float(Tensor::from_vec(ctx.dev, vec![a.f], &[])?),
        "value_floats" => Value::Float(Tensor::from_vec(
            ctx.dev,
            a.floats.clone(),
            &[a.floats.len()],
        )?),
        "value_int" => Value::Int(IntTensor::new(vec![], vec![a.i])),
        "value_ints" => Value::Int(IntTensor::new(vec![a.ints.len()], a.ints.clone())),
        other => return Err(ctx.unsupported(format!("a {other} constant"))),
    };
    Ok(vec![v])
}

pub(super) fn constant_of_shape(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let dims: Vec<usize> = ctx
        .int_input(args, 0)?
        .ok_or_else(|| ctx.invalid("no shape"))?
        .data
        .iter()
        .map(|&d| d.max(0) as usize)
        .collect();
    let fill = match ctx.node.attribute.iter().find(|a| a.name == "value") {
        Some(a) => from_proto(
            a.t.as_ref().ok_or_else(|| ctx.invalid("no tensor"))?,
            ctx.dev,
        )?,
        None => Value::Float(Tensor::zeros(ctx.dev, &[1])?),
    };
    let n: usize = dims.iter().product();
    Ok(vec![match fill {
        Value::Int(i) => Value::Int(IntTensor {
            shape: dims,
            data: vec![i.data.first().copied().unwrap_or(0); n],
            elem: i.elem,
        }),
        v => {
            let f = v.to_f64()?.first().copied().unwrap_or(0.0) as f32;
            same_kind(&v, Tensor::full(ctx.dev, &dims, f)?)
        }
    }])
}

pub(super) fn range(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let vals: Vec<&Value> = (0..3).map(|i| ctx.input(args, i)).collect::<Result<_>>()?;
    if vals.iter().all(|v| matches!(v, Value::Int(_))) {
        let get = |v: &Value| v.ints().map(|i| i.data.first().copied().unwrap_or(0));
        let (s, l, d) = (get(vals[0])?, get(vals[1])?, get(vals[2])?);
        if d == 0 {
            return Err(ctx.invalid("a delta of 0"));
        }
        let n = ((l - s) as f64 / d as f64).ceil().max(0.0) as usize;
        let data: Vec<i64> = (0..n as i64).map(|k| s + k * d).collect();
        let elem = match vals[0] {
            Value::Int(i) => i.elem,
            _ => unreachable!("checked above"),
        };
        return Ok(vec![Value::Int(IntTensor {
            shape: vec![n],
            data,
            elem,
        })]);
    }
    let get = |v: &Value| v.to_f64().map(|f| f.first().copied().unwrap_or(0.0) as f32);
    let (s, l, d) = (get(vals[0])?, get(vals[1])?, get(vals[2])?);
    if d == 0.0 {
        return Err(ctx.invalid("a delta of 0"));
    }
    let n = ((l - s) / d).ceil().max(0.0) as usize;
    let data: Vec<f32> = (0..n).map(|k| s + k as f32 * d).collect();
    Ok(vec![Value::Float(Tensor::from_vec(ctx.dev, data, &[n])?)])
}

/// The block size of `DepthToSpace`/`SpaceToDepth` and the `[n, c, h, w]` input, checked.
fn blocks<'a>(ctx: &Ctx, args: &'a Args) -> Result<(&'a Tensor, usize, [usize; 4])> {
    let x = ctx.float_input(args, 0)?;
    let b = ctx.int("blocksize", 0);
    let [n, c, h, w] = x.shape()[..] else {
        return Err(ctx.invalid(format!("input of shape {:?}: rank 4", x.shape())));
    };
    if b <= 0 {
        return Err(ctx.invalid(format!("blocksize {b}")));
    }
    Ok((x, b as usize, [n, c, h, w]))
}

/// `DepthToSpace`: blocks of `b × b` channels moved into space, `[n, c, h, w]` →
/// `[n, c/b², h·b, w·b]`, in `DCR` (depth, column, row: the default) or `CRD` order.
pub(super) fn depth_to_space(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let (x, b, [n, c, h, w]) = blocks(ctx, args)?;
    if c % (b * b) != 0 {
        return Err(ctx.invalid(format!("{c} channels for blocks of {b}x{b}")));
    }
    let d = c / (b * b);
    let y = match ctx.string("mode", "DCR").as_str() {
        "DCR" => x
            .reshape(&[n, b, b, d, h, w])?
            .permute(&[0, 3, 4, 1, 5, 2])?,
        "CRD" => x
            .reshape(&[n, d, b, b, h, w])?
            .permute(&[0, 1, 4, 2, 5, 3])?,
        other => return Err(ctx.invalid(format!("mode {other}"))),
    };
    Ok(vec![Value::Float(y.reshape(&[n, d, h * b, w * b])?)])
}

/// `SpaceToDepth`: `b × b` blocks of space moved into channels, `[n, c, h, w]` →
/// `[n, c·b², h/b, w/b]` (DepthToSpace's `DCR` inverse).
pub(super) fn space_to_depth(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let (x, b, [n, c, h, w]) = blocks(ctx, args)?;
    if h % b != 0 || w % b != 0 {
        return Err(ctx.invalid(format!("{h}x{w} in blocks of {b}x{b}")));
    }
    let y = x
        .reshape(&[n, c, h / b, b, w / b, b])?
        .permute(&[0, 3, 5, 1, 2, 4])?
        .reshape(&[n, c * b * b, h / b, w / b])?;
    Ok(vec![Value::Float(y)])
}

/// `Compress`: the slices along `axis` (of the flattened input without one) whose
/// `condition` entry is true, as a `Gather` of their positions (a shorter condition leaves
/// the rest out).
pub(super) fn compress(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.input(args, 0)?;
    let cond = ctx.input(args, 1)?.to_f64()?;
    let (x, axis) = if ctx.attr_present("axis") {
        let axis = ctx.axis(ctx.int("axis", 0), x.shape().len())?;
        (x.clone(), axis)
    } else {
        let n = x.shape().iter().product::<usize>();
        let flat = match x {
            Value::Int(i) => Value::Int(IntTensor {
                shape: vec![n],
                ..i.clone()
            }),
            Value::Float(t) => Value::Float(t.reshape(&[n])?),
            Value::Bool(t) => Value::Bool(t.reshape(&[n])?),
        };
        (flat, 0)
    };
    let dim = x.shape()[axis];
    if cond.len() > dim {
        return Err(ctx.invalid(format!(
            "a condition of {} for a dimension of {dim}",
            cond.len()
        )));
    }
    let picked: Vec<i64> = (0..cond.len() as i64)
        .filter(|&i| cond[i as usize] != 0.0)
        .collect();
    let n = picked.len();
    let mut node = ctx.node.clone();
    node.attribute.retain(|a| a.name != "axis");
    node.attribute.push(crate::proto::AttributeProto {
        name: "axis".into(),
        i: axis as i64,
        r#type: 2, // INT
        ..Default::default()
    });
    let c2 = Ctx {
        node: &node,
        ..*ctx
    };
    gather(
        &c2,
        &[Some(x), Some(Value::Int(IntTensor::new(vec![n], picked)))],
    )
}

/// `CenterCropPad`: each listed axis cropped or zero-padded to its target length around the
/// centre (an odd difference puts the extra element at the end), as one constant `Pad` whose
/// negative amounts crop.
pub(super) fn center_crop_pad(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.input(args, 0)?;
    let r = x.shape().len();
    let target = ctx
        .int_input(args, 1)?
        .ok_or_else(|| ctx.invalid("no shape"))?
        .data;
    let axes: Vec<usize> = match ctx.ints("axes") {
        Some(a) => a.iter().map(|&a| ctx.axis(a, r)).collect::<Result<_>>()?,
        None => (0..r).collect(),
    };
    if target.len() != axes.len() || target.iter().any(|&t| t < 0) {
        return Err(ctx.invalid(format!("shape {target:?} for axes {axes:?}")));
    }
    let mut pads = vec![0i64; 2 * r];
    for (&a, &t) in axes.iter().zip(&target) {
        let d = t - x.shape()[a] as i64;
        let (lo, hi) = (d.abs() / 2, d.abs() - d.abs() / 2);
        (pads[a], pads[a + r]) = if d < 0 { (-lo, -hi) } else { (lo, hi) };
    }
    let mut node = ctx.node.clone();
    node.attribute.clear();
    let c2 = Ctx {
        node: &node,
        ..*ctx
    };
    super::pad::pad(
        &c2,
        &[
            Some(x.clone()),
            Some(Value::Int(IntTensor::new(vec![2 * r], pads))),
        ],
    )
}
