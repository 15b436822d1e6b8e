//! CUDA-against-CPU parity of every engine op, forward and backward: the body of
//! `flamingo selftest --device cuda` and of the CUDA tests (which skip without a GPU).
//!
//! Each check runs one computation on the CPU and on the GPU from the same random inputs, then
//! compares the outputs and the gradients of `Σ out·w` (a fixed random `w`) with respect to every
//! float input. Errors are measured relative to the reference's scale:
//! `max |gpu − cpu| / max(1, max |cpu|)`. Tolerances: f32 1e-4, bf16 3e-2 (one bf16 ulp is 2^-8).
use crate::ops::conv::ConvParams;
use crate::{DType, Device, Error, Result, Rng, Tensor};

/// The outcome of one check.
#[derive(Clone, Debug)]
pub struct Check {
    pub name: String,
    pub dtype: DType,
    /// Worst relative error over the output and every gradient (NaN if the check failed to run).
    pub max_err: f64,
    pub tol: f64,
    pub passed: bool,
    /// The error message when the computation itself failed.
    pub note: String,
}

type Compute = Box<dyn Fn(&[Tensor]) -> Result<Tensor>>;

struct Case {
    name: &'static str,
    /// Inputs made on the CPU in f32 (i64 for indices); `grad[i]` marks those differentiated.
    inputs: Vec<Tensor>,
    grad: Vec<bool>,
    f: Compute,
}

fn randn(shape: &[usize], rng: &mut Rng) -> Tensor {
    Tensor::randn(shape, DType::F32, rng)
}

