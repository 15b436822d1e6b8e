//! SwiGLU's gate `silu(a)·b` as one op, with a fused CPU kernel forward and backward.
use super::{float_only, needs, same_kind, via_f32, with_float_type};
use crate::{Error, Result, Tensor};
use flamingo_kernels::cpu::glu as k;

impl Tensor {
    /// `silu(self)·up` elementwise (the gate of LLaMA's SwiGLU feed-forward); both operands have
    /// one shape. On the CPU one fused kernel computes it in one pass and its backward in one
    /// more, with the same bits as `self.silu()?.mul(up)`; elsewhere it is that composition.
    ///
    /// ```
    /// # use flamingo_engine::Tensor;
    /// let a = Tensor::from_vec(vec![0.0f32, 1.0], &[2])?;
    /// let b = Tensor::from_vec(vec![5.0f32, 2.0], &[2])?;
    /// let y = a.swiglu(&b)?.to_vec::<f32>()?;
    /// assert_eq!(y[0], 0.0);
    /// assert!((y[1] - 2.0 / (1.0 + (-1.0f32).exp())).abs() < 1e-6);
    /// # Ok::<(), flamingo_engine::Error>(())
    /// ```
    pub fn swiglu(&self, up: &Tensor) -> Result<Tensor> {
        float_only("swiglu", self)?;
        same_kind("swiglu", self, up)?;
        if self.shape() != up.shape() {
            return Err(Error::shape_mismatch("swiglu", self.shape(), up.shape(), "gate and up projections must have one shape"));
        }
        if self.device() != crate::Device::Cpu {
            return self.silu()?.mul(up);
        }
        if let Some(r) = via_f32(&[self, up], |t| t[0].swiglu(&t[1]))? {
            return Ok(r);
        }
        with_float_type!("swiglu", self.dtype(), T => {
            let mut out = crate::pool::take::<T>(self.numel());
            self.with_contiguous::<T, _>("swiglu", |a| up.with_contiguous::<T, _>("swiglu", |b| k::swiglu(a, b, &mut out)))??;
            Ok(Tensor::op_result(out, self.shape(), "swiglu", &[self, up], |_| {
                Box::new(move |g: &Tensor, inp: &[Tensor]| {
                    let (a, b) = (&inp[0], &inp[1]);
                    let mut da = if needs(inp, 0) { Some(crate::pool::take::<T>(a.numel())) } else { None };
                    let mut db = if needs(inp, 1) { Some(crate::pool::take::<T>(b.numel())) } else { None };
                    a.with_contiguous::<T, _>("swiglu_backward", |av| b.with_contiguous::<T, _>("swiglu_backward", |bv| g.with_contiguous::<T, _>("swiglu_backward", |gv| {
                        k::swiglu_backward(av, bv, gv, da.as_deref_mut(), db.as_deref_mut())
                    })))???;
                    Ok(vec![da.map(|d| Tensor::from_vec(d, a.shape())).transpose()?, db.map(|d| Tensor::from_vec(d, b.shape())).transpose()?])
                })
            }))
        })
    }
}
