//! Neural-network ONNX ops: matrix products, softmax, reductions, convolution and pooling,
//! normalisation.

use super::{Args, Ctx};
use crate::value::{IntTensor, Value};
use kiln::Result;
use kiln::{Conv2dOptions, Tensor};

pub(super) fn matmul(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let (a, b) = (ctx.float_input(args, 0)?, ctx.float_input(args, 1)?);
    // numpy's matmul: a 1-D left operand is a row, a 1-D right one a column, dropped after.
    let a2 = if a.rank() == 1 {
        a.reshape(&[1, a.numel()])?
    } else {
        a.clone()
    };
    let b2 = if b.rank() == 1 {
        b.reshape(&[b.numel(), 1])?
    } else {
        b.clone()
    };
    let y = a2.matmul(&b2)?;
    let mut dims = y.shape().to_vec();
    if b.rank() == 1 {
        dims.pop();
    }
    if a.rank() == 1 {
        dims.remove(dims.len() - usize::from(b.rank() != 1) - 1);
    }
    Ok(vec![Value::Float(y.reshape(&dims)?)])
}

pub(super) fn gemm(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let (a, b) = (ctx.float_input(args, 0)?, ctx.float_input(args, 1)?);
    let (alpha, beta) = (ctx.float("alpha", 1.0), ctx.float("beta", 1.0));
    let mut y = a.matmul_transposed(b, ctx.int("transA", 0) != 0, ctx.int("transB", 0) != 0)?;
    if alpha != 1.0 {
        y = y.mul_scalar(alpha)?;
    }
    if let Some(c) = args.get(2).and_then(Option::as_ref) {
        let c = c.float_on(ctx.dev)?;
        y = y.add(&if beta == 1.0 { c } else { c.mul_scalar(beta)? })?;
    }
    Ok(vec![Value::Float(y)])
}

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
    let each = |t: &Tensor, f: &dyn Fn(&Tensor, isize) -> Result<Tensor>| -> Result<Tensor> {
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

/// 2-D padding (top, left, bottom, right) from ONNX's `pads` ([top, left, bottom, right]) or
/// `auto_pad` (SAME_UPPER puts the odd pixel at the end, SAME_LOWER at the start).
type Pads = (usize, usize, usize, usize);

fn padding(
    ctx: &Ctx,
    kernel: (usize, usize),
    stride: (usize, usize),
    dil: (usize, usize),
    input: (usize, usize),
) -> Result<Pads> {
    match ctx.string("auto_pad", "NOTSET").as_str() {
        "NOTSET" => {
            let p = ctx.ints("pads").unwrap_or_else(|| vec![0; 4]);
            if p.len() != 4 || p.iter().any(|&v| v < 0) {
                return Err(ctx.invalid(format!("pads {p:?}")));
            }
            Ok((p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize))
        }
        "VALID" => Ok((0, 0, 0, 0)),
        mode @ ("SAME_UPPER" | "SAME_LOWER") => {
            let total = |i: usize, k: usize, s: usize, d: usize| {
                let out = i.div_ceil(s);
                ((out - 1) * s + (k - 1) * d + 1).saturating_sub(i)
            };
            let (th, tw) = (
                total(input.0, kernel.0, stride.0, dil.0),
                total(input.1, kernel.1, stride.1, dil.1),
            );
            let lower = mode == "SAME_LOWER";
            let begin = |t: usize| if lower { t.div_ceil(2) } else { t / 2 };
            Ok((begin(th), begin(tw), th - begin(th), tw - begin(tw)))
        }
        other => Err(ctx.unsupported(format!("auto_pad {other}"))),
    }
}

/// `t` (`[n, c, h, w]`) padded with `value`: `top` rows above, `left` columns before, ...
fn pad2d(t: &Tensor, (top, left, bottom, right): Pads, value: f32) -> Result<Tensor> {
    pad_axes(t, &[(2, top, bottom), (3, left, right)], value)
}

/// `t` with `before` and `after` values `value` added along each listed dimension.
fn pad_axes(t: &Tensor, axes: &[(usize, usize, usize)], value: f32) -> Result<Tensor> {
    let mut t = t.clone();
    for &(dim, before, after) in axes {
        if before + after == 0 {
            continue;
        }
        let mut parts = Vec::new();
        for (n, first) in [(before, true), (after, false)] {
            if n > 0 {
                let mut s = t.shape().to_vec();
                s[dim] = n;
                parts.push((Tensor::full(t.device(), &s, value)?, first));
            }
        }
        let mut refs: Vec<&Tensor> = parts.iter().filter(|p| p.1).map(|p| &p.0).collect();
        refs.push(&t);
        refs.extend(parts.iter().filter(|p| !p.1).map(|p| &p.0));
        t = Tensor::cat(&refs, dim as isize)?;
    }
    Ok(t)
}

/// Two values of a 2-D attribute (`default` when absent).
fn pair(ctx: &Ctx, name: &str, default: usize) -> Result<(usize, usize)> {
    match ctx.ints(name) {
        None => Ok((default, default)),
        Some(v) if v.len() == 2 && v.iter().all(|&x| x > 0) => Ok((v[0] as usize, v[1] as usize)),
        Some(v) => Err(ctx.unsupported(format!("{name} {v:?} (2-D only)"))),
    }
}

/// A 1-D input `[n, c, l]` as 2-D `[n, c, 1, l]`, so that 1-D convolution and pooling run on
/// the 2-D kernels.
fn as_2d(t: &Tensor) -> Result<Tensor> {
    match t.shape() {
        [n, c, l] => t.reshape(&[*n, *c, 1, *l]),
        _ => Ok(t.clone()),
    }
}

/// The node with its 1-D attributes widened to 2-D (a leading 1, or zero padding in height).
fn widened(node: &crate::proto::NodeProto) -> crate::proto::NodeProto {
    let mut node = node.clone();
    for a in &mut node.attribute {
        match (a.name.as_str(), a.ints.len()) {
            ("pads", 2) => a.ints = vec![0, a.ints[0], 0, a.ints[1]],
            ("kernel_shape" | "strides" | "dilations" | "output_shape", 1) => {
                a.ints = vec![1, a.ints[0]]
            }
            ("output_padding", 1) => a.ints = vec![0, a.ints[0]],
            _ => {}
        }
    }
    node
}

/// The 2-D result of a 1-D op back to `[n, c, l]`.
fn as_1d(y: Tensor, one_d: bool) -> Result<Tensor> {
    if !one_d {
        return Ok(y);
    }
    let s = y.shape().to_vec();
    y.reshape(&[s[0], s[1], s[3]])
}

pub(super) fn conv(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let (x, w) = (ctx.float_input(args, 0)?, ctx.float_input(args, 1)?);
    let one_d = x.rank() == 3;
    if !(x.rank() == 4 || one_d) || w.rank() != x.rank() {
        return Err(ctx.unsupported(format!("a {}-D convolution", x.rank().saturating_sub(2))));
    }
    let (x, w) = (as_2d(x)?, as_2d(w)?);
    let node = if one_d {
        widened(ctx.node)
    } else {
        ctx.node.clone()
    };
    let c2 = super::Ctx {
        node: &node,
        ..*ctx
    };
    let kernel = (w.shape()[2], w.shape()[3]);
    let stride = pair(&c2, "strides", 1)?;
    let dilation = pair(&c2, "dilations", 1)?;
    let pads = padding(&c2, kernel, stride, dilation, (x.shape()[2], x.shape()[3]))?;
    let (x, padding) = if pads.0 == pads.2 && pads.1 == pads.3 {
        (x, (pads.0, pads.1))
    } else {
        (pad2d(&x, pads, 0.0)?, (0, 0))
    };
    let bias = args
        .get(2)
        .and_then(Option::as_ref)
        .map(|b| b.tensor("onnx"))
        .transpose()?;
    let groups = ctx.int("group", 1).max(1) as usize;
    let opts = Conv2dOptions {
        stride,
        padding,
        dilation,
        groups,
    };
    let y = x.conv2d(&w, bias, opts)?;
    Ok(vec![Value::Float(as_1d(y, one_d)?)])
}

/// `x` (`[n, c, h, w]`) with `s - 1` zeros inserted between neighbours along `dim` (2 or 3).
fn spread(x: &Tensor, dim: usize, s: usize) -> Result<Tensor> {
    if s == 1 {
        return Ok(x.clone());
    }
    let shape = x.shape().to_vec();
    let len = shape[dim];
    let mut split = shape[..=dim].to_vec();
    split.push(1);
    split.extend_from_slice(&shape[dim + 1..]);
    let mut zeros = split.clone();
    zeros[dim + 1] = s - 1;
    let t = x.reshape(&split)?;
    let z = Tensor::zeros(x.device(), &zeros)?;
    let mut merged = shape.clone();
    merged[dim] = len * s;
    Tensor::cat(&[&t, &z], dim as isize + 1)?
        .reshape(&merged)?
        .narrow(dim as isize, 0, (len - 1) * s + 1)
}

/// `ConvTranspose` (2-D and 1-D): the convolution of the input spread by the stride (zeros
/// between its values) and padded by the kernel's span, with the kernel flipped and its channel
/// axes swapped; then ONNX's output padding and pads (or `output_shape`, `auto_pad`) crop it.
pub(super) fn conv_transpose(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let (x, w) = (ctx.float_input(args, 0)?, ctx.float_input(args, 1)?);
    let one_d = x.rank() == 3;
    if !(x.rank() == 4 || one_d) || w.rank() != x.rank() {
        return Err(ctx.unsupported(format!(
            "a {}-D transposed convolution",
            x.rank().saturating_sub(2)
        )));
    }
    let (x, w) = (as_2d(x)?, as_2d(w)?);
    let node = if one_d {
        widened(ctx.node)
    } else {
        ctx.node.clone()
    };
    let c2 = super::Ctx {
        node: &node,
        ..*ctx
    };
    let groups = ctx.int("group", 1).max(1) as usize;
    let (c_in, cout_g, kh, kw) = (w.shape()[0], w.shape()[1], w.shape()[2], w.shape()[3]);
    if x.shape()[1] != c_in || c_in % groups != 0 {
        return Err(ctx.invalid(format!(
            "input {:?} and weight {:?} with {groups} groups",
            x.shape(),
            w.shape()
        )));
    }
    let stride = pair(&c2, "strides", 1)?;
    let dil = pair(&c2, "dilations", 1)?;
    let mut out_pad = match c2.ints("output_padding") {
        Some(v) if v.len() == 2 => (v[0].max(0) as usize, v[1].max(0) as usize),
        _ => (0, 0),
    };
    let (h, wd) = (x.shape()[2], x.shape()[3]);
    let full =
        |i: usize, s: usize, k: usize, d: usize, op: usize| s * (i - 1) + op + (k - 1) * d + 1;
    let auto = c2.string("auto_pad", "NOTSET");
    let target = c2.ints("output_shape").or_else(|| {
        matches!(auto.as_str(), "SAME_UPPER" | "SAME_LOWER")
            .then(|| vec![(h * stride.0) as i64, (wd * stride.1) as i64])
    });
    // An output_shape past the full output extends it with zeros, as output padding would.
    if let Some(t) = target.as_ref().filter(|t| t.len() == 2) {
        let fh0 = full(h, stride.0, kh, dil.0, out_pad.0) as i64;
        let fw0 = full(wd, stride.1, kw, dil.1, out_pad.1) as i64;
        out_pad.0 += (t[0] - fh0).max(0) as usize;
        out_pad.1 += (t[1] - fw0).max(0) as usize;
    }
    let (fh, fw) = (
        full(h, stride.0, kh, dil.0, out_pad.0),
        full(wd, stride.1, kw, dil.1, out_pad.1),
    );
    let (top, left, bottom, right) = match target {
        Some(t) if t.len() == 2 => {
            let split = |total: i64| {
                let total = total.max(0) as usize;
                if auto == "SAME_UPPER" {
                    (total / 2, total - total / 2)
                } else {
                    (total - total / 2, total / 2)
                }
            };
            let (a, b) = split(fh as i64 - t[0]);
            let (c, d) = split(fw as i64 - t[1]);
            (a, c, b, d)
        }
        _ => {
            let p = c2.ints("pads").unwrap_or_else(|| vec![0; 4]);
            if p.len() != 4 || p.iter().any(|&v| v < 0) {
                return Err(ctx.invalid(format!("pads {p:?}")));
            }
            (p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize)
        }
    };
    // The kernel as a convolution's: [c_out, c_in / groups, kh, kw], flipped in both axes.
    let cin_g = c_in / groups;
    let flip = |t: Tensor, dim: isize, n: usize| -> Result<Tensor> {
        let rev: Vec<u32> = (0..n as u32).rev().collect();
        t.index_select(dim, &Tensor::from_vec_u32(ctx.dev, rev, &[n])?)
    };
    let wc = w
        .reshape(&[groups, cin_g, cout_g, kh, kw])?
        .permute(&[0, 2, 1, 3, 4])?
        .reshape(&[groups * cout_g, cin_g, kh, kw])?;
    let wc = flip(flip(wc, 2, kh)?, 3, kw)?;
    let spread_x = spread(&spread(&x, 2, stride.0)?, 3, stride.1)?;
    let (ph, pw) = ((kh - 1) * dil.0, (kw - 1) * dil.1);
    let padded = pad2d(&spread_x, (ph, pw, ph + out_pad.0, pw + out_pad.1), 0.0)?;
    let opts = Conv2dOptions {
        dilation: dil,
        groups,
        ..Conv2dOptions::default()
    };
    let y = padded.conv2d(&wc, None, opts)?;
    if top + bottom > fh || left + right > fw {
        return Err(ctx.invalid("pads larger than the output"));
    }
    let y = y
        .narrow(2, top, fh - top - bottom)?
        .narrow(3, left, fw - left - right)?;
    let y = match args.get(2).and_then(Option::as_ref) {
        Some(b) => y.add(&b.tensor("onnx")?.reshape(&[groups * cout_g, 1, 1])?)?,
        None => y,
    };
    Ok(vec![Value::Float(as_1d(y, one_d)?)])
}

pub(super) fn pool(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let input = ctx.input(args, 0)?;
    // Integer images (uint8, ...) pool exactly in f32 and go back to their type.
    if let Value::Int(i) = input {
        let as_float = [Some(Value::Float(input.float_on(ctx.dev)?))];
        let y = pool(ctx, &as_float)?.remove(0).ints()?;
        return Ok(vec![Value::Int(IntTensor { elem: i.elem, ..y })]);
    }
    let x = input.tensor("onnx")?;
    let max = ctx.node.op_type == "MaxPool";
    let one_d = x.rank() == 3;
    if x.rank() == 5 {
        if ctx.node.output.len() > 1 && !ctx.node.output[1].is_empty() {
            return Err(ctx.unsupported("MaxPool's indices output"));
        }
        return Ok(vec![Value::Float(pool_3d(ctx, x, max)?)]);
    }
    if !(x.rank() == 4 || one_d) {
        return Err(ctx.unsupported(format!("{}-D pooling", x.rank().saturating_sub(2))));
    }
    let indices = max && ctx.node.output.get(1).is_some_and(|o| !o.is_empty());
    if indices && one_d {
        return Err(ctx.unsupported("MaxPool's indices output in 1-D"));
    }
    let x = as_2d(x)?;
    let node = if one_d {
        widened(ctx.node)
    } else {
        ctx.node.clone()
    };
    let c2 = super::Ctx {
        node: &node,
        ..*ctx
    };
    let kernel = pair(&c2, "kernel_shape", 0)?;
    if kernel.0 == 0 {
        return Err(ctx.invalid("no kernel_shape"));
    }
    let dil = pair(&c2, "dilations", 1)?;
    if dil.0 == 0 || dil.1 == 0 {
        return Err(ctx.invalid("dilations must be at least 1"));
    }
    let stride = pair(&c2, "strides", 1)?;
    let (h, w) = (x.shape()[2], x.shape()[3]);
    let pads = padding(&c2, kernel, stride, dil, (h, w))?;
    // A window's extent in the input: (k - 1)·dilation + 1.
    let span = (
        (kernel.0 - 1) * dil.0 + 1,
        (kernel.1.max(1) - 1) * dil.1 + 1,
    );
    // Output size, rounded up with ceil_mode (a window must still start inside the input or
    // its leading padding); the extra rows and columns that needs are padding too.
    let ceil = ctx.int("ceil_mode", 0) != 0;
    let out = |i: usize, k: usize, s: usize, b: usize, e: usize| -> Result<usize> {
        let span = (i + b + e)
            .checked_sub(k)
            .ok_or_else(|| ctx.invalid("a window larger than the padded input"))?;
        let mut o = if ceil { span.div_ceil(s) } else { span / s } + 1;
        if ceil && (o - 1) * s >= i + b {
            o -= 1;
        }
        Ok(o)
    };
    let (oh, ow) = (
        out(h, span.0, stride.0, pads.0, pads.2)?,
        out(w, span.1, stride.1, pads.1, pads.3)?,
    );
    let extra =
        |o: usize, k: usize, s: usize, total: usize| ((o - 1) * s + k).saturating_sub(total);
    let (eb, er) = (
        extra(oh, span.0, stride.0, h + pads.0 + pads.2),
        extra(ow, span.1, stride.1, w + pads.1 + pads.3),
    );
    let all = (pads.0, pads.1, pads.2 + eb, pads.3 + er);
    // Pooling of an already padded input: kiln's pools, or with dilation the taps gathered.
    let pool_padded = |t: &Tensor, max: bool| -> Result<Tensor> {
        if dil != (1, 1) {
            let k = [kernel.0, kernel.1];
            let (s, d) = ([stride.0, stride.1], [dil.0, dil.1]);
            gather_pool(ctx, t, &k, &s, &d, &[oh, ow], max)
        } else if max {
            t.max_pool2d(kernel, stride, (0, 0))
        } else {
            t.avg_pool2d(kernel, stride, (0, 0))
        }
    };
    if indices {
        return max_pool_indices(ctx, &x, all, (kernel, stride, dil), (oh, ow));
    }
    let y = if max {
        pool_padded(&pad2d(&x, all, f32::NEG_INFINITY)?, true)?
    } else {
        let sums = pool_padded(&pad2d(&x, all, 0.0)?, false)?;
        if all == (0, 0, 0, 0) {
            sums
        } else {
            // Divide by the number of counted positions in each window: the input's, plus
            // the explicit padding's with count_include_pad (never ceil_mode's extra).
            let ones = Tensor::ones(ctx.dev, &[1, 1, h, w])?;
            let counted = if ctx.int("count_include_pad", 0) != 0 {
                pad2d(&pad2d(&ones, pads, 1.0)?, (0, 0, eb, er), 0.0)?
            } else {
                pad2d(&ones, all, 0.0)?
            };
            sums.div(&pool_padded(&counted, false)?)?
        }
    };
    Ok(vec![Value::Float(as_1d(y, one_d)?)])
}

/// Per kernel tap, the positions it reads along each spatial dimension for the `out`
/// outputs (`o·stride + tap·dilation`), as index tensors for `index_select`.
fn tap_indices(
    ctx: &Ctx,
    kernel: &[usize],
    stride: &[usize],
    dil: &[usize],
    out: &[usize],
) -> Result<Vec<Vec<Tensor>>> {
    let taps: usize = kernel.iter().product();
    (0..taps)
        .map(|tap| {
            let mut rest = tap;
            let mut per_axis = vec![None; kernel.len()];
            for a in (0..kernel.len()).rev() {
                let k = rest % kernel[a];
                rest /= kernel[a];
                let v: Vec<u32> = (0..out[a])
                    .map(|o| (o * stride[a] + k * dil[a]) as u32)
                    .collect();
                per_axis[a] = Some(Tensor::from_vec_u32(ctx.dev, v, &[out[a]])?);
            }
            Ok(per_axis.into_iter().flatten().collect())
        })
        .collect()
}

/// The values of `x` (N, C, then the spatial dimensions) one tap reads.
fn gather_tap(x: &Tensor, idx: &[Tensor]) -> Result<Tensor> {
    idx.iter()
        .enumerate()
        .try_fold(x.clone(), |t, (a, i)| t.index_select((2 + a) as isize, i))
}

/// `MaxPool` with its `Indices` output (2-D): the values and each one's flat index in the
/// input (row-major, or column-major within each plane with `storage_order` 1), as int64.
fn max_pool_indices(
    ctx: &Ctx,
    x: &Tensor,
    all: Pads,
    (kernel, stride, dil): ((usize, usize), (usize, usize), (usize, usize)),
    out: (usize, usize),
) -> Result<Vec<Value>> {
    let [n, c, h, w] = x.shape()[..] else {
        return Err(ctx.invalid("MaxPool with indices needs a 4-D input"));
    };
    let total = n * c * h * w;
    if total > 1 << 24 {
        return Err(ctx.unsupported("MaxPool indices beyond 2^24 input values"));
    }
    let column_major = ctx.int("storage_order", 0) != 0;
    let positions: Vec<f32> = (0..total)
        .map(|i| {
            let (plane, y, xx) = (i / (h * w), (i / w) % h, i % w);
            let within = if column_major { xx * h + y } else { y * w + xx };
            (plane * h * w + within) as f32
        })
        .collect();
    let positions = Tensor::from_vec(ctx.dev, positions, &[n, c, h, w])?;
    let (v, p) = max_pool_with_indices(
        ctx,
        &pad2d(x, all, f32::NEG_INFINITY)?,
        &pad2d(&positions, all, -1.0)?,
        &[kernel.0, kernel.1],
        &[stride.0, stride.1],
        &[dil.0, dil.1],
        &[out.0, out.1],
    )?;
    let ids = p.to_vec()?.into_iter().map(|f| f as i64).collect();
    Ok(vec![
        Value::Float(v),
        Value::Int(IntTensor::new(p.shape().to_vec(), ids)),
    ])
}

/// Pooling of a padded input (N, C, then one dimension per entry of `kernel`) into `out`
/// positions per dimension: each kernel tap's values are gathered and combined by `maximum`
/// (NaN propagates) or summed and divided by the taps, as kiln's `avg_pool2d` does. Used for
/// dilated and 3-D pooling.
fn gather_pool(
    ctx: &Ctx,
    x: &Tensor,
    kernel: &[usize],
    stride: &[usize],
    dil: &[usize],
    out: &[usize],
    max: bool,
) -> Result<Tensor> {
    let taps = tap_indices(ctx, kernel, stride, dil, out)?;
    let mut acc: Option<Tensor> = None;
    for idx in &taps {
        let t = gather_tap(x, idx)?;
        acc = Some(match acc {
            None => t,
            Some(a) if max => a.maximum(&t)?,
            Some(a) => a.add(&t)?,
        });
    }
    let acc = acc.ok_or_else(|| ctx.invalid("an empty kernel"))?;
    if max {
        Ok(acc)
    } else {
        acc.div_scalar(taps.len() as f32)
    }
}

/// Max pooling of a padded NCHW input with ONNX's `Indices` output: `positions` (same shape)
/// holds each value's flat index in the unpadded input (-1 in the padding); a window's first
/// maximum wins.
#[allow(clippy::too_many_arguments)]
fn max_pool_with_indices(
    ctx: &Ctx,
    x: &Tensor,
    positions: &Tensor,
    kernel: &[usize],
    stride: &[usize],
    dil: &[usize],
    out: &[usize],
) -> Result<(Tensor, Tensor)> {
    let mut best: Option<(Tensor, Tensor)> = None;
    for idx in &tap_indices(ctx, kernel, stride, dil, out)? {
        let (t, p) = (gather_tap(x, idx)?, gather_tap(positions, idx)?);
        best = Some(match best {
            None => (t, p),
            Some((v, i)) => {
                let more = t.gt(&v)?;
                (
                    Tensor::where_cond(&more, &t, &v)?,
                    Tensor::where_cond(&more, &p, &i)?,
                )
            }
        });
    }
    best.ok_or_else(|| ctx.invalid("an empty kernel"))
}

/// 3-D `MaxPool` / `AveragePool` (NCDHW) through [`gather_pool`]: explicit pads (or `VALID`),
/// strides, dilations, `ceil_mode` and `count_include_pad` as in 2-D.
fn pool_3d(ctx: &Ctx, x: &Tensor, max: bool) -> Result<Tensor> {
    let r = 3;
    let list = |name: &str, default: usize, len: usize| -> Result<Vec<usize>> {
        match ctx.ints(name) {
            None => Ok(vec![default; len]),
            Some(v) if v.len() == len && v.iter().all(|&e| e >= 0) => {
                Ok(v.iter().map(|&e| e as usize).collect())
            }
            Some(v) => Err(ctx.invalid(format!("{name} {v:?}"))),
        }
    };
    let kernel = list("kernel_shape", 0, r)?;
    let stride = list("strides", 1, r)?;
    let dil = list("dilations", 1, r)?;
    if kernel.iter().chain(&stride).chain(&dil).any(|&v| v == 0) {
        return Err(ctx.invalid("kernel_shape, strides and dilations must be at least 1"));
    }
    let pads = match ctx.string("auto_pad", "NOTSET").as_str() {
        "NOTSET" => list("pads", 0, 2 * r)?,
        "VALID" => vec![0; 2 * r],
        other => return Err(ctx.unsupported(format!("auto_pad {other} in 3-D pooling"))),
    };
    let ceil = ctx.int("ceil_mode", 0) != 0;
    let (mut outs, mut extra) = (Vec::new(), Vec::new());
    for a in 0..r {
        let (i, s, b, e) = (x.shape()[2 + a], stride[a], pads[a], pads[r + a]);
        let span = (kernel[a] - 1) * dil[a] + 1;
        let room = (i + b + e)
            .checked_sub(span)
            .ok_or_else(|| ctx.invalid("a window larger than the padded input"))?;
        let mut o = if ceil { room.div_ceil(s) } else { room / s } + 1;
        if ceil && (o - 1) * s >= i + b {
            o -= 1;
        }
        extra.push(((o - 1) * s + span).saturating_sub(i + b + e));
        outs.push(o);
    }
    let all: Vec<(usize, usize, usize)> = (0..r)
        .map(|a| (2 + a, pads[a], pads[r + a] + extra[a]))
        .collect();
    let pool = |t: &Tensor, max| gather_pool(ctx, t, &kernel, &stride, &dil, &outs, max);
    if max {
        return pool(&pad_axes(x, &all, f32::NEG_INFINITY)?, true);
    }
    let sums = pool(&pad_axes(x, &all, 0.0)?, false)?;
    if all.iter().all(|&(_, b, e)| b + e == 0) {
        return Ok(sums);
    }
    // Divide by the counted positions of each window, as the 2-D path does.
    let mut ones_shape = vec![1, 1];
    ones_shape.extend(&x.shape()[2..]);
    let ones = Tensor::ones(ctx.dev, &ones_shape)?;
    let counted = if ctx.int("count_include_pad", 0) != 0 {
        let explicit: Vec<_> = (0..r).map(|a| (2 + a, pads[a], pads[r + a])).collect();
        let ceil_extra: Vec<_> = (0..r).map(|a| (2 + a, 0, extra[a])).collect();
        pad_axes(&pad_axes(&ones, &explicit, 1.0)?, &ceil_extra, 0.0)?
    } else {
        pad_axes(&ones, &all, 0.0)?
    };
    sums.div(&pool(&counted, false)?)
}

pub(super) fn global_pool(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.float_input(args, 0)?;
    let max = ctx.node.op_type == "GlobalMaxPool";
    let y = (2..x.rank()).try_fold(x.clone(), |t, d| {
        if max {
            t.max(d as isize, true)
        } else {
            t.mean(d as isize, true)
        }
    })?;
    Ok(vec![Value::Float(y)])
}

/// A per-channel parameter `[c]` shaped to broadcast over `[n, c, ...]` of rank `rank`.
fn per_channel(p: &Tensor, rank: usize) -> Result<Tensor> {
    let mut dims = vec![p.numel()];
    dims.extend(std::iter::repeat_n(1, rank.saturating_sub(2)));
    p.reshape(&dims)
}

pub(super) fn batch_norm(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.float_input(args, 0)?;
    let r = x.rank();
    let p = |i| ctx.float_input(args, i).and_then(|t| per_channel(t, r));
    let (scale, bias, mean, var) = (p(1)?, p(2)?, p(3)?, p(4)?);
    let eps = ctx.float("epsilon", 1e-5);
    if ctx.int("training_mode", 0) != 0 {
        // The batch's statistics per channel (population variance), and the running ones
        // updated with `momentum`.
        let over_all_but_channels = |t: &Tensor| -> Result<Tensor> {
            (0..r)
                .filter(|&d| d != 1)
                .try_fold(t.clone(), |t, d| t.mean(d as isize, true))
        };
        let batch_mean = over_all_but_channels(x)?;
        let centered = x.sub(&batch_mean)?;
        let batch_var = over_all_but_channels(&centered.square()?)?;
        let y = centered
            .mul(&batch_var.add_scalar(eps)?.rsqrt()?.mul(&scale)?)?
            .add(&bias)?;
        let m = ctx.float("momentum", 0.9);
        let running = |old: &Tensor, now: &Tensor| -> Result<Tensor> {
            let c = now.numel();
            old.mul_scalar(m)?
                .add(&now.mul_scalar(1.0 - m)?)?
                .reshape(&[c])
        };
        return Ok(vec![
            Value::Float(y),
            Value::Float(running(&mean, &batch_mean)?),
            Value::Float(running(&var, &batch_var)?),
        ]);
    }
    if ctx.node.output.iter().skip(1).any(|o| !o.is_empty()) {
        return Err(ctx.invalid("mean and variance outputs need training_mode"));
    }
    let y = x
        .sub(&mean)?
        .mul(&var.add_scalar(eps)?.rsqrt()?.mul(&scale)?)?
        .add(&bias)?;
    Ok(vec![Value::Float(y)])
}

/// `LpNormalization`: `x / ||x||_p` along `axis` (p = 1 or 2).
pub(super) fn lp_norm(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.float_input(args, 0)?;
    let axis = ctx.axis(ctx.int("axis", -1), x.rank())? as isize;
    let norm = match ctx.int("p", 2) {
        1 => x.abs()?.sum(axis, true)?,
        2 => x.square()?.sum(axis, true)?.sqrt()?,
        p => return Err(ctx.unsupported(format!("p = {p}"))),
    };
    // A zero vector stays zero (ONNX's 0 / 0 = 0 here).
    let zero = norm.eq(&Tensor::zeros(ctx.dev, &[1])?)?;
    let safe = Tensor::where_cond(&zero, &Tensor::ones(ctx.dev, &[1])?, &norm)?;
    Ok(vec![Value::Float(x.div(&safe)?)])
}

/// `RMSNormalization` (opset 23): `x / sqrt(mean(x²) + eps) · scale` over the axes from `axis`.
pub(super) fn rms_norm(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.float_input(args, 0)?;
    let axis = ctx.axis(ctx.int("axis", -1), x.rank())?;
    let (head, tail) = x.shape().split_at(axis);
    let flat = x.reshape(&[head.iter().product(), tail.iter().product()])?;
    let y = flat
        .rms_norm(None, ctx.float("epsilon", 1e-5))?
        .reshape(x.shape())?;
    let y = match args.get(1).and_then(Option::as_ref) {
        Some(s) => y.mul(&s.float_on(ctx.dev)?)?,
        None => y,
    };
    Ok(vec![Value::Float(y)])
}

pub(super) fn layer_norm(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.float_input(args, 0)?;
    let axis = ctx.axis(ctx.int("axis", -1), x.rank())?;
    let eps = ctx.float("epsilon", 1e-5);
    let (head, tail) = x.shape().split_at(axis);
    let flat = x.reshape(&[head.iter().product(), tail.iter().product()])?;
    let y = flat.layer_norm(None, None, eps)?.reshape(x.shape())?;
    // The optional Mean and InvStdDev outputs: the statistics, reduced axes kept as 1.
    let mut stats = Vec::new();
    if ctx.node.output.len() > 1 {
        let mut dims = head.to_vec();
        dims.extend(std::iter::repeat_n(1, tail.len()));
        let mean = flat.mean(1, true)?;
        let inv = flat
            .sub(&mean)?
            .square()?
            .mean(1, true)?
            .add_scalar(eps)?
            .rsqrt()?;
        stats.push(Value::Float(mean.reshape(&dims)?));
        stats.push(Value::Float(inv.reshape(&dims)?));
    }
    let y = match args.get(1).and_then(Option::as_ref) {
        Some(s) => y.mul(&s.float_on(ctx.dev)?)?,
        None => y,
    };
    let y = match args.get(2).and_then(Option::as_ref) {
        Some(b) => y.add(&b.float_on(ctx.dev)?)?,
        None => y,
    };
    let mut out = vec![Value::Float(y)];
    out.extend(stats);
    Ok(out)
}
