//! The JavaScript face of kiln-web (wasm32 only): the page calls these through wasm-bindgen's
//! glue, and they hand back JSON text.

use crate::{Json, check, classify, digits};
use kiln::Device;
use std::cell::RefCell;
use std::fmt::Display;
use wasm_bindgen::prelude::*;

thread_local! {
    /// The device `init` opened; the page has one thread.
    static DEVICE: RefCell<Option<Device>> = const { RefCell::new(None) };
}

fn device() -> Result<Device, JsValue> {
    DEVICE
        .with(|d| d.borrow().clone())
        .ok_or_else(|| JsValue::from_str("kiln-web: call init() first"))
}

fn js(e: impl Display) -> JsValue {
    JsValue::from_str(&e.to_string())
}

/// `log` records to the browser console (kiln's and wgpu's warnings, kiln's info).
struct Console;

impl log::Log for Console {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
            || (m.level() <= log::Level::Info && m.target().starts_with("kiln"))
    }

    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let text = JsValue::from_str(&format!("{} {}: {}", r.level(), r.target(), r.args()));
        match r.level() {
            log::Level::Error => web_sys::console::error_1(&text),
            log::Level::Warn => web_sys::console::warn_1(&text),
            _ => web_sys::console::log_1(&text),
        }
    }

    fn flush(&self) {}
}

static CONSOLE: Console = Console;

