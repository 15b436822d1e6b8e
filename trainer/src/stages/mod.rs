//! The three training stages of Flamingo (SPEC.md §2.7–§2.8), each a `flamingo` subcommand:
//! [`vision`] (`pretrain-vision`: contrastive NFNet + text encoder), [`lm`] (`pretrain-lm`: the
//! decoder on text) and [`flamingo`] (`train`: the Perceiver, the gated cross-attention and the
//! two new token rows over the frozen pair). Each stage writes a directory holding `config.json`,
//! `model.safetensors` (or `checkpoint.safetensors` for `train`), `tokenizer.json`,
//! `metrics.jsonl` and `report.json`.
pub mod flamingo;
pub mod lm;
pub mod vision;

use flamingo_engine::{Error, Result};
use serde::{de::DeserializeOwned, Serialize};
use std::path::Path;

/// Writes `value` as pretty JSON to `path` (atomically).
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Msg(format!("{}: {e}", path.display())))?;
    flamingo_engine::io::write_atomic(path, text.as_bytes())
}

/// Reads JSON from `path`, naming the file in errors.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text).map_err(|e| Error::File { path: path.to_path_buf(), msg: format!("invalid JSON: {e}") })
}

/// Next-token targets `[b, l−1]` for a right-padded batch: padding is never a target.
pub fn lm_targets(ids: &[Vec<i64>], pad: i64) -> Result<(flamingo_engine::Tensor, flamingo_engine::Tensor)> {
    let l = ids.iter().map(|s| s.len()).max().unwrap_or(0).max(2);
    let mut x = Vec::with_capacity(ids.len() * l);
    let mut y = Vec::with_capacity(ids.len() * (l - 1));
    for s in ids {
        let row: Vec<i64> = s.iter().copied().chain(std::iter::repeat_n(pad, l - s.len())).collect();
        y.extend(row[1..].iter().map(|&t| if t == pad { -100 } else { t }));
        x.extend(row);
    }
    Ok((flamingo_engine::Tensor::from_vec(x, &[ids.len(), l])?, flamingo_engine::Tensor::from_vec(y, &[ids.len(), l - 1])?))
}