fn cases(rng: &mut Rng) -> Vec<Case> {
    use flamingo_kernels::cpu::elementwise::UnaryOp as U;
    let mut v: Vec<Case> = Vec::new();
    let mut push = |name: &'static str, inputs: Vec<Tensor>, grad: Vec<bool>, f: Compute| v.push(Case { name, inputs, grad, f });
    let pos = |t: Tensor| t.abs().and_then(|a| a.add_scalar(0.5)).expect("f32");
    // Unary ops (log, sqrt, rsqrt, powf get positive inputs).
    let unaries: [(&'static str, U, bool); 15] = [
        ("neg", U::Neg, false),
        ("exp", U::Exp, false),
        ("log", U::Log, true),
        ("sqrt", U::Sqrt, true),
        ("rsqrt", U::Rsqrt, true),
        ("tanh", U::Tanh, false),
        ("sigmoid", U::Sigmoid, false),
        ("relu", U::Relu, false),
        ("gelu", U::Gelu, false),
        ("gelu_tanh", U::GeluTanh, false),
        ("silu", U::Silu, false),
        ("square", U::Square, false),
        ("abs", U::Abs, false),
        ("powf", U::Powf(1.7), true),
        ("affine", U::Affine(-1.5, 0.25), false),
    ];
    for (name, op, positive) in unaries {
        let x = randn(&[37, 29], rng);
        let x = if positive { pos(x) } else { x };
        push(name, vec![x], vec![true], Box::new(move |t| t[0].unary(op)));
    }
    // Binary ops with broadcasting and a non-contiguous (transposed) operand.
    for (name, code) in [("add", 0), ("sub", 1), ("mul", 2), ("div", 3), ("maximum", 4), ("minimum", 5)] {
        let a = randn(&[6, 1, 33], rng);
        let b = if code == 3 { pos(randn(&[33, 5], rng)) } else { randn(&[33, 5], rng) };
        push(
            name,
            vec![a, b],
            vec![true, true],
            Box::new(move |t| {
                let b = t[1].t()?; // [5, 33], strided
                match code {
                    0 => t[0].add(&b),
                    1 => t[0].sub(&b),
                    2 => t[0].mul(&b),
                    3 => t[0].div(&b),
                    4 => t[0].maximum(&b),
                    _ => t[0].minimum(&b),
                }
            }),
        );
    }
    push("compare_gt_mask", vec![randn(&[4, 9], rng), randn(&[9], rng)], vec![false, false], Box::new(|t| t[0].gt(&t[1])));
    push(
        "where_cond",
        vec![randn(&[4, 9], rng), randn(&[4, 9], rng), randn(&[9], rng)],
        vec![false, true, true],
        Box::new(|t| Tensor::where_cond(&t[0].gt(&t[2])?, &t[1], &t[2])),
    );
    push(
        "masked_fill",
        vec![randn(&[5, 7], rng)],
        vec![true],
        Box::new(|t| t[0].masked_fill(&t[0].lt(&Tensor::zeros(&[], t[0].dtype(), t[0].device()))?, -3.0)),
    );
    push("sum_axes", vec![randn(&[5, 6, 7, 3], rng)], vec![true], Box::new(|t| t[0].sum(&[1, 3], false)));
    push("sum_rows", vec![randn(&[9, 1000], rng)], vec![true], Box::new(|t| t[0].sum(&[-1], true)));
    push("sum_all", vec![randn(&[3, 50, 41], rng)], vec![true], Box::new(|t| t[0].sum_all()));
    push("mean", vec![randn(&[8, 12], rng)], vec![true], Box::new(|t| t[0].mean(&[0], false)));
    push("max", vec![randn(&[7, 13, 5], rng)], vec![true], Box::new(|t| t[0].max(1, false)));
    push("argmax", vec![randn(&[7, 13], rng)], vec![false], Box::new(|t| t[0].argmax(-1, false)?.to_dtype(DType::F32)));
    push("softmax", vec![randn(&[11, 77], rng)], vec![true], Box::new(|t| t[0].softmax(-1)));
    push("softmax_axis0", vec![randn(&[13, 6], rng)], vec![true], Box::new(|t| t[0].softmax(0)));
    push("log_softmax", vec![randn(&[11, 300], rng)], vec![true], Box::new(|t| t[0].log_softmax(-1)));
    push("logsumexp", vec![randn(&[6, 40], rng)], vec![true], Box::new(|t| t[0].logsumexp(-1, false)));
    push(
        "layer_norm",
        vec![randn(&[3, 10, 96], rng), randn(&[96], rng), randn(&[96], rng)],
        vec![true, true, true],
        Box::new(|t| t[0].layer_norm(Some(&t[1]), Some(&t[2]), 1e-5)),
    );
    let targets = Tensor::from_vec((0..24).map(|i| if i % 7 == 3 { -100 } else { (i * 13 % 50) as i64 }).collect::<Vec<_>>(), &[4, 6]).expect("shape");
    push("cross_entropy", vec![randn(&[4, 6, 50], rng), targets.clone()], vec![true, false], Box::new(|t| t[0].cross_entropy(&t[1], Some(-100), 0.0)));
    push("cross_entropy_smooth", vec![randn(&[4, 6, 50], rng), targets], vec![true, false], Box::new(|t| t[0].cross_entropy(&t[1], Some(-100), 0.1)));
    let ids = Tensor::from_vec(vec![3i64, 0, 7, 3, 9, 1, 3], &[7]).expect("shape");
    push("index_select", vec![randn(&[4, 10, 3], rng), ids.clone()], vec![true, false], Box::new(|t| t[0].index_select(1, &t[1])));
    push("embedding", vec![randn(&[10, 16], rng), ids.reshape(&[7, 1]).expect("shape")], vec![true, false], Box::new(|t| t[0].embedding(&t[1])));
    push("concat", vec![randn(&[3, 4, 5], rng), randn(&[3, 2, 5], rng)], vec![true, true], Box::new(|t| Tensor::concat(&[&t[0], &t[1]], 1)));
    push("pad", vec![randn(&[2, 3, 4, 5], rng)], vec![true], Box::new(|t| t[0].pad(&[(1, 0), (2, 1)], 0.5)));
    push("contiguous_permute", vec![randn(&[3, 4, 5, 6], rng)], vec![true], Box::new(|t| t[0].permute(&[2, 0, 3, 1])?.contiguous()));
    push("narrow_copy", vec![randn(&[8, 9], rng)], vec![true], Box::new(|t| t[0].narrow(1, 2, 5)?.copy()));
    push(
        "conv2d",
        vec![randn(&[2, 4, 9, 8], rng), randn(&[6, 4, 3, 3], rng), randn(&[6], rng)],
        vec![true, true, true],
        Box::new(|t| t[0].conv2d(&t[1], Some(&t[2]), &ConvParams::new(1, 1))),
    );
    push(
        "conv2d_stride2_groups2",
        vec![randn(&[2, 4, 9, 9], rng), randn(&[6, 2, 3, 3], rng)],
        vec![true, true],
        Box::new(|t| t[0].conv2d(&t[1], None, &ConvParams::new(2, 1).with_groups(2))),
    );
    push(
        "conv2d_tf_same",
        vec![randn(&[1, 3, 10, 10], rng), randn(&[5, 3, 3, 3], rng)],
        vec![true, true],
        Box::new(|t| t[0].conv2d(&t[1], None, &ConvParams::tf_same(10, 10, 3, 3, 2))),
    );
    // The implicit-GEMM kernels (kernels/cuda/conv.cu) on the same geometries, and on one with
    // two 64-wide tiles of output channels and a weight gradient whose reduction is split.
    let implicit = |f: fn(&[Tensor]) -> Result<Tensor>| -> Compute { Box::new(move |t| crate::cuda::with_conv_algo(crate::cuda::ConvAlgo::Implicit, || f(t))) };
    push(
        "conv2d_implicit",
        vec![randn(&[2, 4, 9, 8], rng), randn(&[6, 4, 3, 3], rng), randn(&[6], rng)],
        vec![true, true, true],
        implicit(|t| t[0].conv2d(&t[1], Some(&t[2]), &ConvParams::new(1, 1))),
    );
    push(
        "conv2d_implicit_stride2_groups2",
        vec![randn(&[2, 4, 9, 9], rng), randn(&[6, 2, 3, 3], rng)],
        vec![true, true],
        implicit(|t| t[0].conv2d(&t[1], None, &ConvParams::new(2, 1).with_groups(2))),
    );
    push(
        "conv2d_implicit_tf_same",
        vec![randn(&[1, 3, 10, 10], rng), randn(&[5, 3, 3, 3], rng)],
        vec![true, true],
        implicit(|t| t[0].conv2d(&t[1], None, &ConvParams::tf_same(10, 10, 3, 3, 2))),
    );
    push(
        "conv2d_implicit_wide_split",
        vec![randn(&[2, 5, 20, 20], rng), randn(&[70, 5, 3, 3], rng), randn(&[70], rng)],
        vec![true, true, true],
        implicit(|t| t[0].conv2d(&t[1], Some(&t[2]), &ConvParams::new(1, 1))),
    );
    // Causal self-attention: the default path (the reference composition on a GPU) and the fused
    // kernels of kernels/cuda/attention.cu (grouped-query heads, lengths that are not multiples of
    // the 32-row tiles, with and without the rotary embedding).
    push(
        "causal_attention",
        vec![randn(&[2, 4, 45, 24], rng), randn(&[2, 2, 45, 24], rng), randn(&[2, 2, 45, 24], rng)],
        vec![true, true, true],
        Box::new(|t| Tensor::causal_attention(&t[0], &t[1], &t[2], None)),
    );
    push(
        "causal_attention_fused",
        vec![randn(&[2, 4, 45, 24], rng), randn(&[2, 2, 45, 24], rng), randn(&[2, 2, 45, 24], rng)],
        vec![true, true, true],
        Box::new(|t| crate::cuda::with_causal_fused(true, || Tensor::causal_attention(&t[0], &t[1], &t[2], None))),
    );
    let angles: Vec<f32> = (0..70 * 64).map(|i| ((i / 64) as f32) * 0.1 / (1.0 + (i % 32) as f32)).collect();
    let cos = Tensor::from_vec(angles.iter().map(|a| a.cos()).collect::<Vec<f32>>(), &[1, 1, 70, 64]).expect("shape");
    let sin = Tensor::from_vec(angles.iter().map(|a| a.sin()).collect::<Vec<f32>>(), &[1, 1, 70, 64]).expect("shape");
    push(
        "causal_attention_fused_rope",
        vec![randn(&[1, 2, 70, 64], rng), randn(&[1, 1, 70, 64], rng), randn(&[1, 1, 70, 64], rng), cos, sin],
        vec![true, true, true, false, false],
        Box::new(|t| crate::cuda::with_causal_fused(true, || Tensor::causal_attention(&t[0], &t[1], &t[2], Some((&t[3], &t[4]))))),
    );
    push("avg_pool2d", vec![randn(&[2, 3, 8, 6], rng)], vec![true], Box::new(|t| t[0].avg_pool2d((2, 2), (2, 2))));
    push("matmul", vec![randn(&[33, 17], rng), randn(&[17, 29], rng)], vec![true, true], Box::new(|t| t[0].matmul(&t[1])));
    push("matmul_batched_broadcast", vec![randn(&[2, 3, 8, 5], rng), randn(&[5, 7], rng)], vec![true, true], Box::new(|t| t[0].matmul(&t[1])));
    push("matmul_transposed", vec![randn(&[4, 9, 6], rng), randn(&[4, 11, 6], rng)], vec![true, true], Box::new(|t| t[0].matmul(&t[1].transpose(-1, -2)?)));
    push("matmul_strided_batch", vec![randn(&[5, 3, 8], rng), randn(&[3, 8, 4], rng)], vec![true, true], Box::new(|t| t[0].transpose(0, 1)?.matmul(&t[1])));
    push(
        "linear",
        vec![randn(&[2, 5, 24], rng), randn(&[12, 24], rng), randn(&[12], rng)],
        vec![true, true, true],
        Box::new(|t| t[0].linear(&t[1], Some(&t[2]))),
    );
    // The fused ops: the GPU kernels against the CPU kernels.
    let media = Tensor::from_vec(
        (0..2 * 12)
            .map(|i| {
                let t = i % 12;
                if t < 2 {
                    0.0f32
                } else {
                    (1 + (t - 2) / 4) as f32
                }
            })
            .collect::<Vec<_>>(),
        &[2, 12],
    )
    .expect("shape");
    for (name, mode) in
        [("fused_masked_xattn", crate::ops::fused::XAttnMode::OnlyImmediate), ("fused_masked_xattn_all_prev", crate::ops::fused::XAttnMode::AllPrevious)]
    {
        let md = media.clone();
        push(
            name,
            vec![randn(&[2, 12, 3, 40], rng), randn(&[2, 3, 5, 3, 40], rng), randn(&[2, 3, 5, 3, 40], rng)],
            vec![true, true, true],
            Box::new(move |t| Tensor::masked_cross_attention(&t[0], &t[1], &t[2], &md.to_device(t[0].device())?, mode)),
        );
    }
    // Longer runs and key ranges than one tile / one chunk (64 and 64 on the tensor cores (bf16),
    // else 32 and 32 for D ≤ 64, 16 and 16 for D ≤ 128), a medium no token sees, and a head dim above 128 (the
    // warp-per-row kernels).
    let long_media = |b: usize, t: usize, f: &dyn Fn(usize) -> f32| Tensor::from_vec((0..b * t).map(|i| f(i % t)).collect::<Vec<_>>(), &[b, t]).expect("shape");
    let cases_long: [(&'static str, crate::ops::fused::XAttnMode, [usize; 6], Tensor); 3] = [
        // media: 3 text tokens, 75 tokens of medium 1, 22 of medium 3 (medium 2 unseen); R = 70.
        (
            "fused_masked_xattn_long_runs",
            crate::ops::fused::XAttnMode::OnlyImmediate,
            [2, 100, 3, 70, 2, 64],
            long_media(2, 100, &|t| {
                if t < 3 {
                    0.0
                } else if t < 78 {
                    1.0
                } else {
                    3.0
                }
            }),
        ),
        (
            "fused_masked_xattn_d96_all_prev",
            crate::ops::fused::XAttnMode::AllPrevious,
            [2, 40, 2, 20, 2, 96],
            long_media(2, 40, &|t| {
                if t < 1 {
                    0.0
                } else if t < 21 {
                    1.0
                } else {
                    2.0
                }
            }),
        ),
        (
            "fused_masked_xattn_d160",
            crate::ops::fused::XAttnMode::OnlyImmediate,
            [1, 9, 2, 3, 2, 160],
            long_media(1, 9, &|t| {
                if t < 2 {
                    0.0
                } else if t < 6 {
                    1.0
                } else {
                    2.0
                }
            }),
        ),
    ];
    for (name, mode, [b, t, m, r, h, d], md) in cases_long {
        push(
            name,
            vec![randn(&[b, t, h, d], rng), randn(&[b, m, r, h, d], rng), randn(&[b, m, r, h, d], rng)],
            vec![true, true, true],
            Box::new(move |x| Tensor::masked_cross_attention(&x[0], &x[1], &x[2], &md.to_device(x[0].device())?, mode)),
        );
    }
    push(
        "fused_gated_residual",
        vec![randn(&[3, 7, 33], rng), randn(&[3, 7, 33], rng), randn(&[1], rng)],
        vec![true, true, true],
        Box::new(|t| Tensor::gated_residual(&t[0], &t[1], &t[2])),
    );
    for (name, mode) in
        [("fused_ws_timm", crate::ops::fused::StdScale::Timm { eps: 1e-5 }), ("fused_ws_deepmind", crate::ops::fused::StdScale::DeepMind { floor: 1e-4 })]
    {
        push(name, vec![randn(&[6, 4, 3, 3], rng), randn(&[6], rng)], vec![true, true], Box::new(move |t| Tensor::weight_standardize(&t[0], &t[1], mode)));
    }
    push(
        "attention_block",
        vec![randn(&[2, 4, 10, 16], rng), randn(&[2, 4, 12, 16], rng), randn(&[2, 4, 12, 16], rng)],
        vec![true, true, true],
        Box::new(|t| {
            let s = t[0].matmul(&t[1].transpose(-1, -2)?)?.mul_scalar(0.25)?;
            s.softmax(-1)?.matmul(&t[2])
        }),
    );
    v
}

/// `max |b − a| / max(1, max |a|)` over two same-shaped tensors (b may be on any device).
fn rel_err(a: &Tensor, b: &Tensor) -> Result<f64> {
    if a.shape() != b.shape() {
        return Err(Error::shape_mismatch("selftest", a.shape(), b.shape(), "CPU and CUDA results differ in shape"));
    }
    let (av, bv) = (a.to_vec::<f64>()?, b.to_vec::<f64>()?);
    let scale = av.iter().fold(1.0f64, |m, x| m.max(x.abs()));
    let mut worst = 0.0f64;
    for (x, y) in av.iter().zip(&bv) {
        let d = if (x.is_nan() && y.is_nan()) || x == y { 0.0 } else { (x - y).abs() };
        worst = worst.max(if d.is_nan() { f64::INFINITY } else { d });
    }
    Ok(worst / scale)
}

/// Output and input gradients of one case on one device.
fn run_case(c: &Case, device: Device, dtype: DType, w_seed: u64) -> Result<(Tensor, Vec<Option<Tensor>>)> {
    let leaves: Vec<Tensor> = c
        .inputs
        .iter()
        .zip(&c.grad)
        .map(|(t, &g)| {
            let t = if t.dtype().is_float() { t.to_dtype(dtype)? } else { t.clone() };
            Ok(t.to_device(device)?.requires_grad_(g))
        })
        .collect::<Result<_>>()?;
    let out = (c.f)(&leaves)?;
    let any_grad = c.grad.iter().any(|&g| g);
    if any_grad && out.dtype().is_float() && out.requires_grad() {
        let mut rng = Rng::new(w_seed);
        let w = Tensor::randn(out.shape(), DType::F32, &mut rng).to_dtype(out.dtype())?.to_device(device)?;
        out.mul(&w)?.sum_all()?.backward()?;
    }
    let grads = leaves.iter().zip(&c.grad).map(|(l, &g)| if g { l.grad() } else { None }).collect();
    Ok((out.detach(), grads))
}

/// Runs `f`, turning a panic into an error that carries its message, so that one broken case
/// is reported as a failed check and the others still run.
fn guard<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_else(|| "unknown payload".into());
        Err(Error::Msg(format!("panicked: {msg}")))
    })
}

