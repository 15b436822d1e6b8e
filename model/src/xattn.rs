//! Gated cross-attention dense blocks (SPEC.md §2.4) and the per-image masking rule (§2.5).
//!
//! Two formulations, switched by [`crate::kernels`]: the engine's fused masked cross-attention
//! (runs of equal `t(ℓ)`, cost independent of the number of media; the default on the CPU) and the
//! reference, a dense masked attention over all `M·R` visual tokens built from primitive ops.
use crate::nn::{FeedForward, Init, LayerNorm, Linear};
use flamingo_engine::{DType, Error, ParamStore, Result, Tensor};
use serde::{Deserialize, Serialize};

/// Which media a text token may attend to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaAttention {
    /// Only the last medium at or before the token (`t(ℓ)`), the paper's rule.
    Immediate,
    /// Every medium `j ≤ t(ℓ)`. Tokens before the first medium still see nothing.
    AllPrevious,
}

/// `t(ℓ)` for each row: the number of `<image>` tokens at positions ≤ ℓ (`ids [b, l]` i64).
/// Returned as an f32 tensor `[b, l]` (it is compared with float key indices in the mask).
pub fn media_index(ids: &Tensor, media_token_id: i64) -> Result<Tensor> {
    media_index_from(ids, media_token_id, &vec![0.0; ids.shape().first().copied().unwrap_or(0)])
}

/// [`media_index`] for a continuation: row i has already seen `seen[i]` media (incremental
/// decoding).
pub fn media_index_from(ids: &Tensor, media_token_id: i64, seen: &[f32]) -> Result<Tensor> {
    if ids.dtype() != DType::I64 || ids.rank() != 2 || seen.len() != ids.shape()[0] {
        return Err(Error::Msg(format!(
            "media_index: expected i64 token ids [batch, len] and one count per row, got {} {:?} and {}",
            ids.dtype(),
            ids.shape(),
            seen.len()
        )));
    }
    let (b, l) = (ids.shape()[0], ids.shape()[1]);
    let v = ids.to_vec::<i64>()?;
    let mut t = Vec::with_capacity(b * l);
    for (ri, row) in v.chunks(l.max(1)).enumerate() {
        let mut c = seen[ri];
        for &id in row {
            if id == media_token_id {
                c += 1.0;
            }
            t.push(c);
        }
    }
    Tensor::from_vec(t, &[b, l])
}

/// The paper's training-time variant (SPEC §2.5): each text token attends to the *next* image
/// instead: `t'(ℓ) = t(ℓ) + 1` when the row has that many images, else 0 (text after a row's last
/// image then sees no image). Rows of `ids [b, l]` listed in `rows` use it; the others keep
/// [`media_index`]. Returned as f32 `[b, l]`.
pub fn media_index_next(ids: &Tensor, media_token_id: i64, rows: &[bool]) -> Result<Tensor> {
    let t = media_index(ids, media_token_id)?;
    let (b, l) = (ids.shape()[0], ids.shape()[1]);
    if rows.len() != b {
        return Err(Error::Msg(format!("media_index_next: {} row flags for {b} rows", rows.len())));
    }
    let mut tv = t.to_vec::<f32>()?;
    for (r, &next) in rows.iter().enumerate() {
        if !next {
            continue;
        }
        let count = if l > 0 { tv[r * l + l - 1] } else { 0.0 };
        for v in &mut tv[r * l..(r + 1) * l] {
            *v = if *v + 1.0 <= count { *v + 1.0 } else { 0.0 };
        }
    }
    Tensor::from_vec(tv, &[b, l])
}

/// Cross-attention hyper-parameters (OpenFlamingo: 8 heads × 64, ff_mult 4).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct XAttnConfig {
    /// Text width (the LM's hidden size).
    pub dim: usize,
    /// Visual token width (the Perceiver's).
    pub dim_visual: usize,
    pub heads: usize,
    pub dim_head: usize,
    pub ff_mult: usize,
    pub media_attention: MediaAttention,
    /// Initial value of both gates α (the paper: 0, so the block starts as the identity; a
    /// non-zero start such as 0.5 is an option, as IDEFICS offers).
    #[serde(default)]
    pub gate_init: f64,
}

/// Visual keys and values of one block for a set of media.
#[derive(Clone, Debug)]
pub struct MediaKv {
    pub k: Tensor,
    pub v: Tensor,
    pub media: usize,
    pub tokens: usize,
}

/// Masked cross-attention: text queries, visual keys and values.
#[derive(Clone, Debug)]
pub struct MaskedCrossAttention {
    norm: LayerNorm,
    to_q: Linear,
    to_kv: Linear,
    to_out: Linear,
    heads: usize,
    dim_head: usize,
    mode: MediaAttention,
}

impl MaskedCrossAttention {
    pub fn new(store: &mut ParamStore, init: &mut Init, prefix: &str, cfg: &XAttnConfig) -> Result<MaskedCrossAttention> {
        let inner = cfg.heads * cfg.dim_head;
        Ok(MaskedCrossAttention {
            norm: LayerNorm::new(store, init, &format!("{prefix}.norm"), cfg.dim, 1e-5)?,
            to_q: Linear::new(store, init, &format!("{prefix}.to_q"), cfg.dim, inner, false)?,
            to_kv: Linear::new(store, init, &format!("{prefix}.to_kv"), cfg.dim_visual, 2 * inner, false)?,
            to_out: Linear::new(store, init, &format!("{prefix}.to_out"), inner, cfg.dim, false)?,
            heads: cfg.heads,
            dim_head: cfg.dim_head,
            mode: cfg.media_attention,
        })
    }

