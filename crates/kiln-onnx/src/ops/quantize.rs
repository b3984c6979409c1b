//! ONNX's quantization ops, on the host (the integers of a quantized tensor live there, as all
//! ONNX integers do in kiln-onnx): `QuantizeLinear` and `DequantizeLinear` (per tensor, per
//! axis, or per block; 16-, 8-, 4- and 2-bit integers, the 8- and 4-bit floats),
//! `DynamicQuantizeLinear`, `MatMulInteger` and `QLinearMatMul`. The arithmetic is ONNX's
//! reference: f32 division and rounding half to even, i64 integer products.

use super::{Args, Ctx};
use crate::narrow::Narrow;
use crate::proto::dtype;
use crate::value::{IntTensor, Value};
use kiln::{Result, Tensor};

/// The range of an integer quantized type.
fn int_range(elem: i32) -> Option<(i64, i64)> {
    Some(match elem {
        dtype::UINT8 => (0, 255),
        dtype::INT8 => (-128, 127),
        dtype::UINT16 => (0, 65_535),
        dtype::INT16 => (-32_768, 32_767),
        dtype::INT32 => (i64::from(i32::MIN), i64::from(i32::MAX)),
        e => match Narrow::of(e)? {
            Narrow::Int { bits, signed: true } => (-(1 << (bits - 1)), (1 << (bits - 1)) - 1),
            Narrow::Int { bits, .. } => (0, (1 << bits) - 1),
            _ => return None,
        },
    })
}

/// For each element of a tensor of `shape`, the index of its quantization parameter in a
/// parameter tensor of shape `pshape`: one for all (a scalar or one value), one per slice along
/// `axis` (a vector of `shape[axis]`), or one per `block` values along `axis` (`pshape` of the
/// same rank, `ceil(shape[axis] / block)` there).
fn param_index(
    ctx: &Ctx,
    shape: &[usize],
    pshape: &[usize],
    axis: usize,
    block: usize,
) -> Result<Vec<usize>> {
    let n: usize = shape.iter().product();
    let bad = || {
        ctx.invalid(format!(
            "a scale or zero point of shape {pshape:?} for an input of {shape:?} (axis {axis}, block {block})"
        ))
    };
    let per_block = block > 0;
    if !per_block && pshape.iter().product::<usize>() == 1 && pshape.len() <= 1 {
        return Ok(vec![0; n]);
    }
    if !per_block && pshape.len() == 1 {
        if shape.get(axis) != Some(&pshape[0]) {
            return Err(bad());
        }
        let inner: usize = shape[axis + 1..].iter().product();
        return Ok((0..n).map(|i| (i / inner) % pshape[0]).collect());
    }
    let fits = per_block
        && pshape.len() == shape.len()
        && (0..shape.len()).all(|d| {
            if d == axis {
                pshape[d] == shape[d].div_ceil(block)
            } else {
                pshape[d] == shape[d]
            }
        });
    if !fits {
        return Err(bad());
    }
    let mut out = Vec::with_capacity(n);
    let mut coord = vec![0usize; shape.len()];
    for _ in 0..n {
        let mut at = 0;
        for d in 0..shape.len() {
            let c = if d == axis {
                coord[d] / block
            } else {
                coord[d]
            };
            at = at * pshape[d] + c;
        }
        out.push(at);
        for d in (0..shape.len()).rev() {
            coord[d] += 1;
            if coord[d] < shape[d] {
                break;
            }
            coord[d] = 0;
        }
    }
    Ok(out)
}

/// The axis and block size of a (de)quantization node, and each element's parameter index
/// for the optional parameter input `i` (`None` when absent).
fn params(
    ctx: &Ctx,
    args: &Args,
    shape: &[usize],
    i: usize,
) -> Result<Option<(Vec<f64>, Vec<usize>)>> {
    let Some(p) = args.get(i).and_then(Option::as_ref) else {
        return Ok(None);
    };
    let block = ctx.int("block_size", 0);
    if block < 0 {
        return Err(ctx.invalid(format!("block_size {block}")));
    }
    // One parameter for the whole tensor needs no axis (a rank-1 input keeps the default 1).
    let whole = block == 0 && p.shape().len() <= 1 && p.shape().iter().product::<usize>() == 1;
    let axis = if whole {
        0
    } else {
        ctx.axis(ctx.int("axis", 1), shape.len())?
    };
    let index = param_index(ctx, shape, p.shape(), axis, block as usize)?;
    Ok(Some((p.to_f64()?, index)))
}

