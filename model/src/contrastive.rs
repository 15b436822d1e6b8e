//! Contrastive pretraining of the vision encoder (SPEC.md §2.2): the NFNet and a BERT-style
//! bidirectional text encoder, mean-pooled, projected to a shared space, L2-normalised, scored
//! with a trainable inverse temperature, and trained with the two-term (image→text plus
//! text→image) loss with label smoothing. The text encoder is thrown away afterwards.
use crate::nfnet::{NfNet, NfNetConfig};
use crate::nn::{merge_heads, split_heads, FeedForward, Init, LayerNorm, Linear};
use flamingo_engine::{DType, Error, ParamStore, Result, Tensor};
use serde::{Deserialize, Serialize};

/// BERT-style text encoder hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextEncoderConfig {
    pub vocab_size: usize,
    pub dim: usize,
    pub layers: usize,
    pub heads: usize,
    pub max_len: usize,
    pub ff_mult: usize,
}

/// The contrastive model's hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContrastiveConfig {
    pub vision: NfNetConfig,
    pub text: TextEncoderConfig,
    /// Width of the shared embedding space.
    pub embed_dim: usize,
    /// Label smoothing of both loss terms (0.1 in Flamingo/ALIGN).
    pub label_smoothing: f64,
    /// Initial temperature; the model learns log(1/temperature) (CLIP: 0.07).
    pub init_temperature: f64,
}

/// A pre-LN bidirectional transformer over token ids with a key padding mask.
#[derive(Clone, Debug)]
pub struct TextEncoder {
    cfg: TextEncoderConfig,
    tok: String,
    pos: String,
    layers: Vec<(LayerNorm, Linear, Linear, FeedForward)>,
    norm: LayerNorm,
}

impl TextEncoder {
    pub fn new(store: &mut ParamStore, init: &mut Init, prefix: &str, cfg: &TextEncoderConfig) -> Result<TextEncoder> {
        let d = cfg.dim;
        let tok = init.normal(store, &format!("{prefix}.tok_emb.weight"), &[cfg.vocab_size, d], 0.02)?;
        let pos = init.normal(store, &format!("{prefix}.pos_emb.weight"), &[cfg.max_len, d], 0.02)?;
        let mut layers = Vec::new();
        for i in 0..cfg.layers {
            let l = format!("{prefix}.layers.{i}");
            layers.push((
                LayerNorm::new(store, init, &format!("{l}.ln"), d, 1e-5)?,
                Linear::new(store, init, &format!("{l}.attn.qkv"), d, 3 * d, true)?,
                Linear::new(store, init, &format!("{l}.attn.out"), d, d, true)?,
                FeedForward::new(store, init, &format!("{l}.ff"), d, cfg.ff_mult)?,
            ));
        }
        let norm = LayerNorm::new(store, init, &format!("{prefix}.norm"), d, 1e-5)?;
        Ok(TextEncoder { cfg: cfg.clone(), tok, pos, layers, norm })
    }

    /// `ids [b, l]` (i64) with `mask [b, l]` (1 = token, 0 = padding) → mean-pooled `[b, dim]`.
    pub fn forward_pooled(&self, p: &ParamStore, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, l) = (ids.shape()[0], ids.shape()[1]);
        if l > self.cfg.max_len || mask.shape() != ids.shape() {
            return Err(Error::Msg(format!("text encoder: ids {:?} and mask {:?} must match, at most {} tokens", ids.shape(), mask.shape(), self.cfg.max_len)));
        }
        let d = self.cfg.dim;
        let heads = self.cfg.heads;
        let mask = mask.to_dtype(DType::F32)?;
        let mut h = p.require(&self.tok)?.embedding(ids)?.add(&p.require(&self.pos)?.narrow(0, 0, l)?)?;
        let blocked = mask.affine(-1.0, 1.0)?.reshape(&[b, 1, 1, l])?;
        for (ln, qkv, out, ff) in &self.layers {
            let x = qkv.forward(p, &ln.forward(p, &h)?)?;
            let q = split_heads(&x.narrow(-1, 0, d)?, heads)?;
            let k = split_heads(&x.narrow(-1, d, d)?, heads)?;
            let v = split_heads(&x.narrow(-1, 2 * d, d)?, heads)?;
            let s = q.matmul(&k.t()?)?.mul_scalar(1.0 / ((d / heads) as f64).sqrt())?;
            let a = s.masked_fill(&blocked, -1e30)?.softmax(-1)?.matmul(&v)?;
            h = h.add(&out.forward(p, &merge_heads(&a)?)?)?;
            h = h.add(&ff.forward(p, &h)?)?;
        }
        let h = self.norm.forward(p, &h)?;
        let m = mask.unsqueeze(-1)?;
        let count = mask.sum(&[1], true)?.maximum(&Tensor::ones(&[], DType::F32, Default::default()))?;
        h.mul(&m)?.sum(&[1], false)?.div(&count)
    }
}

