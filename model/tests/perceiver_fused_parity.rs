//! The Perceiver Resampler with its attention through the fused cross-attention kernel (the CPU
//! default) against the composition of primitive ops (`set_fused(false)`): output and the
//! gradient of every parameter and of the features.
//!
//! One `#[test]` in its own binary: the fused/reference switch is process-wide.
use flamingo_engine::{DType, ParamStore, Rng, Tensor};
use flamingo_model::kernels::set_fused;
use flamingo_model::nn::Init;
use flamingo_model::perceiver::{PerceiverConfig, PerceiverResampler};

/// Output, feature gradient and parameter gradients of one forward + backward.
struct Run {
    output: Vec<f32>,
    feature_grad: Vec<f32>,
    param_grads: Vec<(String, Vec<f32>)>,
}

fn run(fused: bool) -> Run {
    set_fused(fused);
    let cfg = PerceiverConfig { dim: 32, depth: 2, heads: 4, dim_head: 8, num_latents: 6, ff_mult: 2, max_num_frames: None, max_num_media: None };
    let mut rng = Rng::new(7);
    let mut store = ParamStore::new();
    let perceiver = PerceiverResampler::new(&mut store, &mut Init { rng: &mut rng, dtype: DType::F32, trainable: true }, "perceiver", &cfg).unwrap();
    // [batch 2, media 3, frames 1, tokens 5, dim 32]: 5 visual tokens + 6 latents = 11 keys.
    let x = Tensor::randn(&[2, 3, 1, 5, 32], DType::F32, &mut rng).requires_grad_(true);
    let y = perceiver.forward(&store, &x).unwrap();
    let w = Tensor::randn(y.shape(), DType::F32, &mut rng);
    y.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
    let param_grads = store.iter().map(|(n, t)| (n.to_string(), t.grad().expect("every parameter gets a gradient").to_vec::<f32>().unwrap())).collect();
    Run { output: y.contiguous().unwrap().to_vec::<f32>().unwrap(), feature_grad: x.grad().unwrap().to_vec::<f32>().unwrap(), param_grads }
}

fn close(what: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    let err = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale;
    assert!(err < 1e-5, "{what}: max relative difference {err}");
}

#[test]
fn fused_perceiver_attention_matches_the_composition() {
    let reference = run(false);
    let fused = run(true);
    set_fused(true);
    close("output", &fused.output, &reference.output);
    close("feature gradient", &fused.feature_grad, &reference.feature_grad);
    assert_eq!(fused.param_grads.len(), reference.param_grads.len());
    for ((name, g), (_, r)) in fused.param_grads.iter().zip(&reference.param_grads) {
        close(name, g, r);
    }
}
