//! Shared by the examples (and by `tests/examples.rs`, which runs their cores at a small size):
//! the digits data, the models, the training loop, a progress bar and a PNG loss plot.

#![allow(dead_code)]

pub mod data;
pub mod models;
pub mod plot;
pub mod progress;
pub mod train;
