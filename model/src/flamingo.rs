//! The Flamingo model (SPEC.md §2): visual features → Perceiver Resampler → a frozen LM (GPT-2 or
//! LLaMA-style) with
//! gated cross-attention blocks inserted before every n-th layer, and the training loss with the
//! label rules of §2.7.
//!
//! The vision encoder (NFNet) is not built yet, so `forward` takes visual *features*
//! `[b, media, frames, tokens, dim_visual]`, as the frozen encoder would produce them.
use crate::gpt2::{LayerKv, RowLayout};
use crate::lm::{Lm, LmConfig};
use crate::nn::Init;
use crate::perceiver::{PerceiverConfig, PerceiverResampler};
use crate::xattn::{media_index, media_index_from, media_index_next, GatedCrossAttentionBlock, MediaAttention, MediaKv, XAttnConfig};
use flamingo_engine::{DType, Error, ParamStore, Result, Rng, Tensor};
use serde::{Deserialize, Serialize};

/// Flamingo hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlamingoConfig {
    pub lm: LmConfig,
    pub perceiver: PerceiverConfig,
    pub xattn_heads: usize,
    pub xattn_dim_head: usize,
    pub xattn_ff_mult: usize,
    pub media_attention: MediaAttention,
    /// A block sits before LM layer i when (i + 1) % n == 0 (paper 3B: 1; OF-9B: 4).
    pub cross_attn_every_n_layers: usize,
    /// Initial value of every gate α (paper: 0).
    #[serde(default)]
    pub gate_init: f64,
    /// How visual features become visual tokens (paper: the Perceiver Resampler).
    #[serde(default)]
    pub resampler: Resampler,
}

/// How visual features `[b, m, f, s, dv]` become the visual tokens the cross-attention reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resampler {
    /// The Perceiver Resampler: a fixed number of latents per medium (the paper).
    #[default]
    Perceiver,
    /// No resampling: every frame's grid tokens pass straight through (`[b, m, f·s, dv]`); the
    /// Perceiver's parameters still exist but are unused. A tuning option for small grids.
    Identity,
}

/// Name of the trainable embedding rows of the two new tokens (`<image>`, `<|endofchunk|>`).
pub const NEW_TOKENS: &str = "lang_encoder.new_token_embeddings.weight";
const LM_PREFIX: &str = "lang_encoder.";

/// What incremental decoding keeps between steps: each layer's self-attention keys/values, each
/// block's visual keys/values (every image is encoded once), and how many media each row has seen.
#[derive(Clone, Debug)]
pub struct DecodeState {
    layers: Vec<LayerKv>,
    media_kv: Vec<Option<MediaKv>>,
    seen_media: Vec<f32>,
    len: usize,
    /// Next position of each row (rows advance only on real tokens).
    next_pos: Vec<i64>,
    /// `[b, len]` 1/0 validity of every cached key, once any padding was fed.
    key_valid: Option<Tensor>,
    /// `[b, 1, d]` input of LM layer 0 at each row's last token (for the LM's token shift).
    last_embed: Option<Tensor>,
}

impl DecodeState {
    /// Tokens processed so far.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Flamingo over a frozen decoder LM.
#[derive(Clone, Debug)]
pub struct Flamingo {
    pub cfg: FlamingoConfig,
    pub lm: Lm,
    pub perceiver: PerceiverResampler,
    /// `blocks[i]` runs before LM layer i.
    pub blocks: Vec<Option<GatedCrossAttentionBlock>>,
}

impl Flamingo {
    /// Builds the model, registering the LM frozen (`lang_encoder.transformer.*`) and the
    /// Perceiver (`perceiver.*`), the cross-attention blocks
    /// (`lang_encoder.gated_cross_attn_layers.{i}.gated_cross_attn_layer.*`) and the two new
    /// token rows trainable.
    pub fn new(store: &mut ParamStore, cfg: &FlamingoConfig, rng: &mut Rng) -> Result<Flamingo> {
        if cfg.cross_attn_every_n_layers == 0 {
            return Err(Error::Msg("cross_attn_every_n_layers must be at least 1".into()));
        }
        let mut frozen = Init { rng, dtype: DType::F32, trainable: false };
        let lm = Lm::new(store, &mut frozen, LM_PREFIX, &cfg.lm)?;
        let mut init = Init { rng: frozen.rng, dtype: DType::F32, trainable: true };
        init.normal(store, NEW_TOKENS, &[2, cfg.lm.hidden_size()], 0.02)?;
        let perceiver = PerceiverResampler::new(store, &mut init, "perceiver", &cfg.perceiver)?;
        let xcfg = XAttnConfig {
            dim: cfg.lm.hidden_size(),
            dim_visual: cfg.perceiver.dim,
            heads: cfg.xattn_heads,
            dim_head: cfg.xattn_dim_head,
            ff_mult: cfg.xattn_ff_mult,
            media_attention: cfg.media_attention,
            gate_init: cfg.gate_init,
        };
        let mut blocks = Vec::with_capacity(cfg.lm.num_layers());
        for i in 0..cfg.lm.num_layers() {
            blocks.push(if (i + 1) % cfg.cross_attn_every_n_layers == 0 {
                Some(GatedCrossAttentionBlock::new(store, &mut init, &format!("{LM_PREFIX}gated_cross_attn_layers.{i}.gated_cross_attn_layer"), &xcfg)?)
            } else {
                None
            });
        }
        Ok(Flamingo { cfg: cfg.clone(), lm, perceiver, blocks })
    }