/// The element type of input `i`: an integer tensor's own, or the graph's declared type (a
/// narrow float is held as f32).
fn elem_of(ctx: &Ctx, args: &Args, i: usize) -> Option<i32> {
    match args.get(i).and_then(Option::as_ref)? {
        Value::Int(t) => Some(t.elem),
        _ => ctx.declared(i).or(Some(dtype::FLOAT)),
    }
}

/// `DequantizeLinear`: `(x - zero_point) · scale`, a float tensor on the device.
pub(super) fn dequantize(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.input(args, 0)?;
    let shape = x.shape().to_vec();
    let scale = params(ctx, args, &shape, 1)?.ok_or_else(|| ctx.invalid("no scale"))?;
    let zero = params(ctx, args, &shape, 2)?;
    // A float8 input has no zero point to subtract (ONNX requires it to be 0); float4 adds it.
    let zero = zero.filter(|_| {
        !matches!(
            Narrow::of(elem_of(ctx, args, 0).unwrap_or(0)),
            Some(Narrow::Float { exp: 4 | 5, .. })
        )
    });
    // The result in the output type: `output_dtype`, else the scale's.
    let to = match ctx.int("output_dtype", 0) as i32 {
        0 => elem_of(ctx, args, 1).unwrap_or(dtype::FLOAT),
        o => o,
    };
    let narrow = |v: f32| -> f32 {
        match to {
            dtype::FLOAT16 => half::f16::from_f32(v).to_f32(),
            t => Narrow::of(t).map_or(v, |n| n.round(f64::from(v), true) as f32),
        }
    };
    let xs = x.to_f64()?;
    let data = xs
        .iter()
        .enumerate()
        .map(|(k, &v)| {
            let z = zero.as_ref().map_or(0.0, |(z, at)| z[at[k]] as f32);
            narrow((v as f32 - z) * scale.0[scale.1[k]] as f32)
        })
        .collect();
    Ok(vec![Value::Float(Tensor::from_vec(ctx.dev, data, &shape)?)])
}

/// `QuantizeLinear`: `saturate(round(x / scale) + zero_point)` in the zero point's type (or
/// `output_dtype`, default uint8); for the narrow floats, `x / scale` rounded to their grid.
pub(super) fn quantize(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.input(args, 0)?;
    let shape = x.shape().to_vec();
    let scale = params(ctx, args, &shape, 1)?.ok_or_else(|| ctx.invalid("no scale"))?;
    let zero = params(ctx, args, &shape, 2)?;
    let to = match (elem_of(ctx, args, 2), ctx.int("output_dtype", 0) as i32) {
        (Some(z), o) if o != 0 && o != z => {
            return Err(ctx.invalid(format!("output_dtype {o} and a zero point of type {z}")));
        }
        (Some(z), _) => z,
        (None, 0) => dtype::UINT8,
        (None, o) => o,
    };
    let xs = x.to_f64()?;
    let q = |k: usize| xs[k] as f32 / scale.0[scale.1[k]] as f32;
    let z = |k: usize| zero.as_ref().map_or(0.0, |(z, at)| z[at[k]]);
    if let Some((lo, hi)) = int_range(to) {
        let data = (0..xs.len())
            .map(|k| (q(k).round_ties_even() as f64 + z(k)).clamp(lo as f64, hi as f64) as i64)
            .collect();
        return Ok(vec![Value::Int(IntTensor {
            shape,
            data,
            elem: to,
        })]);
    }
    let Some(narrow @ Narrow::Float { .. }) = Narrow::of(to) else {
        return Err(ctx.unsupported(format!("quantizing to element type {to}")));
    };
    let saturate = ctx.int("saturate", 1) != 0;
    let e2m1 = to == crate::narrow::FLOAT4E2M1;
    let data = (0..xs.len())
        .map(|k| {
            let v = if e2m1 {
                q(k) as f64 + z(k)
            } else {
                q(k) as f64
            };
            narrow.round(v, saturate || e2m1) as f32
        })
        .collect();
    Ok(vec![Value::Float(Tensor::from_vec(ctx.dev, data, &shape)?)])
}

