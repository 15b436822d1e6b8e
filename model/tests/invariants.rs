//! SPEC.md §3 invariants 1, 2, 3, 5 and 7 on a tiny random Flamingo.
use flamingo_engine::optim::{AdamW, AdamWConfig, ParamGroup};
use flamingo_engine::{DType, ParamStore, Rng, Tensor};
use flamingo_model::flamingo::{Flamingo, FlamingoConfig, Resampler};
use flamingo_model::gpt2::Gpt2Config;
use flamingo_model::llama::LlamaConfig;
use flamingo_model::lm::LmConfig;
use flamingo_model::nn::Init;
use flamingo_model::perceiver::{PerceiverConfig, PerceiverResampler};
use flamingo_model::xattn::{media_index, MaskedCrossAttention, MediaAttention, XAttnConfig};

fn config(mode: MediaAttention) -> FlamingoConfig {
    FlamingoConfig {
        lm: LmConfig::Gpt2(Gpt2Config { vocab_size: 40, n_positions: 32, n_embd: 32, n_layer: 2, n_head: 2, layer_norm_epsilon: 1e-5 }),
        perceiver: PerceiverConfig { dim: 24, depth: 1, heads: 2, dim_head: 8, num_latents: 4, ff_mult: 2, max_num_frames: None, max_num_media: None },
        xattn_heads: 2,
        xattn_dim_head: 8,
        xattn_ff_mult: 2,
        media_attention: mode,
        cross_attn_every_n_layers: 1,
        gate_init: 0.0,
        resampler: Resampler::Perceiver,
    }
}

/// Two rows of 12 tokens; `I` = `<image>`: row 0 `a b I c d e I f g h i j` (2 images),
/// row 1 `I a b c I d e I f g h i` (3 images).
fn ids(model: &Flamingo) -> Tensor {
    let i = model.media_token_id();
    let v = vec![1, 2, i, 3, 4, 5, i, 6, 7, 8, 9, 10, i, 1, 2, 3, i, 4, 5, i, 6, 7, 8, 9];
    Tensor::from_vec(v, &[2, 12]).unwrap()
}

fn features(seed: u64) -> Tensor {
    Tensor::randn(&[2, 3, 1, 5, 24], DType::F32, &mut Rng::new(seed))
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_vec::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
}

/// The same Flamingo over a LLaMA-style LM (grouped-query attention, rotary positions).
fn llama_config() -> FlamingoConfig {
    FlamingoConfig {
        lm: LmConfig::Llama(LlamaConfig {
            token_shift: false,
            vocab_size: 40,
            hidden_size: 32,
            intermediate_size: 48,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            max_position_embeddings: 32,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            tie_word_embeddings: false,
        }),
        ..config(MediaAttention::Immediate)
    }
}

#[test]
fn invariant_1_zero_gates_give_the_frozen_lm_bit_for_bit() {
    for cfg in [config(MediaAttention::Immediate), llama_config()] {
        let mut store = ParamStore::new();
        let model = Flamingo::new(&mut store, &cfg, &mut Rng::new(1)).unwrap();
        check_zero_gates(&store, &model);
    }
}

fn check_zero_gates(store: &ParamStore, model: &Flamingo) {
    let store = store.clone();
    let ids = ids(model);
    let lm = model.forward_lm_only(&store, &ids).unwrap();
    for seed in [2, 3] {
        let media = model.encode_media(&store, &features(seed)).unwrap();
        let fl = model.forward(&store, &ids, &media).unwrap();
        assert_eq!(bits(&fl), bits(&lm), "images changed the logits although every gate is 0");
    }
}

