//! Autograd semantics: accumulation, zero_grad, no_grad, detach, frozen parameters.
mod common;
use common::rand;
use flamingo_engine::gradcheck::{check_gradients, GradCheck};
use flamingo_engine::{no_grad, DType, ParamStore, Tensor};

#[test]
fn gradcheck_detects_a_wrong_gradient() {
    // d/dx [x · stopgrad(x)] is x analytically but 2x numerically: the checker must object.
    let x = rand(&[4], 0.5, 1.0, 1);
    let r = check_gradients(|t| t[0].mul(&t[0].detach()), &[x], GradCheck::default());
    assert!(r.is_err(), "a wrong gradient passed the check");
}

#[test]
fn gradients_accumulate_until_zeroed() {
    let w = rand(&[3], -1.0, 1.0, 2).requires_grad_(true);
    let loss = || w.mul_scalar(2.0).unwrap().sum_all().unwrap();
    loss().backward().unwrap();
    loss().backward().unwrap();
    assert_eq!(w.grad().unwrap().to_vec::<f64>().unwrap(), vec![4.0; 3]);
    w.zero_grad();
    assert!(w.grad().is_none());
    loss().backward().unwrap();
    assert_eq!(w.grad().unwrap().to_vec::<f64>().unwrap(), vec![2.0; 3]);
}

#[test]
fn shared_subexpressions_sum_their_gradients() {
    let x = rand(&[2, 2], -1.0, 1.0, 3).requires_grad_(true);
    let y = x.exp().unwrap();
    let loss = y.add(&y).unwrap().mul(&y).unwrap().sum_all().unwrap(); // 2·e^{2x}
    loss.backward().unwrap();
    for (g, xv) in x.grad().unwrap().to_vec::<f64>().unwrap().iter().zip(x.to_vec::<f64>().unwrap()) {
        assert!((g - 4.0 * (2.0 * xv).exp()).abs() < 1e-12);
    }
}

#[test]
fn no_grad_records_nothing() {
    let w = rand(&[3], -1.0, 1.0, 4).requires_grad_(true);
    let y = no_grad(|| w.exp().unwrap());
    assert!(!y.requires_grad());
    assert!(y.op_name().is_none());
    assert!(y.sum_all().unwrap().backward().is_err(), "backward through a no_grad result must be an error");
}

#[test]
fn detach_stops_gradients() {
    let w = rand(&[3], -1.0, 1.0, 5).requires_grad_(true);
    let loss = w.detach().mul(&w).unwrap().sum_all().unwrap();
    loss.backward().unwrap();
    assert_eq!(w.grad().unwrap().to_vec::<f64>().unwrap(), w.to_vec::<f64>().unwrap());
}

#[test]
fn frozen_parameters_get_no_gradient_but_pass_it_through() {
    // trainable (below) → frozen linear → loss: the frozen weight gets nothing, the trainable
    // parameter underneath still gets its gradient through the frozen layer's activations.
    let mut store = ParamStore::new();
    let below = store.insert("adapter.weight", &rand(&[4, 4], -1.0, 1.0, 6), true).unwrap();
    let frozen = store.insert("lm.weight", &rand(&[3, 4], -1.0, 1.0, 7), false).unwrap();
    let x = rand(&[2, 4], -1.0, 1.0, 8);
    let h = x.linear(&below, None).unwrap();
    let out = h.linear(&frozen, None).unwrap().tanh().unwrap().sum_all().unwrap();
    out.backward().unwrap();
    assert!(frozen.grad().is_none(), "frozen weight received a gradient");
    let g = below.grad().expect("trainable weight below the frozen layer got no gradient");
    assert!(g.to_vec::<f64>().unwrap().iter().any(|v| v.abs() > 0.0));
    assert_eq!(store.count(true), 16);
    assert_eq!(store.trainable().len(), 1);
}

#[test]
fn views_share_storage() {
    let x = Tensor::arange(0.0, 12.0, 1.0, DType::F32).unwrap().reshape(&[3, 4]).unwrap();
    let t = x.t().unwrap();
    assert!(t.same_storage(&x));
    assert!(!t.is_contiguous());
    assert!(x.narrow(1, 1, 2).unwrap().same_storage(&x));
    assert!(x.unsqueeze(0).unwrap().broadcast_as(&[2, 3, 4]).unwrap().same_storage(&x));
    assert_eq!(t.contiguous().unwrap().to_vec::<f32>().unwrap(), vec![0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]);
    assert_eq!(x.narrow(1, 1, 2).unwrap().to_vec::<f32>().unwrap(), vec![1., 2., 5., 6., 9., 10.]);
}