    /// Token id of `<image>` (the first id after the LM's vocabulary).
    pub fn media_token_id(&self) -> i64 {
        self.cfg.lm.vocab_size() as i64
    }
    /// Token id of `<|endofchunk|>`.
    pub fn eoc_token_id(&self) -> i64 {
        self.cfg.lm.vocab_size() as i64 + 1
    }

    /// Resamples visual features `[b, m, f, s, dv]` into visual tokens `[b, m, R, dv]`.
    /// With [`Resampler::Identity`], the grid tokens themselves: `[b, m, f·s, dv]`.
    pub fn encode_media(&self, p: &ParamStore, features: &Tensor) -> Result<Tensor> {
        match self.cfg.resampler {
            Resampler::Perceiver => self.perceiver.forward(p, features),
            Resampler::Identity => {
                if features.rank() != 5 {
                    return Err(Error::Msg(format!("encode_media: features must be [batch, media, frames, tokens, dim], got {:?}", features.shape())));
                }
                let s = features.shape();
                features.reshape(&[s[0], s[1], s[2] * s[3], s[4]])
            }
        }
    }

    fn run(&self, p: &ParamStore, ids: &Tensor, media: Option<&Tensor>, t: Option<Tensor>) -> Result<Tensor> {
        let new_rows = p.require(NEW_TOKENS)?;
        // The LM's (frozen) table and the new tokens' rows as two blocks (no concatenation, and
        // no gradient formed for the frozen one).
        let table = self.lm.input_table(p, None)?;
        let mut h = self.lm.embed(p, &[&table, new_rows], ids, 0)?;
        let t = match (media, t) {
            (Some(_), Some(t)) => Some(t),
            (Some(_), None) => Some(media_index(ids, self.media_token_id())?),
            (None, _) => None,
        };
        for i in 0..self.cfg.lm.num_layers() {
            if let (Some(block), Some(m), Some(t)) = (&self.blocks[i], media, &t) {
                h = block.forward(p, &h, m, t)?;
            }
            if i == 0 {
                // The LM's token shift is the first step of its layer 0, so it carries what the
                // cross-attention block before layer 0 wrote at each token to the next token.
                h = self.lm.shift(p, &h, None)?;
            }
            h = self.lm.block_cached(p, i, &h, None)?;
        }
        // The LM's (frozen) table and the new tokens' rows as two blocks: no gradient is
        // formed for the frozen one.
        self.lm.head(p, &[&self.lm.output_table(p, None)?, new_rows], &h)
    }

    /// Logits `[b, l, vocab + 2]` for token ids `[b, l]` and visual tokens `[b, m, R, dv]`
    /// (from [`Flamingo::encode_media`]).
    pub fn forward(&self, p: &ParamStore, ids: &Tensor, media: &Tensor) -> Result<Tensor> {
        self.run(p, ids, Some(media), None)
    }

    /// Like [`Flamingo::forward`] with an explicit media index `t [b, l]` (f32), e.g. from
    /// [`Flamingo::training_media_index`].
    pub fn forward_with_index(&self, p: &ParamStore, ids: &Tensor, media: &Tensor, t: &Tensor) -> Result<Tensor> {
        if t.shape() != ids.shape() {
            return Err(Error::Msg(format!("forward_with_index: media index {:?} must match ids {:?}", t.shape(), ids.shape())));
        }
        self.run(p, ids, Some(media), Some(t.clone()))
    }

