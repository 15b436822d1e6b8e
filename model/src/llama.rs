//! A LLaMA-style decoder with HuggingFace names (`model.embed_tokens`, `model.layers.{i}.self_attn.{q,k,v,o}_proj`,
//! `mlp.{gate,up,down}_proj`, `input_layernorm`, `post_attention_layernorm`, `model.norm`, `lm_head`):
//! RMSNorm, rotary positions (HF's half-split layout: dimension j pairs with j + d/2), SwiGLU MLP,
//! grouped-query attention (query head h uses key/value head h / (heads / kv_heads)).
use crate::gpt2::{attention_mask, LayerKv, RowLayout};
use crate::nn::{merge_heads, split_heads, Init};
use flamingo_engine::{Error, ParamStore, Result, Tensor};
use serde::{Deserialize, Serialize};

/// LLaMA hyper-parameters (HuggingFace names).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Not in LLaMA: add a learned per-channel multiple of the previous token's input to each
    /// token's input of layer 0 (`model.token_shift`, `[d]`, initialised to 0); in the LM alone that
    /// input is the token embedding, in Flamingo it is the output of the cross-attention block
    /// before layer 0. It lets one attention
    /// head bind a word to the key before it (associative recall) instead of needing an induction
    /// pair of heads; see docs/TRAINING.md for its measured effect.
    #[serde(default)]
    pub token_shift: bool,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_theta() -> f64 {
    10000.0
}

/// A LLaMA decoder whose parameters live under `{prefix}model.*` and `{prefix}lm_head`.
#[derive(Clone, Debug)]
pub struct Llama {
    pub cfg: LlamaConfig,
    prefix: String,
    /// The last rotary tables built (every layer of one forward asks for the same ones).
    rope_cache: std::sync::Arc<std::sync::Mutex<Option<RopeTables>>>,
}

/// Rotary `cos, sin` tables and what they were built for.
#[derive(Debug)]
struct RopeTables {
    positions: Vec<i64>,
    rows: usize,
    dtype: flamingo_engine::DType,
    device: flamingo_engine::Device,
    cos: Tensor,
    sin: Tensor,
}

/// `x · rsqrt(mean(x²) + eps) · w` over the last axis: the engine's fused op, or its composition
/// of primitive ops under the reference switch ([`crate::kernels`]).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if crate::kernels::use_fused(x) {
        x.rms_norm(Some(w), eps)
    } else {
        Tensor::rms_norm_reference(x, Some(w), eps)
    }
}

/// SwiGLU's gate `silu(gate)·up`: the engine's fused op, or `silu` then a product under the
/// reference switch (the same bits either way on the CPU; the fused op makes fewer passes).
fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if crate::kernels::use_fused(gate) {
        gate.swiglu(up)
    } else {
        gate.silu()?.mul(up)
    }
}