#[test]
fn half_precision_computes_in_f32() {
    for dt in [DType::BF16, DType::F16] {
        let x = Tensor::from_vec(vec![0.5f32, -1.25, 2.0], &[3]).unwrap().to_dtype(dt).unwrap().requires_grad_(true);
        let y = x.mul(&x).unwrap().sum_all().unwrap();
        assert_eq!(y.dtype(), dt);
        assert!((y.to_scalar::<f64>().unwrap() - (0.25 + 1.5625 + 4.0)).abs() < 0.05);
        y.backward().unwrap();
        let g = x.grad().unwrap();
        assert_eq!(g.dtype(), dt);
        assert_eq!(g.to_vec::<f32>().unwrap(), vec![1.0, -2.5, 4.0]);
    }
}

#[test]
fn randn_is_seeded_and_roughly_standard() {
    let a = Tensor::randn(&[10000], DType::F64, &mut flamingo_engine::Rng::new(9));
    let b = Tensor::randn(&[10000], DType::F64, &mut flamingo_engine::Rng::new(9));
    assert_eq!(a.to_vec::<f64>().unwrap(), b.to_vec::<f64>().unwrap());
    let mean = a.mean_all().unwrap().to_scalar::<f64>().unwrap();
    let var = a.var(&[0], false, false).unwrap().to_scalar::<f64>().unwrap();
    assert!(mean.abs() < 0.05 && (var - 1.0).abs() < 0.05, "mean {mean} var {var}");
}

/// `linear`'s weight gradient arrives in the weight's own (contiguous) layout, not as a
/// transposed view, and equals Σ_r g[r, o]·x[r, i].
#[test]
fn linear_weight_gradient_is_contiguous_and_correct() {
    let x = Tensor::from_vec((0..12).map(|i| i as f64 * 0.1 - 0.5).collect(), &[4, 3]).unwrap();
    let w = Tensor::from_vec((0..6).map(|i| i as f64 * 0.2 - 0.4).collect(), &[2, 3]).unwrap().requires_grad_(true);
    let g = Tensor::from_vec((0..8).map(|i| i as f64 - 3.0).collect(), &[4, 2]).unwrap();
    x.linear(&w, None).unwrap().backward_with(&g).unwrap();
    let gw = w.grad().unwrap();
    assert_eq!(gw.strides(), &[3, 1], "weight gradient layout");
    let (xv, gv, got) = (x.to_vec::<f64>().unwrap(), g.to_vec::<f64>().unwrap(), gw.to_vec::<f64>().unwrap());
    for o in 0..2 {
        for i in 0..3 {
            let want: f64 = (0..4).map(|r| gv[r * 2 + o] * xv[r * 3 + i]).sum();
            assert!((got[o * 3 + i] - want).abs() < 1e-12, "dW[{o}, {i}] = {} vs {want}", got[o * 3 + i]);
        }
    }
}

/// Gradients accumulate in place only into buffers nothing else holds: a gradient the caller
/// took with `grad()` keeps its values when a second backward pass adds to the slot, and the
/// sums are right whether the in-place path (a residual's two branches, an unheld slot) or the
/// copying one runs.
#[test]
fn accumulation_in_place_never_changes_a_held_gradient() {
    let x = Tensor::from_vec(vec![1.0f32, -2.0, 3.0], &[3]).unwrap().requires_grad_(true);
    // x feeds three branches: the second and third contributions accumulate.
    let loss = || x.mul_scalar(2.0).unwrap().add(&x.square().unwrap()).unwrap().add(&x).unwrap().sum_all().unwrap();
    loss().backward().unwrap();
    let first = x.grad().unwrap();
    let want: Vec<f32> = [1.0f32, -2.0, 3.0].iter().map(|v| 3.0 + 2.0 * v).collect();
    assert_eq!(first.to_vec::<f32>().unwrap(), want);
    loss().backward().unwrap(); // the slot's tensor is shared with `first`: not written in place
    assert_eq!(first.to_vec::<f32>().unwrap(), want, "a held gradient changed");
    drop(first);
    let twice: Vec<f32> = want.iter().map(|v| 2.0 * v).collect();
    assert_eq!(x.grad().unwrap().to_vec::<f32>().unwrap(), twice);
    loss().backward().unwrap(); // nothing else holds the slot's tensor now: in place
    let thrice: Vec<f32> = want.iter().map(|v| 3.0 * v).collect();
    assert_eq!(x.grad().unwrap().to_vec::<f32>().unwrap(), thrice);
}
