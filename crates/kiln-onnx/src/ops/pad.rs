//! `Pad`: constant (one kiln `pad`, negative amounts crop), edge, reflect and wrap (one
//! `index_select` per padded axis) on the device for floats; on the host for integers.

use super::{Args, Ctx, like, strides};
use crate::value::Value;
use kiln::Result;
use kiln::Tensor;

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
            // Edge, reflect, wrap: per padded axis, a selection of the source rows (every
            // output position has one: the input is not empty). Where the input is kept
            // whole (no cropping), only the padded rows are selected and joined to it.
            let mut y = t.clone();
            for a in 0..r {
                let idx: Vec<u32> = (0..out_shape[a])
                    .map(|p| source(a, p).map(|i| i as u32))
                    .collect::<Option<_>>()
                    .ok_or_else(|| ctx.invalid("a padded position without a source"))?;
                if idx.len() == shape[a] && idx.iter().enumerate().all(|(i, &k)| k as usize == i) {
                    continue;
                }
                let select = |y: &Tensor, rows: &[u32]| -> Result<Tensor> {
                    let ids = Tensor::from_vec_u32(ctx.dev, rows.to_vec(), &[rows.len()])?;
                    y.index_select(a as isize, &ids)
                };
                let after = out_shape[a] as i64 - shape[a] as i64 - begin[a];
                y = if begin[a] >= 0 && after >= 0 {
                    let (b, dim) = (begin[a] as usize, shape[a]);
                    let mut parts = Vec::with_capacity(3);
                    if b > 0 {
                        parts.push(select(&y, &idx[..b])?);
                    }
                    parts.push(y.clone());
                    if b + dim < idx.len() {
                        parts.push(select(&y, &idx[b + dim..])?);
                    }
                    Tensor::cat(&parts.iter().collect::<Vec<_>>(), a as isize)?
                } else {
                    select(&y, &idx)?
                };
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
