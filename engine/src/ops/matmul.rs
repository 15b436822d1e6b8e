//! Matrix products with batch broadcasting (`[..., m, k] × [..., k, n]`) and `linear`.
//! Operands are read through their strides, so transposed views multiply without copies.
use super::{needs, same_kind, via_f32, with_float_type};
use crate::layout::broadcast_shapes;
use crate::{Error, FloatElement, Result, Tensor};
use flamingo_kernels::cpu::gemm::{batched_matmul, MatRef};

/// Offsets of each batch entry for a tensor whose batch dims broadcast to `batch`.
fn batch_offsets(t: &Tensor, batch: &[usize]) -> Result<Vec<usize>> {
    let r = t.rank();
    let bl = crate::layout::Layout { shape: t.shape()[..r - 2].to_vec(), strides: t.strides()[..r - 2].to_vec(), offset: t.layout().offset }
        .broadcast_to(batch, "matmul")?;
    let total: usize = batch.iter().product();
    // Walk the batch index as rows of a [batch..., 1] view (shape and strides built once).
    let shape: Vec<usize> = batch.iter().copied().chain([1]).collect();
    let strides: Vec<usize> = bl.strides.iter().copied().chain([0]).collect();
    let out = (0..total).map(|i| flamingo_kernels::cpu::strided::row_offset(&shape, &strides, bl.offset, i)).collect();
    Ok(out)
}

fn matmul_raw<T: FloatElement>(a: &Tensor, b: &Tensor, batch: &[usize], m: usize, k: usize, n: usize) -> Result<Vec<T>> {
    let (ra, rb) = (a.rank(), b.rank());
    let la = MatRef { offset: 0, rs: a.strides()[ra - 2] as isize, cs: a.strides()[ra - 1] as isize };
    let lb = MatRef { offset: 0, rs: b.strides()[rb - 2] as isize, cs: b.strides()[rb - 1] as isize };
    let (oa, ob) = (batch_offsets(a, batch)?, batch_offsets(b, batch)?);
    let mut out = crate::pool::take::<T>(batch.iter().product::<usize>() * m * n);
    a.with_strided::<T, _>("matmul", |da, _| b.with_strided::<T, _>("matmul", |db, _| batched_matmul(da, &oa, la, db, &ob, lb, m, n, k, &mut out)))??;
    Ok(out)
}

/// dA = g·Bᵀ, dB = Aᵀ·g (summed over broadcast batch dims).
fn matmul_backward() -> crate::autograd::BackwardFn {
    Box::new(|g: &Tensor, inp: &[Tensor]| {
        let (a, b) = (&inp[0], &inp[1]);
        // Frozen operands get no gradient and their weight-gradient product is skipped.
        let ga = if needs(inp, 0) { Some(g.matmul(&b.t()?)?.sum_to(a.shape())?) } else { None };
        let gb = if !needs(inp, 1) {
            None
        } else if is_transposed_matrix(b) && a.rank() == 2 && g.rank() == 2 {
            // b is Wᵀ for a contiguous W (`linear`): compute (gᵀ·a)ᵀ, so the transpose's own
            // backward hands W a contiguous gradient. Aᵀ·g as a transposed view of a contiguous
            // result would reach W as a transposed view, and every later pass over the gradient
            // (clipping, the optimizer) would first copy it into W's layout. Same products, same
            // summation order.
            Some(g.t()?.matmul(a)?.t()?)
        } else {
            Some(a.t()?.matmul(g)?.sum_to(b.shape())?)
        };
        Ok(vec![ga, gb])
    })
}

/// Whether `t` is a 2-D transposed view of a contiguous matrix (strides `[1, rows]`).
fn is_transposed_matrix(t: &Tensor) -> bool {
    t.rank() == 2 && t.shape()[0] > 1 && t.shape()[1] > 1 && t.strides() == [1, t.shape()[0]]
}

impl Tensor {
    /// Matrix product with NumPy semantics: `[..., m, k] × [..., k, n] → [..., m, n]`, batch
    /// dimensions broadcast; a 1-D operand is treated as a row (lhs) or column (rhs) vector.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        same_kind("matmul", self, rhs)?;
        if !self.device().is_cuda() {
            if let Some(r) = via_f32(&[self, rhs], |t| t[0].matmul(&t[1]))? {
                return Ok(r);
            }
        }
        if self.rank() == 0 || rhs.rank() == 0 {
            return Err(Error::shape_mismatch("matmul", self.shape(), rhs.shape(), "operands need at least 1 dimension"));
        }
        if self.rank() == 1 {
            return self.unsqueeze(0)?.matmul(rhs)?.squeeze(-2);
        }
        if rhs.rank() == 1 {
            return self.matmul(&rhs.unsqueeze(1)?)?.squeeze(-1);
        }
        let (ra, rb) = (self.rank(), rhs.rank());
        let (m, k) = (self.shape()[ra - 2], self.shape()[ra - 1]);
        let (k2, n) = (rhs.shape()[rb - 2], rhs.shape()[rb - 1]);
        if k != k2 {
            return Err(Error::shape_mismatch("matmul", self.shape(), rhs.shape(), format!("inner dimensions differ: {k} vs {k2}")));
        }
        let batch = broadcast_shapes("matmul", &self.shape()[..ra - 2], &rhs.shape()[..rb - 2])?;
        let mut out_shape = batch.clone();
        out_shape.extend_from_slice(&[m, n]);
        if self.device().is_cuda() {
            let st = crate::cuda::ops::matmul(self, rhs, &batch, m, k, n)?;
            return Ok(Tensor::op_result_storage(crate::storage::Storage::Cuda(st), &out_shape, "matmul", &[self, rhs], |_| matmul_backward()));
        }
        with_float_type!("matmul", self.dtype(), T => {
            let data = matmul_raw::<T>(self, rhs, &batch, m, k, n)?;
            Ok(Tensor::op_result(data, &out_shape, "matmul", &[self, rhs], |_| matmul_backward()))
        })
    }

    /// `x · Wᵀ + b` with `x [..., in]`, `weight [out, in]` (PyTorch layout), `bias [out]`.
    pub fn linear(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        if weight.rank() != 2 || self.rank() == 0 || *self.shape().last().unwrap() != weight.shape()[1] {
            return Err(Error::shape_mismatch("linear", self.shape(), weight.shape(), "expected x [..., in] and weight [out, in]"));
        }
        let lead = &self.shape()[..self.rank() - 1];
        // Flatten leading dims so the weight gradient is one large product, not a batched one.
        let x2 = self.reshape(&[lead.iter().product(), weight.shape()[1]])?;
        let mut y = x2.matmul(&weight.t()?)?;
        if let Some(b) = bias {
            if b.shape() != [weight.shape()[0]] {
                return Err(Error::shape_mismatch("linear", weight.shape(), b.shape(), "bias must be [out]"));
            }
            y = y.add(b)?;
        }
        let mut out_shape = lead.to_vec();
        out_shape.push(weight.shape()[0]);
        y.reshape(&out_shape)
    }
}