    /// The paper's training-time media index for interleaved documents: each row attends to the
    /// next image instead of the previous one with probability `p_next` (½ in the paper).
    pub fn training_media_index(&self, ids: &Tensor, p_next: f64, rng: &mut Rng) -> Result<Tensor> {
        let rows: Vec<bool> = (0..ids.shape()[0]).map(|_| rng.uniform() < p_next).collect();
        media_index_next(ids, self.media_token_id(), &rows)
    }

    /// Encodes images `[b, m, 3, h, w]` with the NFNet into Perceiver input features
    /// `[b, m, 1, h'·w', c]`; the vision encoder runs under `no_grad` when `frozen`.
    pub fn encode_images(&self, p: &ParamStore, vision: &crate::nfnet::NfNet, images: &Tensor, frozen: bool) -> Result<Tensor> {
        if images.rank() != 5 {
            return Err(Error::Msg(format!("encode_images: expected images [b, media, 3, h, w], got {:?}", images.shape())));
        }
        let s = images.shape().to_vec();
        let flat = images.reshape(&[s[0] * s[1], s[2], s[3], s[4]])?;
        let tokens = if frozen { flamingo_engine::no_grad(|| vision.forward_tokens(p, &flat))? } else { vision.forward_tokens(p, &flat)? };
        let (n, c) = (tokens.shape()[1], tokens.shape()[2]);
        tokens.reshape(&[s[0], s[1], 1, n, c])
    }

    /// The frozen language model alone on the same ids (no cross-attention): what Flamingo
    /// computes when both gates of every block are 0.
    pub fn forward_lm_only(&self, p: &ParamStore, ids: &Tensor) -> Result<Tensor> {
        self.run(p, ids, None, None)
    }

    /// Starts incremental decoding over visual tokens `media [b, m, R, dv]`: computes every
    /// block's visual keys/values once.
    pub fn start_decoding(&self, p: &ParamStore, media: &Tensor) -> Result<DecodeState> {
        let media_kv = self.blocks.iter().map(|b| b.as_ref().map(|b| b.attn.media_kv(p, media)).transpose()).collect::<Result<_>>()?;
        let b = media.shape()[0];
        Ok(DecodeState {
            layers: vec![LayerKv::default(); self.cfg.lm.num_layers()],
            media_kv,
            seen_media: vec![0.0; b],
            len: 0,
            next_pos: vec![0; b],
            key_valid: None,
            last_embed: None,
        })
    }

    /// Feeds `ids [b, l]` (the prompt, or the next token) and returns their logits
    /// `[b, l, vocab + 2]`, reusing and extending the caches in `state`.
    pub fn decode_step(&self, p: &ParamStore, state: &mut DecodeState, ids: &Tensor) -> Result<Tensor> {
        self.decode_step_padded(p, state, ids, None)
    }

    /// [`Flamingo::decode_step`] where `valid` (`b·l`, row-major) marks real tokens; the others
    /// are padding (e.g. a left-padded batch of prompts): no token attends to them, and rows'
    /// positions advance only on real tokens.
    pub fn decode_step_padded(&self, p: &ParamStore, state: &mut DecodeState, ids: &Tensor, valid: Option<&[bool]>) -> Result<Tensor> {
        let (b, l) = (ids.shape()[0], ids.shape()[1]);
        if b != state.next_pos.len() || valid.is_some_and(|v| v.len() != b * l) {
            return Err(Error::Msg(format!("decode_step: ids {:?} do not match the decoding state of {} rows", ids.shape(), state.next_pos.len())));
        }
        let mut positions = Vec::with_capacity(b * l);
        for r in 0..b {
            for j in 0..l {
                positions.push(state.next_pos[r]);
                if valid.is_none_or(|v| v[r * l + j]) {
                    state.next_pos[r] += 1;
                }
            }
        }
        if valid.is_some_and(|v| v.iter().any(|x| !x)) || state.key_valid.is_some() {
            let new: Vec<f32> = (0..b * l).map(|i| if valid.is_none_or(|v| v[i]) { 1.0 } else { 0.0 }).collect();
            let new = Tensor::from_vec(new, &[b, l])?;
            let old = state.key_valid.take().unwrap_or_else(|| Tensor::ones(&[b, state.len], DType::F32, Default::default()));
            state.key_valid = Some(Tensor::concat(&[&old, &new], 1)?);
        }
        let layout = RowLayout { positions: Some(&positions), key_valid: state.key_valid.as_ref() };
        let new_rows = p.require(NEW_TOKENS)?;
        let table = self.lm.input_table(p, None)?;
        let mut h = self.lm.embed_at(p, &[&table, new_rows], ids, &positions)?;
        let t = media_index_from(ids, self.media_token_id(), &state.seen_media)?;
        for i in 0..self.cfg.lm.num_layers() {
            if let (Some(block), Some(kv)) = (&self.blocks[i], &state.media_kv[i]) {
                h = block.forward_with_kv(p, &h, kv, &t)?;
            }
            if i == 0 && self.lm.has_token_shift() {
                let before = h.clone();
                h = self.lm.shift(p, &h, state.last_embed.as_ref())?;
                if l > 0 {
                    state.last_embed = Some(before.narrow(1, l - 1, 1)?);
                }
            }
            h = self.lm.block_masked(p, i, &h, Some(&mut state.layers[i]), &layout)?;
        }
        let tv = t.to_vec::<f32>()?;
        for (row, seen) in state.seen_media.iter_mut().enumerate() {
            if l > 0 {
                *seen = tv[row * l + l - 1];
            }
        }
        state.len += l;
        // The LM's (frozen) table and the new tokens' rows as two blocks: no gradient is
        // formed for the frozen one.
        self.lm.head(p, &[&self.lm.output_table(p, None)?, new_rows], &h)
    }

