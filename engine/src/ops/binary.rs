//! Broadcasting binary ops (add, sub, mul, div, maximum, minimum), comparisons that make masks,
//! and `where_cond` / `masked_fill`.
use super::{needs, same_kind, via_f32, with_float_type};
use crate::layout::broadcast_shapes;
use crate::{FloatElement, Result, Tensor};
use flamingo_kernels::cpu::elementwise::{self, BinaryOp};
use flamingo_kernels::cpu::strided::Strided;

fn binary_kernel<T: FloatElement>(op: BinaryOp, a: &Tensor, b: &Tensor, shape: &[usize], name: &'static str) -> Result<Vec<T>> {
    let la = a.layout().broadcast_to(shape, name)?;
    let lb = b.layout().broadcast_to(shape, name)?;
    let mut out = crate::pool::take::<T>(shape.iter().product());
    a.with_strided::<T, _>(name, |da, _| {
        b.with_strided::<T, _>(name, |db, _| {
            elementwise::binary(
                op,
                Strided { data: da, offset: la.offset, strides: &la.strides },
                Strided { data: db, offset: lb.offset, strides: &lb.strides },
                shape,
                &mut out,
            )
        })
    })??;
    Ok(out)
}

/// Mask `f(a, b)` as 0/1 in the inputs' dtype, broadcast. Not differentiable.
#[allow(clippy::unnecessary_cast)] // `x as f64` is a no-op only in the f64 arm of `with_float_type!`
fn compare(a: &Tensor, b: &Tensor, name: &'static str, f: fn(f64, f64) -> bool) -> Result<Tensor> {
    same_kind(name, a, b)?;
    if a.device().is_cuda() {
        // Codes 6..9 of the CUDA binary kernel: gt, ge, lt, eq.
        let code = match name {
            "gt" => 6,
            "ge" => 7,
            "lt" => 8,
            _ => 9,
        };
        let shape = broadcast_shapes(name, a.shape(), b.shape())?;
        return super::cuda_tensor(crate::cuda::ops::binary(code, a, b, &shape, name)?, &shape);
    }
    if let Some(r) = via_f32(&[a, b], |t| compare(&t[0], &t[1], name, f))? {
        return Ok(r);
    }
    let shape = broadcast_shapes(name, a.shape(), b.shape())?;
    let la = a.layout().broadcast_to(&shape, name)?;
    let lb = b.layout().broadcast_to(&shape, name)?;
    with_float_type!(name, a.dtype(), T => {
        let mut out = crate::pool::take::<T>(shape.iter().product()); // every element written
        a.with_strided::<T, _>(name, |da, _| b.with_strided::<T, _>(name, |db, _| {
            elementwise::compare(
                Strided { data: da, offset: la.offset, strides: &la.strides },
                Strided { data: db, offset: lb.offset, strides: &lb.strides },
                &shape,
                &mut out,
                |x, y| f(x as f64, y as f64),
            )
        }))??;
        Tensor::from_vec(out, &shape)
    })
}

impl Tensor {
    fn binary(&self, rhs: &Tensor, op: BinaryOp, name: &'static str) -> Result<Tensor> {
        same_kind(name, self, rhs)?;
        super::float_only(name, self)?;
        if self.device().is_cuda() {
            let shape = broadcast_shapes(name, self.shape(), rhs.shape())?;
            let code = match op {
                BinaryOp::Add => 0,
                BinaryOp::Sub => 1,
                BinaryOp::Mul => 2,
                BinaryOp::Div => 3,
                BinaryOp::Max => 4,
                BinaryOp::Min => 5,
            };
            let st = crate::cuda::ops::binary(code, self, rhs, &shape, name)?;
            return Ok(Tensor::op_result_storage(crate::storage::Storage::Cuda(st), &shape, name, &[self, rhs], |_| binary_backward(op)));
        }
        if let Some(r) = via_f32(&[self, rhs], |t| t[0].binary(&t[1], op, name))? {
            return Ok(r);
        }
        let shape = broadcast_shapes(name, self.shape(), rhs.shape())?;
        with_float_type!(name, self.dtype(), T => {
            let data = binary_kernel::<T>(op, self, rhs, &shape, name)?;
            Ok(Tensor::op_result(data, &shape, name, &[self, rhs], |_| binary_backward(op)))
        })
    }

