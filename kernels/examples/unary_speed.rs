//! Quick timing of the unary kernels on 4M f32 elements (a development aid; the real benchmarks
//! are `flamingo bench` and the criterion benches).
use flamingo_kernels::cpu::elementwise::{unary, UnaryOp};
use std::time::Instant;
// Tensors start on a cache line (see `CacheLineAlloc`); FLAMINGO_ALIGNED_ALLOC=0 turns it off.
#[global_allocator]
static ALLOC: flamingo_kernels::alloc::CacheLineAlloc = flamingo_kernels::alloc::CacheLineAlloc;

fn main() {
    let n = 4 * 1024 * 1024;
    let x: Vec<f32> = (0..n).map(|i| ((i % 1000) as f32) / 250.0 - 2.0).collect();
    let mut out = vec![0.0f32; n];
    for op in [UnaryOp::Gelu, UnaryOp::Exp, UnaryOp::Silu, UnaryOp::Affine(2.0, 1.0)] {
        for _ in 0..3 {
            unary(op, &x, &mut out);
        }
        let t = Instant::now();
        for _ in 0..10 {
            unary(op, &x, &mut out);
        }
        println!("{op:?}: {:.3} ms", t.elapsed().as_secs_f64() * 100.0);
    }
}
