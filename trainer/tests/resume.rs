//! Resuming from a checkpoint continues a CPU training run bit for bit, and a checkpoint write
//! that dies half-way leaves the previous checkpoint loadable.
use flamingo_engine::optim::{AdamW, AdamWConfig, ParamGroup};
use flamingo_engine::{DType, ParamStore, Rng, Tensor};
use flamingo_model::flamingo::{Flamingo, FlamingoConfig, Resampler};
use flamingo_model::gpt2::Gpt2Config;
use flamingo_model::lm::LmConfig;
use flamingo_model::perceiver::PerceiverConfig;
use flamingo_model::xattn::MediaAttention;
use flamingo_trainer::checkpoint::{self, TrainProgress};

fn cfg() -> FlamingoConfig {
    FlamingoConfig {
        lm: LmConfig::Gpt2(Gpt2Config { vocab_size: 30, n_positions: 16, n_embd: 16, n_layer: 2, n_head: 2, layer_norm_epsilon: 1e-5 }),
        perceiver: PerceiverConfig { dim: 12, depth: 1, heads: 2, dim_head: 6, num_latents: 3, ff_mult: 2, max_num_frames: None, max_num_media: None },
        xattn_heads: 2,
        xattn_dim_head: 6,
        xattn_ff_mult: 2,
        media_attention: MediaAttention::Immediate,
        cross_attn_every_n_layers: 1,
        gate_init: 0.0,
        resampler: Resampler::Perceiver,
    }
}

/// A tiny training run: each step draws its batch from `rng`, so the RNG state is part of what a
/// checkpoint must carry. Returns the per-step losses.
struct Run {
    store: ParamStore,
    model: Flamingo,
    opt: AdamW,
    rng: Rng,
    step: u64,
}

impl Run {
    fn new() -> Run {
        let mut store = ParamStore::new();
        let model = Flamingo::new(&mut store, &cfg(), &mut Rng::new(1)).unwrap();
        for (n, t) in store.iter() {
            if n.ends_with("_gate") {
                t.assign(&Tensor::full(&[1], 0.5, DType::F32, Default::default())).unwrap();
            }
        }
        let opt = AdamW::new(vec![ParamGroup::new(store.trainable(), 1e-2, 0.1)], AdamWConfig::default()).unwrap();
        Run { store, model, opt, rng: Rng::new(2), step: 0 }
    }
    fn train(&mut self, steps: usize) -> Vec<u32> {
        let mut losses = Vec::new();
        for _ in 0..steps {
            let i = self.model.media_token_id();
            let ids: Vec<i64> = (0..2 * 8).map(|k| if k % 8 == 0 { i } else { 1 + self.rng.below(29) as i64 }).collect();
            let ids = Tensor::from_vec(ids, &[2, 8]).unwrap();
            let feats = Tensor::randn(&[2, 1, 1, 4, 12], DType::F32, &mut self.rng);
            self.opt.zero_grad();
            let media = self.model.encode_media(&self.store, &feats).unwrap();
            let logits = self.model.forward(&self.store, &ids, &media).unwrap();
            let loss = Flamingo::loss(&logits, &self.model.targets(&ids, None, true).unwrap()).unwrap();
            losses.push(loss.to_scalar::<f32>().unwrap().to_bits());
            loss.backward().unwrap();
            self.opt.step().unwrap();
            self.step += 1;
        }
        losses
    }
    fn progress(&self) -> TrainProgress {
        TrainProgress { step: self.step, data_position: vec![self.step * 2], rng: self.rng.state(), info: Default::default() }
    }
}

#[test]
fn resume_equals_uninterrupted_bit_for_bit() {
    let dir = std::env::temp_dir().join(format!("flamingo-resume-{}", std::process::id()));
    let path = dir.join("ckpt.safetensors");
    let mut straight = Run::new();
    let all = straight.train(6);

    let mut first = Run::new();
    let head = first.train(3);
    checkpoint::save(&path, &first.store, &first.opt, &first.progress()).unwrap();
    drop(first);

    let mut resumed = Run::new(); // fresh weights and optimiser, overwritten by the checkpoint
    let progress = checkpoint::load(&path, &resumed.store, &mut resumed.opt).unwrap();
    resumed.rng = checkpoint::rng_of(&progress);
    resumed.step = progress.step;
    let tail = resumed.train(3);
    assert_eq!([head, tail].concat(), all, "resumed losses differ from the uninterrupted run");
    for (n, t) in straight.store.trainable() {
        assert_eq!(resumed.store.get(&n).unwrap().to_vec::<f32>().unwrap(), t.to_vec::<f32>().unwrap(), "{n}");
    }
}

#[test]
fn a_torn_checkpoint_write_leaves_the_previous_one_loadable() {
    let dir = std::env::temp_dir().join(format!("flamingo-torn-{}", std::process::id()));
    let path = dir.join("ckpt.safetensors");
    let mut run = Run::new();
    run.train(2);
    checkpoint::save(&path, &run.store, &run.opt, &run.progress()).unwrap();
    // A writer killed mid-write leaves a partial temporary file beside the checkpoint; the
    // checkpoint itself is only ever replaced by rename.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(dir.join(".ckpt.safetensors.tmp-99999"), &bytes[..bytes.len() / 2]).unwrap();
    let mut other = Run::new();
    let p = checkpoint::load(&path, &other.store, &mut other.opt).unwrap();
    assert_eq!(p.step, 2);
    // And a truncated file in place of a checkpoint is an error naming it, not a panic.
    let torn = dir.join("torn.safetensors");
    std::fs::write(&torn, &bytes[..bytes.len() / 2]).unwrap();
    let e = checkpoint::load(&torn, &other.store, &mut other.opt).unwrap_err().to_string();
    assert!(e.contains("torn.safetensors"), "{e}");
}
