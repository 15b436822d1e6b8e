//! Joining and splitting: concat, stack, split, chunk, and constant padding (per-side amounts).
use super::{float_only, via_f32, with_float_type};
use crate::layout::{axis, contiguous_strides};
use crate::{Error, FloatElement, Result, Tensor};
use flamingo_kernels::cpu::strided::copy_into_strided;

fn write_into<T: FloatElement>(dst: &mut [T], dst_shape: &[usize], src: &Tensor, starts: &[usize]) -> Result<()> {
    let strides = contiguous_strides(dst_shape);
    let offset: usize = starts.iter().zip(&strides).map(|(s, st)| s * st).sum();
    src.with_contiguous::<T, _>("copy", |s| copy_into_strided(s, src.shape(), dst, offset, &strides))
}

/// Each input's gradient is its slice of `g` along axis `a`.
fn concat_backward(a: usize, sizes: Vec<usize>) -> crate::autograd::BackwardFn {
    Box::new(move |g: &Tensor, inp: &[Tensor]| {
        let mut start = 0;
        let mut grads = Vec::with_capacity(sizes.len());
        for (i, &s) in sizes.iter().enumerate() {
            grads.push(if inp[i].requires_grad() { Some(g.narrow(a as isize, start, s)?) } else { None });
            start += s;
        }
        Ok(grads)
    })
}

/// The input's gradient is the un-padded window of `g`.
fn pad_backward(starts: Vec<usize>, in_shape: Vec<usize>) -> crate::autograd::BackwardFn {
    Box::new(move |g: &Tensor, _| {
        let mut t = g.clone();
        for (d, (&s, &n)) in starts.iter().zip(&in_shape).enumerate() {
            if s != 0 || n != t.shape()[d] {
                t = t.narrow(d as isize, s, n)?;
            }
        }
        Ok(vec![Some(t)])
    })
}

impl Tensor {
    /// Joins tensors along `axis`; all other dimensions must agree.
    pub fn concat(tensors: &[&Tensor], ax: isize) -> Result<Tensor> {
        let first = *tensors.first().ok_or_else(|| Error::Msg("concat: no tensors given".into()))?;
        float_only("concat", first)?;
        let a = axis("concat", ax, first.rank())?;
        for t in &tensors[1..] {
            super::same_kind("concat", first, t)?;
            let ok = t.rank() == first.rank() && (0..first.rank()).all(|d| d == a || t.shape()[d] == first.shape()[d]);
            if !ok {
                return Err(Error::shape_mismatch("concat", first.shape(), t.shape(), format!("all dimensions but axis {a} must match")));
            }
        }
        if let Some(r) = via_f32(tensors, |t| Tensor::concat(&t.iter().collect::<Vec<_>>(), ax))? {
            return Ok(r);
        }
        let sizes: Vec<usize> = tensors.iter().map(|t| t.shape()[a]).collect();
        let mut out_shape = first.shape().to_vec();
        out_shape[a] = sizes.iter().sum();
        if first.device().is_cuda() {
            let out = Tensor::try_full(&out_shape, 0.0, first.dtype(), first.device())?;
            let mut start = 0;
            for t in tensors {
                crate::cuda::ops::copy_into(&out.narrow(a as isize, start, t.shape()[a])?, t)?;
                start += t.shape()[a];
            }
            return Ok(Tensor::op_result_tensor(&out, "concat", tensors, |_| concat_backward(a, sizes)));
        }
        with_float_type!("concat", first.dtype(), T => {
            let mut out = crate::pool::take::<T>(out_shape.iter().product()); // the inputs tile it
            let mut start = 0;
            for t in tensors {
                let mut starts = vec![0; out_shape.len()];
                starts[a] = start;
                write_into::<T>(&mut out, &out_shape, t, &starts)?;
                start += t.shape()[a];
            }
            Ok(Tensor::op_result(out, &out_shape, "concat", tensors, |_| concat_backward(a, sizes)))
        })
    }

