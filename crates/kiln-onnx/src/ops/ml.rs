//! The `ai.onnx.ml` ops that scikit-learn's linear models and pipelines export through
//! skl2onnx (with `zipmap: False`): `Scaler`, `Normalizer`, `LinearClassifier`,
//! `LinearRegressor`, `Binarizer`, `ArrayFeatureExtractor`. The arithmetic runs on kiln's ops
//! on the model's device; class labels (integers) come back to the host.

use super::{Args, Ctx};
use crate::value::{IntTensor, Value};
use kiln::Result;
use kiln::Tensor;

/// Float attribute list `name` (empty when absent).
fn floats(ctx: &Ctx, name: &str) -> Vec<f32> {
    ctx.node
        .attribute
        .iter()
        .find(|a| a.name == name)
        .map(|a| a.floats.clone())
        .unwrap_or_default()
}

/// The 2-D float input `[N, C]` (a 1-D input is one row), and C.
fn rows(ctx: &Ctx, args: &Args) -> Result<(Tensor, usize)> {
    let x = ctx.input(args, 0)?.float_on(ctx.dev)?;
    let x = match x.shape() {
        [c] => x.reshape(&[1, *c])?,
        [_, _] => x,
        s => return Err(ctx.invalid(format!("input {s:?}: 1-D or 2-D expected"))),
    };
    let c = x.shape()[1];
    Ok((x, c))
}

/// A per-column operand: one value for every column, or `c` values.
fn per_column(ctx: &Ctx, name: &str, v: Vec<f32>, c: usize, default: f32) -> Result<Tensor> {
    let v = match v.len() {
        0 => vec![default],
        1 => v,
        n if n == c => v,
        n => return Err(ctx.invalid(format!("{name} holds {n} values for {c} columns"))),
    };
    let n = v.len();
    Tensor::from_vec(ctx.dev, v, &[1, n])
}

/// `Scaler`: `(x - offset) · scale`, per column.
pub(super) fn scaler(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let (x, c) = rows(ctx, args)?;
    let offset = per_column(ctx, "offset", floats(ctx, "offset"), c, 0.0)?;
    let scale = per_column(ctx, "scale", floats(ctx, "scale"), c, 1.0)?;
    Ok(vec![Value::Float(x.sub(&offset)?.mul(&scale)?)])
}

/// `Normalizer`: each row divided by its max, its L1 norm or its L2 norm.
pub(super) fn normalizer(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let (x, _) = rows(ctx, args)?;
    let norm = match ctx.string("norm", "MAX").as_str() {
        "MAX" => x.max(-1, true)?,
        "L1" => x.abs()?.sum(-1, true)?,
        "L2" => x.square()?.sum(-1, true)?.sqrt()?,
        other => return Err(ctx.invalid(format!("norm {other}"))),
    };
    Ok(vec![Value::Float(x.div(&norm)?)])
}

/// `x · coefficientsᵀ + intercepts` for a linear model with `outputs` rows of coefficients.
fn linear_scores(ctx: &Ctx, x: &Tensor, c: usize, outputs: usize) -> Result<Tensor> {
    let coef = floats(ctx, "coefficients");
    if outputs == 0 || coef.len() != outputs * c {
        return Err(ctx.invalid(format!(
            "{} coefficients for {outputs} output(s) of {c} features",
            coef.len()
        )));
    }
    let w = Tensor::from_vec(ctx.dev, coef, &[outputs, c])?;
    let b = match floats(ctx, "intercepts") {
        v if v.is_empty() => None,
        v if v.len() == outputs => Some(Tensor::from_vec(ctx.dev, v, &[outputs])?),
        v => {
            return Err(ctx.invalid(format!("{} intercepts for {outputs} output(s)", v.len())));
        }
    };
    x.linear(&w, b.as_ref(), None)
}

/// ONNX-ML's `post_transform` on scores `[N, E]`.
fn post_transform(ctx: &Ctx, s: Tensor) -> Result<Tensor> {
    match ctx.string("post_transform", "NONE").as_str() {
        "NONE" => Ok(s),
        "SOFTMAX" => s.softmax(-1),
        "LOGISTIC" => s.sigmoid(),
        other => Err(ctx.unsupported(format!("post_transform {other}"))),
    }
}

