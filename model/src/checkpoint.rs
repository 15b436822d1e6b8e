//! Loading HuggingFace language-model checkpoints (GPT-2 and LLaMA safetensors, single files or
//! sharded with `model.safetensors.index.json`) into our parameters, whatever head their keys
//! carry (`transformer.`/`model.` or none), skipping HF's non-parameter buffers.
use flamingo_engine::io::{LoadReport, SafetensorsFile};
use flamingo_engine::{Error, ParamStore, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Keys HF checkpoints may carry that are buffers or tied copies, not parameters.
fn ignorable(key: &str) -> bool {
    key.ends_with("attn.bias") || key.ends_with("attn.masked_bias") || key.ends_with("rotary_emb.inv_freq") || key == "lm_head.weight"
}

/// The safetensors files of a checkpoint: `path` itself, or in a directory the shards named by
/// `model.safetensors.index.json`, else `model.safetensors`.
pub fn checkpoint_files(path: &Path) -> Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let index = path.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|source| Error::Io { path: index.clone(), source })?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::File { path: index.clone(), msg: format!("invalid index: {e}") })?;
        let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| Error::File { path: index.clone(), msg: "no weight_map".into() })?;
        let files: BTreeSet<String> = map.values().filter_map(|f| f.as_str().map(str::to_string)).collect();
        return Ok(files.into_iter().map(|f| path.join(f)).collect());
    }
    Ok(vec![path.join("model.safetensors")])
}

/// Loads every parameter of `store` whose name starts with `prefix` from an HF checkpoint.
/// A file key `k` matches `{prefix}k`, `{prefix}transformer.k` or `{prefix}model.k`. Shapes must
/// agree; the report lists what is missing, unexpected (besides known buffers) and mis-shaped.
/// With `strict`, any of those is an error and nothing is loaded.
pub fn load_hf_lm(store: &ParamStore, prefix: &str, path: &Path, strict: bool) -> Result<LoadReport> {
    let mut report = LoadReport::default();
    let mut todo = Vec::new();
    let mut seen = BTreeSet::new();
    for file in checkpoint_files(path)? {
        let f = SafetensorsFile::open(&file)?;
        for key in f.names() {
            let target =
                [format!("{prefix}{key}"), format!("{prefix}transformer.{key}"), format!("{prefix}model.{key}")].into_iter().find(|n| store.get(n).is_some());
            match target {
                Some(name) => {
                    let want = store.get(&name).expect("found above").shape().to_vec();
                    let got = f.shape(&key)?;
                    if want != got {
                        report.mismatched.push((name, want, got));
                    } else {
                        seen.insert(name.clone());
                        todo.push((file.clone(), key, name));
                    }
                }
                None if ignorable(&key) => {}
                None => report.unexpected.push(key),
            }
        }
    }
    report.missing = store.names().into_iter().filter(|n| n.starts_with(prefix) && !seen.contains(n)).collect();
    if strict && !report.is_clean() {
        return Err(Error::File { path: path.to_path_buf(), msg: format!("strict load failed: {report}") });
    }
    let mut open: Option<(PathBuf, SafetensorsFile)> = None;
    for (file, key, name) in todo {
        if open.as_ref().is_none_or(|(p, _)| *p != file) {
            open = Some((file.clone(), SafetensorsFile::open(&file)?));
        }
        let src = open.as_ref().expect("just opened").1.get(&key)?;
        store.get(&name).expect("checked").assign(&src)?;
        report.loaded.push(name);
    }
    Ok(report)
}
