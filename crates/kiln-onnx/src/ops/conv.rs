//! Convolutions: `Conv` and `ConvTranspose` (kiln's transposed convolution), and the padding
//! and 1-d/2-d reshaping they share with pooling.

use super::{Args, Ctx};
use crate::value::Value;
use kiln::Result;
use kiln::{Conv2dOptions, Tensor};

/// 2-D padding (top, left, bottom, right) from ONNX's `pads` ([top, left, bottom, right]) or
/// `auto_pad` (SAME_UPPER puts the odd pixel at the end, SAME_LOWER at the start).
pub(super) type Pads = (usize, usize, usize, usize);

pub(super) fn padding(
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
pub(super) fn pad2d(t: &Tensor, (top, left, bottom, right): Pads, value: f32) -> Result<Tensor> {
    pad_axes(t, &[(2, top, bottom), (3, left, right)], value)
}

/// `t` with `before` and `after` values `value` added along each listed dimension.
pub(super) fn pad_axes(t: &Tensor, axes: &[(usize, usize, usize)], value: f32) -> Result<Tensor> {
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
pub(super) fn pair(ctx: &Ctx, name: &str, default: usize) -> Result<(usize, usize)> {
    match ctx.ints(name) {
        None => Ok((default, default)),
        Some(v) if v.len() == 2 && v.iter().all(|&x| x > 0) => Ok((v[0] as usize, v[1] as usize)),
        Some(v) => Err(ctx.unsupported(format!("{name} {v:?} (2-D only)"))),
    }
}

/// A 1-D input `[n, c, l]` as 2-D `[n, c, 1, l]`, so that 1-D convolution and pooling run on
/// the 2-D kernels.
pub(super) fn as_2d(t: &Tensor) -> Result<Tensor> {
    match t.shape() {
        [n, c, l] => t.reshape(&[*n, *c, 1, *l]),
        _ => Ok(t.clone()),
    }
}

/// The node with its 1-D attributes widened to 2-D (a leading 1, or zero padding in height).
pub(super) fn widened(node: &crate::proto::NodeProto) -> crate::proto::NodeProto {
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
pub(super) fn as_1d(y: Tensor, one_d: bool) -> Result<Tensor> {
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
    let y = x.conv2d_act(&w, bias, opts, ctx.activation)?;
    Ok(vec![Value::Float(as_1d(y, one_d)?)])
}

/// `ConvTranspose` (1-D, 2-D and 3-D): kiln's `conv_transpose2d` (a convolution's input
/// gradient) over the whole output, a 3-D one as the sum over the kernel's depth of 2-D ones
/// per input depth slice; then ONNX's output padding extends it with zeros and its pads (or
/// `output_shape`, `auto_pad`) crop it.
pub(super) fn conv_transpose(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let (x, w) = (ctx.float_input(args, 0)?, ctx.float_input(args, 1)?);
    let dims = x.rank().saturating_sub(2);
    if !(1..=3).contains(&dims) || w.rank() != x.rank() {
        return Err(ctx.unsupported(format!("a {dims}-D transposed convolution")));
    }
    let groups = ctx.int("group", 1).max(1) as usize;
    let (c_in, cout_g) = (w.shape()[0], w.shape()[1]);
    if x.shape()[1] != c_in || c_in % groups != 0 {
        return Err(ctx.invalid(format!(
            "input {:?} and weight {:?} with {groups} groups",
            x.shape(),
            w.shape()
        )));
    }
    // Per spatial dimension: input extent, kernel, stride, dilation, output padding.
    let spatial = |name: &str, default: usize| -> Result<Vec<usize>> {
        match ctx.ints(name) {
            None => Ok(vec![default; dims]),
            Some(v) if v.len() == dims && v.iter().all(|&x| x >= 0) => {
                Ok(v.iter().map(|&x| x as usize).collect())
            }
            Some(v) => Err(ctx.invalid(format!("{name} {v:?} for {dims} dimensions"))),
        }
    };
    let input = &x.shape()[2..];
    let kernel = &w.shape()[2..];
    let (stride, dil) = (spatial("strides", 1)?, spatial("dilations", 1)?);
    if stride.contains(&0) || dil.contains(&0) {
        return Err(ctx.invalid("strides and dilations must be at least 1"));
    }
    let mut out_pad = spatial("output_padding", 0)?;
    let full = |i: usize, out_pad: &[usize]| {
        stride[i] * (input[i] - 1) + out_pad[i] + (kernel[i] - 1) * dil[i] + 1
    };
    let auto = ctx.string("auto_pad", "NOTSET");
    let target = ctx.ints("output_shape").or_else(|| {
        matches!(auto.as_str(), "SAME_UPPER" | "SAME_LOWER")
            .then(|| (0..dims).map(|i| (input[i] * stride[i]) as i64).collect())
    });
    let target = target.filter(|t| t.len() == dims);
    // An output_shape past the full output extends it with zeros, as output padding would.
    if let Some(t) = &target {
        for i in 0..dims {
            out_pad[i] += (t[i] - full(i, &out_pad) as i64).max(0) as usize;
        }
    }
    let extent: Vec<usize> = (0..dims).map(|i| full(i, &out_pad)).collect();
    // (before, after) to crop per dimension.
    let crop: Vec<(usize, usize)> = match &target {
        Some(t) => (0..dims)
            .map(|i| {
                let total = (extent[i] as i64 - t[i]).max(0) as usize;
                if auto == "SAME_UPPER" {
                    (total / 2, total - total / 2)
                } else {
                    (total - total / 2, total / 2)
                }
            })
            .collect(),
        None => {
            let p = ctx.ints("pads").unwrap_or_else(|| vec![0; 2 * dims]);
            if p.len() != 2 * dims || p.iter().any(|&v| v < 0) {
                return Err(ctx.invalid(format!("pads {p:?}")));
            }
            (0..dims)
                .map(|i| (p[i] as usize, p[i + dims] as usize))
                .collect()
        }
    };
    if (0..dims).any(|i| crop[i].0 + crop[i].1 > extent[i]) {
        return Err(ctx.invalid("pads larger than the output"));
    }
    // The last two spatial dimensions run on conv_transpose2d (a 1-D one as height 1).
    let last2 = |v: &[usize]| -> (usize, usize) {
        match v {
            [a] => (1, *a),
            [.., a, b] => (*a, *b),
            [] => (1, 1),
        }
    };
    let opts = Conv2dOptions {
        stride: last2(&stride),
        dilation: last2(&dil),
        groups,
        ..Conv2dOptions::default()
    };
    let plane = |x: &Tensor, w: &Tensor| -> Result<Tensor> {
        let (x, w) = (as_2d(x)?, as_2d(w)?);
        x.conv_transpose2d(&w, None, opts, (0, 0))
    };
    let mut y = if dims == 3 {
        // Output depth od gathers input depth id through kernel depth kd where
        // id·stride + kd·dilation = od.
        let c_out = cout_g * groups;
        let (n, depth) = (x.shape()[0], input[0]);
        let mut slices: Vec<Option<Tensor>> = vec![None; extent[0] - out_pad[0]];
        for id in 0..depth {
            let xs = x
                .narrow(2, id, 1)?
                .reshape(&[n, c_in, input[1], input[2]])?;
            for kd in 0..kernel[0] {
                let ws = w
                    .narrow(2, kd, 1)?
                    .reshape(&[c_in, cout_g, kernel[1], kernel[2]])?;
                let part = plane(&xs, &ws)?;
                let slot = &mut slices[id * stride[0] + kd * dil[0]];
                *slot = Some(match slot.take() {
                    Some(acc) => acc.add(&part)?,
                    None => part,
                });
            }
        }
        let (oh, ow) = (extent[1] - out_pad[1], extent[2] - out_pad[2]);
        let zeros = Tensor::zeros(x.device(), &[n, c_out, oh, ow])?;
        let parts: Vec<Tensor> = slices
            .into_iter()
            .map(|s| {
                s.unwrap_or_else(|| zeros.clone())
                    .reshape(&[n, c_out, 1, oh, ow])
            })
            .collect::<Result<_>>()?;
        Tensor::cat(&parts.iter().collect::<Vec<_>>(), 2)?
    } else {
        let y = plane(x, w)?;
        if dims == 1 { as_1d(y, true)? } else { y }
    };
    // Output padding: zeros after the end of each spatial dimension (no input reaches them).
    let zeros_after: Vec<(usize, usize, usize)> = (0..dims)
        .filter(|&i| out_pad[i] > 0)
        .map(|i| (2 + i, 0, out_pad[i]))
        .collect();
    y = pad_axes(&y, &zeros_after, 0.0)?;
    for (i, &(before, after)) in crop.iter().enumerate() {
        if before + after > 0 {
            y = y.narrow(2 + i as isize, before, extent[i] - before - after)?;
        }
    }
    let y = match args.get(2).and_then(Option::as_ref) {
        Some(b) => {
            let mut shape = vec![groups * cout_g];
            shape.extend(vec![1; dims]);
            y.add(&b.tensor("onnx")?.reshape(&shape)?)?
        }
        None => y,
    };
    Ok(vec![Value::Float(y)])
}
