//! `flamingo train`: Flamingo over the frozen pretrained vision encoder and LM. Trainable: the
//! Perceiver Resampler, the gated cross-attention blocks and the two new token rows. The data is
//! a mixture of datasets with weights λ_m and their own batch sizes; the default step accumulates
//! `Σ_m λ_m · L_m` over every dataset before one optimiser update (SPEC.md §2.7), and
//! `--schedule round-robin` (one dataset per step) is the paper's ablation. AdamW with warm-up,
//! weight decay on the cross-attention weights only, global-norm gradient clipping.
use super::{read_json, vision::VisionFiles, write_json};
use crate::train_loop::{self, LoopConfig, StepStats};
use crate::world::features::Features;
use crate::world::pool::{Attribute, ClipPool, ImagePool};
use crate::world::tasks::{binding_doc, caption_doc, quiz_doc, video_doc, Doc};
use crate::world::tokenizer::{WordTokenizer, EOS, PAD};
use crate::world::words::WordPools;
use flamingo_engine::optim::{clip_grad_norm, AdamW, AdamWConfig, Decay, LrSchedule, ParamGroup};
use flamingo_engine::{DType, Device, Error, ParamStore, Result, Rng, Tensor};
use flamingo_model::checkpoint::load_hf_lm;
use flamingo_model::flamingo::{Flamingo, FlamingoConfig, NEW_TOKENS};
use flamingo_model::lm::LmConfig;
use flamingo_model::nfnet::NfNet;
use flamingo_model::nn::Init;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The three datasets of the shapes world (M3W-, ALIGN/LTIP- and VTP-like).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    /// Interleaved documents of up to 5 images: binding episodes and attribute quizzes.
    Interleaved,
    /// Image–caption pairs.
    Pairs,
    /// Video clips (4 frames) with descriptions or questions.
    Video,
}

/// One dataset of the mixture: batch size and weight λ.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DatasetSpec {
    pub kind: DatasetKind,
    pub batch: usize,
    pub weight: f64,
}

/// How the datasets share an optimiser step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum MixSchedule {
    /// Every step: the weighted sum of every dataset's loss (the paper).
    Accumulate,
    /// Step s uses dataset s mod M only (the ablation; run M× the steps for equal compute).
    RoundRobin,
}

/// Settings of `train`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainConfig {
    pub steps: u64,
    pub lr: f64,
    pub warmup: u64,
    /// Weight decay of the cross-attention weights (nothing else is decayed).
    pub weight_decay: f64,
    /// Global gradient-norm clip.
    pub clip: f64,
    pub seed: u64,
    pub datasets: Vec<DatasetSpec>,
    pub schedule: MixSchedule,
    pub checkpoint_every: u64,
    /// Fraction of binding episodes among interleaved documents (the rest are attribute quizzes).
    pub binding_fraction: f64,
    /// Fraction of binding episodes keyed on shape (the rest on colour).
    #[serde(default = "half")]
    pub shape_fraction: f64,
    /// Fraction of binding episodes whose non-key attribute is the same in all their images.
    #[serde(default)]
    pub fixed_other_fraction: f64,
    /// Images per shape × colour in the training and evaluation pools.
    pub pool_per_combo: usize,
    /// Clips in the training and evaluation pools, and frames per clip.
    pub clips: usize,
    pub frames: usize,
    /// Probability that an interleaved row attends to the next image instead (paper: ½; the
    /// binding episodes need the previous one, so 0 by default here).
    pub p_next: f64,
    /// Every this many steps, measure 2-way held-out binding (2 and 4 shots, colour and shape, 50
    /// episodes each) and write it to the metrics (0: never).
    #[serde(default)]
    pub probe_every: u64,
    /// Stop (with a checkpoint) after this step, as Ctrl-C would.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_at: Option<u64>,
}

fn half() -> f64 {
    0.5
}