#[test]
fn invariant_2_each_token_sees_only_its_image() {
    for mode in [MediaAttention::Immediate, MediaAttention::AllPrevious] {
        let cfg = XAttnConfig { dim: 16, dim_visual: 12, heads: 2, dim_head: 8, ff_mult: 2, media_attention: mode, gate_init: 0.0 };
        let mut store = ParamStore::new();
        let mut rng = Rng::new(5);
        let attn = MaskedCrossAttention::new(&mut store, &mut Init { rng: &mut rng, dtype: DType::F32, trainable: true }, "a", &cfg).unwrap();
        // One row: tokens 0-1 before any image, image 1 at 2, image 2 at 6; a third (padding) medium.
        let ids = Tensor::from_vec(vec![5i64, 5, 9, 5, 5, 5, 9, 5, 5], &[1, 9]).unwrap();
        let t = media_index(&ids, 9).unwrap();
        assert_eq!(t.to_vec::<f32>().unwrap(), vec![0., 0., 1., 1., 1., 1., 2., 2., 2.]);
        let y = Tensor::randn(&[1, 9, 16], DType::F32, &mut Rng::new(6));
        let media = Tensor::randn(&[1, 3, 4, 12], DType::F32, &mut Rng::new(7));
        let base = attn.forward(&store, &y, &media, &t).unwrap().to_vec::<f32>().unwrap();
        let row = |v: &[f32], l: usize| v[l * 16..(l + 1) * 16].to_vec();
        for l in 0..2 {
            assert!(row(&base, l).iter().all(|&x| x == 0.0), "{mode:?}: token {l} before the first image is not zero");
        }
        for j in 0..3 {
            // Replace medium j and see which tokens change.
            let mut mv = media.to_vec::<f32>().unwrap();
            for x in &mut mv[j * 48..(j + 1) * 48] {
                *x = -*x + 0.5;
            }
            let changed = attn.forward(&store, &y, &Tensor::from_vec(mv, &[1, 3, 4, 12]).unwrap(), &t).unwrap().to_vec::<f32>().unwrap();
            let tv = t.to_vec::<f32>().unwrap();
            for (l, &tl) in tv.iter().enumerate().take(9) {
                let sees = match mode {
                    MediaAttention::Immediate => tl as usize == j + 1,
                    MediaAttention::AllPrevious => tl as usize > j,
                };
                assert_eq!(row(&base, l) != row(&changed, l), sees, "{mode:?}: medium {} and token {l} (t = {tl})", j + 1);
            }
        }
    }
}

#[test]
fn invariant_3_perceiver_processes_media_independently() {
    let cfg = PerceiverConfig { dim: 16, depth: 2, heads: 2, dim_head: 8, num_latents: 5, ff_mult: 2, max_num_frames: Some(2), max_num_media: None };
    let mut store = ParamStore::new();
    let mut rng = Rng::new(8);
    let p = PerceiverResampler::new(&mut store, &mut Init { rng: &mut rng, dtype: DType::F32, trainable: true }, "perceiver", &cfg).unwrap();
    let x = Tensor::randn(&[2, 3, 2, 7, 16], DType::F32, &mut Rng::new(9));
    let out = p.forward(&store, &x).unwrap();
    assert_eq!(out.shape(), &[2, 3, 5, 16]);
    let perm = Tensor::from_vec(vec![2i64, 0, 1], &[3]).unwrap();
    let out_perm = p.forward(&store, &x.index_select(1, &perm).unwrap()).unwrap();
    assert_eq!(bits(&out_perm), bits(&out.index_select(1, &perm).unwrap()));
}

#[test]
fn invariant_5_frozen_lm_gets_no_gradient_and_does_not_move() {
    let mut store = ParamStore::new();
    let model = Flamingo::new(&mut store, &config(MediaAttention::Immediate), &mut Rng::new(10)).unwrap();
    // Open the gates so gradients reach every trainable part.
    for (name, t) in store.iter() {
        if name.ends_with("_gate") {
            t.assign(&Tensor::full(&[1], 0.5, DType::F32, Default::default())).unwrap();
        }
    }
    let ids = ids(&model);
    let before: Vec<(String, Vec<u32>)> = store.iter().filter(|(_, t)| !t.requires_grad()).map(|(n, t)| (n.clone(), bits(t))).collect();
    assert!(before.iter().all(|(n, _)| n.starts_with("lang_encoder.transformer.")));
    let mut opt = AdamW::new(vec![ParamGroup::new(store.trainable(), 1e-2, 0.1)], AdamWConfig::default()).unwrap();
    let media = model.encode_media(&store, &features(11)).unwrap();
    let logits = model.forward(&store, &ids, &media).unwrap();
    Flamingo::loss(&logits, &model.targets(&ids, None, true).unwrap()).unwrap().backward().unwrap();
    for (name, t) in store.iter() {
        if t.requires_grad() {
            let g = t.grad().unwrap_or_else(|| panic!("trainable {name} got no gradient"));
            assert!(g.to_vec::<f32>().unwrap().iter().any(|v| *v != 0.0), "trainable {name} got an all-zero gradient");
        } else {
            assert!(t.grad().is_none(), "frozen {name} got a gradient");
        }
    }
    opt.step().unwrap();
    for (name, b) in before {
        assert_eq!(bits(store.get(&name).unwrap()), b, "frozen {name} changed");
    }
}