#[wasm_bindgen(start)]
fn start() {
    std::panic::set_hook(Box::new(|info| {
        let message = format!("kiln-web panicked: {info}");
        web_sys::console::error_1(&JsValue::from_str(&message));
        // A page under test ends with the panic as its result, not a wait for one.
        let result = js_sys::Object::new();
        let _ = js_sys::Reflect::set(&result, &"error".into(), &JsValue::from_str(&message));
        let _ = js_sys::Reflect::set(&js_sys::global(), &"kilnResult".into(), &result);
    }));
    if log::set_logger(&CONSOLE).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

fn describe(dev: &Device, note: &str) -> String {
    let i = dev.info();
    let mut j = Json::new()
        .str("name", &i.name)
        .str("kind", &format!("{:?}", i.kind))
        .str("backend", &i.backend)
        .str("device_type", &i.device_type)
        .str("driver", &i.driver)
        .strs("features", i.features.iter().map(String::as_str))
        .str("note", note);
    if let Some(l) = i.limits {
        j = j.num("max_buffer_size", l.max_buffer_size as f64).num(
            "max_storage_buffer_binding_size",
            l.max_storage_buffer_binding_size as f64,
        );
    }
    j.finish()
}

/// Opens the device every later call uses: the browser's WebGPU adapter when `gpu` is true
/// and there is one (with the adapter's own limits), else kiln's CPU backend, saying why in
/// `note`. Returns the device's description as JSON.
#[wasm_bindgen]
pub async fn init(gpu: bool) -> Result<String, JsValue> {
    let (dev, note) = if gpu {
        match Device::gpu_async().await {
            Ok(d) => (d, String::new()),
            Err(e) => (
                Device::cpu(),
                format!("WebGPU is not available here ({e}); running on kiln's CPU backend"),
            ),
        }
    } else {
        (Device::cpu(), "the CPU backend was chosen".to_string())
    };
    let info = describe(&dev, &note);
    DEVICE.with(|d| *d.borrow_mut() = Some(dev));
    Ok(info)
}

/// The digits data's sizes: `{"train": n, "test": n}`.
#[wasm_bindgen]
pub fn digits_sizes() -> String {
    let (train, test) = digits::sizes();
    Json::new()
        .num("train", train as f64)
        .num("test", test as f64)
        .finish()
}

/// Trains the digits classifier for `epochs` epochs on the device, calling `on_epoch` with
/// each epoch's JSON (`epoch`, `losses`, `accuracy`); resolves to the held-out accuracy.
#[wasm_bindgen]
pub async fn train_digits(epochs: u32, on_epoch: js_sys::Function) -> Result<f64, JsValue> {
    let dev = device()?;
    digits::train(&dev, epochs as usize, |e| {
        let text = Json::new()
            .num("epoch", e.epoch as f64)
            .nums("losses", e.losses.iter().map(|&l| f64::from(l)))
            .num("accuracy", e.accuracy)
            .finish();
        let _ = on_epoch.call1(&JsValue::NULL, &JsValue::from_str(&text));
    })
    .await
    .map_err(js)
}

fn op_json(r: &check::OpResult) -> String {
    Json::new()
        .str("name", r.name)
        .num("samples", r.samples as f64)
        .num("half_samples", r.half_samples as f64)
        .num("error_cases", r.error_cases as f64)
        .num("max_vs_cpu", r.max_vs_cpu)
        .bool("passed", r.failure.is_none())
        .bool("needs_blocking_read", r.needs_blocking_read)
        .str("failure", r.failure.as_deref().unwrap_or(""))
        .finish()
}

/// Runs kiln's op table on the device against its references and the CPU backend, calling
/// `on_op(index, count, json)` after each op; resolves to a JSON summary with every op.
#[wasm_bindgen]
pub async fn check_ops(on_op: js_sys::Function) -> Result<String, JsValue> {
    let dev = device()?;
    let count = check::op_count();
    let results = check::run(&dev, |i, r| {
        let _ = on_op.call3(
            &JsValue::NULL,
            &JsValue::from(i as u32),
            &JsValue::from(count as u32),
            &JsValue::from_str(&op_json(r)),
        );
    })
    .await;
    let ops: Vec<String> = results.iter().map(op_json).collect();
    let passed = results.iter().filter(|r| r.failure.is_none()).count();
    let blocked = results.iter().filter(|r| r.needs_blocking_read).count();
    Ok(Json::new()
        .num("ops", results.len() as f64)
        .num("passed", passed as f64)
        .num("needs_blocking_read", blocked as f64)
        .num("failed", (results.len() - passed - blocked) as f64)
        .num(
            "samples",
            results.iter().map(|r| r.samples).sum::<usize>() as f64,
        )
        .num(
            "half_samples",
            results.iter().map(|r| r.half_samples).sum::<usize>() as f64,
        )
        .num(
            "error_cases",
            results.iter().map(|r| r.error_cases).sum::<usize>() as f64,
        )
        .num(
            "max_vs_cpu",
            results.iter().map(|r| r.max_vs_cpu).fold(0.0, f64::max),
        )
        .raw("results", &format!("[{}]", ops.join(",")))
        .finish())
}

/// An ONNX model's first input: `{"name": ..., "dims": [...]}` (free dimensions as -1).
#[wasm_bindgen]
pub fn onnx_input(model: Vec<u8>) -> Result<String, JsValue> {
    let (name, dims) = classify::first_input(&model).map_err(js)?;
    Ok(Json::new()
        .str("name", &name)
        .nums("dims", dims.iter().map(|d| d.map_or(-1.0, |d| d as f64)))
        .finish())
}

/// Runs an ONNX model on the device with `values` of `shape` as its first input; resolves to
/// its first output as `{"name", "shape", "values"}`.
#[wasm_bindgen]
pub async fn onnx_run(
    model: Vec<u8>,
    values: Vec<f32>,
    shape: Vec<u32>,
) -> Result<String, JsValue> {
    let dev = device()?;
    let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    let (name, out_shape, out) = classify::run(&model, &dev, &values, &shape)
        .await
        .map_err(js)?;
    Ok(Json::new()
        .str("name", &name)
        .nums("shape", out_shape.iter().map(|&d| d as f64))
        .nums("values", out.iter().map(|&v| f64::from(v)))
        .finish())
}

/// Runs an ONNX model on the device with the inputs of ONNX test-data files and compares its
/// outputs with the expected files (`TensorProto` bytes); resolves to
/// `[{"name", "max_diff", "max_abs"}]`.
#[wasm_bindgen]
pub async fn onnx_compare(
    model: Vec<u8>,
    inputs: Vec<js_sys::Uint8Array>,
    expected: Vec<js_sys::Uint8Array>,
) -> Result<String, JsValue> {
    let dev = device()?;
    let bytes = |v: &[js_sys::Uint8Array]| v.iter().map(|a| a.to_vec()).collect::<Vec<_>>();
    let report = classify::compare(&model, &dev, &bytes(&inputs), &bytes(&expected))
        .await
        .map_err(js)?;
    let items: Vec<String> = report
        .iter()
        .map(|(n, d, s)| {
            Json::new()
                .str("name", n)
                .num("max_diff", *d)
                .num("max_abs", *s)
                .finish()
        })
        .collect();
    Ok(format!("[{}]", items.join(",")))
}
