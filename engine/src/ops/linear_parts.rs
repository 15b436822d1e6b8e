//! A linear map onto a weight given as row blocks (e.g. a frozen vocabulary table and a few
//! trainable new-token rows), without forming their concatenation, and with weight gradients
//! only for the blocks that require them.
use super::{needs, same_kind, via_f32, with_float_type};
use crate::{Error, Result, Tensor};
use flamingo_kernels::cpu::gemm::{gemm_raw, MatRef};

impl Tensor {
    /// `x [..., in] · concat(parts, 0)ᵀ → [..., Σ out_i]` for `parts[i]` of shape `[out_i, in]`:
    /// the same values as `x.linear(&Tensor::concat(parts, 0)?, None)`.
    ///
    /// On the CPU each block's product is written straight into its columns of the output, and
    /// the backward forms `d parts[i]` only for blocks that require grad. Flamingo's output head
    /// is the case in point: the LM's frozen `[vocab, d]` table plus two trainable rows. Through
    /// a concatenation, the backward computed the whole `[vocab + 2, d]` table gradient (a
    /// `8194 × 512 × 2048` product per `small` training step) to keep two of its rows. Elsewhere
    /// (CUDA) this is the concatenation and `linear`.
    ///
    /// ```
    /// # use flamingo_engine::Tensor;
    /// let x = Tensor::from_vec(vec![1.0f32, 2.0], &[1, 2])?;
    /// let frozen = Tensor::from_vec(vec![1.0f32, 0.0, 0.0, 1.0], &[2, 2])?;
    /// let extra = Tensor::from_vec(vec![1.0f32, 1.0], &[1, 2])?.requires_grad_(true);
    /// let y = x.linear_parts(&[&frozen, &extra])?;
    /// assert_eq!(y.to_vec::<f32>()?, vec![1.0, 2.0, 3.0]);
    /// y.sum_all()?.backward()?;
    /// assert_eq!(extra.grad().unwrap().to_vec::<f32>()?, vec![1.0, 2.0]);
    /// # Ok::<(), flamingo_engine::Error>(())
    /// ```
    pub fn linear_parts(&self, parts: &[&Tensor]) -> Result<Tensor> {
        let d = *self.shape().last().ok_or_else(|| Error::shape("linear_parts", self.shape(), "x needs at least 1 dimension"))?;
        if parts.is_empty() {
            return Err(Error::Msg("linear_parts: needs at least one weight block".into()));
        }
        for w in parts {
            if w.rank() != 2 || w.shape()[1] != d {
                return Err(Error::shape_mismatch("linear_parts", self.shape(), w.shape(), format!("expected x [..., {d}] and weight blocks [out, {d}]")));
            }
            same_kind("linear_parts", self, w)?;
        }
        if parts.len() == 1 {
            return self.linear(parts[0], None);
        }
        if self.device() != crate::Device::Cpu {
            return self.linear(&Tensor::concat(parts, 0)?, None);
        }
        let mut all: Vec<&Tensor> = vec![self];
        all.extend_from_slice(parts);
        if let Some(r) = via_f32(&all, |t| {
            let p: Vec<&Tensor> = t[1..].iter().collect();
            t[0].linear_parts(&p)
        })? {
            return Ok(r);
        }
        let lead = &self.shape()[..self.rank() - 1];
        let rows: usize = lead.iter().product();
        let outs: Vec<usize> = parts.iter().map(|w| w.shape()[0]).collect();
        let total: usize = outs.iter().sum();
        let mut out_shape = lead.to_vec();
        out_shape.push(total);
        let x2 = self.reshape(&[rows, d])?;
        let mut inputs: Vec<&Tensor> = vec![&x2];
        inputs.extend_from_slice(parts);
        // Row-major `[rows, d]` operands and `[out_i, d]` blocks read as their transposes.
        let row_major = MatRef { offset: 0, rs: d as isize, cs: 1 };
        let transposed = MatRef { offset: 0, rs: 1, cs: d as isize };
        with_float_type!("linear_parts", self.dtype(), T => {
            let mut out = crate::pool::take::<T>(rows * total);
            x2.with_contiguous::<T, _>("linear_parts", |xs| {
                let mut col = 0;
                for (w, &o) in parts.iter().zip(&outs) {
                    w.with_contiguous::<T, _>("linear_parts", |ws| {
                        // SAFETY: columns col..col + o of the [rows, total] output, row stride
                        // `total`; the operands are read-only and sized as checked above.
                        unsafe { gemm_raw(rows, o, d, out[col..].as_mut_ptr(), total as isize, false, xs, row_major, ws, transposed, true) }
                    })?;
                    col += o;
                }
                Ok::<(), Error>(())
            })??;
            let y = Tensor::op_result(out, &[rows, total], "linear_parts", &inputs, |_| {
                Box::new(move |g: &Tensor, inp: &[Tensor]| {
                    let x = &inp[0];
                    let blocks = &inp[1..];
                    let mut grads: Vec<Option<Tensor>> = Vec::with_capacity(inp.len());
                    g.with_contiguous::<T, _>("linear_parts_backward", |gs| {
                        // dx = Σ_i g[:, cols_i] · parts[i]
                        let dx = if needs(inp, 0) {
                            let mut dx = crate::pool::take::<T>(rows * d);
                            let mut col = 0;
                            for (i, (w, &o)) in blocks.iter().zip(&outs).enumerate() {
                                w.with_contiguous::<T, _>("linear_parts_backward", |ws| {
                                    let gcols = MatRef { offset: col, rs: total as isize, cs: 1 };
                                    // SAFETY: dx is [rows, d]; g's block is read through its strides.
                                    unsafe { gemm_raw(rows, d, o, dx.as_mut_ptr(), d as isize, i > 0, gs, gcols, ws, row_major, true) }
                                })?;
                                col += o;
                            }
                            Some(Tensor::from_vec(dx, &[rows, d])?)
                        } else {
                            None
                        };
                        grads.push(dx);
                        // d parts[i] = g[:, cols_i]ᵀ · x, for the blocks that require grad only.
                        x.with_contiguous::<T, _>("linear_parts_backward", |xs| {
                            let mut col = 0;
                            for (i, &o) in outs.iter().enumerate() {
                                if needs(inp, i + 1) {
                                    let mut dw = crate::pool::take_zeroed::<T>(o * d);
                                    let gt = MatRef { offset: col, rs: 1, cs: total as isize };
                                    // SAFETY: dw is [o, d]; g's block is read transposed through its strides.
                                    unsafe { gemm_raw(o, d, rows, dw.as_mut_ptr(), d as isize, false, gs, gt, xs, row_major, true) };
                                    grads.push(Some(Tensor::from_vec(dw, &[o, d])?));
                                } else {
                                    grads.push(None);
                                }
                                col += o;
                            }
                            Ok::<(), Error>(())
                        })?
                    })??;
                    Ok(grads)
                })
            });
            y.reshape(&out_shape)
        })
    }
}
