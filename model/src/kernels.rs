//! The switch between fused kernels and their reference formulations.
//!
//! The model uses the engine's fused ops (masked cross-attention, tanh-gated residual, the LM's
//! causal self-attention, LLaMA's RMSNorm and SwiGLU gate, and on the CPU the Perceiver's
//! attention through the cross-attention kernel) by default
//! on the CPU. `FLAMINGO_REFERENCE_KERNELS=1` in the environment, or [`set_fused`]`(false)`,
//! switches back to the reference compositions of primitive ops (the dense masked attention of
//! SPEC §2.5, `x + f·tanh(α)` and masked dense self-attention), which every parity test compares
//! against. The switch applies on every device: the cross-attention and the gated residual have
//! CPU and CUDA kernels; the causal self-attention, RMSNorm and SwiGLU have CPU kernels and
//! elsewhere run their reference compositions inside the engine ops.
use flamingo_engine::{Device, Tensor};
use std::sync::atomic::{AtomicU8, Ordering};

/// 0 = not decided yet (read the environment), 1 = fused, 2 = reference.
static MODE: AtomicU8 = AtomicU8::new(0);

/// Whether the fused kernels are in use.
pub fn fused_enabled() -> bool {
    match MODE.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let reference = std::env::var("FLAMINGO_REFERENCE_KERNELS").map(|v| v == "1").unwrap_or(false);
            MODE.store(if reference { 2 } else { 1 }, Ordering::Relaxed);
            !reference
        }
    }
}

/// Selects fused (`true`) or reference (`false`) kernels for the whole process.
pub fn set_fused(on: bool) {
    MODE.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

/// Whether the fused path applies to a computation on `t`'s device.
pub(crate) fn use_fused(t: &Tensor) -> bool {
    matches!(t.device(), Device::Cpu | Device::Cuda(_)) && fused_enabled()
}

/// The reference masked cross-attention from primitive ops, in the fused op's layout:
/// `q [b, l, h, d]` (unscaled), `k`, `v` `[b, m, r, h, d]`, `t [b, l]` (media index) →
/// `[b, l, h, d]`. Dense scores over all `m·r` keys, masked per SPEC §2.5, rows with `t = 0`
/// zeroed. Runs on any device.
pub fn reference_masked_attention(q: &Tensor, k: &Tensor, v: &Tensor, t: &Tensor, all_previous: bool) -> flamingo_engine::Result<Tensor> {
    let (b, h, d) = (q.shape()[0], q.shape()[2], q.shape()[3]);
    let (m, r) = (k.shape()[1], k.shape()[2]);
    let qh = q.transpose(1, 2)?.mul_scalar((d as f64).powf(-0.5))?; // [b, h, l, d]
    let kh = k.reshape(&[b, m * r, h, d])?.transpose(1, 2)?; // [b, h, m·r, d]
    let vh = v.reshape(&[b, m * r, h, d])?.transpose(1, 2)?;
    let scores = qh.matmul(&kh.t()?)?; // [b, h, l, m·r]
    let dt = scores.dtype();
    let key_media: Vec<f32> = (0..m * r).map(|kk| (kk / r + 1) as f32).collect();
    let key_media = Tensor::from_vec(key_media, &[1, 1, m * r])?.to_dtype(dt)?.to_device(q.device())?;
    let tt = t.to_device(q.device())?.to_dtype(dt)?.unsqueeze(-1)?; // [b, l, 1]
    let allowed = if all_previous { tt.ge(&key_media)? } else { tt.eq_mask(&key_media)? };
    let blocked = allowed.affine(-1.0, 1.0)?.unsqueeze(1)?;
    let attn = scores.masked_fill(&blocked, -1e30)?.softmax(-1)?;
    let has_media = tt.gt(&Tensor::zeros(&[], dt, q.device()))?.unsqueeze(1)?;
    attn.mul(&has_media)?.matmul(&vh)?.transpose(1, 2)?.contiguous()
}
