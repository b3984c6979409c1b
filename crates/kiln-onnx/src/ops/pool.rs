//! Pooling: `MaxPool` (with indices), `AveragePool`, their dilated and 3-d forms (one gather
//! per kernel tap), and the global poolings.

use super::conv::{Pads, as_1d, as_2d, pad_axes, pad2d, padding, pair, widened};
use super::{Args, Ctx};
use crate::value::{IntTensor, Value};
use kiln::Result;
use kiln::Tensor;

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

/// `LpPool`: `(Σ |x|^p)^(1/p)` over each window, the padding counting as zeros: the average
/// pool of `|x|^p` with every padded position counted, times the window's size.
pub(super) fn lp_pool(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.float_input(args, 0)?;
    let p = ctx.int("p", 2);
    if p < 1 {
        return Err(ctx.invalid(format!("p = {p}")));
    }
    if ctx.int("ceil_mode", 0) != 0 {
        return Err(ctx.unsupported("LpPool with ceil_mode"));
    }
    let kernel: usize = ctx
        .ints("kernel_shape")
        .ok_or_else(|| ctx.invalid("no kernel_shape"))?
        .iter()
        .map(|&k| k.max(0) as usize)
        .product();
    let mut node = ctx.node.clone();
    node.op_type = "AveragePool".into();
    node.attribute
        .retain(|a| a.name != "p" && a.name != "count_include_pad");
    node.attribute.push(crate::proto::AttributeProto {
        name: "count_include_pad".into(),
        i: 1,
        r#type: 2, // INT
        ..Default::default()
    });
    let c2 = super::Ctx {
        node: &node,
        ..*ctx
    };
    let powered = [Some(Value::Float(x.abs()?.powf(p as f32)?))];
    let mean = pool(&c2, &powered)?.remove(0);
    let sum = mean.tensor("onnx")?.mul_scalar(kernel as f32)?;
    Ok(vec![Value::Float(sum.powf(1.0 / p as f32)?)])
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
