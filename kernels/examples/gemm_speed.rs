//! Development timing of square f32 GEMMs through `gemm_raw` (a development aid).
use flamingo_kernels::cpu::gemm::{gemm_raw, MatRef};
use std::time::Instant;
fn main() {
    for n in [256usize, 512, 1024] {
        let a: Vec<f32> = (0..n * n).map(|i| (i % 17) as f32 * 0.1).collect();
        let b = a.clone();
        let mut c = vec![0.0f32; n * n];
        let m = MatRef { offset: 0, rs: n as isize, cs: 1 };
        for par in [false, true] {
            let mut run = || unsafe { gemm_raw(n, n, n, c.as_mut_ptr(), n as isize, false, &a, m, &b, m, par) };
            for _ in 0..3 {
                run();
            }
            let reps = (2_000_000_000 / (2 * n * n * n)).max(3);
            let t = Instant::now();
            for _ in 0..reps {
                run();
            }
            let ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
            println!("n={n} parallel={par}: {ms:.3} ms, {:.1} GFLOP/s", 2.0 * (n as f64).powi(3) / ms / 1e6);
        }
    }
}
