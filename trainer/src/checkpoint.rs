//! Training checkpoints: trainable parameters, AdamW moments, step, schedule, data position and
//! RNG state in one safetensors file (tensors + a JSON `__metadata__` entry), written atomically
//! (temporary file + rename) so a crash mid-write leaves the previous checkpoint loadable. Resuming
//! from one continues a CPU run bit for bit.
use flamingo_engine::io::{self, SafetensorsFile};
use flamingo_engine::optim::AdamW;
use flamingo_engine::{Error, ParamStore, Result, Rng, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// The non-tensor part of a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainProgress {
    /// Optimiser steps taken.
    pub step: u64,
    /// Position in the data stream (samples consumed), per dataset.
    pub data_position: Vec<u64>,
    /// The training RNG's state.
    pub rng: [u64; 4],
    /// Free-form run information (config name, schedule, …).
    pub info: HashMap<String, String>,
}

const META_KEY: &str = "flamingo.progress";

/// Writes `param.<name>` for every trainable parameter, `adamw.{step,m,v}.<name>` for the
/// optimiser, and the progress as metadata, atomically.
pub fn save(path: &Path, store: &ParamStore, opt: &AdamW, progress: &TrainProgress) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = store.trainable().into_iter().map(|(n, t)| (format!("param.{n}"), t)).collect();
    for (name, step, m, v) in opt.state() {
        tensors.push((format!("adamw.step.{name}"), Tensor::from_vec(vec![step as i64], &[1])?));
        tensors.push((format!("adamw.m.{name}"), m));
        tensors.push((format!("adamw.v.{name}"), v));
    }
    let meta = serde_json::to_string(progress).map_err(|e| Error::Msg(format!("checkpoint metadata: {e}")))?;
    io::save(&tensors, path, None, Some(HashMap::from([(META_KEY.to_string(), meta)])))
}

/// Restores parameters and optimiser state saved by [`save`] and returns the progress. Every
/// trainable parameter must be present with its shape (strict), else an error names the file and
/// the keys.
pub fn load(path: &Path, store: &ParamStore, opt: &mut AdamW) -> Result<TrainProgress> {
    let f = SafetensorsFile::open(path)?;
    let meta = f
        .metadata()
        .and_then(|m| m.get(META_KEY).cloned())
        .ok_or_else(|| Error::File { path: path.to_path_buf(), msg: "not a training checkpoint (no progress metadata)".into() })?;
    let progress: TrainProgress =
        serde_json::from_str(&meta).map_err(|e| Error::File { path: path.to_path_buf(), msg: format!("invalid progress metadata: {e}") })?;
    let names = f.names();
    let missing: Vec<String> = store.trainable().into_iter().map(|(n, _)| n).filter(|n| names.binary_search(&format!("param.{n}")).is_err()).collect();
    if !missing.is_empty() {
        return Err(Error::File { path: path.to_path_buf(), msg: format!("checkpoint lacks trainable parameters {missing:?}") });
    }
    for (n, t) in store.trainable() {
        let src = f.get(&format!("param.{n}"))?;
        if src.shape() != t.shape() {
            return Err(Error::Key {
                path: path.to_path_buf(),
                key: format!("param.{n}"),
                msg: format!("shape {:?}, the model has {:?}", src.shape(), t.shape()),
            });
        }
        t.assign(&src)?;
    }
    let mut state = Vec::new();
    for key in names.iter().filter(|k| k.starts_with("adamw.step.")) {
        let name = &key["adamw.step.".len()..];
        let step = f.get(key)?.to_scalar::<i64>()? as u64;
        state.push((name.to_string(), step, f.get(&format!("adamw.m.{name}"))?, f.get(&format!("adamw.v.{name}"))?));
    }
    opt.load_state(state)?;
    Ok(progress)
}

/// The RNG a resumed run continues with.
pub fn rng_of(progress: &TrainProgress) -> Rng {
    Rng::from_state(progress.rng)
}
