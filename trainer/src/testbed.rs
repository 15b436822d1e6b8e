//! `flamingo forward`: runs one module on inputs and weights read from safetensors files and
//! writes its outputs (and, given an output gradient, the input and parameter gradients), so any
//! other framework's implementation can be checked against ours. Tensor names and shapes per
//! module are documented in docs/TESTBED.md.
use flamingo_engine::io::{self, SafetensorsFile};
use flamingo_engine::{DType, Error, ParamStore, Result, Rng, Tensor};
use flamingo_model::contrastive::{ContrastiveConfig, ContrastiveModel};
use flamingo_model::flamingo::{Flamingo, FlamingoConfig};
use flamingo_model::lm::{Lm, LmConfig};
use flamingo_model::nfnet::{NfNet, NfNetConfig};
use flamingo_model::nn::Init;
use flamingo_model::perceiver::{PerceiverConfig, PerceiverResampler};
use flamingo_model::xattn::{media_index, GatedCrossAttentionBlock, XAttnConfig};
use std::path::Path;

/// The modules the testbed can run.
pub const MODULES: &[&str] = &["nfnet", "perceiver", "xattn", "lm", "flamingo", "clip"];

fn read_config<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text).map_err(|e| Error::File { path: path.to_path_buf(), msg: format!("invalid config: {e}") })
}

fn input(f: &SafetensorsFile, name: &str, grads: bool) -> Result<Tensor> {
    let t = f.get(name)?;
    Ok(if grads && t.dtype().is_float() { t.requires_grad_(true) } else { t })
}

/// Runs `module` and writes `out_path` (and gradients into it when `grad_output` is given).
pub fn run(module: &str, config: &Path, weights: &Path, inputs: &Path, out_path: &Path, grad_output: Option<&Path>) -> Result<()> {
    let inputs_file = SafetensorsFile::open(inputs)?;
    let grads = grad_output.is_some();
    let mut store = ParamStore::new();
    let mut rng = Rng::new(0);
    let mut init = Init { rng: &mut rng, dtype: DType::F32, trainable: true };
    let mut named_inputs: Vec<(String, Tensor)> = Vec::new();
    let mut extra_outputs: Vec<(String, Tensor)> = Vec::new();
    let (out_name, out) = match module {
        "nfnet" => {
            let cfg: NfNetConfig = read_config(config)?;
            let m = NfNet::new(&mut store, &mut init, "", &cfg)?;
            store.load_safetensors(weights, true)?;
            let x = input(&inputs_file, "images", grads)?;
            named_inputs.push(("images".into(), x.clone()));
            ("features", m.forward_features(&store, &x)?)
        }
        "clip" => {
            let cfg: ContrastiveConfig = read_config(config)?;
            let m = ContrastiveModel::new(&mut store, &mut init, &cfg)?;
            store.load_safetensors(weights, true)?;
            let x = input(&inputs_file, "images", grads)?;
            named_inputs.push(("images".into(), x.clone()));
            let (loss, logits) = m.loss(&store, &x, &inputs_file.get("ids")?, &inputs_file.get("mask")?)?;
            extra_outputs.push(("logits".into(), logits.detach()));
            ("loss", loss)
        }
        "perceiver" => {
            let cfg: PerceiverConfig = read_config(config)?;
            let m = PerceiverResampler::new(&mut store, &mut init, "perceiver", &cfg)?;
            store.load_safetensors(weights, true)?;
            let x = input(&inputs_file, "x", grads)?;
            named_inputs.push(("x".into(), x.clone()));
            ("out", m.forward(&store, &x)?)
        }
        "xattn" => {
            let cfg: XAttnConfig = read_config(config)?;
            let m = GatedCrossAttentionBlock::new(&mut store, &mut init, "gated_cross_attn_layer", &cfg)?;
            store.load_safetensors(weights, true)?;
            let (y, media) = (input(&inputs_file, "y", grads)?, input(&inputs_file, "media", grads)?);
            let t = media_index(&inputs_file.get("media_locations")?, 1)?;
            named_inputs.push(("y".into(), y.clone()));
            named_inputs.push(("media".into(), media.clone()));
            ("out", m.forward(&store, &y, &media, &t)?)
        }
        "lm" => {
            let cfg: LmConfig = read_config(config)?;
            let m = Lm::new(&mut store, &mut init, "", &cfg)?;
            store.load_safetensors(weights, true)?;
            ("logits", m.forward(&store, &inputs_file.get("ids")?)?)
        }
        "flamingo" => {
            let cfg: FlamingoConfig = read_config(config)?;
            let m = Flamingo::new(&mut store, &cfg, init.rng)?;
            store.load_safetensors(weights, true)?;
            let features = input(&inputs_file, "features", grads)?;
            named_inputs.push(("features".into(), features.clone()));
            let media = m.encode_media(&store, &features)?;
            ("logits", m.forward(&store, &inputs_file.get("ids")?, &media)?)
        }
        other => return Err(Error::Msg(format!("unknown module `{other}`; modules: {}", MODULES.join(", ")))),
    };
    let mut outputs = vec![(out_name.to_string(), out.clone())];
    outputs.extend(extra_outputs);
    if let Some(gpath) = grad_output {
        let g = SafetensorsFile::open(gpath)?.get(out_name)?;
        if g.shape() != out.shape() {
            return Err(Error::Key {
                path: gpath.to_path_buf(),
                key: out_name.into(),
                msg: format!("gradient shape {:?} differs from the output's {:?}", g.shape(), out.shape()),
            });
        }
        out.backward_with(&g.to_dtype(out.dtype())?)?;
        for (name, t) in &named_inputs {
            if let Some(gr) = t.grad() {
                outputs.push((format!("grad.{name}"), gr));
            }
        }
        for (name, t) in store.trainable() {
            let gr = t.grad().unwrap_or_else(|| t.zeros_like());
            outputs.push((format!("grad.{name}"), gr));
        }
    }
    io::save(&outputs, out_path, None, None)
}
