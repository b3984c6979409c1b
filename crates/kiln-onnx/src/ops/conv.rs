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
    let y = x.conv2d(&w, bias, opts)?;
    Ok(vec![Value::Float(as_1d(y, one_d)?)])
}

/// `ConvTranspose` (2-D and 1-D): kiln's `conv_transpose2d` (a convolution's input gradient)
/// over the whole output; then ONNX's output padding extends it with zeros and its pads (or
/// `output_shape`, `auto_pad`) crop it.
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
    // The whole output (no padding), then output padding's zero rows and columns below and
    // to the right (no input reaches them), then the crop.
    let opts = Conv2dOptions {
        stride,
        dilation: dil,
        groups,
        ..Conv2dOptions::default()
    };
    let y = x.conv_transpose2d(&w, None, opts, (0, 0))?;
    let y = if out_pad == (0, 0) {
        y
    } else {
        pad2d(&y, (0, 0, out_pad.0, out_pad.1), 0.0)?
    };
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
