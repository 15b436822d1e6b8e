//! The fused kernels against their references, forward and backward, on random shapes:
//! masked cross-attention (both media modes, runs of every length, tokens before the first image,
//! skipped media) and the tanh-gated residual. The reference on the CPU, the fused CPU kernel and
//! (with a GPU) the fused CUDA kernel and the reference on CUDA are compared.
use flamingo_engine::ops::fused::XAttnMode;
use flamingo_engine::{DType, Device, Rng, Tensor};
use flamingo_model::kernels::reference_masked_attention;
use proptest::prelude::*;

fn randn(shape: &[usize], rng: &mut Rng) -> Tensor {
    Tensor::randn(shape, DType::F32, rng)
}

fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
    let (a, b) = (a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
    let scale = a.iter().fold(1f32, |m, x| m.max(x.abs()));
    a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// Output and (dq, dk, dv) of `f` on fresh leaves copied from `q, k, v`, on `dev`.
fn run(f: &dyn Fn(&Tensor, &Tensor, &Tensor) -> Tensor, q: &Tensor, k: &Tensor, v: &Tensor, w: &Tensor, dev: Device) -> Vec<Tensor> {
    let leaf = |t: &Tensor| t.to_device(dev).unwrap().requires_grad_(true);
    let (q, k, v) = (leaf(q), leaf(k), leaf(v));
    let o = f(&q, &k, &v);
    o.mul(&w.to_device(dev).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
    vec![o.detach(), q.grad().unwrap(), k.grad().unwrap(), v.grad().unwrap()]
}

/// A media index row: `lead` tokens without an image, then runs of random length over media
/// 1..=m, sometimes skipping a medium.
fn media_rows(b: usize, l: usize, m: usize, rng: &mut Rng) -> Tensor {
    let mut t = Vec::with_capacity(b * l);
    for _ in 0..b {
        let lead = rng.below(l as u64 / 2 + 1) as usize;
        let mut cur = 0usize;
        for i in 0..l {
            if i >= lead && cur < m && (cur == 0 || rng.below(4) == 0) {
                cur = (cur + 1 + rng.below(2) as usize).min(m);
            }
            t.push(if i < lead { 0.0 } else { cur as f32 });
        }
    }
    Tensor::from_vec(t, &[b, l]).unwrap()
}

#[allow(clippy::too_many_arguments)]
fn check_xattn(b: usize, l: usize, m: usize, r: usize, h: usize, d: usize, all_previous: bool, seed: u64) {
    let mut rng = Rng::new(seed);
    let (q, k, v) = (randn(&[b, l, h, d], &mut rng), randn(&[b, m, r, h, d], &mut rng), randn(&[b, m, r, h, d], &mut rng));
    let t = media_rows(b, l, m, &mut rng);
    let w = randn(&[b, l, h, d], &mut rng);
    let mode = if all_previous { XAttnMode::AllPrevious } else { XAttnMode::OnlyImmediate };
    let tc = t.clone();
    let fused = run(&|q, k, v| Tensor::masked_cross_attention(q, k, v, &tc, mode).unwrap(), &q, &k, &v, &w, Device::Cpu);
    let tr = t.clone();
    let reference = run(&|q, k, v| reference_masked_attention(q, k, v, &tr, all_previous).unwrap(), &q, &k, &v, &w, Device::Cpu);
    for (i, (a, b_)) in reference.iter().zip(&fused).enumerate() {
        let e = max_rel(a, b_);
        assert!(e < 2e-5, "{} differs by {e} (shape b{b} l{l} m{m} r{r} h{h} d{d}, all_previous {all_previous})", ["out", "dq", "dk", "dv"][i]);
    }
    // Rows without an image are exactly zero in the fused output.
    let (o, tv) = (fused[0].to_vec::<f32>().unwrap(), t.to_vec::<f32>().unwrap());
    for (row, &ti) in tv.iter().enumerate() {
        if ti == 0.0 {
            assert!(o[row * h * d..(row + 1) * h * d].iter().all(|&x| x == 0.0));
        }
    }
    if flamingo_engine::cuda::is_available() {
        let tg = t.to_device(Device::Cuda(0)).unwrap();
        let gpu = run(&|q, k, v| reference_masked_attention(q, k, v, &tg, all_previous).unwrap(), &q, &k, &v, &w, Device::Cuda(0));
        for (i, (a, b_)) in reference.iter().zip(&gpu).enumerate() {
            let e = max_rel(a, b_);
            assert!(e < 1e-4, "reference on CUDA: {} differs by {e} (shape b{b} l{l} m{m} r{r} h{h} d{d})", ["out", "dq", "dk", "dv"][i]);
        }
        // The fused CUDA kernels (the media index stays on the host: it becomes the work list).
        let tf = t.clone();
        let fused_gpu = run(&|q, k, v| Tensor::masked_cross_attention(q, k, v, &tf, mode).unwrap(), &q, &k, &v, &w, Device::Cuda(0));
        for (i, (a, b_)) in reference.iter().zip(&fused_gpu).enumerate() {
            let e = max_rel(a, b_);
            assert!(
                e < 1e-4,
                "fused on CUDA: {} differs by {e} (shape b{b} l{l} m{m} r{r} h{h} d{d}, all_previous {all_previous})",
                ["out", "dq", "dk", "dv"][i]
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn fused_masked_cross_attention_matches_the_reference(
        b in 1usize..3, l in 1usize..40, m in 1usize..5, r in 1usize..9, h in 1usize..4, d in 1usize..17, all_previous: bool, seed in 0u64..1000
    ) {
        check_xattn(b, l, m, r, h, d, all_previous, seed);
    }
}

#[test]
fn fused_masked_cross_attention_at_flamingo_sizes() {
    // Runs longer than one 64-token tile, both modes.
    check_xattn(2, 150, 3, 16, 2, 32, false, 1);
    check_xattn(2, 150, 3, 16, 2, 32, true, 2);
}

#[test]
fn fused_masked_cross_attention_names_a_bad_media_index() {
    let mut rng = Rng::new(0);
    let (q, k) = (randn(&[1, 3, 1, 4], &mut rng), randn(&[1, 2, 2, 1, 4], &mut rng));
    let t = Tensor::from_vec(vec![0.0f32, 1.0, 3.0], &[1, 3]).unwrap();
    let e = Tensor::masked_cross_attention(&q, &k, &k, &t, XAttnMode::OnlyImmediate).unwrap_err().to_string();
    assert!(e.contains("media[0, 2] = 3"), "{e}");
    let e = Tensor::masked_cross_attention(&q, &k, &k, &t.narrow(1, 0, 2).unwrap(), XAttnMode::OnlyImmediate).unwrap_err().to_string();
    assert!(e.contains("media index must be [B, T]"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]
    #[test]
    fn fused_gated_residual_matches_the_reference(n in 1usize..70_000, gate in -2.0f64..2.0, seed in 0u64..1000) {
        let mut rng = Rng::new(seed);
        let (x, f, w) = (randn(&[n], &mut rng), randn(&[n], &mut rng), randn(&[n], &mut rng));
        let a = Tensor::full(&[1], gate, DType::F32, Device::Cpu);
        let go = |fused: bool, dev: Device| {
            let leaf = |t: &Tensor| t.to_device(dev).unwrap().requires_grad_(true);
            let (x, f, a) = (leaf(&x), leaf(&f), leaf(&a));
            let y = if fused { Tensor::gated_residual(&x, &f, &a).unwrap() } else { x.add(&f.mul(&a.tanh().unwrap()).unwrap()).unwrap() };
            y.mul(&w.to_device(dev).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
            vec![y.detach(), x.grad().unwrap(), f.grad().unwrap(), a.grad().unwrap()]
        };
        let rf = go(false, Device::Cpu);
        let mut legs = vec![("fused CPU", go(true, Device::Cpu), 1e-6f32)];
        if flamingo_engine::cuda::is_available() {
            legs.push(("fused CUDA", go(true, Device::Cuda(0)), 1e-5));
        }
        for (leg, fz, tol) in legs {
            for (i, (p, q)) in rf.iter().zip(&fz).enumerate() {
                // dα is a sum over n terms: summation order differs, so compare relative to √n.
                let tol = if i == 3 { tol * 10.0 * (n as f32).sqrt() } else { tol };
                let e = max_rel(p, q);
                prop_assert!(e <= tol, "{leg}: {} differs by {}", ["y", "dx", "df", "dalpha"][i], e);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]
    #[test]
    fn fused_weight_standardization_matches_the_reference(o in 1usize..20, c in 1usize..9, k in 1usize..4, deepmind: bool, seed in 0u64..1000) {
        use flamingo_engine::ops::fused::StdScale;
        use flamingo_model::nfnet::{standardized_weight_reference, WsEps};
        let mut rng = Rng::new(seed);
        let (w, gain) = (randn(&[o, c, k, k], &mut rng), randn(&[o], &mut rng));
        let dy = randn(&[o, c, k, k], &mut rng);
        let go = |fused: bool| {
            let (w, gain) = (w.requires_grad_(true), gain.requires_grad_(true));
            let y = if fused {
                let mode = if deepmind { StdScale::DeepMind { floor: 1e-4 } } else { StdScale::Timm { eps: 1e-5 } };
                Tensor::weight_standardize(&w, &gain, mode).unwrap()
            } else {
                standardized_weight_reference(&w, &gain, if deepmind { WsEps::DeepMind } else { WsEps::Timm }).unwrap()
            };
            y.backward_with(&dy).unwrap();
            vec![y.detach(), w.grad().unwrap(), gain.grad().unwrap()]
        };
        let (f, r) = (go(true), go(false));
        for (i, (a, b)) in r.iter().zip(&f).enumerate() {
            let e = max_rel(a, b);
            prop_assert!(e < 1e-4, "{} differs by {}", ["y", "dw", "dgain"][i], e);
        }
    }
}
