//! Differentiable ops. Each file holds the forward and the backward of one family.
//!
//! bf16/f16 tensors are computed in f32: each op converts its inputs up, runs, and converts the
//! result back (the conversions are themselves differentiable).
pub mod binary;
pub mod causal_attention;
pub mod concat;
pub mod conv;
pub mod fused;
pub mod glu;
pub mod index;
pub mod linear_parts;
pub mod loss;
pub mod matmul;
pub mod norm;
pub mod reduce;
pub mod softmax;
pub mod unary;
pub mod view;

use crate::{DType, Error, Result, Tensor};

/// Wraps new CUDA storage as an unrecorded tensor of `shape`.
pub(crate) fn cuda_tensor(s: crate::cuda::CudaStorage, shape: &[usize]) -> Result<Tensor> {
    Tensor::from_storage(crate::storage::Storage::Cuda(s), shape)
}

/// Traits whose methods kernels-typed code inside `with_float_type!` needs.
pub(crate) mod scalar_traits {
    pub use flamingo_kernels::cpu::Float as _;
    pub use num_traits::Zero as _;
}

/// Runs `$body` with `$T` bound to the Rust type of a float dtype (f32 or f64).
macro_rules! with_float_type {
    ($op:expr, $dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::DType::F32 => {
                #[allow(unused_imports)]
                use $crate::ops::scalar_traits::*;
                type $T = f32;
                $body
            }
            $crate::DType::F64 => {
                #[allow(unused_imports)]
                use $crate::ops::scalar_traits::*;
                type $T = f64;
                $body
            }
            d => return Err($crate::Error::UnsupportedDType { op: $op, dtype: d }),
        }
    };
}
pub(crate) use with_float_type;

/// If any input is bf16/f16, runs `f` on f32 copies and converts the result back.
pub(crate) fn via_f32(inputs: &[&Tensor], f: impl FnOnce(&[Tensor]) -> Result<Tensor>) -> Result<Option<Tensor>> {
    let Some(half) = inputs.iter().map(|t| t.dtype()).find(|d| d.is_half()) else { return Ok(None) };
    let up: Vec<Tensor> = inputs.iter().map(|t| if t.dtype().is_half() { t.to_dtype(DType::F32) } else { Ok((*t).clone()) }).collect::<Result<_>>()?;
    Ok(Some(f(&up)?.to_dtype(half)?))
}

/// Errors unless both tensors share dtype and device.
pub(crate) fn same_kind(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dtype() != b.dtype() {
        return Err(Error::DTypeMismatch { op, lhs: a.dtype(), rhs: b.dtype() });
    }
    if a.device() != b.device() {
        return Err(Error::DeviceMismatch { op, lhs: a.device(), rhs: b.device() });
    }
    Ok(())
}

/// Errors unless the tensor has a float dtype.
pub(crate) fn float_only(op: &'static str, t: &Tensor) -> Result<()> {
    if !t.dtype().is_float() {
        return Err(Error::UnsupportedDType { op, dtype: t.dtype() });
    }
    Ok(())
}

/// Only the gradients of inputs that require grad are computed.
#[inline]
pub(crate) fn needs(inputs: &[Tensor], i: usize) -> bool {
    inputs[i].requires_grad()
}
