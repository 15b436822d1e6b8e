//! `flamingo bench --suite fused`: each fused kernel beside its reference (composed of primitive
//! ops), and the Flamingo training steps. PyTorch counterparts: benches/torch/masked_xattn.py
//! (masked cross-attention, same shapes and media layout) and benches/torch/train_step_bench.py.
//!
//! Masked cross-attention: q [8, 256, 8, 64], k, v [8, M, 64, 8, 64] given (requires grad), media
//! index: the first 8 tokens of each row see no image, then T is split into M equal runs. One call
//! = forward + backward with a fixed upstream gradient. FLOPs counted for the work the fused kernel
//! does (scores and P·V over the R keys of one medium, ×3 for forward + backward).
use crate::Case;
use flamingo_engine::ops::fused::XAttnMode;
use flamingo_engine::{DType, Rng, Tensor};
use flamingo_model::kernels::reference_masked_attention;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, DType::F32, &mut Rng::new(seed))
}

const B: usize = 8;
const T: usize = 256;
const R: usize = 64;
const H: usize = 8;
const D: usize = 64;
const NO_MEDIA: usize = 8;

/// The media index of benches/torch/masked_xattn.py: token t sees medium t / (T/M) (1-based),
/// none for t < 8.
fn media_layout(m: usize) -> Tensor {
    let row: Vec<f32> = (0..T).map(|t| if t < NO_MEDIA { 0.0 } else { (t / (T / m) + 1) as f32 }).collect();
    Tensor::from_vec(row.repeat(B), &[B, T]).expect("shape")
}

fn xattn_case(name: &'static str, m: usize, fused: bool) -> Case {
    let q = randn(&[B, T, H, D], 1).requires_grad_(true);
    let k = randn(&[B, m, R, H, D], 2).requires_grad_(true);
    let v = randn(&[B, m, R, H, D], 3).requires_grad_(true);
    let d_o = randn(&[B, T, H, D], 4);
    let t = media_layout(m);
    let rows = (B * (T - NO_MEDIA) * H) as f64;
    let flops = 3.0 * rows * 4.0 * (R * D) as f64;
    Case {
        name,
        shape: format!("b{B}t{T}m{m}r{R}h{H}d{D}"),
        dtype: DType::F32,
        flops,
        run: Box::new(move || {
            let o = if fused {
                Tensor::masked_cross_attention(&q, &k, &v, &t, XAttnMode::OnlyImmediate).expect("fused xattn")
            } else {
                reference_masked_attention(&q, &k, &v, &t, false).expect("reference xattn")
            };
            o.backward_with(&d_o).expect("backward");
            for x in [&q, &k, &v] {
                x.zero_grad();
            }
        }),
    }
}

fn gated_case(name: &'static str, fused: bool) -> Case {
    let shape = [8usize, 256, 512];
    let x = randn(&shape, 5).requires_grad_(true);
    let f = randn(&shape, 6).requires_grad_(true);
    let a = Tensor::full(&[1], 0.3, DType::F32, Default::default()).requires_grad_(true);
    let g = randn(&shape, 7);
    let n = (8 * 256 * 512) as f64;
    Case {
        name,
        shape: "8x256x512".into(),
        dtype: DType::F32,
        flops: 5.0 * n,
        run: Box::new(move || {
            let y =
                if fused { Tensor::gated_residual(&x, &f, &a).expect("fused") } else { x.add(&f.mul(&a.tanh().expect("tanh")).expect("mul")).expect("add") };
            y.backward_with(&g).expect("backward");
            for t in [&x, &f, &a] {
                t.zero_grad();
            }
        }),
    }
}

