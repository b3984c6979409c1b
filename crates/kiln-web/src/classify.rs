//! An ONNX model given as bytes (a file the user picked), run on a device with its outputs
//! read back asynchronously: the page's image classifier, and its check against the outputs
//! onnxruntime wrote for a published model.

use kiln::{Device, Error, Result};
use kiln_onnx::{Model, Value, tensor_from_bytes};

/// A model's first input: its name and dimensions (`None` where the file leaves one free).
pub fn first_input(model: &[u8]) -> Result<(String, Vec<Option<usize>>)> {
    let m = Model::from_bytes(model, &Device::cpu())?;
    m.input_shapes()
        .into_iter()
        .next()
        .ok_or(Error::InvalidArgument {
            op: "onnx",
            reason: "the model has no inputs".into(),
        })
}

/// Runs `model` on `dev` with `values` of `shape` as its first input; returns its first
/// output's name, shape and values.
pub async fn run(
    model: &[u8],
    dev: &Device,
    values: &[f32],
    shape: &[usize],
) -> Result<(String, Vec<usize>, Vec<f32>)> {
    let m = Model::from_bytes(model, dev)?;
    let (name, _) = first_input(model)?;
    let x = kiln::Tensor::from_slice(dev, values, shape)?;
    let outputs = m.run(&[(name.as_str(), Value::Float(x))])?;
    let (out, value) = outputs.into_iter().next().ok_or(Error::InvalidArgument {
        op: "onnx",
        reason: "the model has no outputs".into(),
    })?;
    let shape = value.shape().to_vec();
    Ok((out, shape, read(&value).await?))
}

/// Runs `model` on `dev` with the inputs of ONNX test-data files (`TensorProto` bytes, as
/// onnxruntime's outputs were saved beside them) and returns, for each expected output, its
/// name and the largest |kiln − expected| and |expected| values.
pub async fn compare(
    model: &[u8],
    dev: &Device,
    inputs: &[Vec<u8>],
    expected: &[Vec<u8>],
) -> Result<Vec<(String, f64, f64)>> {
    let m = Model::from_bytes(model, dev)?;
    let names: Vec<String> = m.inputs().to_vec();
    let mut feeds = Vec::new();
    for (i, bytes) in inputs.iter().enumerate() {
        let (name, v) = tensor_from_bytes(bytes, &format!("input {i}"), dev)?;
        let name = if name.is_empty() {
            names[i.min(names.len() - 1)].clone()
        } else {
            name
        };
        feeds.push((name, v));
    }
    let feeds: Vec<(&str, Value)> = feeds.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
    let outputs = m.run(&feeds)?;
    let mut report = Vec::new();
    for (i, bytes) in expected.iter().enumerate() {
        let (_, want) = tensor_from_bytes(bytes, &format!("output {i}"), &Device::cpu())?;
        let (name, got) = outputs.get(i).ok_or(Error::InvalidArgument {
            op: "onnx",
            reason: format!(
                "the model gave {} outputs, the data has {}",
                outputs.len(),
                expected.len()
            ),
        })?;
        let got = read(got).await?;
        let want = want.to_f64()?;
        if got.len() != want.len() {
            return Err(Error::InvalidArgument {
                op: "onnx",
                reason: format!("{name}: {} values, expected {}", got.len(), want.len()),
            });
        }
        let diff = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (f64::from(*g) - w).abs())
            .fold(0.0, f64::max);
        let scale = want.iter().map(|w| w.abs()).fold(0.0, f64::max);
        report.push((name.clone(), diff, scale));
    }
    Ok(report)
}

/// A value's numbers, read asynchronously (integers are already on the host).
async fn read(v: &Value) -> Result<Vec<f32>> {
    match v {
        Value::Float(t) | Value::Bool(t) => t.to_vec_async().await,
        Value::Int(_) => Ok(v.to_f64()?.into_iter().map(|x| x as f32).collect()),
    }
}
