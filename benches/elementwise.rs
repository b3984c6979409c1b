//! Elementwise bandwidth on every device: `cargo bench --bench elementwise`.

mod common;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kiln::Tensor;
use std::time::Duration;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("elementwise");
    g.measurement_time(Duration::from_secs(3)).sample_size(10);
    for dev in common::devices() {
        for n in [1usize << 16, 1 << 20] {
            let x = Tensor::randn(&dev, &[n], 1).unwrap();
            let y = Tensor::randn(&dev, &[n], 2).unwrap();
            g.throughput(Throughput::Bytes(8 * n as u64));
            g.bench_with_input(
                BenchmarkId::new(format!("gelu/{}", common::label(&dev)), n),
                &n,
                |b, _| {
                    b.iter(|| {
                        let r = x.gelu().unwrap();
                        dev.synchronize().unwrap();
                        r
                    })
                },
            );
            g.throughput(Throughput::Bytes(12 * n as u64));
            g.bench_with_input(
                BenchmarkId::new(format!("add/{}", common::label(&dev)), n),
                &n,
                |b, _| {
                    b.iter(|| {
                        let r = x.add(&y).unwrap();
                        dev.synchronize().unwrap();
                        r
                    })
                },
            );
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
