//! Gathering along an axis: `index_select` and `embedding`, with scatter-add backward.
use super::{float_only, via_f32, with_float_type};
use crate::layout::axis;
use crate::{DType, Error, FloatElement, Result, Tensor};
use flamingo_kernels::cpu::index as k;

/// Reads an i64 index tensor and checks every index against `size`.
fn checked_indices(op: &'static str, idx: &Tensor, size: usize) -> Result<Vec<usize>> {
    if idx.dtype() != DType::I64 {
        return Err(Error::DTypeMismatch { op, lhs: DType::I64, rhs: idx.dtype() });
    }
    idx.to_vec::<i64>()?
        .into_iter()
        .map(|i| if i < 0 || i as usize >= size { Err(Error::IndexOutOfRange { op, index: i, size }) } else { Ok(i as usize) })
        .collect()
}

fn select_raw<T: FloatElement>(x: &Tensor, a: usize, idx: &[usize]) -> Result<Vec<T>> {
    let s = x.shape();
    let (outer, n, inner) = (s[..a].iter().product::<usize>(), s[a], s[a + 1..].iter().product::<usize>());
    let mut out = vec![T::zero(); outer * idx.len() * inner];
    x.with_contiguous::<T, _>("index_select", |xs| k::index_select_mid(xs, outer, n, inner, idx, &mut out))?;
    Ok(out)
}

impl Tensor {
    /// Picks entries `indices` (a 1-D i64 tensor) along `axis`: the result has
    /// `indices.len()` there. Out-of-range indices are an error naming the index and the size.
    pub fn index_select(&self, ax: isize, indices: &Tensor) -> Result<Tensor> {
        float_only("index_select", self)?;
        if indices.rank() != 1 {
            return Err(Error::shape("index_select", indices.shape(), "indices must be 1-D"));
        }
        let a = axis("index_select", ax, self.rank())?;
        let idx = checked_indices("index_select", indices, self.shape()[a])?;
        if self.device().is_cuda() {
            let (gpu, _) = crate::cuda::ops::parts(self, "index_select")?;
            let dev_idx = crate::cuda::ops::upload_i64(&gpu, &idx.iter().map(|&i| i as i64).collect::<Vec<_>>())?;
            let s = self.shape();
            let (outer, n, inner) = (s[..a].iter().product::<usize>(), s[a], s[a + 1..].iter().product::<usize>());
            let mut out_shape = s.to_vec();
            out_shape[a] = idx.len();
            let in_shape = s.to_vec();
            let st = crate::cuda::ops::index_select_mid(self, outer, n, inner, &dev_idx)?;
            let dtype = self.dtype();
            return Ok(Tensor::op_result_storage(crate::storage::Storage::Cuda(st), &out_shape, "index_select", &[self], |_| {
                Box::new(move |g: &Tensor, _| {
                    let dx = super::cuda_tensor(crate::cuda::ops::index_add_mid(g, outer, n, inner, &dev_idx)?, &in_shape)?;
                    Ok(vec![Some(dx.to_dtype(dtype)?)])
                })
            }));
        }
        if let Some(r) = via_f32(&[self], |t| t[0].index_select(ax, indices))? {
            return Ok(r);
        }
        let mut out_shape = self.shape().to_vec();
        out_shape[a] = idx.len();
        let in_shape = self.shape().to_vec();
        with_float_type!("index_select", self.dtype(), T => {
            let data = select_raw::<T>(self, a, &idx)?;
            Ok(Tensor::op_result(data, &out_shape, "index_select", &[self], |_| {
                Box::new(move |g: &Tensor, _| {
                    let (outer, n, inner) = (in_shape[..a].iter().product::<usize>(), in_shape[a], in_shape[a + 1..].iter().product::<usize>());
                    with_float_type!("index_select_backward", g.dtype(), U => {
                        let mut dx = vec![U::zero(); outer * n * inner];
                        g.with_contiguous::<U, _>("index_select_backward", |gs| k::index_add_mid(gs, outer, n, inner, &idx, &mut dx))?;
                        Ok(vec![Some(Tensor::from_vec(dx, &in_shape)?)])
                    })
                })
            }))
        })
    }

    /// Embedding lookup: `self` is the table `[vocab, dim]`, `ids` any-shaped i64 tensor;
    /// returns `[..ids.shape, dim]`. The table's gradient is a scatter-add over the ids.
    pub fn embedding(&self, ids: &Tensor) -> Result<Tensor> {
        if self.rank() != 2 {
            return Err(Error::shape("embedding", self.shape(), "the table must be [vocab, dim]"));
        }
        let rows = self.index_select(0, &ids.flatten_all()?)?;
        let mut shape = ids.shape().to_vec();
        shape.push(self.shape()[1]);
        rows.reshape(&shape)
    }
}
