//! Development timing of the row kernels (softmax, layer norm) on [8192, 512] f32, and of the
//! allocation a fresh output costs, to separate kernel time from engine overhead.
use flamingo_kernels::cpu::{norm, softmax};
use std::time::Instant;
fn time(name: &str, mut f: impl FnMut()) {
    for _ in 0..3 {
        f();
    }
    let t = Instant::now();
    for _ in 0..20 {
        f();
    }
    println!("{name}: {:.3} ms", t.elapsed().as_secs_f64() * 50.0);
}
// Tensors start on a cache line (see `CacheLineAlloc`); FLAMINGO_ALIGNED_ALLOC=0 turns it off.
#[global_allocator]
static ALLOC: flamingo_kernels::alloc::CacheLineAlloc = flamingo_kernels::alloc::CacheLineAlloc;

fn main() {
    let (rows, n) = (8192, 512);
    let x: Vec<f32> = (0..rows * n).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    let g = vec![1.1f32; n];
    let b = vec![0.1f32; n];
    let mut out = vec![0.0f32; rows * n];
    let (mut mean, mut rstd) = (vec![0.0f32; rows], vec![0.0f32; rows]);
    time("softmax kernel", || softmax::softmax_rows(&x, n, false, &mut out));
    time("layer_norm kernel", || norm::layer_norm_rows(&x, n, Some(&g), Some(&b), 1e-5, &mut out, &mut mean, &mut rstd));
    time("alloc+zero 16MB", || {
        let v = vec![0.0f32; rows * n];
        std::hint::black_box(&v);
    });
}