    /// Stacks equally-shaped tensors along a new axis.
    pub fn stack(tensors: &[&Tensor], ax: isize) -> Result<Tensor> {
        let first = *tensors.first().ok_or_else(|| Error::Msg("stack: no tensors given".into()))?;
        let a = axis("stack", ax, first.rank() + 1)? as isize;
        let parts = tensors.iter().map(|t| {
            if t.shape() != first.shape() {
                return Err(Error::shape_mismatch("stack", first.shape(), t.shape(), "all tensors must have the same shape"));
            }
            t.unsqueeze(a)
        });
        let parts = parts.collect::<Result<Vec<_>>>()?;
        Tensor::concat(&parts.iter().collect::<Vec<_>>(), a)
    }

    /// Splits along `axis` into pieces of the given sizes (views).
    pub fn split(&self, sizes: &[usize], ax: isize) -> Result<Vec<Tensor>> {
        let a = axis("split", ax, self.rank())?;
        if sizes.iter().sum::<usize>() != self.shape()[a] {
            return Err(Error::shape("split", self.shape(), format!("sizes {sizes:?} do not add up to axis {a}")));
        }
        let mut start = 0;
        sizes
            .iter()
            .map(|&s| {
                let t = self.narrow(a as isize, start, s);
                start += s;
                t
            })
            .collect()
    }

    /// Splits along `axis` into `n` nearly equal pieces (the last may be smaller), as PyTorch.
    pub fn chunk(&self, n: usize, ax: isize) -> Result<Vec<Tensor>> {
        let a = axis("chunk", ax, self.rank())?;
        if n == 0 {
            return Err(Error::Msg("chunk: number of chunks must be positive".into()));
        }
        let size = self.shape()[a];
        let each = size.div_ceil(n).max(1);
        let mut sizes = Vec::new();
        let mut left = size;
        while left > 0 {
            sizes.push(each.min(left));
            left -= each.min(left);
        }
        self.split(&sizes, ax)
    }

    /// Constant padding of the last `pads.len()` axes: `pads[i] = (before, after)` for axis
    /// `rank − pads.len() + i`. TensorFlow "SAME" convolutions need unequal before/after.
    pub fn pad(&self, pads: &[(usize, usize)], value: f64) -> Result<Tensor> {
        float_only("pad", self)?;
        if pads.len() > self.rank() {
            return Err(Error::shape("pad", self.shape(), format!("{} padding pairs for {} axes", pads.len(), self.rank())));
        }
        if let Some(r) = via_f32(&[self], |t| t[0].pad(pads, value))? {
            return Ok(r);
        }
        let lead = self.rank() - pads.len();
        let mut out_shape = self.shape().to_vec();
        let mut starts = vec![0; self.rank()];
        for (i, &(b, e)) in pads.iter().enumerate() {
            out_shape[lead + i] += b + e;
            starts[lead + i] = b;
        }
        let in_shape = self.shape().to_vec();
        if self.device().is_cuda() {
            let out = Tensor::try_full(&out_shape, value, self.dtype(), self.device())?;
            let mut window = out.clone();
            for (d, (&s, &n)) in starts.iter().zip(&in_shape).enumerate() {
                window = window.narrow(d as isize, s, n)?;
            }
            crate::cuda::ops::copy_into(&window, self)?;
            return Ok(Tensor::op_result_tensor(&out, "pad", &[self], |_| pad_backward(starts, in_shape)));
        }
        with_float_type!("pad", self.dtype(), T => {
            let mut out = crate::pool::take_filled::<T>(out_shape.iter().product(), T::from_f64(value));
            write_into::<T>(&mut out, &out_shape, self, &starts)?;
            Ok(Tensor::op_result(out, &out_shape, "pad", &[self], |_| pad_backward(starts, in_shape)))
        })
    }
}
