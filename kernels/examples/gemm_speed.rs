//! Development timing of f32 GEMMs through `gemm_raw` at square sizes and at the training step's
//! shapes (a development aid). `FLAMINGO_GEMM=crate|ours` picks the implementation.
//!
//! `cargo run -p flamingo-kernels --release --example gemm_speed [-- quick]`
use flamingo_kernels::cpu::gemm::{gemm_raw, MatRef};
use std::time::Instant;

fn time(m: usize, n: usize, k: usize, ta: bool, tb: bool, par: bool) -> f64 {
    let a: Vec<f32> = (0..m * k).map(|i| (i % 17) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 13) as f32 * 0.1).collect();
    let mut c = vec![0.0f32; m * n];
    let l = if ta { MatRef { offset: 0, rs: 1, cs: m as isize } } else { MatRef { offset: 0, rs: k as isize, cs: 1 } };
    let r = if tb { MatRef { offset: 0, rs: 1, cs: k as isize } } else { MatRef { offset: 0, rs: n as isize, cs: 1 } };
    let mut run = || unsafe { gemm_raw(m, n, k, c.as_mut_ptr(), n as isize, false, &a, l, &b, r, par) };
    for _ in 0..3 {
        run();
    }
    let flops = 2.0 * (m * n * k) as f64;
    let reps = ((3e9 / flops) as usize).max(3);
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..reps {
            run();
        }
        best = best.min(t.elapsed().as_secs_f64() / reps as f64);
    }
    flops / best / 1e9
}

// Tensors start on a cache line (see `CacheLineAlloc`); FLAMINGO_ALIGNED_ALLOC=0 turns it off.
#[global_allocator]
static ALLOC: flamingo_kernels::alloc::CacheLineAlloc = flamingo_kernels::alloc::CacheLineAlloc;

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let which = std::env::var("FLAMINGO_GEMM").unwrap_or_else(|_| "default".into());
    println!("FLAMINGO_GEMM={which}  (GFLOP/s, best of 3)");
    let mut cases = vec![(256, 256, 256, false, false), (512, 512, 512, false, false), (1024, 1024, 1024, false, false)];
    cases.extend([
        (2048, 512, 512, false, true),
        (2048, 512, 512, false, false),
        (512, 512, 2048, true, false),
        (2048, 1360, 512, false, true),
        (2048, 512, 2048, true, false),
        (2048, 8194, 512, false, true),
        (512, 8194, 2048, true, false),
        (64, 80, 64, false, true),
        (32, 256, 288, false, false),
    ]);
    if quick {
        cases.truncate(6);
    }
    for (m, n, k, ta, tb) in cases {
        let lay = format!("{}{}", if ta { 'T' } else { 'N' }, if tb { 'T' } else { 'N' });
        let one = time(m, n, k, ta, tb, false);
        let two = time(m, n, k, ta, tb, true);
        println!("{m:>5} x {n:>5} x {k:>5} {lay}: 1 thread {one:6.1}   parallel {two:6.1}");
    }
}
