//! Development timing of the fused AdamW update over 31.5 M parameters (the `small` config's
//! trainable count), on both threads. `cargo run -p flamingo-kernels --release --example adamw_speed`
use flamingo_kernels::cpu::optim::{adamw, AdamWStep};
use std::time::Instant;

// Tensors start on a cache line (see `CacheLineAlloc`); FLAMINGO_ALIGNED_ALLOC=0 turns it off.
#[global_allocator]
static ALLOC: flamingo_kernels::alloc::CacheLineAlloc = flamingo_kernels::alloc::CacheLineAlloc;

fn main() {
    let n = 31_518_736;
    let mut p: Vec<f32> = (0..n).map(|i| (i % 101) as f32 * 0.01).collect();
    let g: Vec<f32> = (0..n).map(|i| (i % 37) as f32 * 0.001 - 0.01).collect();
    let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let mut times = Vec::new();
    for step in 1..=13u64 {
        let h = AdamWStep { lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1, step };
        let t = Instant::now();
        pool.install(|| adamw(&mut p, &g, &mut m, &mut v, h));
        if step > 3 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    println!("adamw over {n} f32 parameters: median {:.1} ms (min {:.1}, max {:.1})", times[times.len() / 2], times[0], times[times.len() - 1]);
}