/// `DynamicQuantizeLinear`: uint8 with a scale and zero point from the input's range (which
/// always holds 0): `y`, `y_scale`, `y_zero_point`.
pub(super) fn dynamic_quantize(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.input(args, 0)?;
    let xs: Vec<f32> = x.to_f64()?.into_iter().map(|v| v as f32).collect();
    let hi = xs.iter().copied().fold(0.0f32, f32::max);
    let lo = xs.iter().copied().fold(0.0f32, f32::min);
    let scale = if hi == lo { 1.0 } else { hi - lo } / 255.0;
    let zero = (0.0 - lo / scale).clamp(0.0, 255.0).round_ties_even();
    let data = xs
        .iter()
        .map(|&v| ((v / scale).round_ties_even() + zero).clamp(0.0, 255.0) as i64)
        .collect();
    let u8s = |shape: Vec<usize>, data: Vec<i64>| IntTensor {
        shape,
        data,
        elem: dtype::UINT8,
    };
    Ok(vec![
        Value::Int(u8s(x.shape().to_vec(), data)),
        Value::Float(Tensor::from_vec(ctx.dev, vec![scale], &[])?),
        Value::Int(u8s(vec![], vec![zero as i64])),
    ])
}

/// `(a - a_zero) @ (b - b_zero)` over integers: `a` `[.., m, k]`, `b` `[.., k, n]` (batch
/// dimensions equal, or `b` 2-D), each zero point a scalar or one per row of `a` (`[m]`) /
/// column of `b` (`[n]`); the result's shape and its i64 values.
fn int_matmul(
    ctx: &Ctx,
    a: &IntTensor,
    b: &IntTensor,
    a_zero: Option<&IntTensor>,
    b_zero: Option<&IntTensor>,
) -> Result<(Vec<usize>, Vec<i64>)> {
    let (ra, rb) = (a.shape.len(), b.shape.len());
    if ra < 2 || rb < 2 {
        return Err(ctx.unsupported("integer products of vectors"));
    }
    let (m, k, n) = (a.shape[ra - 2], a.shape[ra - 1], b.shape[rb - 1]);
    let batch: usize = a.shape[..ra - 2].iter().product();
    let b_batched = rb > 2;
    if b.shape[rb - 2] != k || (b_batched && b.shape[..rb - 2] != a.shape[..ra - 2]) {
        return Err(ctx.invalid(format!(
            "shapes {:?} and {:?} do not multiply",
            a.shape, b.shape
        )));
    }
    let zero = |z: Option<&IntTensor>, len: usize, what: &str| -> Result<Vec<i64>> {
        match z {
            None => Ok(vec![0; len]),
            Some(z) if z.data.len() == 1 => Ok(vec![z.data[0]; len]),
            Some(z) if z.data.len() == len => Ok(z.data.clone()),
            Some(z) => Err(ctx.invalid(format!("a {what} zero point of shape {:?}", z.shape))),
        }
    };
    let (za, zb) = (zero(a_zero, m, "row")?, zero(b_zero, n, "column")?);
    let mut out = vec![0i64; batch * m * n];
    for bi in 0..batch {
        let (ao, bo) = (bi * m * k, if b_batched { bi * k * n } else { 0 });
        for i in 0..m {
            for p in 0..k {
                let av = a.data[ao + i * k + p] - za[i];
                let row = &b.data[bo + p * n..bo + (p + 1) * n];
                let o = &mut out[(bi * m + i) * n..(bi * m + i + 1) * n];
                for j in 0..n {
                    o[j] += av * (row[j] - zb[j]);
                }
            }
        }
    }
    let mut shape = a.shape[..ra - 2].to_vec();
    shape.extend([m, n]);
    Ok((shape, out))
}

/// An optional integer input.
fn opt_ints(ctx: &Ctx, args: &Args, i: usize) -> Result<Option<IntTensor>> {
    match args.get(i).and_then(Option::as_ref) {
        None => Ok(None),
        Some(Value::Int(t)) => Ok(Some(t.clone())),
        Some(_) => Err(ctx.invalid(format!("input {i} must be integers"))),
    }
}

/// `MatMulInteger`: the int32 product of two zero-shifted 8-bit integer tensors.
pub(super) fn matmul_integer(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let a = opt_ints(ctx, args, 0)?.ok_or_else(|| ctx.invalid("input 0 is missing"))?;
    let b = opt_ints(ctx, args, 1)?.ok_or_else(|| ctx.invalid("input 1 is missing"))?;
    let (za, zb) = (opt_ints(ctx, args, 2)?, opt_ints(ctx, args, 3)?);
    let (shape, data) = int_matmul(ctx, &a, &b, za.as_ref(), zb.as_ref())?;
    Ok(vec![Value::Int(IntTensor {
        shape,
        data,
        elem: dtype::INT32,
    })])
}

