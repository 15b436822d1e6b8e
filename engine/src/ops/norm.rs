//! Layer normalisation and RMS normalisation over the last axis, each with a fused forward and
//! backward kernel on the CPU.
use super::{float_only, needs, via_f32, with_float_type};
use crate::{Error, Result, Tensor};
use flamingo_kernels::cpu::norm as k;

impl Tensor {
    /// `(x − mean)/sqrt(var + eps) · weight + bias` over the last axis (biased variance, as
    /// PyTorch). `weight`/`bias` are `[n]` or absent.
    pub fn layer_norm(&self, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
        float_only("layer_norm", self)?;
        let n = *self.shape().last().ok_or_else(|| Error::shape("layer_norm", self.shape(), "needs at least 1 dimension"))?;
        for p in [weight, bias].into_iter().flatten() {
            if p.shape() != [n] {
                return Err(Error::shape_mismatch("layer_norm", self.shape(), p.shape(), format!("weight and bias must be [{n}]")));
            }
            super::same_kind("layer_norm", self, p)?;
        }
        let zero = Tensor::zeros(&[n], self.dtype(), self.device());
        let one = Tensor::ones(&[n], self.dtype(), self.device());
        let (w, b) = (weight.cloned().unwrap_or(one), bias.cloned().unwrap_or(zero));
        if let Some(r) = via_f32(&[self, &w, &b], |t| t[0].layer_norm(Some(&t[1]), Some(&t[2]), eps))? {
            return Ok(r);
        }
        let rows = self.numel() / n.max(1);
        if self.device().is_cuda() {
            let (y, mean, rstd) = crate::cuda::ops::layer_norm(self, &w, &b, n, eps)?;
            return Ok(Tensor::op_result_storage(crate::storage::Storage::Cuda(y), self.shape(), "layer_norm", &[self, &w, &b], |_| {
                Box::new(move |g: &Tensor, inp: &[Tensor]| {
                    let want_params = needs(inp, 1) || needs(inp, 2);
                    let (dx, params) = crate::cuda::ops::layer_norm_backward(&inp[0], g, &inp[1], &mean, &rstd, n, needs(inp, 0), want_params)?;
                    let (dw, db) = match params {
                        Some((dw, db)) => (needs(inp, 1).then_some(dw), needs(inp, 2).then_some(db)),
                        None => (None, None),
                    };
                    Ok(vec![
                        dx.map(|d| super::cuda_tensor(d, inp[0].shape())).transpose()?,
                        dw.map(|d| super::cuda_tensor(d, &[n])).transpose()?,
                        db.map(|d| super::cuda_tensor(d, &[n])).transpose()?,
                    ])
                })
            }));
        }
        with_float_type!("layer_norm", self.dtype(), T => {
            let mut out = crate::pool::take::<T>(self.numel());
            let mut mean = vec![T::zero(); rows];
            let mut rstd = vec![T::zero(); rows];
            self.with_contiguous::<T, _>("layer_norm", |x| w.with_contiguous::<T, _>("layer_norm", |ws| b.with_contiguous::<T, _>("layer_norm", |bs| {
                k::layer_norm_rows(x, n, Some(ws), Some(bs), eps, &mut out, &mut mean, &mut rstd)
            })))???;
            Ok(Tensor::op_result(out, self.shape(), "layer_norm", &[self, &w, &b], |_| {
                Box::new(move |g: &Tensor, inp: &[Tensor]| {
                    let (x, w) = (&inp[0], &inp[1]);
                    let want_params = needs(inp, 1) || needs(inp, 2);
                    let mut dx = if needs(inp, 0) { Some(crate::pool::take::<T>(x.numel())) } else { None };
                    let (dg, db) = x.with_contiguous::<T, _>("layer_norm_backward", |xs| g.with_contiguous::<T, _>("layer_norm_backward", |gs| w.with_contiguous::<T, _>("layer_norm_backward", |ws| {
                        k::layer_norm_rows_backward(xs, gs, n, Some(ws), &mean, &rstd, dx.as_deref_mut(), want_params)
                    })))???;
                    Ok(vec![
                        dx.map(|d| Tensor::from_vec(d, x.shape())).transpose()?,
                        if needs(inp, 1) { Some(Tensor::from_vec(dg, &[n])?) } else { None },
                        if needs(inp, 2) { Some(Tensor::from_vec(db, &[n])?) } else { None },
                    ])
                })
            }))
        })
    }

