//! HuggingFace-layout checkpoints load: keys with or without the `transformer.`/`model.` head,
//! HF buffers skipped, sharded files with an index, mis-shaped and missing keys reported.
use flamingo_engine::io;
use flamingo_engine::{DType, ParamStore, Rng, Tensor};
use flamingo_model::checkpoint::load_hf_lm;
use flamingo_model::gpt2::{Gpt2, Gpt2Config};
use flamingo_model::llama::{Llama, LlamaConfig};
use flamingo_model::nn::Init;

fn dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("flamingo-hf-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn gpt2(seed: u64, store: &mut ParamStore, prefix: &str) -> Gpt2 {
    let cfg = Gpt2Config { vocab_size: 30, n_positions: 8, n_embd: 16, n_layer: 2, n_head: 2, layer_norm_epsilon: 1e-5 };
    Gpt2::new(store, &mut Init { rng: &mut Rng::new(seed), dtype: DType::F32, trainable: false }, prefix, &cfg).unwrap()
}

#[test]
fn gpt2_checkpoint_without_head_and_with_buffers() {
    let mut src = ParamStore::new();
    gpt2(1, &mut src, "");
    // The base-model layout: "h.0.attn.c_attn.weight", plus HF's causal-mask buffers.
    let mut list: Vec<(String, Tensor)> = src.iter().map(|(n, t)| (n.strip_prefix("transformer.").unwrap().to_string(), t.clone())).collect();
    list.push(("h.0.attn.bias".into(), Tensor::ones(&[1, 1, 8, 8], DType::F32, Default::default())));
    let path = dir("gpt2").join("model.safetensors");
    io::save(&list, &path, None, None).unwrap();
    let mut dst = ParamStore::new();
    let lm = gpt2(2, &mut dst, "lang_encoder.");
    let report = load_hf_lm(&dst, "lang_encoder.", &path, true).unwrap();
    assert!(report.is_clean(), "{report}");
    let ids = Tensor::from_vec(vec![1i64, 2, 3], &[1, 3]).unwrap();
    let a = gpt2(1, &mut ParamStore::new(), "").forward(&src, &ids).unwrap().to_vec::<f32>().unwrap();
    assert_eq!(lm.forward(&dst, &ids).unwrap().to_vec::<f32>().unwrap(), a);
}

#[test]
fn sharded_llama_checkpoint_and_reports() {
    let cfg = LlamaConfig {
        token_shift: false,
        vocab_size: 30,
        hidden_size: 16,
        intermediate_size: 24,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        max_position_embeddings: 16,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        tie_word_embeddings: false,
    };
    let mut src = ParamStore::new();
    Llama::new(&mut src, &mut Init { rng: &mut Rng::new(3), dtype: DType::F32, trainable: false }, "", &cfg).unwrap();
    let d = dir("llama");
    let all: Vec<(String, Tensor)> = src.iter().map(|(n, t)| (n.clone(), t.clone())).collect();
    let (a, b) = all.split_at(all.len() / 2);
    io::save(a, d.join("model-00001-of-00002.safetensors"), None, None).unwrap();
    io::save(b, d.join("model-00002-of-00002.safetensors"), None, None).unwrap();
    let map: serde_json::Map<String, serde_json::Value> = a
        .iter()
        .map(|(n, _)| (n.clone(), "model-00001-of-00002.safetensors".into()))
        .chain(b.iter().map(|(n, _)| (n.clone(), "model-00002-of-00002.safetensors".into())))
        .collect();
    std::fs::write(d.join("model.safetensors.index.json"), serde_json::json!({ "weight_map": map }).to_string()).unwrap();
    let mut dst = ParamStore::new();
    Llama::new(&mut dst, &mut Init { rng: &mut Rng::new(4), dtype: DType::F32, trainable: false }, "", &cfg).unwrap();
    let report = load_hf_lm(&dst, "", &d, true).unwrap();
    assert!(report.is_clean(), "{report}");
    for (n, t) in src.iter() {
        assert_eq!(dst.get(n).unwrap().to_vec::<f32>().unwrap(), t.to_vec::<f32>().unwrap(), "{n}");
    }
    // A model with a wider MLP: the MLP weights are reported as mis-shaped, not loaded, no panic.
    let mut wide = ParamStore::new();
    Llama::new(&mut wide, &mut Init { rng: &mut Rng::new(5), dtype: DType::F32, trainable: false }, "", &LlamaConfig { intermediate_size: 32, ..cfg }).unwrap();
    let e = load_hf_lm(&wide, "", &d, true).unwrap_err().to_string();
    assert!(e.contains("gate_proj") && e.contains("[32, 16]") && e.contains("[24, 16]"), "{e}");
    let r = load_hf_lm(&wide, "", &d, false).unwrap();
    assert_eq!(r.mismatched.len(), 6);
    assert!(r.missing.iter().all(|n| n.contains("mlp.")));
}
