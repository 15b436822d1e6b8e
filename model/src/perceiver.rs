//! The Perceiver Resampler (SPEC.md §2.3): a fixed number of learned latents cross-attend to each
//! medium's visual features, turning a variable-size feature map into `R` visual tokens.
use crate::nn::{merge_heads, split_heads, FeedForward, Init, LayerNorm, Linear};
use flamingo_engine::{Error, ParamStore, Result, Tensor};
use serde::{Deserialize, Serialize};

/// Perceiver Resampler hyper-parameters (OpenFlamingo defaults: depth 6, 8 heads × 64, 64 latents).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PerceiverConfig {
    /// Width of the visual features and of the latents.
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub dim_head: usize,
    pub num_latents: usize,
    pub ff_mult: usize,
    /// Learned per-frame (time) embeddings for video, `frame_embs [max_frames, dim]`.
    pub max_num_frames: Option<usize>,
    /// Learned per-medium embeddings `media_time_embs [max_media, 1, dim]` (OpenFlamingo has
    /// them; they make media positions distinguishable, so media are then no longer processed
    /// independently — leave them off to keep SPEC §3 invariant 3).
    pub max_num_media: Option<usize>,
}

/// One attention layer: latents attend to `concat(media, latents)`.
#[derive(Clone, Debug)]
struct PerceiverAttention {
    norm_media: LayerNorm,
    norm_latents: LayerNorm,
    to_q: Linear,
    to_kv: Linear,
    to_out: Linear,
    heads: usize,
    dim_head: usize,
}

impl PerceiverAttention {
    /// `x [n, s, d]`, `lat [n, r, d]` → `[n, r, d]`.
    fn forward(&self, p: &ParamStore, x: &Tensor, lat: &Tensor) -> Result<Tensor> {
        let inner = self.heads * self.dim_head;
        let xm = self.norm_media.forward(p, x)?;
        let l = self.norm_latents.forward(p, lat)?;
        let ql = self.to_q.forward(p, &l)?; // [n, r, heads·dh]
        let (k, v) = crate::nn::keys_values(p, &self.to_kv, &Tensor::concat(&[&xm, &l], 1)?, inner, self.heads)?;
        if crate::kernels::use_fused(lat) && !lat.device().is_cuda() {
            // Unmasked attention is the masked cross-attention with one medium that every query
            // sees: q [n, r, h, dh], k, v [n, 1, s + r, h, dh], media index 1 everywhere. The
            // fused kernel scales the scores by dh^-0.5 itself. CPU only: the CUDA kernels have
            // not been run on a GPU at this shape, so there the composition below stays.
            let (n, r, keys) = (ql.shape()[0], ql.shape()[1], k.shape()[2]);
            let (h, dh) = (self.heads, self.dim_head);
            let q4 = ql.reshape(&[n, r, h, dh])?;
            let k5 = k.transpose(1, 2)?.reshape(&[n, 1, keys, h, dh])?;
            let v5 = v.transpose(1, 2)?.reshape(&[n, 1, keys, h, dh])?;
            let media = Tensor::full(&[n, r], 1.0, flamingo_engine::DType::F32, Default::default());
            let o = Tensor::masked_cross_attention(&q4, &k5, &v5, &media, flamingo_engine::ops::fused::XAttnMode::OnlyImmediate)?;
            return self.to_out.forward(p, &o.reshape(&[n, r, inner])?);
        }
        let q = split_heads(&ql, self.heads)?.mul_scalar((self.dim_head as f64).powf(-0.5))?;
        let attn = q.matmul(&k.t()?)?.softmax(-1)?;
        self.to_out.forward(p, &merge_heads(&attn.matmul(&v)?)?)
    }
}

/// The resampler. Parameter names follow OpenFlamingo (`perceiver.latents`,
/// `perceiver.layers.{l}.0.*` attention, `perceiver.layers.{l}.1.*` feed-forward, `perceiver.norm`).
#[derive(Clone, Debug)]
pub struct PerceiverResampler {
    pub cfg: PerceiverConfig,
    latents: String,
    frame_embs: Option<String>,
    media_time_embs: Option<String>,
    layers: Vec<(PerceiverAttention, FeedForward)>,
    norm: LayerNorm,
}