/// Runs every check whose name contains `filter` (all when None) on `device` against the CPU,
/// in f32 and bf16. `on_check` sees each result as it completes.
pub fn run(device: Device, filter: Option<&str>, mut on_check: impl FnMut(&Check)) -> Result<Vec<Check>> {
    // With device = CPU the harness compares the CPU with itself (every error must be 0): the
    // engine's own tests use that to check every case runs.
    let mut rng = Rng::new(20261127);
    let mut out = Vec::new();
    let all = cases(&mut rng);
    let mut extra = guard(|| optimiser_checks(device, filter)).unwrap_or_else(|e| {
        vec![Check { name: "optimiser_checks".into(), dtype: DType::F32, max_err: f64::NAN, tol: 0.0, passed: false, note: e.to_string() }]
    });
    for c in all.iter().filter(|c| filter.is_none_or(|f| c.name.contains(f))) {
        for (dtype, tol) in [(DType::F32, 1e-4), (DType::BF16, 3e-2)] {
            let res = guard(|| -> Result<f64> {
                let (ro, rg) = run_case(c, Device::Cpu, dtype, 7)?;
                let (go, gg) = run_case(c, device, dtype, 7)?;
                let mut worst = rel_err(&ro, &go)?;
                for (i, (a, b)) in rg.iter().zip(&gg).enumerate() {
                    match (a, b) {
                        (Some(a), Some(b)) => worst = worst.max(rel_err(a, b)?),
                        (None, None) => {}
                        _ => return Err(Error::Msg(format!("input {i}: the gradient exists on one device only"))),
                    }
                }
                Ok(worst)
            });
            let check = match res {
                Ok(e) => Check { name: c.name.to_string(), dtype, max_err: e, tol, passed: e <= tol, note: String::new() },
                Err(e) => Check { name: c.name.to_string(), dtype, max_err: f64::NAN, tol, passed: false, note: e.to_string() },
            };
            on_check(&check);
            out.push(check);
        }
    }
    for c in extra.drain(..) {
        on_check(&c);
        out.push(c);
    }
    Ok(out)
}

