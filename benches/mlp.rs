//! An MLP forward pass (batch 1024, 64-256-256-10, fused linear layers) with readback, on every
//! device: `cargo bench --bench mlp`.

mod common;

use criterion::{Criterion, criterion_group, criterion_main};
use kiln::{Tensor, UnaryOp};
use std::time::Duration;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("mlp_forward");
    g.measurement_time(Duration::from_secs(3)).sample_size(10);
    let widths = [64usize, 256, 256, 10];
    for dev in common::devices() {
        let x = Tensor::randn(&dev, &[1024, widths[0]], 1).unwrap();
        let layers: Vec<(Tensor, Tensor)> = widths
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                (
                    Tensor::randn(&dev, &[w[1], w[0]], 10 + i as u64).unwrap(),
                    Tensor::zeros(&dev, &[w[1]]).unwrap(),
                )
            })
            .collect();
        g.bench_function(common::label(&dev), |b| {
            b.iter(|| {
                let mut h = x.clone();
                for (i, (w, bias)) in layers.iter().enumerate() {
                    let act = (i + 1 < layers.len()).then_some(UnaryOp::Relu);
                    h = h.linear(w, Some(bias), act).unwrap();
                }
                h.to_vec().unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