#[test]
fn invariant_7_trainable_checkpoint_round_trips_and_reports_frozen_as_missing() {
    let dir = std::env::temp_dir().join(format!("flamingo-inv7-{}", std::process::id()));
    let path = dir.join("trainable.safetensors");
    let mut a = ParamStore::new();
    Flamingo::new(&mut a, &config(MediaAttention::Immediate), &mut Rng::new(12)).unwrap();
    a.save_trainable_safetensors(&path, None).unwrap();
    let mut b = ParamStore::new();
    Flamingo::new(&mut b, &config(MediaAttention::Immediate), &mut Rng::new(13)).unwrap();
    let report = b.load_safetensors(&path, false).unwrap();
    let frozen: Vec<String> = b.iter().filter(|(_, t)| !t.requires_grad()).map(|(n, _)| n.clone()).collect();
    assert_eq!(report.missing, frozen, "missing keys must be exactly the frozen parts");
    assert!(report.unexpected.is_empty() && report.mismatched.is_empty(), "{report}");
    for (name, t) in a.iter().filter(|(_, t)| t.requires_grad()) {
        assert_eq!(bits(b.get(name).unwrap()), bits(t), "{name} did not round-trip");
    }
}

#[test]
fn label_rules() {
    let mut store = ParamStore::new();
    let model = Flamingo::new(&mut store, &config(MediaAttention::Immediate), &mut Rng::new(14)).unwrap();
    let (i, e) = (model.media_token_id(), model.eoc_token_id());
    let ids = Tensor::from_vec(vec![3i64, 4, i, 5, e, 0, 0], &[1, 7]).unwrap();
    // Targets are ids[1..]: 4 (before the first image: not a target when interleaved), <image>
    // (never), 5, <|endofchunk|> (a target), pad, pad (never).
    let t = model.targets(&ids, Some(0), true).unwrap().to_vec::<i64>().unwrap();
    assert_eq!(t, vec![-100, -100, 5, e, -100, -100]);
    let t = model.targets(&ids, Some(0), false).unwrap().to_vec::<i64>().unwrap();
    assert_eq!(t, vec![4, -100, 5, e, -100, -100]);
}

#[test]
fn invariant_4_incremental_decoding_matches_the_full_forward() {
    // The third: LLaMA with the token shift, whose decoding carries the last embedding over.
    let mut shifted = llama_config();
    if let LmConfig::Llama(l) = &mut shifted.lm {
        l.token_shift = true;
    }
    for cfg in [config(MediaAttention::Immediate), llama_config(), shifted] {
        check_incremental(&cfg);
    }
}

/// Gates at 0.8 (so the cross-attention matters) and a random token shift (when the LM has one).
fn open_gates_and_shift(store: &ParamStore) {
    for (name, t) in store.iter() {
        if name.ends_with("_gate") {
            t.assign(&Tensor::full(&[1], 0.8, DType::F32, Default::default())).unwrap();
        }
        if name.ends_with("token_shift") {
            t.assign(&Tensor::randn(t.shape(), DType::F32, &mut Rng::new(3))).unwrap();
        }
    }
}

fn check_incremental(cfg: &FlamingoConfig) {
    let mut store = ParamStore::new();
    let model = Flamingo::new(&mut store, cfg, &mut Rng::new(15)).unwrap();
    open_gates_and_shift(&store);
    let ids = ids(&model);
    let media = model.encode_media(&store, &features(16)).unwrap();
    let full = model.forward(&store, &ids, &media).unwrap().to_vec::<f32>().unwrap();
    let mut state = model.start_decoding(&store, &media).unwrap();
    let mut pieces = vec![model.decode_step(&store, &mut state, &ids.narrow(1, 0, 5).unwrap()).unwrap()];
    for pos in 5..12 {
        pieces.push(model.decode_step(&store, &mut state, &ids.narrow(1, pos, 1).unwrap()).unwrap());
    }
    assert_eq!(state.len(), 12);
    let inc = Tensor::concat(&pieces.iter().collect::<Vec<_>>(), 1).unwrap().to_vec::<f32>().unwrap();
    let scale = full.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let err = full.iter().zip(&inc).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err <= 1e-5 * scale, "incremental logits differ by {err} (scale {scale})");
    let out = model.generate_greedy(&store, &ids, &media, 4).unwrap();
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|r| !r.is_empty() && r.len() <= 4));
}

