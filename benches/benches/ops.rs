//! Criterion benchmarks of the `ops` suite (the same cases `flamingo bench --suite ops` runs).
use criterion::{criterion_group, criterion_main, Criterion};

// The same allocator as the `flamingo` program, so both time the same memory layout.
#[global_allocator]
static ALLOC: flamingo_engine::CacheLineAlloc = flamingo_engine::CacheLineAlloc;

fn ops(c: &mut Criterion) {
    let mut group = c.benchmark_group("ops");
    group.sample_size(20);
    for mut case in flamingo_benches::suites::cases("ops").expect("ops suite exists") {
        group.bench_function(case.name, |b| b.iter(|| (case.run)()));
    }
    group.finish();
}

criterion_group!(benches, ops);
criterion_main!(benches);
