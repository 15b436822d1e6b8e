//! Gathering along an axis: `index_select`, `embedding` and `embedding_parts`, with scatter-add
//! backward.
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
    let mut out = crate::pool::take::<T>(outer * idx.len() * inner); // every row copied
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

    /// Rows `ids` (i64, any shape) of the table `concat(parts, 0)`, each part `[rows_i, dim]`
    /// → `[..ids, dim]`: the values of `Tensor::concat(parts, 0)?.embedding(ids)`, without forming
    /// the concatenation, and with gradients scattered only into the parts that require them.
    ///
    /// Flamingo looks its tokens up in the LM's frozen `[vocab, d]` table plus two trainable
    /// rows. Through a concatenation, each step copied the whole table and its backward
    /// scattered into a zeroed `[vocab + 2, d]` gradient to keep two rows of it. Off the CPU this
    /// is that concatenation.
    ///
    /// ```
    /// # use flamingo_engine::Tensor;
    /// let frozen = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], &[2, 2])?;
    /// let extra = Tensor::from_vec(vec![9.0f32, 9.0], &[1, 2])?.requires_grad_(true);
    /// let ids = Tensor::from_vec(vec![2i64, 0, 2], &[3])?;
    /// let e = Tensor::embedding_parts(&[&frozen, &extra], &ids)?;
    /// assert_eq!(e.to_vec::<f32>()?, vec![9.0, 9.0, 1.0, 2.0, 9.0, 9.0]);
    /// e.sum_all()?.backward()?;
    /// assert_eq!(extra.grad().unwrap().to_vec::<f32>()?, vec![2.0, 2.0]);
    /// # Ok::<(), flamingo_engine::Error>(())
    /// ```
    pub fn embedding_parts(parts: &[&Tensor], ids: &Tensor) -> Result<Tensor> {
        let first = *parts.first().ok_or_else(|| Error::Msg("embedding_parts: needs at least one table block".into()))?;
        for p in parts {
            if p.rank() != 2 || p.shape()[1] != first.shape()[1] {
                return Err(Error::shape_mismatch("embedding_parts", first.shape(), p.shape(), "table blocks must be [rows, dim] with one dim"));
            }
            float_only("embedding_parts", p)?;
            super::same_kind("embedding_parts", first, p)?;
        }
        if parts.len() == 1 {
            return first.embedding(ids);
        }
        if first.device() != crate::Device::Cpu {
            return Tensor::concat(parts, 0)?.embedding(ids);
        }
        if let Some(r) = via_f32(parts, |t| Tensor::embedding_parts(&t.iter().collect::<Vec<_>>(), ids))? {
            return Ok(r);
        }
        let d = first.shape()[1];
        let mut starts = vec![0usize];
        for p in parts {
            starts.push(starts.last().unwrap() + p.shape()[0]);
        }
        let idx = checked_indices("embedding_parts", &ids.flatten_all()?, *starts.last().unwrap())?;
        // (block, row within the block) of each index.
        let at: Vec<(usize, usize)> = idx
            .iter()
            .map(|&r| {
                let b = starts.partition_point(|&s| s <= r) - 1;
                (b, r - starts[b])
            })
            .collect();
        let mut shape = ids.shape().to_vec();
        shape.push(d);
        with_float_type!("embedding_parts", first.dtype(), T => {
            let mut out = crate::pool::take::<T>(at.len() * d);
            for (b, p) in parts.iter().enumerate() {
                p.with_contiguous::<T, _>("embedding_parts", |ws| {
                    for (o, &(pb, r)) in out.chunks_mut(d.max(1)).zip(&at) {
                        if pb == b {
                            o.copy_from_slice(&ws[r * d..(r + 1) * d]);
                        }
                    }
                })?;
            }
            let rows: Vec<usize> = parts.iter().map(|p| p.shape()[0]).collect();
            let e = Tensor::op_result(out, &[at.len(), d], "embedding_parts", parts, |_| {
                Box::new(move |g: &Tensor, inp: &[Tensor]| {
                    let mut grads = Vec::with_capacity(inp.len());
                    for (b, &n) in rows.iter().enumerate() {
                        if !super::needs(inp, b) {
                            grads.push(None);
                            continue;
                        }
                        let mut dw = crate::pool::take_zeroed::<T>(n * d);
                        g.with_contiguous::<T, _>("embedding_parts_backward", |gs| {
                            for (gr, &(pb, r)) in gs.chunks(d.max(1)).zip(&at) {
                                if pb == b {
                                    dw[r * d..(r + 1) * d].iter_mut().zip(gr).for_each(|(a, v)| *a += *v);
                                }
                            }
                        })?;
                        grads.push(Some(Tensor::from_vec(dw, &[n, d])?));
                    }
                    Ok(grads)
                })
            });
            e.reshape(&shape)
        })
    }
}
