//! 2-D convolution (NCHW, groups, strides, per-side zero padding) and average pooling.
use super::{float_only, needs, same_kind, via_f32, with_float_type};
use crate::{Error, Result, Tensor};
use flamingo_kernels::cpu::{conv as k, pool};

/// Stride, per-side zero padding and groups of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvParams {
    pub stride: (usize, usize),
    /// Zero padding (top, bottom, left, right).
    pub padding: (usize, usize, usize, usize),
    pub groups: usize,
}

impl Default for ConvParams {
    fn default() -> Self {
        ConvParams { stride: (1, 1), padding: (0, 0, 0, 0), groups: 1 }
    }
}

impl ConvParams {
    /// Square stride `s`, symmetric padding `p`, one group.
    pub fn new(stride: usize, padding: usize) -> ConvParams {
        ConvParams { stride: (stride, stride), padding: (padding, padding, padding, padding), groups: 1 }
    }
    pub fn with_groups(mut self, groups: usize) -> ConvParams {
        self.groups = groups;
        self
    }
    /// TensorFlow/DeepMind "SAME" padding for an `h×w` input, `kh×kw` kernel and `stride`:
    /// output ⌈in/stride⌉, extra padding goes after (bottom/right).
    pub fn tf_same(h: usize, w: usize, kh: usize, kw: usize, stride: usize) -> ConvParams {
        let pad = |n: usize, k: usize| {
            let out = n.div_ceil(stride);
            let total = ((out - 1) * stride + k).saturating_sub(n);
            (total / 2, total - total / 2)
        };
        let ((t, b), (l, r)) = (pad(h, kh), pad(w, kw));
        ConvParams { stride: (stride, stride), padding: (t, b, l, r), groups: 1 }
    }
}

impl Tensor {
    /// Convolution of `self [n, c, h, w]` with `weight [o, c/groups, kh, kw]` (+ `bias [o]`),
    /// giving `[n, o, ho, wo]`.
    pub fn conv2d(&self, weight: &Tensor, bias: Option<&Tensor>, p: &ConvParams) -> Result<Tensor> {
        const NAME: &str = "conv2d";
        float_only(NAME, self)?;
        same_kind(NAME, self, weight)?;
        if self.rank() != 4 || weight.rank() != 4 {
            return Err(Error::shape_mismatch(NAME, self.shape(), weight.shape(), "expected input [n, c, h, w] and weight [o, c/groups, kh, kw]"));
        }
        let (s, w) = (self.shape(), weight.shape());
        let g = p.groups.max(1);
        if s[1] % g != 0 || w[0] % g != 0 || w[1] * g != s[1] {
            return Err(Error::shape_mismatch(NAME, s, w, format!("channels do not match with groups = {g}")));
        }
        if let Some(b) = bias {
            if b.shape() != [w[0]] {
                return Err(Error::shape_mismatch(NAME, w, b.shape(), "bias must be [out_channels]"));
            }
        }
        let geo = k::ConvGeom { n: s[0], c: s[1], h: s[2], w: s[3], o: w[0], kh: w[2], kw: w[3], stride: p.stride, pad: p.padding, groups: g };
        if geo.h + geo.pad.0 + geo.pad.1 < geo.kh || geo.w + geo.pad.2 + geo.pad.3 < geo.kw || p.stride.0 == 0 || p.stride.1 == 0 {
            return Err(Error::shape_mismatch(NAME, s, w, "kernel larger than the padded input, or zero stride"));
        }
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        if let Some(r) = via_f32(&inputs, |t| t[0].conv2d(&t[1], t.get(2), p))? {
            return Ok(r);
        }
        let out_shape = [geo.n, geo.o, geo.ho(), geo.wo()];
        let has_bias = bias.is_some();
        if self.device().is_cuda() {
            let algo = crate::cuda::conv_algo();
            let st = crate::cuda::ops::conv2d(self, weight, bias, &geo, algo)?;
            return Ok(Tensor::op_result_storage(crate::storage::Storage::Cuda(st), &out_shape, NAME, &inputs, |_| {
                Box::new(move |g: &Tensor, inp: &[Tensor]| {
                    let g = g.contiguous()?;
                    let (x, w) = (&inp[0], &inp[1]);
                    let dx =
                        if needs(inp, 0) { Some(super::cuda_tensor(crate::cuda::ops::conv2d_backward_input(&g, w, &geo, algo)?, x.shape())?) } else { None };
                    let dw =
                        if needs(inp, 1) { Some(super::cuda_tensor(crate::cuda::ops::conv2d_backward_weight(x, &g, &geo, algo)?, w.shape())?) } else { None };
                    let mut grads = vec![dx, dw];
                    if has_bias {
                        grads.push(if needs(inp, 2) { Some(g.sum(&[0, 2, 3], false)?) } else { None });
                    }
                    Ok(grads)
                })
            }));
        }
        with_float_type!(NAME, self.dtype(), T => {
            let mut out = crate::pool::take::<T>(out_shape.iter().product());
            self.with_contiguous::<T, _>(NAME, |xs| weight.with_contiguous::<T, _>(NAME, |ws| match bias {
                Some(b) => b.with_contiguous::<T, _>(NAME, |bs| k::conv2d(xs, ws, Some(bs), &geo, &mut out)),
                None => {
                    k::conv2d(xs, ws, None, &geo, &mut out);
                    Ok(())
                }
            }))???;
            Ok(Tensor::op_result(out, &out_shape, NAME, &inputs, |_| {
                Box::new(move |g: &Tensor, inp: &[Tensor]| {
                    // One contiguous copy of the gradient for both products (it is often a
                    // broadcast, e.g. the gradient of a sum).
                    let g = &g.contiguous()?;
                    let (x, w) = (&inp[0], &inp[1]);
                    let dx = if needs(inp, 0) {
                        let mut dx = crate::pool::take::<T>(x.numel());
                        g.with_contiguous::<T, _>(NAME, |gs| w.with_contiguous::<T, _>(NAME, |ws| k::conv2d_backward_input(gs, ws, &geo, &mut dx)))??;
                        Some(Tensor::from_vec(dx, x.shape())?)
                    } else {
                        None
                    };
                    let want_b = has_bias && needs(inp, 2);
                    let (dw, db) = if needs(inp, 1) || want_b {
                        let (dw, db) = x.with_contiguous::<T, _>(NAME, |xs| g.with_contiguous::<T, _>(NAME, |gs| k::conv2d_backward_weight(xs, gs, &geo, want_b)))??;
                        (needs(inp, 1).then(|| Tensor::from_vec(dw, w.shape())).transpose()?, want_b.then(|| Tensor::from_vec(db, &[geo.o])).transpose()?)
                    } else {
                        (None, None)
                    };
                    let mut grads = vec![dx, dw];
                    if has_bias {
                        grads.push(db);
                    }
                    Ok(grads)
                })
            }))
        })
    }