/// `QLinearMatMul`: the integer product rescaled by `a_scale · b_scale / y_scale` (per tensor),
/// rounded half to even, shifted by `y_zero_point` and saturated to its type.
pub(super) fn qlinear_matmul(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let ints = |i: usize| {
        opt_ints(ctx, args, i)?.ok_or_else(|| ctx.invalid(format!("input {i} is missing")))
    };
    let scalar = |i: usize| -> Result<f32> {
        let v = ctx.input(args, i)?.to_f64()?;
        match v[..] {
            [s] => Ok(s as f32),
            _ => Err(ctx.unsupported(format!("input {i}: scales per row or column"))),
        }
    };
    let (a, b) = (ints(0)?, ints(3)?);
    let (za, zb, zy) = (ints(2)?, ints(5)?, ints(7)?);
    let (sa, sb, sy) = (scalar(1)?, scalar(4)?, scalar(6)?);
    let (lo, hi) = int_range(zy.elem).ok_or_else(|| ctx.invalid("y_zero_point's type"))?;
    let (shape, c) = int_matmul(ctx, &a, &b, Some(&za), Some(&zb))?;
    // As ONNX's reference: the scale factor in f32, the integer product times it in f64.
    let factor = f64::from(sa * sb / sy);
    let data = c
        .into_iter()
        .map(|v| {
            let d = v as f64 * factor + zy.data[0] as f64;
            (d.round_ties_even() as i64).clamp(lo, hi)
        })
        .collect();
    Ok(vec![Value::Int(IntTensor {
        shape,
        data,
        elem: zy.elem,
    })])
}

