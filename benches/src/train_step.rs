//! `train_step_tiny` and `train_step_small`: one Flamingo training step at the `tiny` and `small`
//! presets — Perceiver (or the tiny preset's identity resampler), the gated cross-attention
//! blocks and the frozen LM forward, next-token cross-entropy, backward (gradients flow through
//! the frozen LM's activations; no weight gradients for frozen parameters), gradient clipping at
//! 1.0, one AdamW step. The vision encoder is frozen, so as in `flamingo train` its features are
//! computed once outside the step and given as input.
//!
//! Shapes (PyTorch counterpart: benches/torch/train_step_bench.py):
//! - tiny: 16 sequences × 64 tokens, 4 images each, features [16, 4, 1, 16, 128]
//! - small: 8 sequences × 256 tokens, 4 images each, features [8, 4, 1, 16, 512]
//!
//! `<image>` tokens sit at positions 0, L/4, L/2 and 3L/4 of every row; the other ids are random.
//! `flops` holds the number of tokens per step, so the table's gflops column × 1e9 is tokens/s
//! (`flamingo bench` also prints tokens/s for these cases).
use crate::Case;
use flamingo_engine::optim::{clip_grad_norm, AdamW, AdamWConfig, ParamGroup};
use flamingo_engine::{DType, ParamStore, Result, Rng, Tensor};
use flamingo_model::config::preset;
use flamingo_model::flamingo::Flamingo;

fn step_case(name: &'static str, preset_name: &str, batch: usize, len: usize) -> Result<Case> {
    let cfg = preset(preset_name).and_then(|c| c.flamingo).expect("preset with a Flamingo part");
    let mut store = ParamStore::new();
    let mut rng = Rng::new(11);
    let model = Flamingo::new(&mut store, &cfg, &mut rng)?;
    let (m, s, dv) = (4usize, 16usize, cfg.perceiver.dim);
    let features = Tensor::randn(&[batch, m, 1, s, dv], DType::F32, &mut rng);
    let vocab = cfg.lm.vocab_size() as u64;
    let ids: Vec<i64> = (0..batch * len)
        .map(|i| if (i % len) % (len / 4) == 0 { model.media_token_id() } else { rng.below(vocab) as i64 })
        .collect();
    let ids = Tensor::from_vec(ids, &[batch, len])?;
    let targets = model.targets(&ids, None, true)?;
    let trainable = store.trainable();
    let params: Vec<Tensor> = trainable.iter().map(|(_, t)| t.clone()).collect();
    let mut opt = AdamW::new(vec![ParamGroup::new(trainable, 1e-4, 0.0)], AdamWConfig::default())?;
    Ok(Case {
        name,
        shape: format!("{batch}x{len},m{m}"),
        dtype: DType::F32,
        flops: (batch * len) as f64,
        run: Box::new(move || {
            let media = model.encode_media(&store, &features).expect("resampler");
            let logits = model.forward(&store, &ids, &media).expect("forward");
            Flamingo::loss(&logits, &targets).expect("loss").backward().expect("backward");
            clip_grad_norm(&params, 1.0).expect("clip");
            opt.step().expect("AdamW");
            opt.zero_grad();
        }),
    })
}

/// Both training-step cases.
pub fn cases() -> Result<Vec<Case>> {
    Ok(vec![step_case("train_step_tiny", "tiny", 16, 64)?, step_case("train_step_small", "small", 8, 256)?])
}