impl TrainConfig {
    /// Applies `key=value` overrides (JSON values; bare words are strings), e.g. `lr=0.002`.
    pub fn with_overrides(&self, sets: &[String]) -> Result<TrainConfig> {
        let mut v = serde_json::to_value(self).map_err(|e| Error::Msg(e.to_string()))?;
        for s in sets {
            let (k, val) = s.split_once('=').ok_or_else(|| Error::Msg(format!("--set `{s}`: expected key=value")))?;
            let obj = v.as_object_mut().expect("a struct serialises to an object");
            if !obj.contains_key(k) {
                return Err(Error::Msg(format!("--set: unknown training setting `{k}` (known: {})", obj.keys().cloned().collect::<Vec<_>>().join(", "))));
            }
            let parsed = serde_json::from_str(val).unwrap_or_else(|_| serde_json::Value::String(val.to_string()));
            obj.insert(k.to_string(), parsed);
        }
        serde_json::from_value(v).map_err(|e| Error::Msg(format!("--set: {e}")))
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 2400,
            lr: 1e-3,
            warmup: 50,
            weight_decay: 0.1,
            clip: 1.0,
            seed: 0,
            datasets: vec![
                DatasetSpec { kind: DatasetKind::Interleaved, batch: 16, weight: 1.0 },
                DatasetSpec { kind: DatasetKind::Pairs, batch: 16, weight: 0.5 },
                DatasetSpec { kind: DatasetKind::Video, batch: 8, weight: 0.2 },
            ],
            schedule: MixSchedule::Accumulate,
            checkpoint_every: 250,
            binding_fraction: 0.8,
            shape_fraction: 0.57,
            fixed_other_fraction: 0.5,
            pool_per_combo: 16,
            clips: 256,
            frames: 4,
            p_next: 0.0,
            probe_every: 250,
            stop_at: None,
        }
    }
}

/// `config.json` of a `train` run directory: everything `eval` needs to rebuild the model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunFiles {
    pub flamingo: FlamingoConfig,
    pub vision_dir: PathBuf,
    pub lm_dir: PathBuf,
    pub train: TrainConfig,
}

/// The model with its frozen parts loaded, the world and the cached vision features.
pub struct Setup {
    pub tok: WordTokenizer,
    pub words: WordPools,
    pub model: Flamingo,
    pub store: ParamStore,
    pub image_size: usize,
    pub train_images: ImagePool,
    pub eval_images: ImagePool,
    pub train_clips: ClipPool,
    pub eval_clips: ClipPool,
    pub train_image_features: Features,
    pub eval_image_features: Features,
    pub train_clip_features: Features,
    pub eval_clip_features: Features,
    /// Seconds spent rendering the pools and encoding them.
    pub world_seconds: f64,
    /// Where the Flamingo parameters live and run: the device `--device` (or `FLAMINGO_DEVICE`)
    /// asked for, else the CPU. The frozen vision encoder precomputes the image features on the
    /// CPU once, at setup.
    pub device: Device,
}