/// The language model's causal self-attention at the `small` step's shape: q, k, v
/// `[8, 8, 256, 64]` (batch, heads, tokens, head dim; contiguous, no rotary embedding), forward +
/// backward with a fixed upstream gradient, fused kernel or its dense reference composition.
/// FLOPs: the unmasked half of the two forward products (2·L²·D per head), ×3 for forward +
/// backward, as benches/torch/fused_bench.py counts them for PyTorch's SDPA.
fn causal_case(name: &'static str, fused: bool) -> Case {
    let shape = [B, H, T, D];
    let q = randn(&shape, 10).requires_grad_(true);
    let k = randn(&shape, 11).requires_grad_(true);
    let v = randn(&shape, 12).requires_grad_(true);
    let d_o = randn(&shape, 13);
    Case {
        name,
        shape: format!("b{B}h{H}l{T}d{D}"),
        dtype: DType::F32,
        flops: 3.0 * 2.0 * (B * H * T * T * D) as f64,
        run: Box::new(move || {
            let o = if fused { Tensor::causal_attention(&q, &k, &v, None) } else { Tensor::causal_attention_reference(&q, &k, &v, None) }
                .expect("causal attention");
            o.backward_with(&d_o).expect("backward");
            for x in [&q, &k, &v] {
                x.zero_grad();
            }
        }),
    }
}

/// Weight-standardised conv (timm's ScaledStdConv2d: eps 1e-5, gain, bias) forward + backward,
/// gradients to x, w, gain and bias: fused standardisation or its reference composition.
fn ws_conv_case(name: &'static str, x_shape: [usize; 4], w_shape: [usize; 4], groups: usize, fused: bool) -> Case {
    use flamingo_engine::ops::fused::StdScale;
    use flamingo_engine::ConvParams;
    use flamingo_model::nfnet::{standardized_weight_reference, WsEps};
    let x = randn(&x_shape, 8).requires_grad_(true);
    let w = randn(&w_shape, 9).requires_grad_(true);
    let gain = Tensor::full(&[w_shape[0]], 1.0, DType::F32, Default::default()).requires_grad_(true);
    let bias = Tensor::full(&[w_shape[0]], 0.0, DType::F32, Default::default()).requires_grad_(true);
    let params = ConvParams::new(1, w_shape[2] / 2).with_groups(groups);
    let (ho, wo) = (x_shape[2], x_shape[3]);
    let flops = 3.0 * 2.0 * (x_shape[0] * w_shape[0] * ho * wo * w_shape[1] * w_shape[2] * w_shape[3]) as f64;
    Case {
        name,
        shape: format!("{}x{}x{}x{}->{}g{groups}k{}", x_shape[0], x_shape[1], x_shape[2], x_shape[3], w_shape[0], w_shape[2]),
        dtype: DType::F32,
        flops,
        run: Box::new(move || {
            let ws =
                if fused { Tensor::weight_standardize(&w, &gain, StdScale::Timm { eps: 1e-5 }) } else { standardized_weight_reference(&w, &gain, WsEps::Timm) }
                    .expect("standardise");
            let y = x.conv2d(&ws, Some(&bias), &params).expect("conv");
            y.sum_all().expect("sum").backward().expect("backward");
            for t in [&x, &w, &gain, &bias] {
                t.zero_grad();
            }
        }),
    }
}

/// Every case of the suite (the training steps come from [`crate::train_step`]).
pub fn cases() -> flamingo_engine::Result<Vec<Case>> {
    let mut v = vec![
        xattn_case("masked_xattn_fwd_bwd", 4, true),
        xattn_case("masked_xattn_fwd_bwd_m8", 8, true),
        xattn_case("masked_xattn_reference", 4, false),
        xattn_case("masked_xattn_reference_m8", 8, false),
        causal_case("causal_attention_fwd_bwd", true),
        causal_case("causal_attention_reference", false),
        gated_case("gated_residual_fwd_bwd", true),
        gated_case("gated_residual_reference", false),
        ws_conv_case("ws_conv3x3_fwd_bwd", [8, 64, 16, 16], [64, 32, 3, 3], 2, true),
        ws_conv_case("ws_conv3x3_reference", [8, 64, 16, 16], [64, 32, 3, 3], 2, false),
        ws_conv_case("ws_conv1x1_fwd_bwd", [8, 128, 8, 8], [256, 128, 1, 1], 1, true),
        ws_conv_case("ws_conv1x1_reference", [8, 128, 8, 8], [256, 128, 1, 1], 1, false),
    ];
    v.extend(crate::train_step::cases()?);
    Ok(v)
}
