//! The benchmark suites. Each case states its FLOP convention (matched in benches/torch/).
use crate::{no_grad_call, randn_f32, Case};
use flamingo_engine::DType;

/// Names of every suite.
pub const SUITES: &[&str] = &["ops", "model", "fused", "cuda"];

/// The prepared cases of `suite`.
pub fn cases(suite: &str) -> Result<Vec<Case>, String> {
    match suite {
        "ops" => Ok(ops()),
        "model" => crate::model_suite::cases().map_err(|e| e.to_string()),
        "fused" => crate::fused_suite::cases().map_err(|e| e.to_string()),
        "cuda" => Err("suite `cuda` runs through `flamingo bench --suite cuda --device cuda` (its cases need a GPU)".into()),
        other => Err(format!("unknown suite `{other}`; suites: {}", SUITES.join(", "))),
    }
}

/// Groups of `suite`'s cases that are timed together, samples alternating (see the crate docs):
/// the cases whose ratio a target is stated on.
pub fn interleaved(suite: &str) -> &'static [&'static [&'static str]] {
    match suite {
        // issue 6: doubling M must leave the fused cross-attention's time within 10 %
        "fused" => &[&["masked_xattn_fwd_bwd", "masked_xattn_fwd_bwd_m8"]],
        _ => &[],
    }
}

/// Single-op throughput and per-op overhead, f32.
fn ops() -> Vec<Case> {
    let mut v = Vec::new();
    for (name, n) in [("matmul_256", 256usize), ("matmul_512", 512), ("matmul_1024", 1024), ("matmul_2048", 2048)] {
        let (a, b) = (randn_f32(&[n, n], 1), randn_f32(&[n, n], 2));
        v.push(Case {
            name,
            shape: format!("{n}x{n}"),
            dtype: DType::F32,
            flops: 2.0 * (n as f64).powi(3),
            run: Box::new(move || no_grad_call(|| a.matmul(&b).unwrap())),
        });
    }
    let x = randn_f32(&[8192, 512], 3);
    let xs = x.clone();
    v.push(Case {
        name: "softmax",
        shape: "8192x512".into(),
        dtype: DType::F32,
        flops: 5.0 * 8192.0 * 512.0,
        run: Box::new(move || no_grad_call(|| xs.softmax(-1).unwrap())),
    });
    let (w, b) = (randn_f32(&[512], 4), randn_f32(&[512], 5));
    v.push(Case {
        name: "layer_norm",
        shape: "8192x512".into(),
        dtype: DType::F32,
        flops: 8.0 * 8192.0 * 512.0,
        run: Box::new(move || no_grad_call(|| x.layer_norm(Some(&w), Some(&b), 1e-5).unwrap())),
    });
    let g = randn_f32(&[4 * 1024 * 1024], 6);
    v.push(Case {
        name: "gelu",
        shape: "4194304".into(),
        dtype: DType::F32,
        flops: 8.0 * 4194304.0,
        run: Box::new(move || no_grad_call(|| g.gelu().unwrap())),
    });
    // Both inputs require grad, so the add records an autograd node: the full per-op cost.
    let (p, q) = (randn_f32(&[8, 8], 7).requires_grad_(true), randn_f32(&[8, 8], 8).requires_grad_(true));
    v.push(Case {
        name: "add_8x8",
        shape: "8x8".into(),
        dtype: DType::F32,
        flops: 64.0,
        run: Box::new(move || {
            std::hint::black_box(p.add(&q).unwrap());
        }),
    });
    v
}