impl Llama {
    pub fn new(store: &mut ParamStore, init: &mut Init, prefix: &str, cfg: &LlamaConfig) -> Result<Llama> {
        if !cfg.num_attention_heads.is_multiple_of(cfg.num_key_value_heads) || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
            return Err(Error::Msg(format!(
                "llama: {} heads must be a multiple of {} key/value heads and divide hidden size {}",
                cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size
            )));
        }
        let (d, f) = (cfg.hidden_size, cfg.intermediate_size);
        let hd = d / cfg.num_attention_heads;
        let kv = cfg.num_key_value_heads * hd;
        let n = |s: &str| format!("{prefix}{s}");
        init.normal(store, &n("model.embed_tokens.weight"), &[cfg.vocab_size, d], 0.02)?;
        for i in 0..cfg.num_hidden_layers {
            let l = |s: &str| n(&format!("model.layers.{i}.{s}"));
            for (name, o, inp) in [
                ("self_attn.q_proj", d, d),
                ("self_attn.k_proj", kv, d),
                ("self_attn.v_proj", kv, d),
                ("self_attn.o_proj", d, d),
                ("mlp.gate_proj", f, d),
                ("mlp.up_proj", f, d),
                ("mlp.down_proj", d, f),
            ] {
                init.normal(store, &l(&format!("{name}.weight")), &[o, inp], 0.02)?;
            }
            init.constant(store, &l("input_layernorm.weight"), &[d], 1.0)?;
            init.constant(store, &l("post_attention_layernorm.weight"), &[d], 1.0)?;
        }
        init.constant(store, &n("model.norm.weight"), &[d], 1.0)?;
        if cfg.token_shift {
            init.constant(store, &n("model.token_shift"), &[d], 0.0)?;
        }
        if !cfg.tie_word_embeddings {
            init.normal(store, &n("lm_head.weight"), &[cfg.vocab_size, d], 0.02)?;
        }
        Ok(Llama { cfg: cfg.clone(), prefix: prefix.to_string(), rope_cache: Default::default() })
    }

    fn w<'a>(&self, p: &'a ParamStore, s: &str) -> Result<&'a Tensor> {
        p.require(&format!("{}{s}", self.prefix))
    }

    /// Input embedding table with optional `extra` rows appended.
    pub fn embedding_table(&self, p: &ParamStore, extra: Option<&Tensor>) -> Result<Tensor> {
        let t = self.w(p, "model.embed_tokens.weight")?;
        match extra {
            Some(e) => Tensor::concat(&[t, e], 0),
            None => Ok(t.clone()),
        }
    }

    /// Output projection rows (`lm_head`, or the embeddings when tied) with `extra` appended.
    pub fn output_table(&self, p: &ParamStore, extra: Option<&Tensor>) -> Result<Tensor> {
        let t = if self.cfg.tie_word_embeddings { self.w(p, "model.embed_tokens.weight")? } else { self.w(p, "lm_head.weight")? };
        match extra {
            Some(e) => Tensor::concat(&[t, e], 0),
            None => Ok(t.clone()),
        }
    }

    /// `cos, sin` for the given positions (HF layout: the frequencies repeated twice,
    /// `emb = cat(freqs, freqs)`), shaped `[rows, 1, l, head_dim]` (rows = 1 when shared).
    fn rope_tables(
        &self,
        positions: &[i64],
        rows: usize,
        l: usize,
        dtype: flamingo_engine::DType,
        device: flamingo_engine::Device,
    ) -> Result<(Tensor, Tensor)> {
        let mut cache = self.rope_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.as_ref().filter(|c| c.positions == positions && c.rows == rows && c.dtype == dtype && c.device == device) {
            return Ok((c.cos.clone(), c.sin.clone()));
        }
        let hd = self.cfg.hidden_size / self.cfg.num_attention_heads;
        let half = hd / 2;
        let mut cos = Vec::with_capacity(positions.len() * hd);
        let mut sin = Vec::with_capacity(positions.len() * hd);
        for &pos in positions {
            for j in 0..hd {
                let inv = 1.0 / self.cfg.rope_theta.powf((2 * (j % half)) as f64 / hd as f64);
                let a = pos as f64 * inv;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let shape = [rows, 1, l, hd];
        let cos = Tensor::from_vec(cos, &shape)?.to_dtype(dtype)?.to_device(device)?;
        let sin = Tensor::from_vec(sin, &shape)?.to_dtype(dtype)?.to_device(device)?;
        *cache = Some(RopeTables { positions: positions.to_vec(), rows, dtype, device, cos: cos.clone(), sin: sin.clone() });
        Ok((cos, sin))
    }

    /// `x [b, h, l, hd]` rotated: `x·cos + rotate_half(x)·sin`, `rotate_half = cat(−x₂, x₁)`.
    fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        flamingo_engine::ops::causal_attention::rope_reference(x, cos, sin)
    }

    /// Token embeddings `[b, l, d]` (positions enter through the rotary embedding, in blocks);
    /// the table as row blocks ([`Tensor::embedding_parts`]).
    pub fn embed(&self, table: &[&Tensor], ids: &Tensor) -> Result<Tensor> {
        Tensor::embedding_parts(table, ids)
    }

    /// The token shift (when configured): `e [b, l, d]` → `e + s ⊙ e_prev`, where `e_prev` is `e`
    /// moved one position right and `prev [b, 1, d]` (the embedding before this chunk, during
    /// incremental decoding) or zeros fills position 0. Without token shift, `e` unchanged.
    pub fn shift(&self, p: &ParamStore, e: &Tensor, prev: Option<&Tensor>) -> Result<Tensor> {
        if !self.cfg.token_shift {
            return Ok(e.clone());
        }
        let (b, l, d) = (e.shape()[0], e.shape()[1], e.shape()[2]);
        let first = match prev {
            Some(p) => p.clone(),
            None => Tensor::zeros(&[b, 1, d], e.dtype(), e.device()),
        };
        let before = if l > 1 { Tensor::concat(&[&first, &e.narrow(1, 0, l - 1)?], 1)? } else { first };
        e.add(&before.mul(self.w(p, "model.token_shift")?)?)
    }

    /// One decoder layer at positions `past..past+l`, extending the cache when given.
    pub fn block_cached(&self, p: &ParamStore, i: usize, h: &Tensor, cache: Option<&mut LayerKv>) -> Result<Tensor> {
        self.block_masked(p, i, h, cache, &RowLayout::default())
    }

    /// One decoder layer with per-row positions and padding keys (left-padded batches).
    pub fn block_masked(&self, p: &ParamStore, i: usize, h: &Tensor, cache: Option<&mut LayerKv>, layout: &RowLayout) -> Result<Tensor> {
        let g = |s: &str| self.w(p, &format!("model.layers.{i}.{s}"));
        let eps = self.cfg.rms_norm_eps;
        let (heads, kvh) = (self.cfg.num_attention_heads, self.cfg.num_key_value_heads);
        let l = h.shape()[1];
        let hd = self.cfg.hidden_size / heads;
        let x = rms_norm(h, g("input_layernorm.weight")?, eps)?;
        let past = cache.as_ref().and_then(|c| c.k.as_ref()).map(|k| k.shape()[2]).unwrap_or(0);
        if past + l > self.cfg.max_position_embeddings {
            return Err(Error::Msg(format!("llama: sequence of {} tokens exceeds max_position_embeddings = {}", past + l, self.cfg.max_position_embeddings)));
        }
        let (cos, sin) = match layout.positions {
            Some(pos) => self.rope_tables(pos, h.shape()[0], l, h.dtype(), h.device())?,
            None => self.rope_tables(&(past as i64..(past + l) as i64).collect::<Vec<_>>(), 1, l, h.dtype(), h.device())?,
        };
        let q = split_heads(&x.linear(g("self_attn.q_proj.weight")?, None)?, heads)?;
        let k = split_heads(&x.linear(g("self_attn.k_proj.weight")?, None)?, kvh)?;
        let mut v = split_heads(&x.linear(g("self_attn.v_proj.weight")?, None)?, kvh)?;
        if cache.is_none() && layout.key_valid.is_none() && crate::kernels::use_fused(&q) {
            // Plain causal attention (training, scoring): one fused op that also applies the
            // rotary embedding to q and k and shares key/value heads between query heads.
            let a = Tensor::causal_attention(&q, &k, &v, Some((&cos, &sin)))?;
            return self.finish_block(p, i, h, &a);
        }
        let q = Llama::rope(&q, &cos, &sin)?;
        let mut k = Llama::rope(&k, &cos, &sin)?;
        if let Some(c) = cache {
            if let (Some(pk), Some(pv)) = (&c.k, &c.v) {
                k = Tensor::concat(&[pk, &k], 2)?;
                v = Tensor::concat(&[pv, &v], 2)?;
            }
            c.k = Some(k.clone());
            c.v = Some(v.clone());
        }
        let total = past + l;
        // Grouped-query attention: each key/value head serves heads/kvh consecutive query heads.
        let rep = |t: &Tensor| -> Result<Tensor> {
            let b = t.shape()[0];
            t.unsqueeze(2)?.broadcast_as(&[b, kvh, heads / kvh, total, hd])?.reshape(&[b, heads, total, hd])
        };
        let (k, v) = (rep(&k)?, rep(&v)?);
        let scores = q.matmul(&k.t()?)?.mul_scalar(1.0 / (hd as f64).sqrt())?;
        let mask = attention_mask(l, past, layout.key_valid, scores.dtype(), scores.device())?;
        let a = scores.add(&mask)?.softmax(-1)?.matmul(&v)?;
        self.finish_block(p, i, h, &a)
    }

    /// The rest of decoder layer `i` after attention: output projection and residual, then the
    /// SwiGLU MLP with its residual. `a` is the attention output `[b, heads, l, head_dim]`.
    fn finish_block(&self, p: &ParamStore, i: usize, h: &Tensor, a: &Tensor) -> Result<Tensor> {
        let g = |s: &str| self.w(p, &format!("model.layers.{i}.{s}"));
        let eps = self.cfg.rms_norm_eps;
        let h = h.add(&merge_heads(a)?.linear(g("self_attn.o_proj.weight")?, None)?)?;
        let x = rms_norm(&h, g("post_attention_layernorm.weight")?, eps)?;
        let m = swiglu(&x.linear(g("mlp.gate_proj.weight")?, None)?, &x.linear(g("mlp.up_proj.weight")?, None)?)?;
        h.add(&m.linear(g("mlp.down_proj.weight")?, None)?)
    }

    /// Final RMSNorm and the output projection onto the rows of `table`, given as row blocks
    /// ([`Tensor::linear_parts`]).
    pub fn head(&self, p: &ParamStore, table: &[&Tensor], h: &Tensor) -> Result<Tensor> {
        rms_norm(h, self.w(p, "model.norm.weight")?, self.cfg.rms_norm_eps)?.linear_parts(table)
    }

    /// The whole LM: `ids [b, l]` → logits `[b, l, vocab]`.
    pub fn forward(&self, p: &ParamStore, ids: &Tensor) -> Result<Tensor> {
        let e = self.embed(&[&self.embedding_table(p, None)?], ids)?;
        let mut h = self.shift(p, &e, None)?;
        for i in 0..self.cfg.num_hidden_layers {
            h = self.block_cached(p, i, &h, None)?;
        }
        self.head(p, &[&self.output_table(p, None)?], &h)
    }
}