    /// `y [b, l, d]`, `media [b, m, r, dv]`, `t [b, l]` (from [`media_index`]) → `[b, l, d]`.
    /// Rows with `t = 0` get exactly zero.
    pub fn forward(&self, p: &ParamStore, y: &Tensor, media: &Tensor, t: &Tensor) -> Result<Tensor> {
        let kv = self.media_kv(p, media)?;
        self.forward_with_kv(p, y, &kv, t)
    }

    /// The visual keys and values, computed once per set of images and reusable across decoding
    /// steps: `media [b, m, r, dv]` → `MediaKv` with `k`, `v` `[b, heads, m·r, dim_head]`.
    pub fn media_kv(&self, p: &ParamStore, media: &Tensor) -> Result<MediaKv> {
        if media.rank() != 4 {
            return Err(Error::Msg(format!("cross-attention: media must be [batch, media, tokens, dim], got {:?}", media.shape())));
        }
        let (b, m, r) = (media.shape()[0], media.shape()[1], media.shape()[2]);
        let inner = self.heads * self.dim_head;
        let (k, v) = crate::nn::keys_values(p, &self.to_kv, &media.reshape(&[b, m * r, media.shape()[3]])?, inner, self.heads)?;
        Ok(MediaKv { k, v, media: m, tokens: r })
    }

    /// Cross-attention with precomputed visual keys/values.
    pub fn forward_with_kv(&self, p: &ParamStore, y: &Tensor, kv: &MediaKv, t: &Tensor) -> Result<Tensor> {
        let (b, m, r) = (kv.k.shape()[0], kv.media, kv.tokens);
        if y.shape()[0] != b || t.shape() != &y.shape()[..2] {
            return Err(Error::Msg(format!("cross-attention: text {:?}, media batch {b} and media index {:?} disagree", y.shape(), t.shape())));
        }
        let ql = self.to_q.forward(p, &self.norm.forward(p, y)?)?; // [b, l, heads·dh]
        let (l, h, dh) = (y.shape()[1], self.heads, self.dim_head);
        // k, v are [b, h, m·r, dh] views of [b, m·r, h·dh]: back to [b, m, r, h, dh].
        let q4 = ql.reshape(&[b, l, h, dh])?;
        let k5 = kv.k.transpose(1, 2)?.reshape(&[b, m, r, h, dh])?;
        let v5 = kv.v.transpose(1, 2)?.reshape(&[b, m, r, h, dh])?;
        // A media index above M (e.g. an <image> token the model generated itself, with no image
        // behind it) has no keys; the reference then averages over every key, and the fused kernel
        // would refuse it, so such batches take the reference path.
        let in_range = || -> Result<bool> { Ok(t.to_vec::<f32>()?.iter().all(|&x| x >= 0.0 && x <= m as f32)) };
        let o = if crate::kernels::use_fused(y) && in_range()? {
            let mode = match self.mode {
                MediaAttention::Immediate => flamingo_engine::ops::fused::XAttnMode::OnlyImmediate,
                MediaAttention::AllPrevious => flamingo_engine::ops::fused::XAttnMode::AllPrevious,
            };
            Tensor::masked_cross_attention(&q4, &k5, &v5, t, mode)?
        } else {
            crate::kernels::reference_masked_attention(&q4, &k5, &v5, t, self.mode == MediaAttention::AllPrevious)?
        };
        self.to_out.forward(p, &o.reshape(&[b, l, h * dh])?)
    }
}

/// `y ← y + tanh(α_xattn)·XAttn(y); y ← y + tanh(α_ffw)·FFW(y)`, gates initialised to `gate_init` (0 in the paper).
/// Names: `{prefix}.attn_gate`, `{prefix}.ff_gate`, `{prefix}.attn.*`, `{prefix}.ff.*`.
#[derive(Clone, Debug)]
pub struct GatedCrossAttentionBlock {
    pub attn: MaskedCrossAttention,
    pub ff: FeedForward,
    pub attn_gate: String,
    pub ff_gate: String,
}

impl GatedCrossAttentionBlock {
    pub fn new(store: &mut ParamStore, init: &mut Init, prefix: &str, cfg: &XAttnConfig) -> Result<GatedCrossAttentionBlock> {
        Ok(GatedCrossAttentionBlock {
            attn: MaskedCrossAttention::new(store, init, &format!("{prefix}.attn"), cfg)?,
            ff: FeedForward::new(store, init, &format!("{prefix}.ff"), cfg.dim, cfg.ff_mult)?,
            attn_gate: init.constant(store, &format!("{prefix}.attn_gate"), &[1], cfg.gate_init)?,
            ff_gate: init.constant(store, &format!("{prefix}.ff_gate"), &[1], cfg.gate_init)?,
        })
    }

    /// `y [b, l, d]` → `[b, l, d]`.
    pub fn forward(&self, p: &ParamStore, y: &Tensor, media: &Tensor, t: &Tensor) -> Result<Tensor> {
        self.forward_with_kv(p, y, &self.attn.media_kv(p, media)?, t)
    }

    /// The block with the visual keys/values precomputed by [`MaskedCrossAttention::media_kv`].
    pub fn forward_with_kv(&self, p: &ParamStore, y: &Tensor, kv: &MediaKv, t: &Tensor) -> Result<Tensor> {
        let y = gated(y, &self.attn.forward_with_kv(p, y, kv, t)?, p.require(&self.attn_gate)?)?;
        gated(&y, &self.ff.forward(p, &y)?, p.require(&self.ff_gate)?)
    }
}

/// `y + tanh(α)·f`: the fused op, or the reference composition (see [`crate::kernels`]).
pub fn gated(y: &Tensor, f: &Tensor, alpha: &Tensor) -> Result<Tensor> {
    if crate::kernels::use_fused(y) {
        Tensor::gated_residual(y, f, alpha)
    } else {
        y.add(&f.mul(&alpha.tanh()?)?)
    }
}
