//! Run an ONNX model on the device `Device::from_env()` picks, print its outputs and the time of
//! a run (median of `--runs`, each including reading the outputs back).
//!
//! ```sh
//! cargo run --release --example onnx -- model.onnx                      # seeded random inputs
//! cargo run --release --example onnx -- model.onnx --input x=x.pb      # an ONNX TensorProto file
//! cargo run --release --example onnx -- model.onnx --runs 20 --json out.json
//! cargo run --release --example onnx -- model.onnx --profile --runs 20 # time per op type
//! cargo run --release --example onnx -- model.onnx --compare cpu        # node by node
//! ```
//!
//! `--compare DEVICE` (`cpu`, `gpu` or `software`) runs the model on that device too and
//! compares every node's outputs with the first device's (`Model::compare`): it prints one
//! line per node output and names the first node whose outputs differ, within
//! `--tolerance ABS,REL` (default 1e-4,1e-3: `|want - got| <= ABS + REL·|want|`).
//!
//! Symbolic input dimensions (a batch size) are 1 unless `--dim N` sets them. `--json FILE`
//! writes every output's shape and values, for `scripts/onnx_compare.py`.

use kiln::Device;
use kiln_onnx::{Model, Value, load_tensor};
use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("warn,wgpu_hal=off"),
    )
    .init();
    let mut it = std::env::args().skip(1);
    let path = PathBuf::from(it.next().ok_or(
        "usage: onnx MODEL.onnx [--input name=file.pb] [--runs N] [--dim N] [--json FILE] \
         [--profile] [--compare cpu|gpu|software [--tolerance ABS,REL]]",
    )?);
    let (mut files, mut runs, mut dim, mut json) = (Vec::new(), 10usize, 1usize, None);
    let mut profile = false;
    let (mut compare, mut tolerance) = (None, kiln_onnx::Tolerance::default());
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--input" => {
                let v = value()?;
                let (name, file) = v.split_once('=').ok_or("--input takes name=file.pb")?;
                files.push((name.to_string(), PathBuf::from(file)));
            }
            "--runs" => runs = value()?.parse()?,
            "--dim" => dim = value()?.parse()?,
            "--json" => json = Some(PathBuf::from(value()?)),
            "--profile" => profile = true,
            "--compare" => compare = Some(value()?),
            "--tolerance" => {
                let v = value()?;
                let (abs, rel) = v.split_once(',').ok_or("--tolerance takes ABS,REL")?;
                tolerance = kiln_onnx::Tolerance {
                    abs: abs.parse()?,
                    rel: rel.parse()?,
                };
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let dev = Device::from_env()?;
    println!("device: {} — {}", dev.info().name, dev.info().reason);
    let start = Instant::now();
    let model = Model::load(&path, &dev)?;
    println!(
        "loaded {} in {:.2?}: ops {}",
        path.display(),
        start.elapsed(),
        model.op_types().join(", ")
    );
    let mut inputs: Vec<(String, Value)> = Vec::new();
    for (k, (name, dims)) in model.input_shapes().into_iter().enumerate() {
        let value = match files.iter().find(|(n, _)| *n == name) {
            Some((_, file)) => load_tensor(file, &dev)?.1,
            None => {
                let shape: Vec<usize> = dims.iter().map(|d| d.unwrap_or(dim)).collect();
                Value::Float(kiln::Tensor::randn(&dev, &shape, 1000 + k as u64)?)
            }
        };
        println!("input {name}: {:?}", value.shape());
        inputs.push((name, value));
    }
    let named: Vec<(&str, Value)> = inputs
        .iter()
        .map(|(n, v)| (n.as_str(), v.clone()))
        .collect();
    if profile {
        model.run(&named)?; // warm-up: pipelines, tuning
        // Each op type's median over `--runs` profiled runs (one VM hiccup does not show).
        let mut per_op: std::collections::BTreeMap<String, (usize, Vec<f64>)> = Default::default();
        for _ in 0..runs.max(1) {
            for (op, n, t) in model.run_profiled(&named)?.1 {
                let e = per_op.entry(op).or_default();
                e.0 = n;
                e.1.push(t.as_secs_f64() * 1e3);
            }
        }
        let mut rows: Vec<(String, usize, f64)> = per_op
            .into_iter()
            .map(|(op, (n, mut ts))| {
                ts.sort_by(f64::total_cmp);
                (op, n, ts[ts.len() / 2])
            })
            .collect();
        rows.sort_by(|a, b| b.2.total_cmp(&a.2));
        println!("time per op type (synchronized after every node; median of {runs} runs):");
        for (op, n, t) in rows {
            println!("  {op:<24} {n:>4} nodes {t:>10.3} ms");
        }
    }
    if let Some(name) = compare {
        let other = match name.as_str() {
            "cpu" => Device::cpu(),
            "gpu" => Device::gpu()?,
            "software" => Device::software()?,
            other => return Err(format!("--compare {other}: one of cpu, gpu, software").into()),
        };
        let other_model = Model::load(&path, &other)?;
        let comparison = model.compare(&other_model, &named, tolerance)?;
        println!("{comparison}");
        if comparison.first_difference().is_some() {
            std::process::exit(2);
        }
        return Ok(());
    }
    let mut times = Vec::new();
    let mut outputs = Vec::new();
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        outputs = model.run(&named)?;
        // Read back as the values are (f32 floats; integers live on the host already), as
        // onnxruntime hands its outputs over.
        let read: Vec<Vec<f32>> = outputs
            .iter()
            .filter_map(|(_, v)| match v {
                Value::Float(t) | Value::Bool(t) => Some(t.to_vec()),
                Value::Int(_) => None,
            })
            .collect::<Result<_, _>>()?;
        times.push(t.elapsed().as_secs_f64());
        drop(read);
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let mut out_json = Vec::new();
    for (name, v) in &outputs {
        let values = v.to_f64()?;
        let head: Vec<String> = values.iter().take(6).map(|x| format!("{x:.5}")).collect();
        println!(
            "output {name}: {:?} [{}{}]",
            v.shape(),
            head.join(", "),
            if values.len() > 6 { ", ..." } else { "" }
        );
        let list: Vec<String> = values
            .iter()
            .map(|x| {
                if x.is_finite() {
                    format!("{x}")
                } else {
                    "null".into()
                }
            })
            .collect();
        out_json.push(format!(
            "\"{name}\": {{\"shape\": {:?}, \"values\": [{}]}}",
            v.shape(),
            list.join(",")
        ));
    }
    println!(
        "run: median {:.3} ms over {} runs (outputs read back)",
        median * 1e3,
        times.len()
    );
    if let Some(file) = json {
        let text = format!(
            "{{\"median_ms\": {}, \"outputs\": {{{}}}}}",
            median * 1e3,
            out_json.join(", ")
        );
        std::fs::write(&file, text)?;
    }
    Ok(())
}
