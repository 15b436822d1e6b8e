//! Reductions over chosen axes: sum, mean, max (+argmax), var, logsumexp, and `sum_to`
//! (the adjoint of broadcasting).
use super::{float_only, via_f32, with_float_type};
use crate::layout::axis;
use crate::{Error, FloatElement, Result, Tensor};
use flamingo_kernels::cpu::reduce;

/// Sorted, de-duplicated, non-negative axes.
fn norm_axes(op: &'static str, axes: &[isize], rank: usize) -> Result<Vec<usize>> {
    let mut v = axes.iter().map(|&a| axis(op, a, rank)).collect::<Result<Vec<_>>>()?;
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

/// Views `t` as contiguous `[outer, n, inner]` with the reduced axes in the middle, copying only
/// when the reduced axes are not adjacent or `t` is not contiguous.
fn as_outer_n_inner(t: &Tensor, axes: &[usize]) -> Result<(Tensor, usize, usize, usize)> {
    let shape = t.shape();
    let adjacent = axes.windows(2).all(|w| w[1] == w[0] + 1);
    if adjacent && t.is_contiguous() {
        let (a0, a1) = (axes[0], axes[axes.len() - 1]);
        let outer = shape[..a0].iter().product();
        let n = shape[a0..=a1].iter().product();
        let inner = shape[a1 + 1..].iter().product();
        return Ok((t.clone(), outer, n, inner));
    }
    let kept: Vec<usize> = (0..shape.len()).filter(|d| !axes.contains(d)).collect();
    let perm: Vec<usize> = kept.iter().chain(axes.iter()).copied().collect();
    let p = t.detach().permute(&perm)?.contiguous()?;
    let outer = kept.iter().map(|&d| shape[d]).product();
    let n = axes.iter().map(|&d| shape[d]).product();
    Ok((p, outer, n, 1))
}

fn reduced_shape(shape: &[usize], axes: &[usize], keepdim: bool) -> Vec<usize> {
    let mut out = Vec::new();
    for (d, &s) in shape.iter().enumerate() {
        if axes.contains(&d) {
            if keepdim {
                out.push(1);
            }
        } else {
            out.push(s);
        }
    }
    out
}

fn sum_raw<T: FloatElement>(t: &Tensor, axes: &[usize]) -> Result<Vec<T>> {
    let (src, outer, n, inner) = as_outer_n_inner(t, axes)?;
    let mut out = crate::pool::take_zeroed::<T>(outer * inner);
    src.with_contiguous::<T, _>("sum", |x| reduce::sum_mid(x, outer, n, inner, &mut out))?;
    Ok(out)
}

impl Tensor {
    /// Sum over `axes` (negative counts from the end); `keepdim` keeps them with size 1.
    pub fn sum(&self, axes: &[isize], keepdim: bool) -> Result<Tensor> {
        float_only("sum", self)?;
        if let Some(r) = via_f32(&[self], |t| t[0].sum(axes, keepdim))? {
            return Ok(r);
        }
        let ax = norm_axes("sum", axes, self.rank())?;
        if ax.is_empty() || self.rank() == 0 {
            return Ok(self.clone());
        }
        let out_shape = reduced_shape(self.shape(), &ax, keepdim);
        let keep_shape = reduced_shape(self.shape(), &ax, true);
        let in_shape = self.shape().to_vec();
        if self.device().is_cuda() {
            let (src, outer, n, inner) = as_outer_n_inner(self, &ax)?;
            let st = crate::cuda::ops::sum_mid(&src, outer, n, inner)?;
            return Ok(Tensor::op_result_storage(crate::storage::Storage::Cuda(st), &out_shape, "sum", &[self], |_| {
                Box::new(move |g: &Tensor, _| Ok(vec![Some(g.reshape(&keep_shape)?.broadcast_as(&in_shape)?)]))
            }));
        }
        with_float_type!("sum", self.dtype(), T => {
            let data = sum_raw::<T>(self, &ax)?;
            Ok(Tensor::op_result(data, &out_shape, "sum", &[self], |_| {
                Box::new(move |g: &Tensor, _| Ok(vec![Some(g.reshape(&keep_shape)?.broadcast_as(&in_shape)?)]))
            }))
        })
    }

    /// Sum of all elements, as a 0-dimensional tensor.
    pub fn sum_all(&self) -> Result<Tensor> {
        let axes: Vec<isize> = (0..self.rank() as isize).collect();
        self.sum(&axes, false)
    }

    /// Mean over `axes`.
    pub fn mean(&self, axes: &[isize], keepdim: bool) -> Result<Tensor> {
        let ax = norm_axes("mean", axes, self.rank())?;
        let n: usize = ax.iter().map(|&d| self.shape()[d]).product();
        self.sum(axes, keepdim)?.mul_scalar(1.0 / n.max(1) as f64)
    }

    /// Mean of all elements, as a 0-dimensional tensor.
    pub fn mean_all(&self) -> Result<Tensor> {
        self.sum_all()?.mul_scalar(1.0 / self.numel().max(1) as f64)
    }

    /// Variance over `axes`; `unbiased` divides by n−1 instead of n.
    pub fn var(&self, axes: &[isize], keepdim: bool, unbiased: bool) -> Result<Tensor> {
        let ax = norm_axes("var", axes, self.rank())?;
        let n: usize = ax.iter().map(|&d| self.shape()[d]).product();
        let denom = if unbiased { n.saturating_sub(1) } else { n };
        let mu = self.mean(axes, true)?;
        self.sub(&mu)?.square()?.sum(axes, keepdim)?.mul_scalar(1.0 / denom.max(1) as f64)
    }

    /// log Σ exp over `axis`, stable (the max is subtracted first).
    pub fn logsumexp(&self, ax: isize, keepdim: bool) -> Result<Tensor> {
        let m = self.max(ax, true)?.detach();
        let s = self.sub(&m)?.exp()?.sum(&[ax], true)?.log()?.add(&m)?;
        if keepdim {
            Ok(s)
        } else {
            s.squeeze(ax)
        }
    }

    /// Maximum over one axis. The gradient goes to the first maximal element.
    pub fn max(&self, ax: isize, keepdim: bool) -> Result<Tensor> {
        Ok(self.max_with_argmax(ax, keepdim)?.0)
    }

    /// Index of the maximum over one axis, as an i64 tensor.
    pub fn argmax(&self, ax: isize, keepdim: bool) -> Result<Tensor> {
        Ok(self.max_with_argmax(ax, keepdim)?.1)
    }

    /// `(max, argmax)` over one axis.
    pub fn max_with_argmax(&self, ax: isize, keepdim: bool) -> Result<(Tensor, Tensor)> {
        float_only("max", self)?;
        if self.dtype().is_half() {
            let (m, a) = self.to_dtype(crate::DType::F32)?.max_with_argmax(ax, keepdim)?;
            return Ok((m.to_dtype(self.dtype())?, a));
        }
        let a = axis("max", ax, self.rank())?;
        if self.shape()[a] == 0 {
            return Err(Error::shape("max", self.shape(), format!("cannot take the max over empty axis {a}")));
        }
        let out_shape = reduced_shape(self.shape(), &[a], keepdim);
        let keep_shape = reduced_shape(self.shape(), &[a], true);
        let in_shape = self.shape().to_vec();
        let (src, outer, n, inner) = as_outer_n_inner(self, &[a])?;
        if self.device().is_cuda() {
            let (vals, arg) = crate::cuda::ops::max_mid(&src, outer, n, inner)?;
            let idx = super::cuda_tensor(arg, &out_shape)?;
            let idx_keep = idx.clone();
            let m = Tensor::op_result_storage(crate::storage::Storage::Cuda(vals), &out_shape, "max", &[self], |_| {
                Box::new(move |g: &Tensor, _| Ok(vec![Some(super::cuda_tensor(crate::cuda::ops::max_backward(g, &idx_keep, outer, n, inner)?, &in_shape)?)]))
            });
            return Ok((m, idx));
        }
        with_float_type!("max", self.dtype(), T => {
            let mut vals = crate::pool::take::<T>(outer * inner); // every element written
            let mut arg = vec![0usize; outer * inner];
            src.with_contiguous::<T, _>("max", |x| reduce::max_mid(x, outer, n, inner, &mut vals, &mut arg))?;
            let idx = Tensor::from_vec(arg.iter().map(|&i| i as i64).collect::<Vec<_>>(), &out_shape)?;
            let m = Tensor::op_result(vals, &out_shape, "max", &[self], |_| {
                Box::new(move |g: &Tensor, _| {
                    let g = g.reshape(&keep_shape)?.contiguous()?;
                    with_float_type!("max_backward", g.dtype(), U => {
                        let mut dx = vec![U::zero(); outer * n * inner];
                        g.with_contiguous::<U, _>("max_backward", |gs| {
                            for o in 0..outer {
                                for i in 0..inner {
                                    dx[(o * n + arg[o * inner + i]) * inner + i] = gs[o * inner + i];
                                }
                            }
                        })?;
                        Ok(vec![Some(Tensor::from_vec(dx, &in_shape)?)])
                    })
                })
            });
            Ok((m, idx))
        })
    }

    /// Sums broadcast axes away so the result has `shape` (the adjoint of `broadcast_as`).
    pub fn sum_to(&self, shape: &[usize]) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        if shape.len() > self.rank() {
            return Err(Error::shape_mismatch("sum_to", self.shape(), shape, "target has more dimensions"));
        }
        let lead = self.rank() - shape.len();
        let mut axes: Vec<isize> = (0..lead as isize).collect();
        for (i, &s) in shape.iter().enumerate() {
            let have = self.shape()[lead + i];
            if s == 1 && have != 1 {
                axes.push((lead + i) as isize);
            } else if s != have {
                return Err(Error::shape_mismatch("sum_to", self.shape(), shape, format!("dimension {i} cannot reduce from {have} to {s}")));
            }
        }
        self.sum(&axes, true)?.reshape(shape)
    }
}
