//! f32 GEMM speed at the `tiny` training step's product shapes, run the way the `flamingo` program
//! runs its work: on a thread of the pool, with the pool's other threads kept polling
//! (`flamingo_engine::on_pool`). Prints µs per product for one thread and for the pool.
//! `FLAMINGO_GEMM=crate|ours` picks the implementation; `FLAMINGO_HOT_POOL=0` lets idle threads sleep.
//!
//! ```text
//! cargo run --release -p flamingo-benches --example gemm_pool_speed
//! ```
use flamingo_kernels::cpu::gemm::{gemm_raw, MatRef};
use std::time::Instant;

/// µs per call of an m × n × k product (`ta`/`tb`: operand stored transposed), best of 5 batches.
fn time(m: usize, n: usize, k: usize, ta: bool, tb: bool, par: bool) -> f64 {
    let a: Vec<f32> = (0..m * k).map(|i| (i % 17) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 13) as f32 * 0.1).collect();
    let mut c = vec![0.0f32; m * n];
    let l = if ta { MatRef { offset: 0, rs: 1, cs: m as isize } } else { MatRef { offset: 0, rs: k as isize, cs: 1 } };
    let r = if tb { MatRef { offset: 0, rs: 1, cs: k as isize } } else { MatRef { offset: 0, rs: n as isize, cs: 1 } };
    // SAFETY: c is m×n with row stride n; a and b hold the m×k and k×n operands at these strides.
    let mut run = || unsafe { gemm_raw(m, n, k, c.as_mut_ptr(), n as isize, false, &a, l, &b, r, par) };
    let reps = ((2e8 / (2 * m * n * k) as f64) as usize).max(20);
    (0..reps).for_each(|_| run());
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        (0..reps).for_each(|_| run());
        best = best.min(t.elapsed().as_secs_f64() / reps as f64);
    }
    best * 1e6
}

fn main() {
    let which = std::env::var("FLAMINGO_GEMM").unwrap_or_else(|_| "default".into());
    println!("FLAMINGO_GEMM={which} (µs per product, best of 5 batches; GFLOP/s in brackets)");
    let cases = [
        (320, 128, 128, false, false),
        (320, 128, 128, false, true),
        (1280, 128, 128, false, true),
        (128, 128, 1280, true, false),
        (320, 336, 128, false, true),
        (320, 128, 336, false, false),
        (128, 512, 320, true, false),
        (320, 512, 128, false, false),
        (320, 128, 512, false, true),
    ];
    flamingo_engine::on_pool(|| {
        for (m, n, k, ta, tb) in cases {
            let lay = format!("{}{}", if ta { 'T' } else { 'N' }, if tb { 'T' } else { 'N' });
            let gf = |us: f64| 2.0 * (m * n * k) as f64 / us / 1e3;
            let (one, two) = (time(m, n, k, ta, tb, false), time(m, n, k, ta, tb, true));
            println!("{m:>5} x {n:>5} x {k:>5} {lay}: 1 thread {one:7.1} µs ({:5.1})   pool {two:7.1} µs ({:5.1})", gf(one), gf(two));
        }
    });
}