    /// Average pooling of `[n, c, h, w]` with window `k` and `stride` (no padding).
    pub fn avg_pool2d(&self, kernel: (usize, usize), stride: (usize, usize)) -> Result<Tensor> {
        const NAME: &str = "avg_pool2d";
        float_only(NAME, self)?;
        if self.rank() != 4 {
            return Err(Error::shape(NAME, self.shape(), "expected [n, c, h, w]"));
        }
        let s = self.shape().to_vec();
        if s[2] < kernel.0 || s[3] < kernel.1 || stride.0 == 0 || stride.1 == 0 || kernel.0 == 0 || kernel.1 == 0 {
            return Err(Error::shape(NAME, &s, format!("window {kernel:?} with stride {stride:?} does not fit")));
        }
        if let Some(r) = via_f32(&[self], |t| t[0].avg_pool2d(kernel, stride))? {
            return Ok(r);
        }
        let (ho, wo) = (pool::out_size(s[2], kernel.0, stride.0), pool::out_size(s[3], kernel.1, stride.1));
        let planes = s[0] * s[1];
        if self.device().is_cuda() {
            let st = crate::cuda::ops::avg_pool2d(self, planes, s[2], s[3], kernel, stride, ho, wo, false)?;
            return Ok(Tensor::op_result_storage(crate::storage::Storage::Cuda(st), &[s[0], s[1], ho, wo], NAME, &[self], |_| {
                Box::new(move |g: &Tensor, _| {
                    Ok(vec![Some(super::cuda_tensor(crate::cuda::ops::avg_pool2d(g, planes, s[2], s[3], kernel, stride, ho, wo, true)?, &s)?)])
                })
            }));
        }
        with_float_type!(NAME, self.dtype(), T => {
            let mut out = crate::pool::take::<T>(planes * ho * wo); // every element written
            self.with_contiguous::<T, _>(NAME, |xs| pool::avg_pool2d(xs, planes, s[2], s[3], kernel, stride, &mut out))?;
            Ok(Tensor::op_result(out, &[s[0], s[1], ho, wo], NAME, &[self], |_| {
                Box::new(move |g: &Tensor, _| {
                    let mut dx = crate::pool::take_zeroed::<T>(planes * s[2] * s[3]);
                    g.with_contiguous::<T, _>(NAME, |gs| pool::avg_pool2d_backward(gs, planes, s[2], s[3], kernel, stride, &mut dx))?;
                    Ok(vec![Some(Tensor::from_vec(dx, &s)?)])
                })
            }))
        })
    }

    /// Mean over the two spatial axes of `[n, c, h, w]`, giving `[n, c]`.
    pub fn mean_spatial(&self) -> Result<Tensor> {
        if self.rank() != 4 {
            return Err(Error::shape("mean_spatial", self.shape(), "expected [n, c, h, w]"));
        }
        self.mean(&[2, 3], false)
    }
}
