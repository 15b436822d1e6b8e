//! `flamingo pretrain-vision`: the NFNet and a small BERT-style text encoder trained contrastively
//! on image–caption pairs of the shapes world (SPEC.md §2.2), with adaptive gradient clipping on
//! the NFNet. Each batch holds distinct captions (size × colour × shape), so no pair in a batch is
//! a false negative. Reports zero-shot image→text retrieval recall@1 on freshly rendered images.
use super::write_json;
use crate::train_loop::{self, LoopConfig, StepStats};
use crate::world::render::{render, Object, COLOURS, SHAPES};
use crate::world::tokenizer::WordTokenizer;
use flamingo_engine::optim::{adaptive_clip, AdamW, AdamWConfig, Decay, LrSchedule, ParamGroup};
use flamingo_engine::{no_grad, DType, ParamStore, Result, Rng, Tensor};
use flamingo_model::contrastive::{recall_at_k, ContrastiveConfig, ContrastiveModel, TextEncoderConfig};
use flamingo_model::nfnet::NfNetConfig;
use flamingo_model::nn::Init;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// Settings of `pretrain-vision`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VisionStageConfig {
    pub steps: u64,
    /// Pairs per batch (at most 128, the number of distinct captions).
    pub batch: usize,
    pub lr: f64,
    pub warmup: u64,
    pub seed: u64,
    /// AGC clipping threshold λ on the NFNet's unit-wise gradient/weight norm ratios.
    pub agc: f64,
    pub checkpoint_every: u64,
}

impl Default for VisionStageConfig {
    fn default() -> Self {
        VisionStageConfig { steps: 600, batch: 64, lr: 2e-3, warmup: 50, seed: 0, agc: 0.1, checkpoint_every: 200 }
    }
}

/// What `pretrain-vision` measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VisionReport {
    pub steps: u64,
    pub seconds: f64,
    pub final_loss: f64,
    /// Image→text recall@1 over all 128 distinct captions, on images never seen in training.
    pub recall_at_1: f64,
    pub recall_at_5: f64,
    pub config: VisionStageConfig,
}

/// The 128 (size, colour, shape) combinations.
fn combos() -> Vec<(bool, usize, usize)> {
    (0..2).flat_map(|b| (0..8).flat_map(move |c| (0..8).map(move |s| (b == 1, c, s)))).collect()
}

/// Images `[n, 3, size, size]`, caption ids `[n, 3]` and mask for the given combinations.
fn batch(tok: &WordTokenizer, which: &[(bool, usize, usize)], size: usize, rng: &mut Rng) -> Result<(Tensor, Tensor, Tensor)> {
    let mut pix = Vec::new();
    let mut ids = Vec::new();
    for &(big, c, s) in which {
        let o = Object::placed(SHAPES[s], COLOURS[c], big, rng);
        pix.extend(render(&[o], size, 0.03, rng));
        ids.extend(tok.encode(&o.words()));
    }
    let n = which.len();
    Ok((Tensor::from_vec(pix, &[n, 3, size, size])?, Tensor::from_vec(ids, &[n, 3])?, Tensor::ones(&[n, 3], DType::F32, Default::default())))
}

/// The contrastive model around a vision config.
pub fn contrastive_config(vision: &NfNetConfig, vocab: usize) -> ContrastiveConfig {
    ContrastiveConfig {
        vision: vision.clone(),
        text: TextEncoderConfig { vocab_size: vocab, dim: 64, layers: 1, heads: 4, max_len: 8, ff_mult: 2 },
        embed_dim: 64,
        label_smoothing: 0.1,
        init_temperature: 0.07,
    }
}

/// Recall@1 and @5 over all 128 captions on images rendered from `seed`.
pub fn retrieval(model: &ContrastiveModel, p: &ParamStore, tok: &WordTokenizer, size: usize, seed: u64) -> Result<(f64, f64)> {
    let (img, ids, mask) = batch(tok, &combos(), size, &mut Rng::new(seed))?;
    let (_, sim) = no_grad(|| model.loss(p, &img, &ids, &mask))?;
    Ok((recall_at_k(&sim, 1)?, recall_at_k(&sim, 5)?))
}

/// Trains and writes `dir/{config.json (the NFNet's), model.safetensors (NFNet weights, timm
/// names), tokenizer.json, report.json, metrics.jsonl, checkpoint.safetensors}`.
pub fn run(vision: &NfNetConfig, image_size: usize, cfg: &VisionStageConfig, dir: &Path, resume: bool, progress: bool) -> Result<VisionReport> {
    let tok = WordTokenizer::shapes_world();
    let ccfg = contrastive_config(vision, tok.vocab_size());
    let mut store = ParamStore::new();
    let model = ContrastiveModel::new(&mut store, &mut Init { rng: &mut Rng::new(cfg.seed), dtype: DType::F32, trainable: true }, &ccfg)?;
    let mut opt = AdamW::new(vec![ParamGroup::new(store.trainable(), cfg.lr, 0.0)], AdamWConfig::default())?;
    let schedule = LrSchedule { warmup_steps: cfg.warmup, total_steps: cfg.steps, decay: Decay::Cosine, min_factor: 0.1 };
    let loop_cfg = LoopConfig {
        stage: "pretrain-vision".into(),
        steps: cfg.steps,
        schedule,
        dir: dir.to_path_buf(),
        checkpoint_every: cfg.checkpoint_every,
        resume,
        log_every: 10,
        progress,
        stop_at: None,
    };
    let vision_params: Vec<(String, Tensor)> = store.trainable().into_iter().filter(|(n, _)| n.starts_with("vision.")).collect();
    let mut rng = Rng::new(cfg.seed ^ 0x5eed);
    let mut pos = vec![0u64];
    let info = HashMap::from([("stage".to_string(), "pretrain-vision".to_string())]);
    let all = combos();
    let outcome = train_loop::run(&loop_cfg, &store, &mut opt, &mut rng, &mut pos, &info, |_, opt, rng, pos| {
        let mut which = all.clone();
        rng.shuffle(&mut which);
        which.truncate(cfg.batch.min(all.len()));
        pos[0] += which.len() as u64;
        let (img, ids, mask) = batch(&tok, &which, image_size, rng)?;
        let (loss, _) = model.loss(&store, &img, &ids, &mask)?;
        loss.backward()?;
        adaptive_clip(&vision_params, cfg.agc, 1e-3, |_| false)?;
        opt.step()?;
        model.clamp_temperature(&store)?;
        Ok(StepStats { loss: loss.to_scalar::<f64>()?, tokens: which.len() as u64, extra: Default::default() })
    })?;
    let (r1, r5) = retrieval(&model, &store, &tok, image_size, 12345)?;
    // Keep the NFNet alone, under its timm names.
    let mut net = ParamStore::new();
    for (name, t) in store.iter() {
        if let Some(rest) = name.strip_prefix("vision.") {
            net.insert(rest, t, false)?;
        }
    }
    net.save_safetensors(dir.join("model.safetensors"), None)?;
    write_json(&dir.join("config.json"), &VisionFiles { image_size, vision: vision.clone() })?;
    let report = VisionReport {
        steps: outcome.steps_done,
        seconds: outcome.seconds,
        final_loss: outcome.final_loss,
        recall_at_1: r1,
        recall_at_5: r5,
        config: cfg.clone(),
    };
    write_json(&dir.join("report.json"), &report)?;
    Ok(report)
}

/// `config.json` of a pretrained vision encoder.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VisionFiles {
    pub image_size: usize,
    pub vision: NfNetConfig,
}