#[test]
fn generation_strategies_and_scoring_agree_with_the_full_forward() {
    use flamingo_model::generate::Strategy;
    let mut store = ParamStore::new();
    let model = Flamingo::new(&mut store, &llama_config(), &mut Rng::new(17)).unwrap();
    open_gates_and_shift(&store);
    let ids = ids(&model);
    let media = model.encode_media(&store, &features(18)).unwrap();
    let greedy = model.generate(&store, &ids, &media, 3, &Strategy::Greedy).unwrap();
    // Beam width 1 is greedy.
    let beam1 = model.generate(&store, &ids, &media, 3, &Strategy::Beam { width: 1, length_penalty: 0.0 }).unwrap();
    assert_eq!(greedy, beam1);
    // Sampling at a tiny temperature is greedy too; the same seed gives the same tokens.
    let s1 = model.generate(&store, &ids, &media, 3, &Strategy::Sample { temperature: 1e-6, top_k: None, seed: 3 }).unwrap();
    assert_eq!(greedy, s1);
    let hot = Strategy::Sample { temperature: 2.0, top_k: Some(5), seed: 4 };
    assert_eq!(model.generate(&store, &ids, &media, 3, &hot).unwrap(), model.generate(&store, &ids, &media, 3, &hot).unwrap());
    let beam3 = model.generate(&store, &ids, &media, 3, &Strategy::Beam { width: 3, length_penalty: 0.0 }).unwrap();
    assert_eq!(beam3.len(), 2);
    // Candidate scores equal the mean log-probabilities read off one full forward pass.
    let (row, media0) = (ids.narrow(0, 0, 1).unwrap(), media.narrow(0, 0, 1).unwrap());
    let cands = vec![vec![3i64, 4], vec![7i64], vec![model.eoc_token_id(), 2, 9]];
    let scores = model.score_candidates(&store, &row, &media0, &cands).unwrap();
    for (c, s) in cands.iter().zip(&scores) {
        let mut full: Vec<i64> = row.to_vec::<i64>().unwrap();
        full.extend(c);
        let n = full.len();
        let lp = model.forward(&store, &Tensor::from_vec(full.clone(), &[1, n]).unwrap(), &media0).unwrap().log_softmax(-1).unwrap().to_vec::<f64>().unwrap();
        let v = lp.len() / n;
        let want: f64 = (0..c.len()).map(|j| lp[(12 + j - 1) * v + c[j] as usize]).sum::<f64>() / c.len() as f64;
        assert!((s - want).abs() < 1e-4, "candidate {c:?}: {s} vs {want}");
    }
}

#[test]
fn presets_and_parameter_planning() {
    use flamingo_model::config::{parameter_report, preset, PRESETS};
    use flamingo_model::nn::plan_parameters;
    for name in PRESETS {
        let cfg = preset(name).unwrap_or_else(|| panic!("preset {name} missing"));
        let r = parameter_report(&cfg).unwrap();
        assert!(r.total > 0, "{name}");
    }
    // NFNet-F0 with its classifier: 71.5M (timm: 71,489,284); F6 438M.
    let f0 = parameter_report(&preset("nfnet-f0").unwrap()).unwrap();
    assert_eq!(f0.vision + f0.vision_classifier, 71_489_284);
    let f6 = parameter_report(&preset("nfnet-f6").unwrap()).unwrap();
    assert_eq!(f6.vision + f6.vision_classifier, 438_359_116);
    // Planning records exactly what building registers.
    let cfg = config(MediaAttention::Immediate);
    let planned = plan_parameters(|s| Flamingo::new(s, &cfg, &mut Rng::new(0)).map(|_| ())).unwrap();
    let mut store = ParamStore::new();
    Flamingo::new(&mut store, &cfg, &mut Rng::new(0)).unwrap();
    assert_eq!(planned.len(), store.len());
    for p in &planned {
        let t = store.get(&p.name).unwrap();
        assert_eq!((t.shape(), t.requires_grad()), (p.shape.as_slice(), p.trainable), "{}", p.name);
    }
    let tiny = preset("tiny").unwrap();
    let f = tiny.flamingo.unwrap();
    assert_eq!(f.perceiver.dim, tiny.vision.num_features);
}

#[test]
fn left_padded_batches_generate_what_each_row_generates_alone() {
    use flamingo_model::generate::Strategy;
    for cfg in [config(MediaAttention::Immediate), llama_config()] {
        let mut store = ParamStore::new();
        let model = Flamingo::new(&mut store, &cfg, &mut Rng::new(19)).unwrap();
        for (name, t) in store.iter() {
            if name.ends_with("_gate") {
                t.assign(&Tensor::full(&[1], 0.7, DType::F32, Default::default())).unwrap();
            }
        }
        let i = model.media_token_id();
        let prompts = vec![vec![i, 3, 4, 5, i, 6], vec![i, 7, 8], vec![2, i, 9, 1, 1]];
        let media = model.encode_media(&store, &Tensor::randn(&[3, 2, 1, 5, 24], DType::F32, &mut Rng::new(20))).unwrap();
        let batch = model.generate_batch(&store, &prompts, &media, 4, &Strategy::Greedy, 0).unwrap();
        for (r, pr) in prompts.iter().enumerate() {
            let alone =
                model.generate(&store, &Tensor::from_vec(pr.clone(), &[1, pr.len()]).unwrap(), &media.narrow(0, r, 1).unwrap(), 4, &Strategy::Greedy).unwrap();
            assert_eq!(batch[r], alone[0], "row {r} differs when left-padded into a batch");
        }
    }
}