/// Builds Flamingo from `template` (its Perceiver/cross-attention settings) over the pretrained
/// LM in `lm_dir` and vision encoder in `vision_dir`, and renders and encodes the world.
pub fn setup(template: &FlamingoConfig, vision_dir: &Path, lm_dir: &Path, cfg: &TrainConfig) -> Result<Setup> {
    let t0 = std::time::Instant::now();
    let tok: WordTokenizer = WordTokenizer::from_json(
        &std::fs::read_to_string(lm_dir.join("tokenizer.json")).map_err(|source| Error::Io { path: lm_dir.join("tokenizer.json"), source })?,
    )
    .map_err(|e| Error::File { path: lm_dir.join("tokenizer.json"), msg: e })?;
    let lm_cfg: LmConfig = read_json(&lm_dir.join("config.json"))?;
    let vf: VisionFiles = read_json(&vision_dir.join("config.json"))?;
    if lm_cfg.vocab_size() != tok.vocab_size() {
        return Err(Error::Msg(format!("{}: LM vocabulary {} differs from its tokenizer's {}", lm_dir.display(), lm_cfg.vocab_size(), tok.vocab_size())));
    }
    let mut fcfg = template.clone();
    fcfg.lm = lm_cfg;
    fcfg.perceiver.dim = vf.vision.num_features;
    let mut store = ParamStore::new();
    let model = Flamingo::new(&mut store, &fcfg, &mut Rng::new(cfg.seed))?;
    let lm_file = lm_dir.join("model.safetensors");
    let mut report = load_hf_lm(&store, "lang_encoder.", &lm_file, false)?;
    report.missing.retain(|n| !n.contains("gated_cross_attn_layers") && n != NEW_TOKENS);
    if !report.is_clean() {
        return Err(Error::File {
            path: lm_file,
            msg: format!("not this LM: missing {:?}, unexpected {:?}, mis-shaped {:?}", report.missing, report.unexpected, report.mismatched),
        });
    }
    // `<|endofchunk|>` starts as the LM's `<eos>`, the separator its text episodes used.
    let d = fcfg.lm.hidden_size();
    let table = model.lm.input_table(&store, None)?;
    let eos = table.narrow(0, EOS as usize, 1)?;
    let rows = store.require(NEW_TOKENS)?;
    rows.assign(&Tensor::concat(&[&rows.narrow(0, 0, 1)?.detach(), &eos.detach()], 0)?.reshape(&[2, d])?)?;
    let mut vstore = ParamStore::new();
    let net = NfNet::new(&mut vstore, &mut Init { rng: &mut Rng::new(0), dtype: DType::F32, trainable: false }, "", &vf.vision)?;
    vstore.load_safetensors(vision_dir.join("model.safetensors"), true)?;
    let s = vf.image_size;
    let train_images = ImagePool::new(cfg.pool_per_combo, s, cfg.seed.wrapping_add(101));
    let eval_images = ImagePool::new(cfg.pool_per_combo.div_ceil(2), s, cfg.seed.wrapping_add(202));
    let train_clips = ClipPool::new(cfg.clips, cfg.frames, s, cfg.seed.wrapping_add(303));
    let eval_clips = ClipPool::new(cfg.clips / 2, cfg.frames, s, cfg.seed.wrapping_add(404));
    let enc = |imgs: &[Vec<f32>]| Features::compute(&net, &vstore, imgs, s, 128);
    let device = if std::env::var_os("FLAMINGO_DEVICE").is_some() { Device::best() } else { Device::Cpu };
    store.to_device(device)?;
    Ok(Setup {
        train_image_features: enc(&train_images.images)?,
        eval_image_features: enc(&eval_images.images)?,
        train_clip_features: enc(&train_clips.images)?,
        eval_clip_features: enc(&eval_clips.images)?,
        tok,
        words: WordPools::new(0),
        model,
        store,
        image_size: s,
        train_images,
        eval_images,
        train_clips,
        eval_clips,
        world_seconds: t0.elapsed().as_secs_f64(),
        device,
    })
}

impl Setup {
    /// One training document of `kind`.
    pub fn sample(&self, kind: DatasetKind, cfg: &TrainConfig, rng: &mut Rng) -> Doc {
        match kind {
            DatasetKind::Interleaved => {
                if rng.uniform() < cfg.binding_fraction {
                    let attr = if rng.uniform() < cfg.shape_fraction { Attribute::Shape } else { Attribute::Colour };
                    let ways = 2 + rng.below(2) as usize;
                    let n = ways + rng.below((5 - ways) as u64) as usize;
                    let fix = rng.uniform() < cfg.fixed_other_fraction;
                    binding_doc(&self.tok, attr, ways, n, &self.words.train, &self.train_images, fix, rng)
                } else {
                    quiz_doc(&self.tok, 1 + rng.below(5) as usize, &self.train_images, rng)
                }
            }
            DatasetKind::Pairs => caption_doc(&self.tok, &self.train_images, rng),
            DatasetKind::Video => video_doc(&self.tok, &self.train_clips, rng),
        }
    }

    /// The Perceiver's visual tokens `[b, m, R, dv]` for the media lists `media` (indices into
    /// `features`, `frames` frames each), computed on [`Setup::device`].
    pub fn visual(&self, features: &Features, media: &[Vec<usize>], frames: usize) -> Result<Tensor> {
        let feats = features.gather(media, frames)?.to_device(self.device)?;
        self.model.encode_media(&self.store, &feats)
    }

