//! The whole Flamingo training step, three ways: reference kernels on the CPU, fused kernels on
//! the CPU, and fused kernels on CUDA (when a GPU is present; otherwise that leg is skipped with
//! a printed reason). Same parameters, images and tokens each time; compared: the loss, the logits
//! and the gradient of every trainable parameter.
//!
//! One `#[test]` in its own binary: the fused/reference switch is process-wide.
use flamingo_engine::{DType, Device, ParamStore, Rng, Tensor};
use flamingo_model::config::preset;
use flamingo_model::flamingo::Flamingo;
use flamingo_model::kernels::set_fused;
use flamingo_model::nfnet::NfNet;
use flamingo_model::nn::Init;

struct Step {
    loss: f32,
    logits: Vec<f32>,
    /// `None` for parameters the step does not reach (tiny's Perceiver is bypassed).
    grads: Vec<(String, Option<Vec<f32>>)>,
}

/// One forward + backward of the `tiny` preset (4 rows × 12 tokens, 3 images each) on `dev`.
fn step(dev: Device, fused: bool) -> Step {
    set_fused(fused);
    let full = preset("tiny").unwrap();
    let cfg = full.flamingo.clone().unwrap();
    let mut rng = Rng::new(5);
    let mut vstore = ParamStore::new();
    let vision = NfNet::new(&mut vstore, &mut Init { rng: &mut rng, dtype: DType::F32, trainable: false }, "", &full.vision).unwrap();
    let mut store = ParamStore::new();
    let model = Flamingo::new(&mut store, &cfg, &mut rng).unwrap();
    let (b, images, chunk) = (4, 3, 4);
    let px = full.image_size;
    let pixels = Tensor::randn(&[b, images, 3, px, px], DType::F32, &mut rng);
    let vocab = cfg.lm.vocab_size() as u64;
    let ids: Vec<i64> = (0..b * images * chunk)
        .map(|i| match i % chunk {
            0 => model.media_token_id(),
            p if p == chunk - 1 => model.eoc_token_id(),
            _ => 3 + rng.below(vocab - 3) as i64,
        })
        .collect();
    let ids = Tensor::from_vec(ids, &[b, images * chunk]).unwrap();
    let targets = model.targets(&ids, None, true).unwrap();
    vstore.to_device(dev).unwrap();
    store.to_device(dev).unwrap();
    assert_eq!(store.device().unwrap(), dev);
    let pixels = pixels.to_device(dev).unwrap();
    let feats = model.encode_images(&vstore, &vision, &pixels, true).unwrap();
    let media = model.encode_media(&store, &feats).unwrap();
    let logits = model.forward(&store, &ids, &media).unwrap();
    assert_eq!(logits.device(), dev, "the logits stay on the parameters' device");
    let loss = Flamingo::loss(&logits, &targets).unwrap();
    loss.backward().unwrap();
    let grads = store
        .trainable()
        .into_iter()
        .map(|(n, t)| {
            let g = t.grad().map(|g| g.to_vec::<f32>().unwrap());
            (n, g)
        })
        .collect();
    Step { loss: loss.to_scalar::<f32>().unwrap(), logits: logits.to_vec::<f32>().unwrap(), grads }
}

/// max |a − b| / max(1, max |a|).
fn rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(1f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn compare(what: &str, want: &Step, got: &Step, tol: f32) {
    assert!((want.loss - got.loss).abs() <= tol * want.loss.abs().max(1.0), "{what}: loss {} vs {}", want.loss, got.loss);
    let e = rel(&want.logits, &got.logits);
    assert!(e <= tol, "{what}: logits differ by {e}");
    assert_eq!(want.grads.len(), got.grads.len(), "{what}: trainable parameter count");
    let mut worst = (0f32, String::new());
    let reached = want.grads.iter().filter(|(_, g)| g.is_some()).count();
    assert!(reached > 10, "{what}: only {reached} parameters got a gradient");
    for ((n, a), (m, b)) in want.grads.iter().zip(&got.grads) {
        assert_eq!(n, m);
        let (a, b) = match (a, b) {
            (Some(a), Some(b)) => (a, b),
            (None, None) => continue,
            _ => panic!("{what}: `{n}` has a gradient on one side only"),
        };
        let e = rel(a, b);
        if e > worst.0 {
            worst = (e, n.clone());
        }
    }
    println!("{what}: loss {:.6} vs {:.6}, logits {e:.2e}, worst gradient {:.2e} (`{}`)", want.loss, got.loss, worst.0, worst.1);
    assert!(worst.0 <= tol, "{what}: gradient of `{}` differs by {}", worst.1, worst.0);
}

#[test]
fn training_step_matches_across_kernels_and_devices() {
    let reference = step(Device::Cpu, false);
    let fused_cpu = step(Device::Cpu, true);
    compare("fused CPU vs reference CPU", &reference, &fused_cpu, 1e-4);
    if flamingo_engine::cuda::is_available() {
        let fused_gpu = step(Device::Cuda(0), true);
        compare("fused CUDA vs reference CPU", &reference, &fused_gpu, 1e-3);
        let reference_gpu = step(Device::Cuda(0), false);
        compare("reference CUDA vs reference CPU", &reference, &reference_gpu, 1e-3);
    } else {
        println!("CUDA leg skipped: no CUDA GPU on this machine (flamingo_engine::cuda::is_available() is false)");
    }
    set_fused(true);
}