#[test]
fn next_image_attention_and_image_encoding() {
    use flamingo_model::nfnet::{NfNet, NfNetConfig};
    use flamingo_model::xattn::media_index_next;
    // Row: a I b c I d  → t = 0 1 1 1 2 2; next-image: 1 2 2 2 0 0.
    let rows = Tensor::from_vec(vec![5i64, 9, 5, 5, 9, 5, 5, 9, 5, 5, 9, 5], &[2, 6]).unwrap();
    let t = media_index_next(&rows, 9, &[true, false]).unwrap().to_vec::<f32>().unwrap();
    assert_eq!(&t[..6], &[1., 2., 2., 2., 0., 0.]);
    assert_eq!(&t[6..], &[0., 1., 1., 1., 2., 2.]);
    // The index drives the forward; with next-image attention the first token sees image 1.
    let mut store = ParamStore::new();
    let cfg = config(MediaAttention::Immediate);
    let model = Flamingo::new(&mut store, &cfg, &mut Rng::new(21)).unwrap();
    let mut vs = ParamStore::new();
    let vcfg = NfNetConfig { depths: vec![1, 1], channels: vec![16, 24], stem_chs: 8, group_size: 8, num_features: 24, ..NfNetConfig::f(0, None) };
    let vision = NfNet::new(&mut vs, &mut Init { rng: &mut Rng::new(22), dtype: DType::F32, trainable: false }, "", &vcfg).unwrap();
    let images = Tensor::randn(&[2, 3, 3, 16, 16], DType::F32, &mut Rng::new(23));
    let feats = model.encode_images(&vs, &vision, &images, true).unwrap();
    assert_eq!(feats.shape(), &[2, 3, 1, 4, 24]);
    assert!(!feats.requires_grad());
    let media = model.encode_media(&store, &feats).unwrap();
    let ids = ids(&model);
    let tn = model.training_media_index(&ids, 1.0, &mut Rng::new(0)).unwrap();
    let a = model.forward_with_index(&store, &ids, &media, &tn).unwrap();
    assert_eq!(a.shape()[..2], ids.shape()[..]);
}

#[test]
fn invariant_6_weighted_accumulation_equals_gradient_of_weighted_sum() {
    // Two "datasets" with weights λ: accumulating λ_m·∇L_m over separate backward calls must give
    // ∇(Σ λ_m L_m), the multi-dataset step of SPEC §2.7.
    let cfg = config(MediaAttention::Immediate);
    let lambdas = [1.0, 0.2];
    let batches: Vec<(Tensor, Tensor)> = (0..2)
        .map(|m| {
            let mut store = ParamStore::new();
            let model = Flamingo::new(&mut store, &cfg, &mut Rng::new(30)).unwrap();
            let ids = ids(&model);
            (ids, features(31 + m))
        })
        .collect();
    let run = |accumulate: bool| -> Vec<(String, Vec<f32>)> {
        let mut store = ParamStore::new();
        let model = Flamingo::new(&mut store, &cfg, &mut Rng::new(30)).unwrap();
        for (name, t) in store.iter() {
            if name.ends_with("_gate") {
                t.assign(&Tensor::full(&[1], 0.6, DType::F32, Default::default())).unwrap();
            }
        }
        let loss_of = |m: usize| {
            let (ids, feats) = &batches[m];
            let media = model.encode_media(&store, feats).unwrap();
            let logits = model.forward(&store, ids, &media).unwrap();
            Flamingo::loss(&logits, &model.targets(ids, None, true).unwrap()).unwrap().mul_scalar(lambdas[m]).unwrap()
        };
        if accumulate {
            for m in 0..2 {
                loss_of(m).backward().unwrap();
            }
        } else {
            loss_of(0).add(&loss_of(1)).unwrap().backward().unwrap();
        }
        store.trainable().into_iter().map(|(n, t)| (n, t.grad().unwrap().to_vec::<f32>().unwrap())).collect()
    };
    let (acc, sum) = (run(true), run(false));
    assert_eq!(acc.len(), sum.len());
    for ((n, a), (_, b)) in acc.iter().zip(&sum) {
        let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
        let err = a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(err <= 1e-5 * scale, "{n}: accumulated and summed gradients differ by {err} (scale {scale})");
    }
}