    /// Right-padded ids `[b, l]` (on the host, where the model reads token ids) and visual tokens
    /// `[b, m, R, dv]` for documents whose media index `features` with `frames` frames each.
    pub fn batch(&self, docs: &[Doc], features: &Features, frames: usize) -> Result<(Tensor, Tensor)> {
        let l = docs.iter().map(|d| d.ids.len()).max().unwrap_or(0).max(2);
        let ids: Vec<i64> = docs.iter().flat_map(|d| d.ids.iter().copied().chain(std::iter::repeat_n(PAD, l - d.ids.len()))).collect();
        let media: Vec<Vec<usize>> = docs.iter().map(|d| d.media.clone()).collect();
        Ok((Tensor::from_vec(ids, &[docs.len(), l])?, self.visual(features, &media, frames)?))
    }

    /// The mean next-token loss of a batch of documents.
    pub fn loss(&self, docs: &[Doc], kind: DatasetKind, p_next: f64, rng: &mut Rng) -> Result<Tensor> {
        let (features, frames) = match kind {
            DatasetKind::Video => (&self.train_clip_features, self.train_clips.frames),
            _ => (&self.train_image_features, 1),
        };
        let (ids, media) = self.batch(docs, features, frames)?;
        let logits = if p_next > 0.0 {
            let t = self.model.training_media_index(&ids, p_next, rng)?;
            self.model.forward_with_index(&self.store, &ids, &media, &t)?
        } else {
            self.model.forward(&self.store, &ids, &media)?
        };
        Flamingo::loss(&logits, &self.model.targets(&ids, Some(PAD), kind == DatasetKind::Interleaved)?)
    }
}

/// Parameter groups: cross-attention weights with weight decay; gates, norms, the Perceiver and
/// the new token rows without.
pub fn param_groups(store: &ParamStore, lr: f64, weight_decay: f64) -> Vec<ParamGroup> {
    let (decayed, plain): (Vec<_>, Vec<_>) = store.trainable().into_iter().partition(|(n, t)| n.contains("gated_cross_attn_layers") && t.rank() >= 2);
    vec![ParamGroup::new(decayed, lr, weight_decay), ParamGroup::new(plain, lr, 0.0)]
}

/// What `train` measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainReport {
    pub steps: u64,
    pub seconds: f64,
    pub world_seconds: f64,
    pub final_loss: f64,
    pub interrupted: bool,
    pub trainable_parameters: usize,
}