    /// `self + rhs` with broadcasting.
    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Add, "add")
    }
    /// `self − rhs` with broadcasting.
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Sub, "sub")
    }
    /// `self ⊙ rhs` with broadcasting.
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Mul, "mul")
    }
    /// `self / rhs` with broadcasting.
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Div, "div")
    }
    /// Elementwise maximum with broadcasting (ties split the gradient evenly, as PyTorch does).
    pub fn maximum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Max, "maximum")
    }
    /// Elementwise minimum with broadcasting (ties split the gradient evenly).
    pub fn minimum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Min, "minimum")
    }

    /// 1 where `self > rhs`, else 0 (same dtype; not differentiable).
    pub fn gt(&self, rhs: &Tensor) -> Result<Tensor> {
        compare(self, rhs, "gt", |a, b| a > b)
    }
    /// 1 where `self >= rhs`, else 0.
    pub fn ge(&self, rhs: &Tensor) -> Result<Tensor> {
        compare(self, rhs, "ge", |a, b| a >= b)
    }
    /// 1 where `self < rhs`, else 0.
    pub fn lt(&self, rhs: &Tensor) -> Result<Tensor> {
        compare(self, rhs, "lt", |a, b| a < b)
    }
    /// 1 where `self == rhs`, else 0.
    pub fn eq_mask(&self, rhs: &Tensor) -> Result<Tensor> {
        compare(self, rhs, "eq", |a, b| a == b)
    }

    /// `cond ? on_true : on_false` elementwise with broadcasting; `cond` is a 0/1 (nonzero = true)
    /// mask in the same dtype. Differentiable in both branches.
    pub fn where_cond(cond: &Tensor, on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
        const NAME: &str = "where_cond";
        same_kind(NAME, on_true, on_false)?;
        same_kind(NAME, cond, on_true)?;
        if on_true.device().is_cuda() {
            let shape = broadcast_shapes(NAME, &broadcast_shapes(NAME, cond.shape(), on_true.shape())?, on_false.shape())?;
            let st = crate::cuda::ops::select(cond, on_true, on_false, &shape)?;
            return Ok(Tensor::op_result_storage(crate::storage::Storage::Cuda(st), &shape, NAME, &[cond, on_true, on_false], |_| where_backward()));
        }
        if let Some(r) = via_f32(&[cond, on_true, on_false], |t| Tensor::where_cond(&t[0], &t[1], &t[2]))? {
            return Ok(r);
        }
        let shape = broadcast_shapes(NAME, &broadcast_shapes(NAME, cond.shape(), on_true.shape())?, on_false.shape())?;
        let (lc, la, lb) =
            (cond.layout().broadcast_to(&shape, NAME)?, on_true.layout().broadcast_to(&shape, NAME)?, on_false.layout().broadcast_to(&shape, NAME)?);
        with_float_type!(NAME, on_true.dtype(), T => {
            let mut out = crate::pool::take::<T>(shape.iter().product()); // every element written
            cond.with_strided::<T, _>(NAME, |dc, _| on_true.with_strided::<T, _>(NAME, |da, _| on_false.with_strided::<T, _>(NAME, |db, _| {
                elementwise::select(
                    Strided { data: dc, offset: lc.offset, strides: &lc.strides },
                    Strided { data: da, offset: la.offset, strides: &la.strides },
                    Strided { data: db, offset: lb.offset, strides: &lb.strides },
                    &shape,
                    &mut out,
                )
            })))???;
            Ok(Tensor::op_result(out, &shape, NAME, &[cond, on_true, on_false], |_| where_backward()))
        })
    }

    /// Replaces elements where `mask` is nonzero with `value` (e.g. −∞ for attention masks).
    pub fn masked_fill(&self, mask: &Tensor, value: f64) -> Result<Tensor> {
        let fill = Tensor::full(&[], value, self.dtype(), self.device());
        let mask = if mask.dtype() != self.dtype() { mask.to_dtype(self.dtype())? } else { mask.clone() };
        Tensor::where_cond(&mask, &fill, self)
    }
}

/// Gradients of `where_cond`: each branch gets `g` where it was chosen.
fn where_backward() -> crate::autograd::BackwardFn {
    Box::new(|g: &Tensor, inp: &[Tensor]| {
        let zero = g.zeros_like();
        let ga = if needs(inp, 1) { Some(Tensor::where_cond(&inp[0], g, &zero)?.sum_to(inp[1].shape())?) } else { None };
        let gb = if needs(inp, 2) { Some(Tensor::where_cond(&inp[0], &zero, g)?.sum_to(inp[2].shape())?) } else { None };
        Ok(vec![None, ga, gb])
    })
}

fn binary_backward(op: BinaryOp) -> crate::autograd::BackwardFn {
    Box::new(move |g: &Tensor, inp: &[Tensor]| {
        let (a, b) = (&inp[0], &inp[1]);
        let (ga, gb) = match op {
            BinaryOp::Add => (needs(inp, 0).then(|| g.clone()), needs(inp, 1).then(|| g.clone())),
            BinaryOp::Sub => (needs(inp, 0).then(|| g.clone()), if needs(inp, 1) { Some(g.neg()?) } else { None }),
            BinaryOp::Mul => (if needs(inp, 0) { Some(g.mul(b)?) } else { None }, if needs(inp, 1) { Some(g.mul(a)?) } else { None }),
            BinaryOp::Div => (if needs(inp, 0) { Some(g.div(b)?) } else { None }, if needs(inp, 1) { Some(g.mul(a)?.div(&b.square()?)?.neg()?) } else { None }),
            BinaryOp::Max | BinaryOp::Min => {
                let win = if op == BinaryOp::Max { a.gt(b)? } else { a.lt(b)? };
                let tie = a.eq_mask(b)?.affine(0.5, 0.0)?;
                let wa = win.add(&tie)?;
                let ga = if needs(inp, 0) { Some(g.mul(&wa)?) } else { None };
                let gb = if needs(inp, 1) { Some(g.mul(&wa.affine(-1.0, 1.0)?)?) } else { None };
                (ga, gb)
            }
        };
        let ga = match ga {
            Some(t) => Some(t.sum_to(a.shape())?),
            None => None,
        };
        let gb = match gb {
            Some(t) => Some(t.sum_to(b.shape())?),
            None => None,
        };
        Ok(vec![ga, gb])
    })
}
