//! PyTorch parity for Flamingo's parts: the Perceiver Resampler, the gated cross-attention block
//! (both masking modes) and GPT-2. Fixture: `tests/fixtures/model_parts.safetensors`, made by
//! `tests/fixtures/gen/make_model_fixture.py` (OpenFlamingo semantics; HuggingFace GPT-2).
//!
//! Tolerance: for every compared tensor, max |ours − torch| ≤ 1e-5 · max |torch| (f32).
use flamingo_engine::io::SafetensorsFile;
use flamingo_engine::{DType, ParamStore, Rng};
use flamingo_model::flamingo::Resampler;
use flamingo_model::gpt2::{Gpt2, Gpt2Config};
use flamingo_model::nn::Init;
use flamingo_model::perceiver::{PerceiverConfig, PerceiverResampler};
use flamingo_model::xattn::{media_index, GatedCrossAttentionBlock, MediaAttention, XAttnConfig};
use flamingo_tests::assert_close;

fn fixture() -> SafetensorsFile {
    flamingo_tests::fixture("model_parts.safetensors")
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
        let cfg = XAttnConfig { dim: 32, dim_visual: 24, heads: 2, dim_head: 16, ff_mult: 4, media_attention: mode, gate_init: 0.0 };
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
    let f = flamingo_tests::fixture("llama_tiny.safetensors");
    let cfg = LlamaConfig {
        token_shift: false,
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

#[test]
fn nfnet_matches_timm() {
    use flamingo_model::nfnet::{Activation, NfNet, NfNetConfig, WsEps};
    let f = flamingo_tests::fixture("nfnet_tiny.safetensors");
    let cfg = NfNetConfig {
        depths: vec![1, 2, 1, 1],
        channels: vec![32, 64, 96, 128],
        stem_chs: 16,
        group_size: 8,
        bottle_ratio: 0.5,
        alpha: 0.2,
        se_ratio: 0.5,
        num_features: 256,
        activation: Activation::Gelu,
        ws_eps: WsEps::Timm,
        num_classes: Some(10),
    };
    let mut store = ParamStore::new();
    let mut rng = Rng::new(0);
    let net = NfNet::new(&mut store, &mut init(&mut rng), "", &cfg).unwrap();
    load_into(&store, &f, "", "nfnet.");
    let x = f.get("nfnet.in.x").unwrap().requires_grad_(true);
    let feats = net.forward_features(&store, &x).unwrap();
    assert_close("nfnet.out.features", &feats, &f.get("nfnet.out.features").unwrap());
    assert_close("nfnet.out.logits", &net.forward_logits(&store, &x).unwrap(), &f.get("nfnet.out.logits").unwrap());
    // Odd input sizes exercise the partial pooling windows and 1/1 SAME padding.
    let odd = f.get("nfnet.odd.in.x").unwrap();
    assert_close("nfnet.odd.out.features", &net.forward_features(&store, &odd).unwrap(), &f.get("nfnet.odd.out.features").unwrap());
    feats.mul(&f.get("nfnet.loss_weight").unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
    assert_close("nfnet.grad.x", &x.grad().unwrap(), &f.get("nfnet.grad.x").unwrap());
    for (name, t) in store.iter() {
        if name.starts_with("head.") {
            continue; // the loss does not reach the classifier
        }
        let key = format!("nfnet.grad.{name}");
        let (ours, theirs) = (t.grad().unwrap(), f.get(&key).unwrap());
        if name.ends_with("skipinit_gain") {
            // A scalar gain's gradient sums a whole activation map of O(1) terms that largely
            // cancel (stages.2.0: 0.0647). Against an f64 run of our model, our f32 value is off
            // by 8.7e-7 and PyTorch's by 4.4e-7 (measured), so compare at 1e-5 of max(|g|, 1).
            let (a, b) = (ours.to_scalar::<f64>().unwrap(), theirs.to_scalar::<f64>().unwrap());
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{key}: {a} vs {b}");
            continue;
        }
        assert_close(&key, &ours, &theirs);
    }
}

#[test]
fn nfnet_parameter_counts_match_timm() {
    use flamingo_model::nfnet::{parameter_count, NfNetConfig};
    // timm: dm_nfnet_f0 71,489,284 (68,416,284 without head.fc); dm_nfnet_f6 438,359,116 (435,286,116).
    assert_eq!(parameter_count(&NfNetConfig::f(0, Some(1000))).unwrap(), 71_489_284);
    assert_eq!(parameter_count(&NfNetConfig::f(0, None)).unwrap(), 68_416_284);
    assert_eq!(parameter_count(&NfNetConfig::f(6, Some(1000))).unwrap(), 438_359_116);
    assert_eq!(parameter_count(&NfNetConfig::f(6, None)).unwrap(), 435_286_116);
}

#[test]
fn full_flamingo_forward_and_backward_match_pytorch() {
    use flamingo_model::flamingo::{Flamingo, FlamingoConfig};
    use flamingo_model::gpt2::Gpt2Config;
    use flamingo_model::lm::LmConfig;
    let f = flamingo_tests::fixture("flamingo_tiny.safetensors");
    let cfg = FlamingoConfig {
        lm: LmConfig::Gpt2(Gpt2Config { vocab_size: 40, n_positions: 32, n_embd: 32, n_layer: 2, n_head: 2, layer_norm_epsilon: 1e-5 }),
        perceiver: PerceiverConfig { dim: 24, depth: 1, heads: 2, dim_head: 8, num_latents: 4, ff_mult: 2, max_num_frames: None, max_num_media: None },
        xattn_heads: 2,
        xattn_dim_head: 8,
        xattn_ff_mult: 2,
        media_attention: MediaAttention::Immediate,
        cross_attn_every_n_layers: 1,
        gate_init: 0.0,
        resampler: Resampler::Perceiver,
    };
    let mut store = ParamStore::new();
    let model = Flamingo::new(&mut store, &cfg, &mut Rng::new(0)).unwrap();
    load_into(&store, &f, "", "");
    let ids = f.get("in.ids").unwrap();
    let targets = model.targets(&ids, Some(0), true).unwrap();
    assert_eq!(targets.to_vec::<i64>().unwrap(), f.get("in.targets").unwrap().to_vec::<i64>().unwrap(), "label rules");
    let features = f.get("in.features").unwrap().requires_grad_(true);
    let media = model.encode_media(&store, &features).unwrap();
    let logits = model.forward(&store, &ids, &media).unwrap();
    assert_close("out.logits", &logits, &f.get("out.logits").unwrap());
    assert_close("out.logits_lm_only", &model.forward_lm_only(&store, &ids).unwrap(), &f.get("out.logits_lm_only").unwrap());
    let loss = Flamingo::loss(&logits, &targets).unwrap();
    assert_close("out.loss", &loss.reshape(&[1]).unwrap(), &f.get("out.loss").unwrap());
    loss.backward().unwrap();
    assert_close("grad.in.features", &features.grad().unwrap(), &f.get("grad.in.features").unwrap());
    let mut trainable = 0;
    for (name, t) in store.iter() {
        if t.requires_grad() {
            trainable += 1;
            let key = format!("grad.{name}");
            assert_close(&key, &t.grad().unwrap(), &f.get(&key).unwrap());
        } else {
            assert!(t.grad().is_none(), "frozen {name} got a gradient");
        }
    }
    assert_eq!(trainable, 37);
}

#[test]
fn contrastive_loss_matches_pytorch() {
    use flamingo_model::contrastive::{contrastive_loss, recall_at_k};
    let f = flamingo_tests::fixture("contrastive_tiny.safetensors");
    let img = f.get("in.image_features").unwrap().requires_grad_(true);
    let txt = f.get("in.text_features").unwrap().requires_grad_(true);
    let wi = f.get("proj.image.weight").unwrap().requires_grad_(true);
    let wt = f.get("proj.text.weight").unwrap().requires_grad_(true);
    let ls = f.get("log_scale").unwrap().requires_grad_(true);
    let (loss, s) = contrastive_loss(&img.linear(&wi, None).unwrap(), &txt.linear(&wt, None).unwrap(), &ls, 0.1).unwrap();
    assert_close("out.logits", &s, &f.get("out.logits").unwrap());
    assert_close("out.loss", &loss.reshape(&[1]).unwrap(), &f.get("out.loss").unwrap());
    assert_eq!(recall_at_k(&s, 1).unwrap(), f.get("out.recall_at_1").unwrap().to_scalar::<f64>().unwrap());
    assert!((recall_at_k(&s, 5).unwrap() - f.get("out.recall_at_5").unwrap().to_scalar::<f64>().unwrap()).abs() < 1e-6);
    loss.backward().unwrap();
    for (name, t) in [("in.image_features", &img), ("in.text_features", &txt), ("proj.image.weight", &wi), ("proj.text.weight", &wt), ("log_scale", &ls)] {
        assert_close(&format!("grad.{name}"), &t.grad().unwrap(), &f.get(&format!("grad.{name}")).unwrap());
    }
}
