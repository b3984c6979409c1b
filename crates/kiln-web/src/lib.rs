//! kiln in the browser.
//!
//! The engine compiled for `wasm32-unknown-unknown` runs on the page's WebGPU adapter (or on
//! kiln's CPU backend where the browser has none). Everything here is ordinary async Rust over
//! kiln's public API, so the native tests run the same code that the page runs:
//!
//! - [`digits`]: trains the digits classifier (the `digits` example's MLP, data and schedule),
//!   reading losses and predictions back asynchronously once per epoch;
//! - [`check`]: kiln's op table (`tests/optable`, the cases the native suite runs on every
//!   device) against its f64 references and against the CPU backend, on any device;
//! - [`classify`]: an ONNX model from bytes, run on the device.
//!
//! In the browser, `web` exports these to JavaScript (`www/app.js` drives them).

pub mod check;
pub mod classify;
pub mod digits;
mod json;
#[cfg(target_arch = "wasm32")]
mod web;

// The op table's pure helpers and its cases, shared with the native suite (tests/).
#[allow(missing_docs, clippy::all)]
#[path = "../../../tests/common/math.rs"]
mod common;
#[allow(missing_docs, clippy::all)]
#[path = "../../../tests/optable/mod.rs"]
mod optable;
// The digits data set and its split, shared with the examples.
#[allow(dead_code)]
#[path = "../../../examples/common/data.rs"]
mod data;

pub use json::Json;