    /// RMS normalisation over the last axis (LLaMA's RMSNorm): `x / sqrt(mean(x²) + eps) · weight`,
    /// `weight` `[n]` or absent. On the CPU (f32, f64, and bf16/f16 via f32) one fused kernel
    /// computes it in one pass, and its backward in one more; elsewhere it is
    /// [`Tensor::rms_norm_reference`].
    ///
    /// ```
    /// # use flamingo_engine::Tensor;
    /// let x = Tensor::from_vec(vec![3.0f32, 4.0], &[1, 2])?;
    /// let y = x.rms_norm(None, 0.0)?.to_vec::<f32>()?; // rms = sqrt(12.5)
    /// assert!((y[0] - 3.0 / 12.5f32.sqrt()).abs() < 1e-6 && (y[1] - 4.0 / 12.5f32.sqrt()).abs() < 1e-6);
    /// # Ok::<(), flamingo_engine::Error>(())
    /// ```
    pub fn rms_norm(&self, weight: Option<&Tensor>, eps: f64) -> Result<Tensor> {
        float_only("rms_norm", self)?;
        let n = *self.shape().last().ok_or_else(|| Error::shape("rms_norm", self.shape(), "needs at least 1 dimension"))?;
        if let Some(w) = weight {
            if w.shape() != [n] {
                return Err(Error::shape_mismatch("rms_norm", self.shape(), w.shape(), format!("weight must be [{n}]")));
            }
            super::same_kind("rms_norm", self, w)?;
        }
        if self.device() != crate::Device::Cpu {
            return Tensor::rms_norm_reference(self, weight, eps);
        }
        let w = weight.cloned().unwrap_or_else(|| Tensor::ones(&[n], self.dtype(), self.device()));
        if let Some(r) = via_f32(&[self, &w], |t| t[0].rms_norm(Some(&t[1]), eps))? {
            return Ok(r);
        }
        let rows = self.numel() / n.max(1);
        with_float_type!("rms_norm", self.dtype(), T => {
            let mut out = crate::pool::take::<T>(self.numel());
            let mut rstd = vec![T::zero(); rows];
            self.with_contiguous::<T, _>("rms_norm", |x| w.with_contiguous::<T, _>("rms_norm", |ws| {
                k::rms_norm_rows(x, n, Some(ws), eps, &mut out, &mut rstd)
            }))??;
            Ok(Tensor::op_result(out, self.shape(), "rms_norm", &[self, &w], |_| {
                Box::new(move |g: &Tensor, inp: &[Tensor]| {
                    let (x, w) = (&inp[0], &inp[1]);
                    let mut dx = if needs(inp, 0) { Some(crate::pool::take::<T>(x.numel())) } else { None };
                    let dw = x.with_contiguous::<T, _>("rms_norm_backward", |xs| g.with_contiguous::<T, _>("rms_norm_backward", |gs| w.with_contiguous::<T, _>("rms_norm_backward", |ws| {
                        k::rms_norm_rows_backward(xs, gs, n, Some(ws), &rstd, dx.as_deref_mut(), needs(inp, 1))
                    })))???;
                    Ok(vec![
                        dx.map(|d| Tensor::from_vec(d, x.shape())).transpose()?,
                        if needs(inp, 1) { Some(Tensor::from_vec(dw, &[n])?) } else { None },
                    ])
                })
            }))
        })
    }

    /// [`Tensor::rms_norm`] composed of primitive ops (square, mean, rsqrt, products), on any
    /// device: the reference the fused kernel is tested against, and what HuggingFace's
    /// `LlamaRMSNorm` computes.
    pub fn rms_norm_reference(x: &Tensor, weight: Option<&Tensor>, eps: f64) -> Result<Tensor> {
        let r = x.square()?.mean(&[-1], true)?.add_scalar(eps)?.rsqrt()?;
        let y = x.mul(&r)?;
        match weight {
            Some(w) => y.mul(w),
            None => Ok(y),
        }
    }
}
