//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]
use flamingo_engine::gradcheck::{check_gradients, GradCheck};
use flamingo_engine::{DType, Result, Rng, Tensor};

/// Uniform f64 values in [lo, hi) from a seed.
pub fn rand(shape: &[usize], lo: f64, hi: f64, seed: u64) -> Tensor {
    Tensor::uniform(shape, lo, hi, DType::F64, &mut Rng::new(seed))
}

/// Runs a gradient check and turns a failure into a panic with context.
pub fn gradcheck(name: &str, f: impl Fn(&[Tensor]) -> Result<Tensor>, inputs: &[Tensor]) {
    if let Err(e) = check_gradients(f, inputs, GradCheck::default()) {
        panic!("{name}: {e}");
    }
}
