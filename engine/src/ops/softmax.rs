//! Softmax and log-softmax over an axis (a fused row kernel over the last axis; other axes are
//! transposed there first).
use super::{float_only, via_f32, with_float_type};
use crate::layout::axis;
use crate::{FloatElement, Result, Tensor};
use flamingo_kernels::cpu::softmax as k;

fn backward_raw<T: FloatElement>(y: &Tensor, g: &Tensor, log: bool) -> Result<Tensor> {
    let n = *y.shape().last().unwrap_or(&1);
    let mut dx = crate::pool::take::<T>(y.numel());
    y.with_contiguous::<T, _>("softmax_backward", |ys| g.with_contiguous::<T, _>("softmax_backward", |gs| k::softmax_rows_backward(ys, gs, n, log, &mut dx)))??;
    Tensor::from_vec(dx, y.shape())
}

impl Tensor {
    fn softmax_last(&self, log: bool) -> Result<Tensor> {
        let name = if log { "log_softmax" } else { "softmax" };
        float_only(name, self)?;
        if let Some(r) = via_f32(&[self], |t| t[0].softmax_last(log))? {
            return Ok(r);
        }
        let n = *self.shape().last().unwrap_or(&1);
        if self.device().is_cuda() {
            let st = crate::cuda::ops::softmax_rows(self, n, log)?;
            return Ok(Tensor::op_result_storage(crate::storage::Storage::Cuda(st), self.shape(), name, &[self], |y| {
                let y = y.clone();
                Box::new(move |g: &Tensor, _| Ok(vec![Some(super::cuda_tensor(crate::cuda::ops::softmax_rows_backward(&y, g, n, log)?, y.shape())?)]))
            }));
        }
        with_float_type!(name, self.dtype(), T => {
            let mut out = crate::pool::take::<T>(self.numel());
            if n > 0 {
                self.with_contiguous::<T, _>(name, |x| k::softmax_rows(x, n, log, &mut out))?;
            }
            Ok(Tensor::op_result(out, self.shape(), name, &[self], |y| {
                let y = y.clone();
                Box::new(move |g: &Tensor, _| {
                    with_float_type!(name, g.dtype(), U => Ok(vec![Some(backward_raw::<U>(&y, g, log)?)]))
                })
            }))
        })
    }

    fn softmax_axis(&self, ax: isize, log: bool) -> Result<Tensor> {
        let a = axis(if log { "log_softmax" } else { "softmax" }, ax, self.rank().max(1))?;
        if self.rank() == 0 {
            return self.reshape(&[1])?.softmax_last(log)?.reshape(&[]);
        }
        if a + 1 == self.rank() {
            self.softmax_last(log)
        } else {
            self.transpose(a as isize, -1)?.softmax_last(log)?.transpose(a as isize, -1)
        }
    }

    /// Softmax over `axis`. Entries at −∞ get exactly 0.
    pub fn softmax(&self, ax: isize) -> Result<Tensor> {
        self.softmax_axis(ax, false)
    }

    /// Log-softmax over `axis`.
    pub fn log_softmax(&self, ax: isize) -> Result<Tensor> {
        self.softmax_axis(ax, true)
    }
}
