//! The frozen language model behind Flamingo: GPT-2 or LLaMA-style, behind one interface.
use crate::gpt2::{Gpt2, Gpt2Config, LayerKv, RowLayout};
use crate::llama::{Llama, LlamaConfig};
use crate::nn::Init;
use flamingo_engine::{ParamStore, Result, Tensor};
use serde::{Deserialize, Serialize};

/// Which decoder, with its HuggingFace hyper-parameters. JSON: `{"arch": "gpt2", ...}` or
/// `{"arch": "llama", ...}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "arch", rename_all = "lowercase")]
pub enum LmConfig {
    Gpt2(Gpt2Config),
    Llama(LlamaConfig),
}

impl LmConfig {
    pub fn vocab_size(&self) -> usize {
        match self {
            LmConfig::Gpt2(c) => c.vocab_size,
            LmConfig::Llama(c) => c.vocab_size,
        }
    }
    pub fn hidden_size(&self) -> usize {
        match self {
            LmConfig::Gpt2(c) => c.n_embd,
            LmConfig::Llama(c) => c.hidden_size,
        }
    }
    pub fn num_layers(&self) -> usize {
        match self {
            LmConfig::Gpt2(c) => c.n_layer,
            LmConfig::Llama(c) => c.num_hidden_layers,
        }
    }
}

/// A decoder LM.
#[derive(Clone, Debug)]
pub enum Lm {
    Gpt2(Gpt2),
    Llama(Llama),
}

impl Lm {
    /// Registers the LM's parameters under `prefix` with HuggingFace names.
    pub fn new(store: &mut ParamStore, init: &mut Init, prefix: &str, cfg: &LmConfig) -> Result<Lm> {
        Ok(match cfg {
            LmConfig::Gpt2(c) => Lm::Gpt2(Gpt2::new(store, init, prefix, c)?),
            LmConfig::Llama(c) => Lm::Llama(Llama::new(store, init, prefix, c)?),
        })
    }
    /// Input embedding rows, with `extra` rows (new tokens) appended.
    pub fn input_table(&self, p: &ParamStore, extra: Option<&Tensor>) -> Result<Tensor> {
        match self {
            Lm::Gpt2(m) => m.embedding_table(p, extra),
            Lm::Llama(m) => m.embedding_table(p, extra),
        }
    }
    /// Output projection rows, with `extra` appended (GPT-2 ties them to the input rows).
    pub fn output_table(&self, p: &ParamStore, extra: Option<&Tensor>) -> Result<Tensor> {
        match self {
            Lm::Gpt2(m) => m.embedding_table(p, extra),
            Lm::Llama(m) => m.output_table(p, extra),
        }
    }
    /// `ids [b, l]` at positions `offset..` → hidden states `[b, l, d]`. The table is given as
    /// row blocks (e.g. the LM's table and the new tokens' rows; [`Tensor::embedding_parts`]).
    pub fn embed(&self, p: &ParamStore, table: &[&Tensor], ids: &Tensor, offset: usize) -> Result<Tensor> {
        match self {
            Lm::Gpt2(m) => m.embed(p, table, ids, offset),
            Lm::Llama(m) => m.embed(table, ids),
        }
    }
    /// Embeddings with explicit per-row positions (`b·l` values; LLaMA's enter in the blocks).
    pub fn embed_at(&self, p: &ParamStore, table: &[&Tensor], ids: &Tensor, positions: &[i64]) -> Result<Tensor> {
        match self {
            Lm::Gpt2(m) => m.embed_at(p, table, ids, positions),
            Lm::Llama(m) => m.embed(table, ids),
        }
    }
    /// The LLaMA token shift (identity for GPT-2 and when not configured); see [`Llama::shift`].
    pub fn shift(&self, p: &ParamStore, e: &Tensor, prev: Option<&Tensor>) -> Result<Tensor> {
        match self {
            Lm::Gpt2(_) => Ok(e.clone()),
            Lm::Llama(m) => m.shift(p, e, prev),
        }
    }
    /// Whether [`Lm::shift`] does anything (decoding then keeps the last embedding).
    pub fn has_token_shift(&self) -> bool {
        matches!(self, Lm::Llama(m) if m.cfg.token_shift)
    }
    /// Layer `i` with per-row positions and padding keys.
    pub fn block_masked(&self, p: &ParamStore, i: usize, h: &Tensor, cache: Option<&mut LayerKv>, layout: &RowLayout) -> Result<Tensor> {
        match self {
            Lm::Gpt2(m) => m.block_masked(p, i, h, cache, layout),
            Lm::Llama(m) => m.block_masked(p, i, h, cache, layout),
        }
    }
    /// Layer `i`, extending its self-attention cache when given.
    pub fn block_cached(&self, p: &ParamStore, i: usize, h: &Tensor, cache: Option<&mut LayerKv>) -> Result<Tensor> {
        match self {
            Lm::Gpt2(m) => m.block_cached(p, i, h, cache),
            Lm::Llama(m) => m.block_cached(p, i, h, cache),
        }
    }
    /// The whole LM: `ids [b, l]` → logits `[b, l, vocab]`.
    pub fn forward(&self, p: &ParamStore, ids: &Tensor) -> Result<Tensor> {
        match self {
            Lm::Gpt2(m) => m.forward(p, ids),
            Lm::Llama(m) => m.forward(p, ids),
        }
    }
    /// Final norm and projection onto the rows of `table` → logits. The table is given as row
    /// blocks (e.g. the LM's output table and the new tokens' rows), so a frozen block gets no
    /// gradient ([`Tensor::linear_parts`]).
    pub fn head(&self, p: &ParamStore, table: &[&Tensor], h: &Tensor) -> Result<Tensor> {
        match self {
            Lm::Gpt2(m) => m.head(p, table, h),
            Lm::Llama(m) => m.head(p, table, h),
        }
    }
}