/// `(x - x_zero) ⊛ (w - w_zero) (+ bias)` over integers, exactly (i64), with the node's
/// convolution attributes (strides, dilations, pads or auto_pad, group; 1-D or 2-D): `x`
/// `[n, c, (h,) w]`, `w` `[m, c / group, (kh,) kw]`, `x_zero` a scalar, `w_zero` a scalar or
/// one per output channel, `bias` `[m]`. The padding holds zeros of the shifted input (the
/// zero point of the original), as ONNX's reference pads. Runs on the host, where ONNX
/// integers live: exact, but not fast.
fn int_conv(
    ctx: &Ctx,
    x: &IntTensor,
    w: &IntTensor,
    x_zero: Option<&IntTensor>,
    w_zero: Option<&IntTensor>,
    bias: Option<&IntTensor>,
) -> Result<(Vec<usize>, Vec<i64>)> {
    use super::conv::{padding, pair, widened};
    let one_d = x.shape.len() == 3;
    let widen = |s: &[usize]| -> Vec<usize> {
        if one_d {
            vec![s[0], s[1], 1, s[2]]
        } else {
            s.to_vec()
        }
    };
    if !(x.shape.len() == 4 || one_d) || w.shape.len() != x.shape.len() {
        return Err(ctx.unsupported(format!(
            "a {}-D integer convolution",
            x.shape.len().saturating_sub(2)
        )));
    }
    let node = if one_d {
        widened(ctx.node)
    } else {
        ctx.node.clone()
    };
    let c2 = Ctx {
        node: &node,
        ..*ctx
    };
    let (xs, ws) = (widen(&x.shape), widen(&w.shape));
    let (&[n, c, h, wd], &[m, cg, kh, kw]) = (&xs[..], &ws[..]) else {
        unreachable!("both widened to rank 4")
    };
    let groups = ctx.int("group", 1).max(1) as usize;
    if c != cg * groups || m % groups != 0 {
        return Err(ctx.invalid(format!(
            "input {:?} and weight {:?} with {groups} groups",
            x.shape, w.shape
        )));
    }
    let stride = pair(&c2, "strides", 1)?;
    let dil = pair(&c2, "dilations", 1)?;
    let (top, left, bottom, right) = padding(&c2, (kh, kw), stride, dil, (h, wd))?;
    let extent = |i: usize, lo: usize, hi: usize, k: usize, d: usize, s: usize| {
        (i + lo + hi)
            .checked_sub((k - 1) * d + 1)
            .map(|v| v / s + 1)
    };
    let (Some(oh), Some(ow)) = (
        extent(h, top, bottom, kh, dil.0, stride.0),
        extent(wd, left, right, kw, dil.1, stride.1),
    ) else {
        return Err(ctx.invalid("a kernel larger than the padded input"));
    };
    let zx = match x_zero {
        None => 0,
        Some(z) if z.data.len() == 1 => z.data[0],
        Some(z) => {
            return Err(ctx.unsupported(format!("an input zero point of shape {:?}", z.shape)));
        }
    };
    let zw = match w_zero {
        None => vec![0; m],
        Some(z) if z.data.len() == 1 => vec![z.data[0]; m],
        Some(z) if z.data.len() == m => z.data.clone(),
        Some(z) => {
            return Err(ctx.invalid(format!(
                "a weight zero point of shape {:?} for {m} outputs",
                z.shape
            )));
        }
    };
    let b = match bias {
        None => vec![0; m],
        Some(b) if b.data.len() == m => b.data.clone(),
        Some(b) => {
            return Err(ctx.invalid(format!("a bias of shape {:?} for {m} outputs", b.shape)));
        }
    };
    let mg = m / groups;
    let mut out = vec![0i64; n * m * oh * ow];
    for bi in 0..n {
        for co in 0..m {
            let first = (co / mg) * cg;
            let plane = &mut out[(bi * m + co) * oh * ow..][..oh * ow];
            plane.fill(b[co]);
            for ci in 0..cg {
                let xp = &x.data[(bi * c + first + ci) * h * wd..][..h * wd];
                for ky in 0..kh {
                    for kx in 0..kw {
                        let wv = w.data[((co * cg + ci) * kh + ky) * kw + kx] - zw[co];
                        for oy in 0..oh {
                            let iy = (oy * stride.0 + ky * dil.0)
                                .checked_sub(top)
                                .filter(|&v| v < h);
                            let Some(iy) = iy else { continue };
                            for ox in 0..ow {
                                let ix = (ox * stride.1 + kx * dil.1)
                                    .checked_sub(left)
                                    .filter(|&v| v < wd);
                                if let Some(ix) = ix {
                                    plane[oy * ow + ox] += (xp[iy * wd + ix] - zx) * wv;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    let shape = if one_d {
        vec![n, m, ow]
    } else {
        vec![n, m, oh, ow]
    };
    Ok((shape, out))
}

/// `ConvInteger`: the int32 convolution of two zero-shifted 8-bit integer tensors.
pub(super) fn conv_integer(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = opt_ints(ctx, args, 0)?.ok_or_else(|| ctx.invalid("input 0 is missing"))?;
    let w = opt_ints(ctx, args, 1)?.ok_or_else(|| ctx.invalid("input 1 is missing"))?;
    let (zx, zw) = (opt_ints(ctx, args, 2)?, opt_ints(ctx, args, 3)?);
    let (shape, data) = int_conv(ctx, &x, &w, zx.as_ref(), zw.as_ref(), None)?;
    Ok(vec![Value::Int(IntTensor {
        shape,
        data,
        elem: dtype::INT32,
    })])
}

/// `QLinearConv`: the integer convolution (plus the int32 bias) rescaled by
/// `x_scale · w_scale / y_scale` (`w_scale` per tensor or per output channel), shifted by
/// `y_zero_point`, saturated to its type and rounded half to even, as ONNX's reference does.
pub(super) fn qlinear_conv(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let ints = |i: usize| {
        opt_ints(ctx, args, i)?.ok_or_else(|| ctx.invalid(format!("input {i} is missing")))
    };
    let floats = |i: usize| -> Result<Vec<f32>> {
        Ok(ctx
            .input(args, i)?
            .to_f64()?
            .into_iter()
            .map(|v| v as f32)
            .collect())
    };
    let (x, w) = (ints(0)?, ints(3)?);
    let (zx, zw, zy) = (ints(2)?, ints(5)?, ints(7)?);
    let (sx, sw, sy) = (floats(1)?, floats(4)?, floats(6)?);
    let bias = opt_ints(ctx, args, 8)?;
    let (lo, hi) = int_range(zy.elem).ok_or_else(|| ctx.invalid("y_zero_point's type"))?;
    let ([sx], [sy]) = (&sx[..], &sy[..]) else {
        return Err(ctx.unsupported("input or output scales that are not scalars"));
    };
    let (shape, acc) = int_conv(ctx, &x, &w, Some(&zx), Some(&zw), bias.as_ref())?;
    let m = shape[1];
    if !(sw.len() == 1 || sw.len() == m) {
        return Err(ctx.invalid(format!("{} weight scales for {m} outputs", sw.len())));
    }
    let plane = acc.len() / (shape[0] * m).max(1);
    let data = acc
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let co = (i / plane.max(1)) % m;
            // The factor in f32 (as numpy multiplies f32 arrays), the product in f64.
            let factor = f64::from(sx * sw[if sw.len() == 1 { 0 } else { co }] / sy);
            let r = (v as f64 * factor + zy.data[0] as f64).clamp(lo as f64, hi as f64);
            r.round_ties_even() as i64
        })
        .collect();
    Ok(vec![Value::Int(IntTensor {
        shape,
        data,
        elem: zy.elem,
    })])
}