/// `LinearClassifier` with integer class labels and one row of coefficients per class:
/// the label of each row's highest score, and the (post-transformed) scores.
pub(super) fn linear_classifier(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    if ctx.attr_present("classlabels_strings") {
        return Err(ctx.unsupported("string class labels"));
    }
    let labels = ctx.ints("classlabels_ints").unwrap_or_default();
    let (x, c) = rows(ctx, args)?;
    let outputs = floats(ctx, "coefficients").len() / c.max(1);
    if outputs != labels.len() || outputs < 2 {
        // One row for two labels is the binary form, whose score layout ONNX leaves to
        // the runtime.
        return Err(ctx.unsupported(format!(
            "{outputs} coefficient row(s) for {} class label(s)",
            labels.len()
        )));
    }
    let scores = linear_scores(ctx, &x, c, outputs)?;
    let best = scores.argmax(-1, false)?.to_vec_u32()?;
    let label = best.iter().map(|&i| labels[i as usize]).collect::<Vec<_>>();
    let n = label.len();
    Ok(vec![
        Value::Int(IntTensor::new(vec![n], label)),
        Value::Float(post_transform(ctx, scores)?),
    ])
}

/// `LinearRegressor`: `targets` outputs per row.
pub(super) fn linear_regressor(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let (x, c) = rows(ctx, args)?;
    let targets = usize::try_from(ctx.int("targets", 1))
        .map_err(|_| ctx.invalid("targets must be positive"))?;
    let y = linear_scores(ctx, &x, c, targets)?;
    Ok(vec![Value::Float(post_transform(ctx, y)?)])
}

/// `Binarizer`: 1 where the input exceeds `threshold`, else 0 (same shape and type).
pub(super) fn binarizer(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let t = ctx.float("threshold", 0.0);
    let y = match ctx.input(args, 0)? {
        Value::Int(i) => Value::Int(IntTensor {
            data: i.data.iter().map(|&v| i64::from(v as f32 > t)).collect(),
            ..i.clone()
        }),
        v => {
            let x = v.tensor("onnx")?;
            // gt gives a 0/1 mask; NaN stays NaN, as in ONNX Runtime.
            let nan = x.ne(x)?;
            Value::Float(x.gt(&Tensor::full(ctx.dev, &[1], t)?)?.add(&x.mul(&nan)?)?)
        }
    };
    Ok(vec![y])
}

/// `ArrayFeatureExtractor`: the elements of the last axis at the given indices (a 1-D input
/// gives one row).
pub(super) fn array_feature_extractor(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.input(args, 0)?;
    let idx = ctx
        .int_input(args, 1)?
        .ok_or_else(|| ctx.invalid("no indices"))?;
    let shape = x.shape().to_vec();
    let Some(&last) = shape.last() else {
        return Err(ctx.invalid("a scalar input"));
    };
    let picks: Vec<usize> = idx
        .data
        .iter()
        .map(|&i| {
            usize::try_from(i)
                .ok()
                .filter(|&i| i < last)
                .ok_or_else(|| ctx.invalid(format!("index {i} for a last axis of {last}")))
        })
        .collect::<Result<_>>()?;
    let mut out_shape = if shape.len() == 1 {
        vec![1]
    } else {
        shape[..shape.len() - 1].to_vec()
    };
    out_shape.push(picks.len());
    match x {
        Value::Int(i) => {
            let rows = i.data.len() / last;
            let data = (0..rows)
                .flat_map(|r| picks.iter().map(move |&p| r * last + p))
                .map(|at| i.data[at])
                .collect();
            Ok(vec![Value::Int(IntTensor {
                shape: out_shape,
                data,
                elem: i.elem,
            })])
        }
        v => {
            let ids: Vec<u32> = picks.iter().map(|&p| p as u32).collect();
            let n = ids.len();
            let ids = Tensor::from_vec_u32(ctx.dev, ids, &[n])?;
            let t = v.tensor("onnx")?.index_select(-1, &ids)?;
            Ok(vec![Value::Float(t.reshape(&out_shape)?)])
        }
    }
}
