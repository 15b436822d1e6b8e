//! The `model` suite: forward + backward of each Flamingo component at the `small` config's
//! shapes (PyTorch counterpart: benches/torch/model_bench.py, same shapes, same timing method).
//! FLOPs: 2 per multiply-add of every matmul/convolution, attention included, ×3 for forward +
//! backward (×2 for the frozen LM, which needs no weight gradients).
use crate::Case;
use flamingo_engine::{DType, ParamStore, Result, Rng, Tensor};
use flamingo_model::config::preset;
use flamingo_model::llama::{rms_norm, LlamaConfig};
use flamingo_model::lm::{Lm, LmConfig};
use flamingo_model::nfnet::NfNet;
use flamingo_model::nn::Init;
use flamingo_model::perceiver::{PerceiverConfig, PerceiverResampler};
use flamingo_model::xattn::{media_index, GatedCrossAttentionBlock, MediaAttention, XAttnConfig};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, DType::F32, &mut Rng::new(seed))
}

/// Runs `f` (a forward producing a tensor), back-propagates its sum, then clears every gradient.
fn fwd_bwd(store: &ParamStore, inputs: &[Tensor], f: impl Fn() -> Result<Tensor>) {
    let out = f().expect("forward");
    out.sum_all().expect("sum").backward().expect("backward");
    store.zero_grad();
    for t in inputs {
        t.zero_grad();
    }
}

fn set(store: &ParamStore, suffix: &str, v: f64) {
    for (name, t) in store.iter() {
        if name.ends_with(suffix) {
            t.assign(&Tensor::full(t.shape(), v, DType::F32, Default::default())).expect("assign");
        }
    }
}

pub fn cases() -> Result<Vec<Case>> {
    let small = preset("small").expect("small preset");
    let mut v = Vec::new();

    // 1. NFNet trunk (64×64 images → 4×4×512), SkipInit gains opened so every branch trains.
    let mut s1 = ParamStore::new();
    let mut rng = Rng::new(1);
    let net = NfNet::new(&mut s1, &mut Init { rng: &mut rng, dtype: DType::F32, trainable: true }, "", &small.vision)?;
    set(&s1, "skipinit_gain", 1.0);
    let images = randn(&[8, 3, 64, 64], 2);
    let flops = 3.0 * flamingo_model::config::vision_flops_per_image(&small.vision, 64)? * 8.0;
    v.push(Case {
        name: "nfnet_fwd_bwd",
        shape: "8x3x64x64".into(),
        dtype: DType::F32,
        flops,
        run: Box::new(move || fwd_bwd(&s1, &[], || net.forward_features(&s1, &images))),
    });

    // 2. Perceiver: 8 sequences × 4 images × 16 tokens of width 512 → 64 latents each.
    let pc = PerceiverConfig { max_num_frames: None, max_num_media: None, ..small.flamingo.as_ref().unwrap().perceiver.clone() };
    let mut s2 = ParamStore::new();
    let mut rng = Rng::new(3);
    let per = PerceiverResampler::new(&mut s2, &mut Init { rng: &mut rng, dtype: DType::F32, trainable: true }, "perceiver", &pc)?;
    let x = randn(&[8, 4, 1, 16, 512], 4).requires_grad_(true);
    let (n, s, r, d, inner) = (32.0, 16.0, 64.0, 512.0, 512.0);
    let per_layer = 2.0 * (r * d * inner + (s + r) * d * 2.0 * inner + r * inner * d) + 2.0 * 2.0 * r * (s + r) * inner + 2.0 * 2.0 * r * d * 4.0 * d;
    let flops = 3.0 * n * per_layer * pc.depth as f64;
    let xs = x.clone();
    v.push(Case {
        name: "perceiver_fwd_bwd",
        shape: "8x4x16x512".into(),
        dtype: DType::F32,
        flops,
        run: Box::new(move || fwd_bwd(&s2, std::slice::from_ref(&xs), || per.forward(&s2, &xs))),
    });

    // 3. Gated cross-attention block: 256 tokens attend to 4 images × 64 visual tokens.
    let xc = XAttnConfig { dim: 512, dim_visual: 512, heads: 8, dim_head: 64, ff_mult: 4, media_attention: MediaAttention::Immediate, gate_init: 0.0 };
    let mut s3 = ParamStore::new();
    let mut rng = Rng::new(5);
    let block = GatedCrossAttentionBlock::new(&mut s3, &mut Init { rng: &mut rng, dtype: DType::F32, trainable: true }, "x", &xc)?;
    set(&s3, "_gate", 0.5);
    let y = randn(&[8, 256, 512], 6).requires_grad_(true);
    let media = randn(&[8, 4, 64, 512], 7).requires_grad_(true);
    let ids: Vec<i64> = (0..8 * 256).map(|i| if (i % 256) % 64 == 0 { 1 } else { 0 }).collect();
    let t = media_index(&Tensor::from_vec(ids, &[8, 256])?, 1)?;
    let (l, k) = (256.0, 256.0);
    let fwd = 8.0 * (2.0 * (l * d * inner + k * d * 2.0 * inner + l * inner * d) + 2.0 * 2.0 * l * k * inner + 2.0 * 2.0 * l * d * 4.0 * d);
    let (ys, ms) = (y.clone(), media.clone());
    v.push(Case {
        name: "xattn_fwd_bwd",
        shape: "8x256x512,m4r64".into(),
        dtype: DType::F32,
        flops: 3.0 * fwd,
        run: Box::new(move || fwd_bwd(&s3, &[ys.clone(), ms.clone()], || block.forward(&s3, &ys, &ms, &t))),
    });

    // 4. The frozen LLaMA-style LM (8 layers, width 512): gradients reach only the activations.
    let lc = LlamaConfig {
        token_shift: false,
        vocab_size: 8192,
        hidden_size: 512,
        intermediate_size: 1360,
        num_hidden_layers: 8,
        num_attention_heads: 8,
        num_key_value_heads: 8,
        max_position_embeddings: 256,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        tie_word_embeddings: false,
    };
    let mut s4 = ParamStore::new();
    let mut rng = Rng::new(8);
    let lm = Lm::new(&mut s4, &mut Init { rng: &mut rng, dtype: DType::F32, trainable: false }, "", &LmConfig::Llama(lc.clone()))?;
    let h0 = randn(&[8, 256, 512], 9).requires_grad_(true);
    let per_layer = 2.0 * (4.0 * l * d * d + 3.0 * l * d * 1360.0) + 2.0 * 2.0 * l * l * d;
    let flops = 2.0 * 8.0 * per_layer * 8.0;
    let hs = h0.clone();
    v.push(Case {
        name: "lm_fwd_bwd",
        shape: "8x256x512".into(),
        dtype: DType::F32,
        flops,
        run: Box::new(move || {
            fwd_bwd(&s4, std::slice::from_ref(&hs), || {
                let mut h = hs.clone();
                for i in 0..8 {
                    h = lm.block_cached(&s4, i, &h, None)?;
                }
                rms_norm(&h, s4.require("model.norm.weight")?, 1e-5)
            })
        }),
    });
    Ok(v)
}
