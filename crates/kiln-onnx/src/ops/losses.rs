//! The ONNX losses `NegativeLogLikelihoodLoss` and `SoftmaxCrossEntropyLoss`, on the host.

use super::{Args, Ctx, like};
use crate::value::{IntTensor, Value};
use kiln::Result;

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