/// Trains in `dir` (checkpoint, metrics, config.json, report.json).
pub fn run(setup: &Setup, files: &RunFiles, dir: &Path, resume: bool, progress: bool) -> Result<TrainReport> {
    let cfg = &files.train;
    if cfg.datasets.is_empty() {
        return Err(Error::Msg("train: the mixture has no datasets".into()));
    }
    std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
    write_json(&dir.join("config.json"), files)?;
    let store = &setup.store;
    let mut opt = AdamW::new(param_groups(store, cfg.lr, cfg.weight_decay), AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8 })?;
    let schedule = LrSchedule { warmup_steps: cfg.warmup, total_steps: cfg.steps, decay: Decay::Cosine, min_factor: 0.1 };
    let stage = match cfg.schedule {
        MixSchedule::Accumulate => "train",
        MixSchedule::RoundRobin => "train-round-robin",
    };
    let loop_cfg = LoopConfig {
        stage: stage.into(),
        steps: cfg.steps,
        schedule,
        dir: dir.to_path_buf(),
        checkpoint_every: cfg.checkpoint_every,
        resume,
        log_every: 10,
        progress,
        stop_at: cfg.stop_at,
    };
    let params: Vec<Tensor> = store.trainable().into_iter().map(|(_, t)| t).collect();
    let mut rng = Rng::new(cfg.seed ^ 0xf1a);
    let mut pos = vec![0u64; cfg.datasets.len()];
    let info = HashMap::from([("stage".to_string(), stage.to_string())]);
    let gates: Vec<String> = store.names().into_iter().filter(|n| n.ends_with("attn_gate")).collect();
    let outcome = train_loop::run(&loop_cfg, store, &mut opt, &mut rng, &mut pos, &info, |step, opt, rng, pos| {
        let which: Vec<usize> = match cfg.schedule {
            MixSchedule::Accumulate => (0..cfg.datasets.len()).collect(),
            MixSchedule::RoundRobin => vec![(step % cfg.datasets.len() as u64) as usize],
        };
        let mut stats = StepStats::default();
        for d in which {
            let spec = &cfg.datasets[d];
            let docs: Vec<Doc> = (0..spec.batch).map(|_| setup.sample(spec.kind, cfg, rng)).collect();
            pos[d] += docs.len() as u64;
            let loss = setup.loss(&docs, spec.kind, if spec.kind == DatasetKind::Interleaved { cfg.p_next } else { 0.0 }, rng)?;
            loss.mul_scalar(spec.weight)?.backward()?;
            let l = loss.to_scalar::<f64>()?;
            stats.loss += spec.weight * l;
            stats.tokens += docs.iter().map(|d| d.ids.len() as u64).sum::<u64>();
            stats.extra.insert(format!("loss_{}", serde_json::to_value(spec.kind).unwrap_or_default().as_str().unwrap_or("?")), l.into());
        }
        clip_grad_norm(&params, cfg.clip)?;
        opt.step()?;
        if cfg.probe_every > 0 && (step + 1) % cfg.probe_every == 0 {
            let probe = crate::eval::EvalConfig { episodes: 50, shots: vec![2, 4], ..Default::default() }.quick();
            for r in crate::eval::evaluate(setup, &probe, false)?.rows {
                stats.extra.insert(format!("probe_{}_{}shot", r.task, r.shots), r.accuracy.into());
            }
        }
        if step % 10 == 9 {
            for g in &gates {
                stats.extra.insert(
                    format!("tanh_{}", g.replace("lang_encoder.gated_cross_attn_layers.", "").replace(".gated_cross_attn_layer.attn_gate", "")),
                    store.require(g)?.tanh()?.to_scalar::<f64>()?.into(),
                );
            }
        }
        Ok(stats)
    })?;
    let report = TrainReport {
        steps: outcome.steps_done,
        seconds: outcome.seconds,
        world_seconds: setup.world_seconds,
        final_loss: outcome.final_loss,
        interrupted: outcome.interrupted,
        trainable_parameters: store.count(true),
    };
    write_json(&dir.join("report.json"), &report)?;
    Ok(report)
}

/// Loads a `train` run's trainable weights from its checkpoint into `setup`'s store.
pub fn load_trained(setup: &Setup, dir: &Path) -> Result<()> {
    let path = train_loop::checkpoint_path(dir);
    let f = flamingo_engine::io::SafetensorsFile::open(&path)?;
    for (n, t) in setup.store.trainable() {
        let src = f.get(&format!("param.{n}")).map_err(|_| Error::Key {
            path: path.clone(),
            key: format!("param.{n}"),
            msg: "missing from the checkpoint".into(),
        })?;
        t.assign(&src)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_set_known_fields_and_reject_unknown_ones() {
        let c = TrainConfig::default()
            .with_overrides(&["lr=0.003".into(), "schedule=round-robin".into(), r#"datasets=[{"kind":"pairs","batch":4,"weight":1.0}]"#.into()])
            .unwrap();
        assert_eq!(c.lr, 0.003);
        assert_eq!(c.schedule, MixSchedule::RoundRobin);
        assert_eq!(c.datasets.len(), 1);
        let e = TrainConfig::default().with_overrides(&["learning_rate=1".into()]).unwrap_err().to_string();
        assert!(e.contains("learning_rate") && e.contains("lr"), "{e}");
        assert!(TrainConfig::default().with_overrides(&["lr".into()]).is_err());
        assert!(TrainConfig::default().with_overrides(&["lr=fast".into()]).is_err());
    }
}
