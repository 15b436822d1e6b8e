//! The contrastive model trains end to end: gradients reach the NFNet, the text encoder, the
//! projections and the temperature; a few AdamW steps lower the loss; the temperature clamps.
use flamingo_engine::optim::{AdamW, AdamWConfig, ParamGroup};
use flamingo_engine::{DType, ParamStore, Rng, Tensor};
use flamingo_model::contrastive::{recall_at_k, ContrastiveConfig, ContrastiveModel, TextEncoderConfig};
use flamingo_model::nfnet::{Activation, NfNetConfig, WsEps};
use flamingo_model::nn::Init;

fn tiny() -> ContrastiveConfig {
    ContrastiveConfig {
        vision: NfNetConfig {
            depths: vec![1, 1],
            channels: vec![16, 32],
            stem_chs: 8,
            group_size: 8,
            bottle_ratio: 0.5,
            alpha: 0.2,
            se_ratio: 0.5,
            num_features: 32,
            activation: Activation::Gelu,
            ws_eps: WsEps::Timm,
            num_classes: None,
        },
        text: TextEncoderConfig { vocab_size: 20, dim: 16, layers: 1, heads: 2, max_len: 8, ff_mult: 2 },
        embed_dim: 8,
        label_smoothing: 0.1,
        init_temperature: 0.07,
    }
}

#[test]
fn trains_and_reaches_every_part() {
    let mut store = ParamStore::new();
    let mut rng = Rng::new(0);
    let model = ContrastiveModel::new(&mut store, &mut Init { rng: &mut rng, dtype: DType::F32, trainable: true }, &tiny()).unwrap();
    let images = Tensor::randn(&[4, 3, 16, 16], DType::F32, &mut Rng::new(1));
    let ids = Tensor::from_vec(vec![1i64, 2, 3, 0, 4, 5, 0, 0, 6, 7, 8, 9, 10, 0, 0, 0], &[4, 4]).unwrap();
    let mask = Tensor::from_vec(vec![1.0f32, 1., 1., 0., 1., 1., 0., 0., 1., 1., 1., 1., 1., 0., 0., 0.], &[4, 4]).unwrap();
    let mut opt = AdamW::new(vec![ParamGroup::new(store.trainable(), 3e-3, 0.0)], AdamWConfig::default()).unwrap();
    let mut losses = Vec::new();
    for step in 0..15 {
        opt.zero_grad();
        let (loss, sim) = model.loss(&store, &images, &ids, &mask).unwrap();
        assert_eq!(sim.shape(), &[4, 4]);
        losses.push(loss.to_scalar::<f32>().unwrap());
        loss.backward().unwrap();
        // SkipInit: residual branches start multiplied by a zero gain, so at step 0 only the gain
        // (not the branch's convs) gets a gradient; after one update the branch is live.
        let check: &[&str] = match step {
            0 => &["vision.stem.conv1.weight", "vision.stages.1.0.skipinit_gain", "text.tok_emb.weight", "proj.image.weight", "proj.text.weight", "log_scale"],
            1 => &["vision.stages.1.0.conv2.weight"],
            _ => &[],
        };
        {
            for prefix in check {
                let g = store.get(prefix).unwrap().grad().unwrap_or_else(|| panic!("{prefix} got no gradient"));
                assert!(g.to_vec::<f32>().unwrap().iter().any(|v| *v != 0.0), "{prefix}: zero gradient");
            }
        }
        opt.step().unwrap();
        model.clamp_temperature(&store).unwrap();
    }
    assert!(losses[14] < losses[0], "loss did not fall: {losses:?}");
    store.get("log_scale").unwrap().assign(&Tensor::full(&[1], 9.0, DType::F32, Default::default())).unwrap();
    model.clamp_temperature(&store).unwrap();
    assert!((store.get("log_scale").unwrap().to_scalar::<f64>().unwrap() - 100f64.ln()).abs() < 1e-6);
}

#[test]
fn recall_counts_the_diagonal() {
    let s = Tensor::from_vec(vec![0.9f32, 0.1, 0.0, 0.2, 0.5, 0.8, 0.3, 0.2, 0.7], &[3, 3]).unwrap();
    // Row 0: own score best. Row 1: 0.8 beats its own 0.5. Row 2: own score best.
    assert!((recall_at_k(&s, 1).unwrap() - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(recall_at_k(&s, 2).unwrap(), 1.0);
}