    /// Greedy decoding: feeds `prompt [b, l]`, then appends the most likely token until
    /// `<|endofchunk|>` or `max_new` tokens. Returns each row's new tokens (the stop token
    /// included when reached). Rows must have equal prompt lengths (no padding yet).
    pub fn generate_greedy(&self, p: &ParamStore, prompt: &Tensor, media: &Tensor, max_new: usize) -> Result<Vec<Vec<i64>>> {
        flamingo_engine::no_grad(|| {
            let mut state = self.start_decoding(p, media)?;
            let first = self.decode_step(p, &mut state, prompt)?;
            self.continue_decoding(p, state, first, max_new, &crate::generate::Strategy::Greedy)
        })
    }

    /// Next-token targets `[b, l−1]` (−100 = not a target) by SPEC §2.7: padding (`pad_id`) and
    /// `<image>` are never targets, `<|endofchunk|>` is; with `interleaved`, text before a row's
    /// first `<image>` is not a target either.
    pub fn targets(&self, ids: &Tensor, pad_id: Option<i64>, interleaved: bool) -> Result<Tensor> {
        if ids.rank() != 2 || ids.shape()[1] < 2 {
            return Err(Error::Msg(format!("targets: need token ids [batch, len ≥ 2], got {:?}", ids.shape())));
        }
        let (b, l) = (ids.shape()[0], ids.shape()[1]);
        let v = ids.to_vec::<i64>()?;
        let mut out = Vec::with_capacity(b * (l - 1));
        for row in v.chunks(l) {
            let first_media = row.iter().position(|&x| x == self.media_token_id()).unwrap_or(l);
            for (pos, &id) in row.iter().enumerate().skip(1) {
                let skip = Some(id) == pad_id || id == self.media_token_id() || (interleaved && pos < first_media);
                out.push(if skip { -100 } else { id });
            }
        }
        Tensor::from_vec(out, &[b, l - 1])
    }

    /// Mean next-token cross-entropy of `logits [b, l, v]` against `targets [b, l−1]`.
    pub fn loss(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        if logits.rank() != 3 || logits.shape()[1] < 2 || targets.shape() != [logits.shape()[0], logits.shape()[1] - 1] {
            return Err(Error::Msg(format!("loss: logits {:?} and targets {:?} must be [b, l, v] and [b, l − 1]", logits.shape(), targets.shape())));
        }
        let (b, l, v) = (logits.shape()[0], logits.shape()[1], logits.shape()[2]);
        // The last position predicts nothing: instead of cutting it off the logits (a copy of
        // [b, l−1, v] forward and a zero-padded one backward), give it the ignored target.
        let t = targets.to_vec::<i64>()?;
        let mut full = Vec::with_capacity(b * l);
        for row in t.chunks(l - 1) {
            full.extend_from_slice(row);
            full.push(-100);
        }
        let full = Tensor::from_vec(full, &[b * l])?;
        logits.reshape(&[b * l, v])?.cross_entropy(&full, Some(-100), 0.0)
    }
}
