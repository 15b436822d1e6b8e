//! `flamingo pretrain-lm`: the decoder LM on the shapes world's text, mostly text binding
//! episodes (`red ka lo <eos> blue mi tu <eos> red` → `ka lo`), so the frozen LM already does
//! associative recall before Flamingo training (Flamingo training cannot add an ability the
//! frozen LM lacks). Reports held-out-word text binding accuracy.
use super::{lm_targets, write_json};
use crate::train_loop::{self, LoopConfig, StepStats};
use crate::world::pool::Attribute;
use crate::world::tasks::{text_binding, text_caption};
use crate::world::tokenizer::{WordTokenizer, PAD};
use crate::world::words::WordPools;
use flamingo_engine::optim::{clip_grad_norm, AdamW, AdamWConfig, Decay, LrSchedule, ParamGroup};
use flamingo_engine::{no_grad, DType, ParamStore, Result, Rng, Tensor};
use flamingo_model::flamingo::Flamingo;
use flamingo_model::lm::{Lm, LmConfig};
use flamingo_model::nn::Init;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Settings of `pretrain-lm`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LmStageConfig {
    pub steps: u64,
    pub batch: usize,
    pub lr: f64,
    pub warmup: u64,
    pub seed: u64,
    /// Fraction of sequences that are text binding episodes (the rest: caption-like lines).
    pub binding_fraction: f64,
    /// Most support chunks in a training episode.
    pub max_support: usize,
    pub checkpoint_every: u64,
}

impl Default for LmStageConfig {
    fn default() -> Self {
        LmStageConfig { steps: 4000, batch: 32, lr: 2e-3, warmup: 100, seed: 0, binding_fraction: 0.95, max_support: 12, checkpoint_every: 500 }
    }
}

/// What `pretrain-lm` measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LmReport {
    pub steps: u64,
    pub seconds: f64,
    pub final_loss: f64,
    /// Text binding accuracy on held-out words, 2-way with 2 shots per class: (colour, shape).
    pub binding_heldout_colour: f64,
    pub binding_heldout_shape: f64,
    pub config: LmStageConfig,
}

/// One training sequence.
pub fn sample(tok: &WordTokenizer, words: &WordPools, cfg: &LmStageConfig, rng: &mut Rng) -> Vec<i64> {
    if rng.uniform() < cfg.binding_fraction {
        let attr = if rng.below(2) == 0 { Attribute::Colour } else { Attribute::Shape };
        let ways = 2 + rng.below(4) as usize;
        let n = 1 + rng.below(cfg.max_support as u64) as usize;
        text_binding(tok, attr, ways, n, &words.train, rng).0
    } else {
        text_caption(tok, rng)
    }
}

/// Held-out-word text binding accuracy (`ways`-way, `shots` per class, `n` episodes): the answer
/// counts when both of its tokens are the argmax given the prompt (teacher-forced, which equals
/// greedy decoding whenever the first token is right).
#[allow(clippy::too_many_arguments)]
pub fn binding_accuracy(
    lm: &Lm,
    p: &ParamStore,
    tok: &WordTokenizer,
    words: &WordPools,
    attr: Attribute,
    ways: usize,
    shots: usize,
    n: usize,
    seed: u64,
) -> Result<f64> {
    let mut rng = Rng::new(seed);
    let eps: Vec<(Vec<i64>, usize)> = (0..n).map(|_| text_binding(tok, attr, ways, ways * shots, &words.heldout, &mut rng)).collect();
    let seqs: Vec<Vec<i64>> = eps.iter().map(|e| e.0.clone()).collect();
    let (ids, _) = lm_targets(&seqs, PAD)?;
    let logits = no_grad(|| lm.forward(p, &ids))?;
    let (l, v) = (logits.shape()[1], logits.shape()[2]);
    let lv = logits.to_vec::<f32>()?;
    let argmax = |r: usize, pos: usize| -> i64 {
        let row = &lv[(r * l + pos) * v..(r * l + pos + 1) * v];
        (0..v).fold(0, |b, i| if row[i] > row[b] { i } else { b }) as i64
    };
    let correct = eps.iter().enumerate().filter(|(r, (s, at))| argmax(*r, at - 1) == s[*at] && argmax(*r, *at) == s[at + 1]).count();
    Ok(correct as f64 / n.max(1) as f64)
}

