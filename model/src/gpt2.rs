//! The GPT-2 decoder with HuggingFace weight names (`transformer.wte.weight`, `transformer.h.{i}.*`,
//! `transformer.ln_f.*`; Conv1D weights stored `[in, out]`), tied output head, GELU (tanh).
use crate::nn::{merge_heads, split_heads, Init};
use flamingo_engine::{DType, Error, ParamStore, Result, Tensor};
use serde::{Deserialize, Serialize};

/// GPT-2 hyper-parameters (HuggingFace names).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
}

fn default_eps() -> f64 {
    1e-5
}

/// Cached self-attention keys and values of one layer, `[b, heads, positions, head_dim]`.
#[derive(Clone, Debug, Default)]
pub struct LayerKv {
    pub k: Option<Tensor>,
    pub v: Option<Tensor>,
}

/// Where the new tokens of a step sit, for left-padded batches: each row's positions and which
/// keys (cached and new) are real tokens. The default is "no padding": positions continue from the
/// cache and every key is valid.
#[derive(Clone, Copy, Debug, Default)]
pub struct RowLayout<'a> {
    /// Positions of the new tokens, `b·l` values in row-major order.
    pub positions: Option<&'a [i64]>,
    /// `[b, past + l]`, 1 for a real token, 0 for padding.
    pub key_valid: Option<&'a Tensor>,
}

/// The additive attention mask `[b or 1, 1, l, total]`: 0 where allowed, −∞ for future keys,
/// −1e30 for padding keys (finite, so a padding query that sees only padding stays finite).
pub(crate) fn attention_mask(
    l: usize,
    past: usize,
    key_valid: Option<&Tensor>,
    dtype: flamingo_engine::DType,
    device: flamingo_engine::Device,
) -> Result<Tensor> {
    let total = past + l;
    let causal: Vec<f32> = (0..l * total).map(|i| if i % total > past + i / total { f32::NEG_INFINITY } else { 0.0 }).collect();
    let causal = Tensor::from_vec(causal, &[1, 1, l, total])?.to_dtype(dtype)?.to_device(device)?;
    match key_valid {
        None => Ok(causal),
        Some(v) => {
            let b = v.shape()[0];
            if v.shape() != [b, total] {
                return Err(Error::Msg(format!("attention mask: key validity {:?} does not cover {total} keys", v.shape())));
            }
            let pad = v.to_device(device)?.to_dtype(dtype)?.affine(1e30, -1e30)?.reshape(&[b, 1, 1, total])?; // 0 valid, −1e30 pad
            causal.add(&pad)
        }
    }
}

/// A GPT-2 decoder whose parameters live under `{prefix}transformer.*`.
#[derive(Clone, Debug)]
pub struct Gpt2 {
    pub cfg: Gpt2Config,
    prefix: String,
}

impl Gpt2 {
    /// Registers every parameter under `prefix` (e.g. "" or "lang_encoder."), initialised as
    /// GPT-2 does (N(0, 0.02), LayerNorm 1/0).
    pub fn new(store: &mut ParamStore, init: &mut Init, prefix: &str, cfg: &Gpt2Config) -> Result<Gpt2> {
        let d = cfg.n_embd;
        let t = |s: &str| format!("{prefix}transformer.{s}");
        init.normal(store, &t("wte.weight"), &[cfg.vocab_size, d], 0.02)?;
        init.normal(store, &t("wpe.weight"), &[cfg.n_positions, d], 0.01)?;
        for i in 0..cfg.n_layer {
            let h = |s: &str| t(&format!("h.{i}.{s}"));
            for ln in ["ln_1", "ln_2"] {
                init.constant(store, &h(&format!("{ln}.weight")), &[d], 1.0)?;
                init.constant(store, &h(&format!("{ln}.bias")), &[d], 0.0)?;
            }
            for (name, din, dout) in [("attn.c_attn", d, 3 * d), ("attn.c_proj", d, d), ("mlp.c_fc", d, 4 * d), ("mlp.c_proj", 4 * d, d)] {
                init.normal(store, &h(&format!("{name}.weight")), &[din, dout], 0.02)?;
                init.constant(store, &h(&format!("{name}.bias")), &[dout], 0.0)?;
            }
        }
        init.constant(store, &t("ln_f.weight"), &[d], 1.0)?;
        init.constant(store, &t("ln_f.bias"), &[d], 0.0)?;
        Ok(Gpt2 { cfg: cfg.clone(), prefix: prefix.to_string() })
    }

