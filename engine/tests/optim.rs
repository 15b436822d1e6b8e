//! Optimisers against hand-computed updates, clipping, and AGC.
mod common;
use common::rand;
use flamingo_engine::optim::{adaptive_clip, clip_grad_norm, AdamW, AdamWConfig, ParamGroup, Sgd};
use flamingo_engine::{DType, Tensor};

#[test]
fn adamw_first_step_matches_formula() {
    let p = Tensor::from_vec(vec![1.0f64, -2.0], &[2]).unwrap().requires_grad_(true);
    p.set_grad(Some(Tensor::from_vec(vec![0.5f64, -0.25], &[2]).unwrap())).unwrap();
    let (lr, wd) = (0.1, 0.01);
    let mut opt = AdamW::new(vec![ParamGroup::new(vec![("p".into(), p.clone())], lr, wd)], AdamWConfig::default()).unwrap();
    opt.step().unwrap();
    // Step 1: m̂ = g, v̂ = g², so the update is lr·g/(|g| + eps) after decay.
    let got = p.to_vec::<f64>().unwrap();
    for (i, (&p0, &g)) in [1.0f64, -2.0].iter().zip(&[0.5f64, -0.25]).enumerate() {
        let want = p0 * (1.0 - lr * wd) - lr * g / (g.abs() + 1e-8);
        assert!((got[i] - want).abs() < 1e-12, "{} vs {want}", got[i]);
    }
}

#[test]
fn frozen_parameters_are_refused_by_optimisers() {
    let frozen = rand(&[2], 0.0, 1.0, 1);
    assert!(AdamW::new(vec![ParamGroup::new(vec![("f".into(), frozen.clone())], 0.1, 0.0)], AdamWConfig::default()).is_err());
    assert!(Sgd::new(vec![ParamGroup::new(vec![("f".into(), frozen)], 0.1, 0.0)], 0.9, false).is_err());
}

#[test]
fn sgd_momentum_matches_pytorch_rule() {
    let p = Tensor::from_vec(vec![1.0f64], &[1]).unwrap().requires_grad_(true);
    let mut opt = Sgd::new(vec![ParamGroup::new(vec![("p".into(), p.clone())], 0.1, 0.0)], 0.9, false).unwrap();
    p.set_grad(Some(Tensor::from_vec(vec![1.0f64], &[1]).unwrap())).unwrap();
    opt.step().unwrap(); // buf = 1, p = 0.9
    opt.step().unwrap(); // buf = 1.9, p = 0.71
    assert!((p.to_scalar::<f64>().unwrap() - 0.71).abs() < 1e-12);
}

#[test]
fn global_norm_clipping() {
    let a = Tensor::zeros(&[2], DType::F64, Default::default()).requires_grad_(true);
    let b = Tensor::zeros(&[1], DType::F64, Default::default()).requires_grad_(true);
    a.set_grad(Some(Tensor::from_vec(vec![3.0f64, 0.0], &[2]).unwrap())).unwrap();
    b.set_grad(Some(Tensor::from_vec(vec![4.0f64], &[1]).unwrap())).unwrap();
    let norm = clip_grad_norm(&[a.clone(), b.clone()], 1.0).unwrap();
    assert!((norm - 5.0).abs() < 1e-12);
    let scale = 1.0 / (5.0 + 1e-6);
    assert!((a.grad().unwrap().to_vec::<f64>().unwrap()[0] - 3.0 * scale).abs() < 1e-12);
    assert!((b.grad().unwrap().to_scalar::<f64>().unwrap() - 4.0 * scale).abs() < 1e-12);
}

#[test]
fn agc_clips_rows_by_weight_norm_and_respects_exemptions() {
    // Row 0: ‖W‖ = 1, ‖G‖ = 10 → clipped to λ·1 = 0.1. Row 1: ‖W‖ = 10, ‖G‖ = 0.5 < λ·10 → kept.
    let w = Tensor::from_vec(vec![1.0f64, 0.0, 0.0, 10.0], &[2, 2]).unwrap().requires_grad_(true);
    w.set_grad(Some(Tensor::from_vec(vec![0.0f64, 10.0, 0.5, 0.0], &[2, 2]).unwrap())).unwrap();
    let head = Tensor::from_vec(vec![1.0f64], &[1]).unwrap().requires_grad_(true);
    head.set_grad(Some(Tensor::from_vec(vec![100.0f64], &[1]).unwrap())).unwrap();
    adaptive_clip(&[("w".into(), w.clone()), ("head.fc.weight".into(), head.clone())], 0.1, 1e-3, |n| n.starts_with("head")).unwrap();
    let g = w.grad().unwrap().to_vec::<f64>().unwrap();
    assert!((g[1] - 0.1).abs() < 1e-12 && g[0] == 0.0, "{g:?}");
    assert_eq!(&g[2..], &[0.5, 0.0]);
    assert_eq!(head.grad().unwrap().to_scalar::<f64>().unwrap(), 100.0);
}

/// Mixed precision: a bf16 parameter is updated through an f32 master, so steps far below one
/// bf16 ulp still add up; the parameter is always the master's rounding, and the moments are f32.
#[test]
fn adamw_bf16_parameters_keep_an_f32_master() {
    use flamingo_engine::optim::{AdamW, AdamWConfig, ParamGroup};
    use flamingo_engine::{DType, Device, Tensor};
    // 1.0 in bf16 has an ulp of 2^-7 ≈ 0.0078; each AdamW step moves it by about lr = 1e-4.
    let p = Tensor::ones(&[4], DType::BF16, Device::Cpu).requires_grad_(true);
    let mut opt = AdamW::new(vec![ParamGroup::new(vec![("w".into(), p.clone())], 1e-4, 0.0)], AdamWConfig::default()).unwrap();
    for _ in 0..100 {
        p.set_grad(Some(Tensor::ones(&[4], DType::BF16, Device::Cpu))).unwrap();
        opt.step().unwrap();
    }
    // 100 steps of ~1e-4 = ~0.01 down: visible in bf16 only because the master accumulated them.
    let v = p.to_vec::<f32>().unwrap();
    assert!(v.iter().all(|&x| x < 0.995 && x > 0.985), "{v:?}");
    let (_, _, m, vv) = opt.state().into_iter().next().unwrap();
    assert_eq!((m.dtype(), vv.dtype()), (DType::F32, DType::F32));
}
