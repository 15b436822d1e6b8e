//! Gradient clipping: global norm (as `torch.nn.utils.clip_grad_norm_`) and adaptive gradient
//! clipping (AGC, Brock et al. 2021) for NFNets.
use crate::{Result, Tensor};

/// Scales all gradients so their global L2 norm is at most `max_norm`; returns the norm before
/// clipping. The scale is `max_norm / (norm + 1e-6)` when that is below 1 (PyTorch's rule).
pub fn clip_grad_norm(params: &[Tensor], max_norm: f64) -> Result<f64> {
    let mut total = 0.0f64;
    for p in params {
        if let Some(g) = p.grad() {
            total += if g.device().is_cuda() {
                // One scalar per tensor crosses to the host, not the whole gradient.
                crate::no_grad(|| g.to_dtype(crate::DType::F32)?.square()?.sum_all()?.to_scalar::<f64>())?
            } else {
                sum_squares_host(&g)?
            };
        }
    }
    let norm = total.sqrt();
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for p in params {
            if let Some(g) = p.grad() {
                p.set_grad(Some(g.mul_scalar(coef)?))?;
            }
        }
    }
    Ok(norm)
}

/// Σ g² in f64 of a CPU tensor, without converting it to an f64 copy first (f32 and f64 read in
/// place; the half types go through one conversion).
fn sum_squares_host(g: &Tensor) -> Result<f64> {
    use flamingo_kernels::cpu::reduce::sum_squares_f64;
    match g.dtype() {
        crate::DType::F32 => g.with_contiguous::<f32, _>("clip_grad_norm", sum_squares_f64),
        crate::DType::F64 => g.with_contiguous::<f64, _>("clip_grad_norm", sum_squares_f64),
        _ => Ok(sum_squares_f64(&g.to_vec::<f64>()?)),
    }
}

/// Unit-wise norms: one per output unit (row over the fan-in) for tensors of rank ≥ 2, one for
/// the whole tensor otherwise. Returned broadcastable to the tensor.
fn unitwise_norm(t: &Tensor) -> Result<Tensor> {
    if t.rank() <= 1 {
        return t.square()?.sum_all()?.sqrt()?.reshape(&vec![1; t.rank()]);
    }
    let axes: Vec<isize> = (1..t.rank() as isize).collect();
    t.square()?.sum(&axes, true)?.sqrt()
}

/// AGC: for each unit i, if ‖G_i‖ / max(‖W_i‖, eps) > λ, rescale G_i to λ·max(‖W_i‖, eps)/‖G_i‖·G_i
/// (‖G_i‖ floored at 1e-6). `params` are `(name, tensor)`; names for which `exempt` is true
/// (the final classifier) are left alone. `eps` is 1e-3 in the NFNet paper.
pub fn adaptive_clip(params: &[(String, Tensor)], lambda: f64, eps: f64, exempt: impl Fn(&str) -> bool) -> Result<()> {
    crate::no_grad(|| {
        for (name, p) in params {
            if exempt(name) {
                continue;
            }
            let Some(g) = p.grad() else { continue };
            let wn = unitwise_norm(&p.detach())?;
            let floor_w = Tensor::full(&[], eps, wn.dtype(), wn.device());
            let floor_g = Tensor::full(&[], 1e-6, wn.dtype(), wn.device());
            let max_norm = wn.maximum(&floor_w)?.mul_scalar(lambda)?;
            let gn = unitwise_norm(&g)?.maximum(&floor_g)?;
            let clipped = g.mul(&max_norm.div(&gn)?)?;
            let too_big = gn.gt(&max_norm)?;
            p.set_grad(Some(Tensor::where_cond(&too_big, &clipped, &g)?))?;
        }
        Ok(())
    })
}