    fn name(&self, s: &str) -> String {
        format!("{}transformer.{s}", self.prefix)
    }

    fn w<'a>(&self, p: &'a ParamStore, s: &str) -> Result<&'a Tensor> {
        p.require(&self.name(s))
    }

    /// The token embedding table, with `extra [k, d]` rows appended (new special tokens).
    pub fn embedding_table(&self, p: &ParamStore, extra: Option<&Tensor>) -> Result<Tensor> {
        let wte = self.w(p, "wte.weight")?;
        match extra {
            Some(e) => Tensor::concat(&[wte, e], 0),
            None => Ok(wte.clone()),
        }
    }

    /// Token + position embeddings: `ids [b, l]` (i64) → `[b, l, d]`, positions from `offset`;
    /// the token table as row blocks ([`Tensor::embedding_parts`]).
    pub fn embed(&self, p: &ParamStore, table: &[&Tensor], ids: &Tensor, offset: usize) -> Result<Tensor> {
        let l = ids.shape()[1];
        if offset + l > self.cfg.n_positions {
            return Err(Error::Msg(format!("gpt2: sequence of {} tokens exceeds n_positions = {}", offset + l, self.cfg.n_positions)));
        }
        let pos = self.w(p, "wpe.weight")?.narrow(0, offset, l)?;
        Tensor::embedding_parts(table, ids)?.add(&pos)
    }

    /// Token + position embeddings with explicit per-row positions (`b·l` values).
    pub fn embed_at(&self, p: &ParamStore, table: &[&Tensor], ids: &Tensor, positions: &[i64]) -> Result<Tensor> {
        let (b, l) = (ids.shape()[0], ids.shape()[1]);
        let pos = Tensor::from_vec(positions.to_vec(), &[b, l])?;
        Tensor::embedding_parts(table, ids)?.add(&self.w(p, "wpe.weight")?.embedding(&pos)?)
    }

    /// One transformer block (pre-LN causal self-attention, then the MLP): `[b, l, d]` → same.
    pub fn block(&self, p: &ParamStore, i: usize, h: &Tensor) -> Result<Tensor> {
        self.block_cached(p, i, h, None)
    }

    /// [`Gpt2::block_masked`] without padding.
    pub fn block_cached(&self, p: &ParamStore, i: usize, h: &Tensor, cache: Option<&mut LayerKv>) -> Result<Tensor> {
        self.block_masked(p, i, h, cache, &RowLayout::default())
    }

    /// Like [`Gpt2::block`], continuing from (and extending) a self-attention key/value cache:
    /// the `l` new positions attend to every cached position and causally among themselves,
    /// never to padding keys.
    pub fn block_masked(&self, p: &ParamStore, i: usize, h: &Tensor, cache: Option<&mut LayerKv>, layout: &RowLayout) -> Result<Tensor> {
        let eps = self.cfg.layer_norm_epsilon;
        let g = |s: &str| self.w(p, &format!("h.{i}.{s}"));
        let conv1d = |x: &Tensor, s: &str| -> Result<Tensor> { x.linear(&g(&format!("{s}.weight"))?.t()?, Some(g(&format!("{s}.bias"))?)) };
        let (l, d) = (h.shape()[1], h.shape()[2]);
        let heads = self.cfg.n_head;
        let x = h.layer_norm(Some(g("ln_1.weight")?), Some(g("ln_1.bias")?), eps)?;
        let qkv = conv1d(&x, "attn.c_attn")?;
        let q = split_heads(&qkv.narrow(-1, 0, d)?, heads)?;
        let mut k = split_heads(&qkv.narrow(-1, d, d)?, heads)?;
        let mut v = split_heads(&qkv.narrow(-1, 2 * d, d)?, heads)?;
        let mut past = 0;
        if let Some(c) = cache {
            if let (Some(pk), Some(pv)) = (&c.k, &c.v) {
                past = pk.shape()[2];
                k = Tensor::concat(&[pk, &k], 2)?;
                v = Tensor::concat(&[pv, &v], 2)?;
            }
            c.k = Some(k.clone());
            c.v = Some(v.clone());
        }
        let a = if past == 0 && layout.key_valid.is_none() && crate::kernels::use_fused(&q) {
            // Plain causal attention (training, first chunk of decoding): the fused op.
            Tensor::causal_attention(&q, &k, &v, None)?
        } else {
            let scores = q.matmul(&k.t()?)?.mul_scalar(1.0 / ((d / heads) as f64).sqrt())?;
            // Query a (absolute position past + a) may not see key j > past + a, nor padding.
            let mask = attention_mask(l, past, layout.key_valid, scores.dtype(), scores.device())?;
            scores.add(&mask)?.softmax(-1)?.matmul(&v)?
        };
        let h = h.add(&conv1d(&merge_heads(&a)?, "attn.c_proj")?)?;
        let x = h.layer_norm(Some(g("ln_2.weight")?), Some(g("ln_2.bias")?), eps)?;
        let m = conv1d(&conv1d(&x, "mlp.c_fc")?.gelu_tanh()?, "mlp.c_proj")?;
        h.add(&m)
    }

    /// Final layer norm and the tied output head: `[b, l, d]` → logits `[b, l, rows of table]`,
    /// the table given as row blocks ([`Tensor::linear_parts`]).
    pub fn head(&self, p: &ParamStore, table: &[&Tensor], h: &Tensor) -> Result<Tensor> {
        let x = h.layer_norm(Some(self.w(p, "ln_f.weight")?), Some(self.w(p, "ln_f.bias")?), self.cfg.layer_norm_epsilon)?;
        x.linear_parts(table)
    }

    /// The whole LM: `ids [b, l]` → logits `[b, l, vocab]`.
    pub fn forward(&self, p: &ParamStore, ids: &Tensor) -> Result<Tensor> {
        let table = self.embedding_table(p, None)?;
        let mut h = self.embed(p, &[&table], ids, 0)?;
        for i in 0..self.cfg.n_layer {
            h = self.block(p, i, &h)?;
        }
        self.head(p, &[&table], &h)
    }

    /// HuggingFace's LM loss: mean next-token cross-entropy of `logits [b, l, v]` against `ids`
    /// shifted by one (`ignore` ids are not targets).
    pub fn shifted_loss(logits: &Tensor, ids: &Tensor, ignore: Option<i64>) -> Result<Tensor> {
        if logits.rank() != 3 || logits.shape()[1] < 2 || ids.shape() != &logits.shape()[..2] {
            return Err(Error::Msg(format!("shifted_loss: logits {:?} and ids {:?} must be [b, l ≥ 2, v] and [b, l]", logits.shape(), ids.shape())));
        }
        let (b, l, v) = (logits.shape()[0], logits.shape()[1], logits.shape()[2]);
        let pred = logits.narrow(1, 0, l - 1)?.reshape(&[b * (l - 1), v])?;
        let tgt = ids.narrow(1, 1, l - 1)?.contiguous()?.reshape(&[b * (l - 1)])?;
        debug_assert_eq!(tgt.dtype(), DType::I64);
        pred.cross_entropy(&tgt, ignore, 0.0)
    }
}