/// Trains the LM and writes `dir/{config.json, model.safetensors, tokenizer.json, report.json,
/// metrics.jsonl, checkpoint.safetensors}`.
pub fn run(lm_cfg: &LmConfig, cfg: &LmStageConfig, dir: &Path, resume: bool, progress: bool) -> Result<LmReport> {
    let tok = WordTokenizer::shapes_world();
    let words = WordPools::new(0);
    let lm_cfg = with_vocab(lm_cfg, tok.vocab_size());
    let mut store = ParamStore::new();
    let mut init_rng = Rng::new(cfg.seed);
    let lm = Lm::new(&mut store, &mut Init { rng: &mut init_rng, dtype: DType::F32, trainable: true }, "", &lm_cfg)?;
    let mut opt = AdamW::new(vec![ParamGroup::new(store.trainable(), cfg.lr, 0.0)], AdamWConfig::default())?;
    let schedule = LrSchedule { warmup_steps: cfg.warmup, total_steps: cfg.steps, decay: Decay::Cosine, min_factor: 0.1 };
    let loop_cfg = LoopConfig {
        stage: "pretrain-lm".into(),
        steps: cfg.steps,
        schedule,
        dir: dir.to_path_buf(),
        checkpoint_every: cfg.checkpoint_every,
        resume,
        log_every: 10,
        progress,
        stop_at: None,
    };
    let params: Vec<Tensor> = store.trainable().into_iter().map(|(_, t)| t).collect();
    let mut rng = Rng::new(cfg.seed ^ 0x5eed);
    let mut pos = vec![0u64];
    let info = HashMap::from([("stage".to_string(), "pretrain-lm".to_string())]);
    let outcome = train_loop::run(&loop_cfg, &store, &mut opt, &mut rng, &mut pos, &info, |_, opt, rng, pos| {
        let seqs: Vec<Vec<i64>> = (0..cfg.batch).map(|_| sample(&tok, &words, cfg, rng)).collect();
        pos[0] += seqs.len() as u64;
        let (ids, y) = lm_targets(&seqs, PAD)?;
        let loss = Flamingo::loss(&lm.forward(&store, &ids)?, &y)?;
        loss.backward()?;
        clip_grad_norm(&params, 1.0)?;
        opt.step()?;
        Ok(StepStats { loss: loss.to_scalar::<f64>()?, tokens: seqs.iter().map(|s| s.len() as u64).sum(), extra: Default::default() })
    })?;
    let colour = binding_accuracy(&lm, &store, &tok, &words, Attribute::Colour, 2, 2, 200, 7)?;
    let shape = binding_accuracy(&lm, &store, &tok, &words, Attribute::Shape, 2, 2, 200, 8)?;
    store.save_safetensors(dir.join("model.safetensors"), None)?;
    write_json(&dir.join("config.json"), &lm_cfg)?;
    write_json(&dir.join("tokenizer.json"), &tok)?;
    let report = LmReport {
        steps: outcome.steps_done,
        seconds: outcome.seconds,
        final_loss: outcome.final_loss,
        binding_heldout_colour: colour,
        binding_heldout_shape: shape,
        config: cfg.clone(),
    };
    write_json(&dir.join("report.json"), &report)?;
    Ok(report)
}

/// `cfg` with its vocabulary resized to `vocab` (the world tokenizer's).
pub fn with_vocab(cfg: &LmConfig, vocab: usize) -> LmConfig {
    let mut c = cfg.clone();
    match &mut c {
        LmConfig::Gpt2(g) => g.vocab_size = vocab,
        LmConfig::Llama(l) => l.vocab_size = vocab,
    }
    c
}

/// Where a pretrained stage's files are: `dir/model.safetensors` and `dir/config.json`.
pub fn files(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("model.safetensors"), dir.join("config.json"))
}
