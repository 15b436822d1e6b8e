//! `train_step_tiny` and `train_step_small`: one Flamingo training step at the `tiny` and `small`
//! presets, defined exactly as in benches/torch/train_step_bench.py (its docstring has the full
//! description):
//! the frozen NFNet on the step's images (no_grad), the resampler (Perceiver, or tiny's identity),
//! the gated cross-attention blocks before every frozen LM layer, next-token cross-entropy
//! (`<image>` never a target), backward (gradients flow through the frozen LM's activations; no
//! weight gradients for frozen parameters), gradient clipping at 1.0, one AdamW step (lr 1e-3,
//! weight decay 0.1 on cross-attention matrices as `flamingo train` groups them).
//!
//! - tiny: 16 sequences × 20 tokens, 5 images 3×32×32 each; every row is 5 chunks
//!   `[<image>, w, w, <|endofchunk|>]` (the demo's longest binding episode).
//! - small: 8 sequences × 256 tokens, 4 images 3×64×64 each; every row is 4 chunks
//!   `[<image>, 62 words, <|endofchunk|>]`.
//!
//! Words are uniform in [3, vocab). NFNet skip-init gains are set to 1 (as the PyTorch side).
//! `flops` holds the number of tokens per step, so the gflops column × 1e9 is tokens per second.
use crate::Case;
use flamingo_engine::optim::{clip_grad_norm, AdamW, AdamWConfig, ParamGroup};
use flamingo_engine::{DType, Device, ParamStore, Result, Rng, Tensor};
use flamingo_model::config::preset;
use flamingo_model::flamingo::Flamingo;
use flamingo_model::nfnet::NfNet;
use flamingo_model::nn::Init;

/// The case; the model is built on the first call (so listing or filtering cases costs nothing,
/// and the harness's warm-up absorbs the build).
fn step_case(name: &'static str, preset_name: &'static str, batch: usize, images: usize, chunk: usize, dev: Device) -> Result<Case> {
    let full = preset(preset_name).ok_or_else(|| flamingo_engine::Error::Msg(format!("no preset `{preset_name}`")))?;
    let mut step: Option<Box<dyn FnMut()>> = None;
    Ok(Case {
        name,
        shape: format!("{batch}x{},m{images},{}px", images * chunk, full.image_size),
        dtype: DType::F32,
        flops: (batch * images * chunk) as f64,
        run: Box::new(move || {
            let f = step.get_or_insert_with(|| build_step(preset_name, batch, images, chunk, dev).unwrap_or_else(|e| panic!("{name}: building the step: {e}")));
            f()
        }),
    })
}

/// One training step as a closure over its model, optimiser and batch.
pub fn build_step(preset_name: &str, batch: usize, images: usize, chunk: usize, dev: Device) -> Result<Box<dyn FnMut()>> {
    let full = preset(preset_name).ok_or_else(|| flamingo_engine::Error::Msg(format!("no preset `{preset_name}`")))?;
    let cfg = full.flamingo.clone().expect("preset with a Flamingo part");
    let mut rng = Rng::new(11);
    let mut vstore = ParamStore::new();
    let vision = NfNet::new(&mut vstore, &mut Init { rng: &mut rng, dtype: DType::F32, trainable: false }, "", &full.vision)?;
    for (n, t) in vstore.iter() {
        if n.ends_with("skipinit_gain") {
            t.assign(&Tensor::full(t.shape(), 1.0, DType::F32, Default::default()))?;
        }
    }
    let mut store = ParamStore::new();
    let model = Flamingo::new(&mut store, &cfg, &mut rng)?;
    let px = full.image_size;
    let pixels = Tensor::randn(&[batch, images, 3, px, px], DType::F32, &mut rng);
    let vocab = cfg.lm.vocab_size() as u64;
    let len = images * chunk;
    let ids: Vec<i64> = (0..batch * len)
        .map(|i| match i % chunk {
            0 => model.media_token_id(),
            p if p == chunk - 1 => model.eoc_token_id(),
            _ => 3 + rng.below(vocab - 3) as i64,
        })
        .collect();
    let ids = Tensor::from_vec(ids, &[batch, len])?;
    let targets = model.targets(&ids, None, true)?;
    // Parameters and images on the device; token ids and targets stay on the host (the ops read
    // them there: embedding indices, media index, loss targets).
    vstore.to_device(dev)?;
    store.to_device(dev)?;
    let pixels = pixels.to_device(dev)?;
    let trainable = store.trainable();
    let params: Vec<Tensor> = trainable.iter().map(|(_, t)| t.clone()).collect();
    let (decayed, plain): (Vec<_>, Vec<_>) = trainable.into_iter().partition(|(n, t)| n.contains("gated_cross_attn_layers") && t.rank() >= 2);
    let mut opt = AdamW::new(vec![ParamGroup::new(decayed, 1e-3, 0.1), ParamGroup::new(plain, 1e-3, 0.0)], AdamWConfig::default())?;
    Ok(Box::new(move || {
        opt.zero_grad();
        let feats = model.encode_images(&vstore, &vision, &pixels, true).expect("vision");
        let media = model.encode_media(&store, &feats).expect("resampler");
        let logits = model.forward(&store, &ids, &media).expect("forward");
        Flamingo::loss(&logits, &targets).expect("loss").backward().expect("backward");
        clip_grad_norm(&params, 1.0).expect("clip");
        opt.step().expect("AdamW");
        if dev.is_cuda() {
            flamingo_engine::cuda::raw::synchronize(dev).expect("synchronize");
        }
    }))
}

/// Both training-step cases.
pub fn cases() -> Result<Vec<Case>> {
    cases_on(["train_step_tiny", "train_step_small"], Device::Cpu)
}

/// `(sequences, images per sequence, tokens per image chunk)` of a preset's step (see the module
/// docs), or `None` for a preset without one.
pub fn step_shape(preset: &str) -> Option<(usize, usize, usize)> {
    match preset {
        "tiny" => Some((16, 5, 4)),
        "small" => Some((8, 4, 64)),
        _ => None,
    }
}

fn cases_on(names: [&'static str; 2], dev: Device) -> Result<Vec<Case>> {
    names
        .into_iter()
        .zip(["tiny", "small"])
        .map(|(name, preset)| {
            let (b, images, chunk) = step_shape(preset).expect("known preset");
            step_case(name, preset, b, images, chunk, dev)
        })
        .collect()
}

/// The same two steps on a CUDA device (f32, fused kernels), for `flamingo bench --suite cuda`:
/// `train_step_tiny_cuda`, `train_step_small_cuda`. Each call ends with a device synchronise.
pub fn cuda_cases(dev: Device) -> Result<Vec<Case>> {
    cases_on(["train_step_tiny_cuda", "train_step_small_cuda"], dev)
}
