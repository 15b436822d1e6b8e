//! PyTorch parity for Flamingo's parts: the Perceiver Resampler, the gated cross-attention block
//! (both masking modes) and GPT-2. Fixture: `tests/fixtures/model_parts.safetensors`, made by
//! `tests/fixtures/gen/make_model_fixture.py` (OpenFlamingo semantics; HuggingFace GPT-2).
//!
//! Tolerance: for every compared tensor, max |ours − torch| ≤ 1e-5 · max |torch| (f32).
use flamingo_engine::io::SafetensorsFile;
use flamingo_engine::{DType, ParamStore, Rng, Tensor};
use flamingo_model::gpt2::{Gpt2, Gpt2Config};
use flamingo_model::nn::Init;
use flamingo_model::perceiver::{PerceiverConfig, PerceiverResampler};
use flamingo_model::xattn::{media_index, GatedCrossAttentionBlock, MediaAttention, XAttnConfig};
use std::path::PathBuf;

fn fixture() -> SafetensorsFile {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/model_parts.safetensors");
    SafetensorsFile::open(&p).unwrap_or_else(|e| panic!("cannot open the model fixture: {e}"))
}

fn assert_close(name: &str, ours: &Tensor, theirs: &Tensor) {
    assert_eq!(ours.shape(), theirs.shape(), "{name}: shape");
    let a = ours.to_vec::<f64>().unwrap();
    let b = theirs.to_vec::<f64>().unwrap();
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    let err = a.iter().zip(&b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    assert!(err <= 1e-5 * scale, "{name}: max abs error {err:e} exceeds 1e-5 × {scale:e}");
}

/// Overwrites every parameter of `store` with the fixture tensor `{file_prefix}{name}`; every
/// parameter must be present (a strict load).
fn load_into(store: &ParamStore, f: &SafetensorsFile, strip: &str, file_prefix: &str) {
    for (name, t) in store.iter() {
        let key = format!("{file_prefix}{}", name.strip_prefix(strip).unwrap_or(name));
        let src = f.get(&key).unwrap_or_else(|e| panic!("fixture lacks {key}: {e}"));
        t.assign(&src).unwrap_or_else(|e| panic!("{key}: {e}"));
    }
}

fn init(rng: &mut Rng) -> Init<'_> {
    Init { rng, dtype: DType::F32, trainable: true }
}

#[test]
fn perceiver_matches_pytorch() {
    let f = fixture();
    let cfg = PerceiverConfig { dim: 32, depth: 2, heads: 2, dim_head: 16, num_latents: 8, ff_mult: 4, max_num_frames: Some(4), max_num_media: Some(3) };
    let mut store = ParamStore::new();
    let mut rng = Rng::new(0);
    let model = PerceiverResampler::new(&mut store, &mut init(&mut rng), "perceiver", &cfg).unwrap();
    load_into(&store, &f, "", "");
    let x = f.get("perceiver.in.x").unwrap().requires_grad_(true);
    let out = model.forward(&store, &x).unwrap();
    assert_close("perceiver.out", &out, &f.get("perceiver.out").unwrap());
    out.mul(&f.get("perceiver.loss_weight").unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
    assert_close("perceiver.grad.x", &x.grad().unwrap(), &f.get("perceiver.grad.x").unwrap());
    for (name, t) in store.iter() {
        let key = format!("perceiver.grad.{}", name.strip_prefix("perceiver.").unwrap());
        assert_close(&key, &t.grad().unwrap(), &f.get(&key).unwrap());
    }
}

#[test]
fn gated_cross_attention_matches_pytorch_in_both_modes() {
    let f = fixture();
    let locations = f.get("xattn.in.media_locations").unwrap();
    let t = media_index(&locations, 1).unwrap();
    let y = f.get("xattn.in.y").unwrap().requires_grad_(true);
    let media = f.get("xattn.in.media").unwrap().requires_grad_(true);
    for (mode, key) in [(MediaAttention::AllPrevious, "xattn.out.previous"), (MediaAttention::Immediate, "xattn.out.immediate")] {
        let cfg = XAttnConfig { dim: 32, dim_visual: 24, heads: 2, dim_head: 16, ff_mult: 4, media_attention: mode };
        let mut store = ParamStore::new();
        let mut rng = Rng::new(0);
        let block = GatedCrossAttentionBlock::new(&mut store, &mut init(&mut rng), "gated_cross_attn_layer", &cfg).unwrap();
        load_into(&store, &f, "", "xattn.");
        let out = block.forward(&store, &y, &media, &t).unwrap();
        assert_close(key, &out, &f.get(key).unwrap());
        if mode == MediaAttention::Immediate {
            out.mul(&f.get("xattn.loss_weight").unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
            assert_close("xattn.grad.y", &y.grad().unwrap(), &f.get("xattn.grad.y").unwrap());
            assert_close("xattn.grad.media", &media.grad().unwrap(), &f.get("xattn.grad.media").unwrap());
            for (name, p) in store.iter() {
                let key = format!("xattn.grad.{name}");
                assert_close(&key, &p.grad().unwrap(), &f.get(&key).unwrap());
            }
        }
    }
}

#[test]
fn gpt2_matches_huggingface() {
    let f = fixture();
    let cfg = Gpt2Config { vocab_size: 50, n_positions: 16, n_embd: 32, n_layer: 2, n_head: 2, layer_norm_epsilon: 1e-5 };
    let mut store = ParamStore::new();
    let mut rng = Rng::new(0);
    let lm = Gpt2::new(&mut store, &mut init(&mut rng), "", &cfg).unwrap();
    load_into(&store, &f, "", "gpt2.");
    let ids = f.get("gpt2.in.ids").unwrap();
    let logits = lm.forward(&store, &ids).unwrap();
    assert_close("gpt2.out.logits", &logits, &f.get("gpt2.out.logits").unwrap());
    let loss = Gpt2::shifted_loss(&logits, &ids, None).unwrap();
    assert_close("gpt2.out.loss", &loss.reshape(&[1]).unwrap(), &f.get("gpt2.out.loss").unwrap());
    loss.backward().unwrap();
    for (name, p) in store.iter() {
        let key = format!("gpt2.grad.{name}");
        assert_close(&key, &p.grad().unwrap(), &f.get(&key).unwrap());
    }
}

#[test]
fn llama_matches_huggingface() {
    use flamingo_model::llama::{Llama, LlamaConfig};
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/llama_tiny.safetensors");
    let f = SafetensorsFile::open(&p).unwrap();
    let cfg = LlamaConfig {
        vocab_size: 50,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        max_position_embeddings: 32,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        tie_word_embeddings: false,
    };
    let mut store = ParamStore::new();
    let mut rng = Rng::new(0);
    let lm = Llama::new(&mut store, &mut init(&mut rng), "", &cfg).unwrap();
    load_into(&store, &f, "", "llama.");
    let ids = f.get("llama.in.ids").unwrap();
    let logits = lm.forward(&store, &ids).unwrap();
    assert_close("llama.out.logits", &logits, &f.get("llama.out.logits").unwrap());
    let loss = Gpt2::shifted_loss(&logits, &ids, None).unwrap();
    assert_close("llama.out.loss", &loss.reshape(&[1]).unwrap(), &f.get("llama.out.loss").unwrap());
    loss.backward().unwrap();
    for (name, t) in store.iter() {
        let key = format!("llama.grad.{name}");
        assert_close(&key, &t.grad().unwrap(), &f.get(&key).unwrap());
    }
}