/// The two-term contrastive loss on projected (not yet normalised) embeddings `[n, e]` and a
/// log inverse temperature `[1]`: `S = exp(log_scale)·v̂ t̂ᵀ`,
/// `L = CE(S, diag) + CE(Sᵀ, diag)` (each a mean over the batch, with label smoothing).
/// Returns `(loss, S)`.
pub fn contrastive_loss(image: &Tensor, text: &Tensor, log_scale: &Tensor, smoothing: f64) -> Result<(Tensor, Tensor)> {
    if image.rank() != 2 || image.shape() != text.shape() {
        return Err(Error::Msg(format!("contrastive_loss: image {:?} and text {:?} embeddings must both be [n, e]", image.shape(), text.shape())));
    }
    let n = image.shape()[0];
    let v = image.l2_normalize(-1, 1e-12)?;
    let t = text.l2_normalize(-1, 1e-12)?;
    let s = v.matmul(&t.t()?)?.mul(&log_scale.exp()?)?;
    let diag = Tensor::from_vec((0..n as i64).collect::<Vec<_>>(), &[n])?;
    let loss = s.cross_entropy(&diag, None, smoothing)?.add(&s.t()?.contiguous()?.cross_entropy(&diag, None, smoothing)?)?;
    Ok((loss, s))
}

/// Image→text recall@k of a similarity matrix `[n, n]` whose matching pairs are on the diagonal
/// (ties go to the lower index).
pub fn recall_at_k(similarity: &Tensor, k: usize) -> Result<f64> {
    let n = similarity.shape()[0];
    let s = similarity.to_vec::<f64>()?;
    let mut hits = 0;
    for i in 0..n {
        let row = &s[i * n..(i + 1) * n];
        let better = row.iter().enumerate().filter(|&(j, &v)| v > row[i] || (v == row[i] && j < i)).count();
        if better < k {
            hits += 1;
        }
    }
    Ok(hits as f64 / n.max(1) as f64)
}

/// NFNet + text encoder + projections + temperature.
#[derive(Clone, Debug)]
pub struct ContrastiveModel {
    pub cfg: ContrastiveConfig,
    pub vision: NfNet,
    pub text: TextEncoder,
    proj_image: Linear,
    proj_text: Linear,
    /// Name of the log inverse temperature parameter.
    pub log_scale: String,
}

impl ContrastiveModel {
    /// Registers `vision.*` (timm NFNet names), `text.*`, `proj.image`, `proj.text`, `log_scale`.
    pub fn new(store: &mut ParamStore, init: &mut Init, cfg: &ContrastiveConfig) -> Result<ContrastiveModel> {
        let vision = NfNet::new(store, init, "vision.", &cfg.vision)?;
        let text = TextEncoder::new(store, init, "text", &cfg.text)?;
        let proj_image = Linear::new(store, init, "proj.image", cfg.vision.num_features, cfg.embed_dim, false)?;
        let proj_text = Linear::new(store, init, "proj.text", cfg.text.dim, cfg.embed_dim, false)?;
        let log_scale = init.constant(store, "log_scale", &[1], (1.0 / cfg.init_temperature).ln())?;
        Ok(ContrastiveModel { cfg: cfg.clone(), vision, text, proj_image, proj_text, log_scale })
    }

    /// `images [n, 3, h, w]`, text `ids`/`mask [n, l]` → `(loss, similarity [n, n])`.
    pub fn loss(&self, p: &ParamStore, images: &Tensor, ids: &Tensor, mask: &Tensor) -> Result<(Tensor, Tensor)> {
        let v = self.proj_image.forward(p, &self.vision.forward_features(p, images)?.mean_spatial()?)?;
        let t = self.proj_text.forward(p, &self.text.forward_pooled(p, ids, mask)?)?;
        contrastive_loss(&v, &t, p.require(&self.log_scale)?, self.cfg.label_smoothing)
    }

    /// Clamps the learned log inverse temperature to [0, ln 100] (call after each optimiser step).
    pub fn clamp_temperature(&self, p: &ParamStore) -> Result<()> {
        let t = p.require(&self.log_scale)?;
        let v = t.to_scalar::<f64>()?.clamp(0.0, 100f64.ln());
        t.assign(&Tensor::full(&[1], v, t.dtype(), t.device()))
    }
}
