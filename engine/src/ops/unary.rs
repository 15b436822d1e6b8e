//! Unary elementwise ops with closed-form derivatives (exp, log, tanh, GELU, …) and scalar forms.
use super::{float_only, via_f32, with_float_type};
use crate::{FloatElement, Result, Tensor};
use flamingo_kernels::cpu::elementwise::{self, UnaryOp};

fn unary_backward_raw<T: FloatElement>(op: UnaryOp, x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Tensor> {
    let mut dx = crate::pool::take::<T>(x.numel());
    x.with_contiguous::<T, _>("unary_backward", |xs| {
        y.with_contiguous::<T, _>("unary_backward", |ys| g.with_contiguous::<T, _>("unary_backward", |gs| elementwise::unary_backward(op, xs, ys, gs, &mut dx)))
    })???;
    Tensor::from_vec(dx, x.shape())
}

impl Tensor {
    /// Applies a unary op elementwise (recording its derivative).
    pub fn unary(&self, op: UnaryOp) -> Result<Tensor> {
        let name = "unary";
        float_only(name, self)?;
        if self.device().is_cuda() {
            let st = crate::cuda::ops::unary(op, self)?;
            return Ok(Tensor::op_result_storage(crate::storage::Storage::Cuda(st), self.shape(), name, &[self], |y| {
                let y = y.clone();
                Box::new(move |g: &Tensor, inp: &[Tensor]| {
                    Ok(vec![Some(super::cuda_tensor(crate::cuda::ops::unary_backward(op, &inp[0], &y, g)?, inp[0].shape())?)])
                })
            }));
        }
        if let Some(r) = via_f32(&[self], |t| t[0].unary(op))? {
            return Ok(r);
        }
        with_float_type!(name, self.dtype(), T => {
            let mut out = crate::pool::take::<T>(self.numel());
            self.with_contiguous::<T, _>(name, |xs| elementwise::unary(op, xs, &mut out))?;
            Ok(Tensor::op_result(out, self.shape(), name, &[self], |y| {
                let y = y.clone();
                Box::new(move |g: &Tensor, inp: &[Tensor]| {
                    let g = g.contiguous()?;
                    with_float_type!(name, g.dtype(), U => Ok(vec![Some(unary_backward_raw::<U>(op, &inp[0], &y, &g)?)]))
                })
            }))
        })
    }

    pub fn neg(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Neg)
    }
    pub fn exp(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Exp)
    }
    pub fn log(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Log)
    }
    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sqrt)
    }
    pub fn rsqrt(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Rsqrt)
    }
    pub fn tanh(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Tanh)
    }
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sigmoid)
    }
    pub fn relu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Relu)
    }
    /// Exact GELU, x·Φ(x).
    pub fn gelu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Gelu)
    }
    /// GELU with the tanh approximation.
    pub fn gelu_tanh(&self) -> Result<Tensor> {
        self.unary(UnaryOp::GeluTanh)
    }
    pub fn silu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Silu)
    }
    pub fn square(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Square)
    }
    pub fn abs(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Abs)
    }
    /// `x^p` for a scalar exponent.
    pub fn powf(&self, p: f64) -> Result<Tensor> {
        self.unary(UnaryOp::Powf(p))
    }
    /// `a·x + b` for scalars.
    pub fn affine(&self, a: f64, b: f64) -> Result<Tensor> {
        self.unary(UnaryOp::Affine(a, b))
    }
    pub fn add_scalar(&self, v: f64) -> Result<Tensor> {
        self.affine(1.0, v)
    }
    pub fn mul_scalar(&self, v: f64) -> Result<Tensor> {
        self.affine(v, 0.0)
    }
}
