//! Losses and regularisers: fused softmax cross-entropy (ignore index, label smoothing),
//! L2 normalisation, seeded dropout.
use super::{float_only, via_f32, with_float_type};
use crate::{DType, Error, Result, Rng, Tensor};
use flamingo_kernels::cpu::loss as k;

impl Tensor {
    /// Mean cross-entropy of `self` (logits `[..., classes]`) against i64 `targets` (`[...]`),
    /// over the targets not equal to `ignore_index`; `label_smoothing` as in PyTorch. Fused: the
    /// probabilities are never stored. If every target is ignored the result is NaN (as PyTorch).
    #[allow(clippy::unnecessary_cast)] // `l as f64` is a no-op only in the f64 arm of `with_float_type!`
    pub fn cross_entropy(&self, targets: &Tensor, ignore_index: Option<i64>, label_smoothing: f64) -> Result<Tensor> {
        const NAME: &str = "cross_entropy";
        float_only(NAME, self)?;
        if self.rank() < 1 || targets.shape() != &self.shape()[..self.rank() - 1] {
            return Err(Error::shape_mismatch(NAME, self.shape(), targets.shape(), "targets must have the logits' shape without the class axis"));
        }
        if targets.dtype() != DType::I64 {
            return Err(Error::DTypeMismatch { op: NAME, lhs: DType::I64, rhs: targets.dtype() });
        }
        if !(0.0..=1.0).contains(&label_smoothing) {
            return Err(Error::Msg(format!("{NAME}: label_smoothing must be in [0, 1], got {label_smoothing}")));
        }
        if let Some(r) = via_f32(&[self], |t| t[0].cross_entropy(targets, ignore_index, label_smoothing))? {
            return Ok(r);
        }
        let v = *self.shape().last().unwrap();
        let tg: Vec<Option<usize>> = targets
            .to_vec::<i64>()?
            .into_iter()
            .map(|t| match t {
                t if Some(t) == ignore_index => Ok(None),
                t if t >= 0 && (t as usize) < v => Ok(Some(t as usize)),
                t => Err(Error::IndexOutOfRange { op: NAME, index: t, size: v }),
            })
            .collect::<Result<_>>()?;
        let count = tg.iter().filter(|t| t.is_some()).count();
        if self.device().is_cuda() {
            let (gpu, _) = crate::cuda::ops::parts(self, NAME)?;
            let flat: Vec<i64> = tg.iter().map(|t| t.map(|v| v as i64).unwrap_or(-1)).collect();
            let targets = crate::cuda::ops::upload_i64(&gpu, &flat)?;
            let (mean, lse) = crate::cuda::ops::cross_entropy(self, &targets, v, label_smoothing, count)?;
            return Ok(Tensor::op_result_storage(crate::storage::Storage::Cuda(mean), &[], NAME, &[self], |_| {
                Box::new(move |g: &Tensor, inp: &[Tensor]| {
                    let dx = crate::cuda::ops::cross_entropy_backward(&inp[0], &targets, &lse, g, v, label_smoothing, count)?;
                    Ok(vec![Some(super::cuda_tensor(dx, inp[0].shape())?)])
                })
            }));
        }
        with_float_type!(NAME, self.dtype(), T => {
            let (losses, lse) = self.with_contiguous::<T, _>(NAME, |x| k::cross_entropy_rows(x, v, &tg, label_smoothing))?;
            let total: f64 = losses.iter().map(|&l| l as f64).sum();
            let mean = (total / count as f64) as T;
            Ok(Tensor::op_result(vec![mean], &[], NAME, &[self], |_| {
                Box::new(move |g: &Tensor, inp: &[Tensor]| {
                    let gscale = g.to_scalar::<f64>()? / count as f64;
                    let scale = vec![gscale as T; tg.len()];
                    // Every element is written (ignored rows with zeros): a recycled buffer is safe.
                    let mut dx = crate::pool::take::<T>(inp[0].numel());
                    inp[0].with_contiguous::<T, _>(NAME, |x| k::cross_entropy_rows_backward(x, v, &tg, &lse, label_smoothing, &scale, &mut dx))?;
                    Ok(vec![Some(Tensor::from_vec(dx, inp[0].shape())?)])
                })
            }))
        })
    }

    /// `x / max(‖x‖₂, eps)` along `axis` (as `torch.nn.functional.normalize`).
    pub fn l2_normalize(&self, ax: isize, eps: f64) -> Result<Tensor> {
        let norm = self.square()?.sum(&[ax], true)?.sqrt()?;
        let floor = Tensor::full(&[], eps, self.dtype(), self.device());
        self.div(&norm.maximum(&floor)?)
    }

    /// Inverted dropout: zeroes each element with probability `p` and scales the rest by
    /// 1/(1−p). Identity when `train` is false or `p` is 0. The mask comes from `rng`.
    pub fn dropout(&self, p: f64, train: bool, rng: &mut Rng) -> Result<Tensor> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::Msg(format!("dropout: p must be in [0, 1), got {p}")));
        }
        if !train || p == 0.0 {
            return Ok(self.clone());
        }
        let keep = 1.0 / (1.0 - p);
        if let crate::Device::Cuda(o) = self.device() {
            // Counter-based mask on the GPU: one 64-bit seed drawn from `rng` per call.
            let seed = (rng.uniform() * 9_007_199_254_740_992.0) as u64;
            let gpu = crate::cuda::gpu(o)?;
            let mask = super::cuda_tensor(crate::cuda::ops::dropout_mask(&gpu, self.numel(), seed, p)?, self.shape())?.to_dtype(self.dtype())?;
            return self.mul(&mask);
        }
        let mask: Vec<f64> = (0..self.numel()).map(|_| if rng.uniform() < p { 0.0 } else { keep }).collect();
        let mask = Tensor::from_vec(mask, self.shape())?.to_dtype(self.dtype())?;
        self.mul(&mask)
    }
}
