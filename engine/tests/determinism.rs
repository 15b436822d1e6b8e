//! CPU results do not depend on the number of threads: the same ops, forward and backward, give
//! bit-identical results on 1, 2 and 3 rayon threads (so training from a seed is reproducible).
mod common;
use common::rand;
use flamingo_engine::{ConvParams, DType, Tensor};

/// Runs a forward + backward of several kernels and returns every output and gradient, as bits.
fn workload() -> Vec<Vec<u32>> {
    let f32t = |shape: &[usize], seed| rand(shape, -1.0, 1.0, seed).to_dtype(DType::F32).unwrap();
    let a = f32t(&[192, 320], 1).requires_grad_(true);
    let b = f32t(&[320, 96], 2).requires_grad_(true);
    let g = f32t(&[96], 3).requires_grad_(true);
    let h = a.matmul(&b).unwrap().layer_norm(Some(&g), None, 1e-5).unwrap().gelu().unwrap();
    let s = h.softmax(-1).unwrap();
    let x = f32t(&[6, 8, 20, 20], 4).requires_grad_(true);
    let w = f32t(&[16, 4, 3, 3], 5).requires_grad_(true);
    let c = x.conv2d(&w, None, &ConvParams::new(1, 1).with_groups(2)).unwrap();
    let loss = s.sum(&[0], false).unwrap().sum_all().unwrap().add(&c.square().unwrap().mean_all().unwrap()).unwrap();
    loss.backward().unwrap();
    let bits = |t: &Tensor| t.to_vec::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
    vec![
        bits(&s),
        bits(&c),
        bits(&loss),
        bits(&a.grad().unwrap()),
        bits(&b.grad().unwrap()),
        bits(&g.grad().unwrap()),
        bits(&x.grad().unwrap()),
        bits(&w.grad().unwrap()),
    ]
}

#[test]
fn results_are_identical_for_any_thread_count() {
    let run = |threads: usize| rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(workload);
    let one = run(1);
    for threads in [2, 3] {
        let other = run(threads);
        for (i, (x, y)) in one.iter().zip(&other).enumerate() {
            assert!(x == y, "result {i} differs between 1 and {threads} threads");
        }
    }
}
