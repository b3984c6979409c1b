//! Normalisations: `BatchNormalization` (inference and training), `InstanceNormalization`,
//! `LpNormalization`, `RMSNormalization`, `LayerNormalization`.

use super::{Args, Ctx};
use crate::value::Value;
use kiln::Result;
use kiln::Tensor;

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

/// `InstanceNormalization`: each (image, channel) plane of `[n, c, ...]` normalised by its own
/// mean and (biased) variance, then scaled and shifted per channel: kiln's `layer_norm` over
/// the planes as rows.
pub(super) fn instance_norm(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.float_input(args, 0)?;
    let (scale, bias) = (ctx.float_input(args, 1)?, ctx.float_input(args, 2)?);
    let shape = x.shape().to_vec();
    if shape.len() < 3 {
        return Err(ctx.invalid(format!("input of shape {shape:?}: rank 3 or more")));
    }
    let c = shape[1];
    if scale.shape() != [c] || bias.shape() != [c] {
        return Err(ctx.invalid(format!(
            "scale {:?} and B {:?} for {c} channels",
            scale.shape(),
            bias.shape()
        )));
    }
    let plane: usize = shape[2..].iter().product();
    let rows = x.reshape(&[shape[0] * c, plane])?;
    let y = rows
        .layer_norm(None, None, ctx.float("epsilon", 1e-5))?
        .reshape(&shape)?;
    let r = shape.len();
    let y = y
        .mul(&per_channel(scale, r)?)?
        .add(&per_channel(bias, r)?)?;
    Ok(vec![Value::Float(y)])
}