/// AdamW (f32, and bf16 parameters with f32 masters), SGD, dropout and dtype round trips.
fn optimiser_checks(device: Device, filter: Option<&str>) -> Result<Vec<Check>> {
    use crate::optim::{AdamW, AdamWConfig, ParamGroup, Sgd};
    let mut v = Vec::new();
    let want = |n: &str| filter.is_none_or(|f| n.contains(f));
    let mut rng = Rng::new(99);
    let p0 = Tensor::randn(&[64, 33], DType::F32, &mut rng);
    let grads: Vec<Tensor> = (0..3).map(|_| Tensor::randn(&[64, 33], DType::F32, &mut rng)).collect();
    let mut record = |name: &str, dtype: DType, tol: f64, r: Result<f64>| {
        v.push(match r {
            Ok(e) => Check { name: name.into(), dtype, max_err: e, tol, passed: e <= tol, note: String::new() },
            Err(e) => Check { name: name.into(), dtype, max_err: f64::NAN, tol, passed: false, note: e.to_string() },
        })
    };
    for (dtype, tol) in [(DType::F32, 1e-5), (DType::BF16, 1e-2)] {
        if want("adamw") {
            let run = |dev: Device| -> Result<Tensor> {
                let p = p0.to_dtype(dtype)?.to_device(dev)?.copy()?.requires_grad_(true);
                let mut opt = AdamW::new(vec![ParamGroup::new(vec![("w".into(), p.clone())], 1e-2, 0.1)], AdamWConfig::default())?;
                for g in &grads {
                    p.set_grad(Some(g.to_dtype(dtype)?.to_device(dev)?))?;
                    opt.step()?;
                }
                Ok(p.detach())
            };
            record("adamw_step", dtype, tol, guard(|| rel_err(&run(Device::Cpu)?, &run(device)?)));
        }
    }
    if want("sgd") {
        let run = |dev: Device| -> Result<Tensor> {
            let p = p0.to_device(dev)?.copy()?.requires_grad_(true);
            let mut opt = Sgd::new(vec![ParamGroup::new(vec![("w".into(), p.clone())], 1e-2, 0.01)], 0.9, true)?;
            for g in &grads {
                p.set_grad(Some(g.to_device(dev)?))?;
                opt.step()?;
            }
            Ok(p.detach())
        };
        record("sgd_step", DType::F32, 1e-5, guard(|| rel_err(&run(Device::Cpu)?, &run(device)?)));
    }
    if want("dropout") {
        // Statistics (the GPU mask is counter-based, not the CPU's) and mask/backward agreement.
        let r = guard(|| -> Result<f64> {
            let x = Tensor::ones(&[256, 256], DType::F32, Device::Cpu).to_device(device)?.requires_grad_(true);
            let y = x.dropout(0.25, true, &mut Rng::new(5))?;
            y.sum_all()?.backward()?;
            let (yv, gv) = (y.to_vec::<f32>()?, x.grad().ok_or_else(|| Error::Msg("no gradient".into()))?.to_vec::<f32>()?);
            let kept = yv.iter().filter(|&&a| a != 0.0).count() as f64 / yv.len() as f64;
            let mismatch = yv.iter().zip(&gv).filter(|(a, b)| a != b).count();
            if mismatch > 0 {
                return Err(Error::Msg(format!("{mismatch} gradient entries differ from the mask")));
            }
            Ok((kept - 0.75).abs())
        });
        record("dropout_keep_rate", DType::F32, 0.01, r);
    }
    if want("to_dtype") {
        let r = guard(|| -> Result<f64> {
            let x = Tensor::randn(&[1000], DType::F32, &mut Rng::new(3));
            rel_err(&x.to_dtype(DType::BF16)?.to_dtype(DType::F32)?, &x.to_device(device)?.to_dtype(DType::BF16)?.to_dtype(DType::F32)?)
        });
        record("to_dtype_bf16_roundtrip", DType::BF16, 0.0, r);
    }
    Ok(v)
}
