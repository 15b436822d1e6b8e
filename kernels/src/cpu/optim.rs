//! In-place optimiser updates on contiguous parameter, gradient and state slices.
use super::float::Float;
use super::parallel::worth_parallel;
use super::simd::vectorized;
use rayon::prelude::*;

/// Hyper-parameters of one AdamW step (PyTorch's `torch.optim.AdamW` semantics).
#[derive(Clone, Copy, Debug)]
pub struct AdamWStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// 1-based step number (for bias correction).
    pub step: u64,
}

/// One AdamW update: `p ← p·(1 − lr·wd)`, `m ← β1·m + (1−β1)·g`, `v ← β2·v + (1−β2)·g²`,
/// `p ← p − lr/(1−β1^t) · m / (√v/√(1−β2^t) + eps)`.
pub fn adamw<T: Float>(p: &mut [T], g: &[T], m: &mut [T], v: &mut [T], h: AdamWStep) {
    assert!(g.len() == p.len() && m.len() == p.len() && v.len() == p.len());
    let bc1 = 1.0 - h.beta1.powi(h.step as i32);
    let bc2 = 1.0 - h.beta2.powi(h.step as i32);
    let step_size = T::c(h.lr / bc1);
    let bc2_sqrt = T::c(bc2.sqrt());
    let decay = T::c(1.0 - h.lr * h.weight_decay);
    let (b1, b2) = (T::c(h.beta1), T::c(h.beta2));
    let (omb1, omb2) = (T::c(1.0 - h.beta1), T::c(1.0 - h.beta2));
    let eps = T::c(h.eps);
    const CHUNK: usize = 1 << 14;
    let update = |pc: &mut [T], mc: &mut [T], vc: &mut [T], gc: &[T]| {
        vectorized(
            #[inline(always)]
            || {
                for i in 0..pc.len() {
                    let gi = gc[i];
                    mc[i] = b1 * mc[i] + omb1 * gi;
                    vc[i] = b2 * vc[i] + omb2 * gi * gi;
                    let denom = vc[i].sqrt() / bc2_sqrt + eps;
                    pc[i] = pc[i] * decay - step_size * mc[i] / denom;
                }
            },
        )
    };
    if worth_parallel(p.len() * 8) {
        p.par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .for_each(|(((pc, mc), vc), gc)| update(pc, mc, vc, gc));
    } else {
        update(p, m, v, g);
    }
}

/// One SGD step with momentum (PyTorch semantics, dampening 0):
/// `d = g + wd·p`; `buf ← μ·buf + d` (buf = d on the first step); `p ← p − lr·(nesterov ? d + μ·buf : buf)`.
#[allow(clippy::too_many_arguments)]
pub fn sgd<T: Float>(p: &mut [T], g: &[T], buf: &mut [T], lr: f64, momentum: f64, weight_decay: f64, nesterov: bool, first: bool) {
    let (lr, mu, wd) = (T::c(lr), T::c(momentum), T::c(weight_decay));
    for i in 0..p.len() {
        let d = g[i] + wd * p[i];
        if momentum == 0.0 {
            p[i] -= lr * d;
            continue;
        }
        buf[i] = if first { d } else { mu * buf[i] + d };
        let step = if nesterov { d + mu * buf[i] } else { buf[i] };
        p[i] -= lr * step;
    }
}