impl PerceiverResampler {
    /// Registers the parameters under `prefix` (normally `perceiver`).
    pub fn new(store: &mut ParamStore, init: &mut Init, prefix: &str, cfg: &PerceiverConfig) -> Result<PerceiverResampler> {
        let d = cfg.dim;
        let inner = cfg.heads * cfg.dim_head;
        let latents = init.normal(store, &format!("{prefix}.latents"), &[cfg.num_latents, d], 1.0)?;
        let frame_embs = cfg.max_num_frames.map(|f| init.normal(store, &format!("{prefix}.frame_embs"), &[f, d], 1.0)).transpose()?;
        let media_time_embs = cfg.max_num_media.map(|m| init.normal(store, &format!("{prefix}.media_time_embs"), &[m, 1, d], 1.0)).transpose()?;
        let mut layers = Vec::with_capacity(cfg.depth);
        for l in 0..cfg.depth {
            let a = format!("{prefix}.layers.{l}.0");
            let attn = PerceiverAttention {
                norm_media: LayerNorm::new(store, init, &format!("{a}.norm_media"), d, 1e-5)?,
                norm_latents: LayerNorm::new(store, init, &format!("{a}.norm_latents"), d, 1e-5)?,
                to_q: Linear::new(store, init, &format!("{a}.to_q"), d, inner, false)?,
                to_kv: Linear::new(store, init, &format!("{a}.to_kv"), d, 2 * inner, false)?,
                to_out: Linear::new(store, init, &format!("{a}.to_out"), inner, d, false)?,
                heads: cfg.heads,
                dim_head: cfg.dim_head,
            };
            let ff = FeedForward::new(store, init, &format!("{prefix}.layers.{l}.1"), d, cfg.ff_mult)?;
            layers.push((attn, ff));
        }
        let norm = LayerNorm::new(store, init, &format!("{prefix}.norm"), d, 1e-5)?;
        Ok(PerceiverResampler { cfg: cfg.clone(), latents, frame_embs, media_time_embs, layers, norm })
    }

    /// `x [b, m, f, s, d]` (m media of f frames of s spatial tokens) → `[b, m, R, d]`.
    pub fn forward(&self, p: &ParamStore, x: &Tensor) -> Result<Tensor> {
        if x.rank() != 5 || x.shape()[4] != self.cfg.dim {
            return Err(Error::Msg(format!("perceiver: expected features [b, media, frames, tokens, {}], got {:?}", self.cfg.dim, x.shape())));
        }
        let (b, m, f, s, d) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3], x.shape()[4]);
        let mut x = x.clone();
        if let Some(fe) = &self.frame_embs {
            let fe = p.require(fe)?;
            if f > fe.shape()[0] {
                return Err(Error::Msg(format!("perceiver: {f} frames but only {} frame embeddings", fe.shape()[0])));
            }
            x = x.add(&fe.narrow(0, 0, f)?.unsqueeze(1)?)?; // [f, 1, d] over [.., f, s, d]
        }
        let mut x = x.reshape(&[b, m, f * s, d])?;
        if let Some(te) = &self.media_time_embs {
            let te = p.require(te)?;
            if m > te.shape()[0] {
                return Err(Error::Msg(format!("perceiver: {m} media but only {} media embeddings", te.shape()[0])));
            }
            x = x.add(&te.narrow(0, 0, m)?)?; // [m, 1, d] over [b, m, fs, d]
        }
        let x = x.reshape(&[b * m, f * s, d])?;
        let r = self.cfg.num_latents;
        let mut lat = p.require(&self.latents)?.broadcast_as(&[b * m, r, d])?;
        for (attn, ff) in &self.layers {
            lat = attn.forward(p, &x, &lat)?.add(&lat)?;
            lat = ff.forward(p, &lat)?.add(&lat)?;
        }
        self.norm.forward(p, &lat)?.reshape(&[b, m, r, d])
    }
}
