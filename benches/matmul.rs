//! Square matmul on every device: `cargo bench --bench matmul`.

mod common;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kiln::Tensor;
use std::time::Duration;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("matmul");
    g.measurement_time(Duration::from_secs(3)).sample_size(10);
    for dev in common::devices() {
        for n in [128usize, 256, 512] {
            let a = Tensor::randn(&dev, &[n, n], 1).unwrap();
            let b = Tensor::randn(&dev, &[n, n], 2).unwrap();
            dev.tune_matmul(n, n, n).unwrap();
            g.throughput(Throughput::Elements((2 * n * n * n) as u64));
            g.bench_with_input(BenchmarkId::new(common::label(&dev), n), &n, |bench, _| {
                bench.iter(|| {
                    let c = a.matmul(&b).unwrap();
                    dev.synchronize().unwrap();
                    c
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
