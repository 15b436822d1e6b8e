//! Views (no copies when the layout allows): reshape, permute/transpose, narrow, (un)squeeze,
//! broadcast; plus `contiguous` and dtype conversion.
use crate::layout::{axis, Layout};
use crate::{DType, Error, Result, Tensor};

impl Tensor {
    /// Same elements in a new shape. A view when contiguous, a copy otherwise.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != self.numel() {
            return Err(Error::shape_mismatch("reshape", self.shape(), shape, format!("{} elements cannot become {n}", self.numel())));
        }
        if shape == self.shape() {
            return Ok(self.clone());
        }
        let src = if self.is_contiguous() { self.clone() } else { self.contiguous()? };
        let mut layout = Layout::contiguous(shape);
        layout.offset = src.layout().offset;
        let in_shape = self.shape().to_vec();
        Ok(Tensor::view_result(&src, layout, "reshape", || Box::new(move |g, _| Ok(vec![Some(g.reshape(&in_shape)?)]))))
    }

    /// Collapses all dimensions into one.
    pub fn flatten_all(&self) -> Result<Tensor> {
        self.reshape(&[self.numel()])
    }

    /// Merges axes `from..=to` into one.
    pub fn flatten(&self, from: isize, to: isize) -> Result<Tensor> {
        let (a, b) = (axis("flatten", from, self.rank())?, axis("flatten", to, self.rank())?);
        if a > b {
            return Err(Error::shape("flatten", self.shape(), format!("start axis {from} is after end axis {to}")));
        }
        let mut shape: Vec<usize> = self.shape()[..a].to_vec();
        shape.push(self.shape()[a..=b].iter().product());
        shape.extend_from_slice(&self.shape()[b + 1..]);
        self.reshape(&shape)
    }

    /// Reorders axes: result axis i is input axis `axes[i]`. Always a view.
    pub fn permute(&self, axes: &[usize]) -> Result<Tensor> {
        let r = self.rank();
        let mut seen = vec![false; r];
        if axes.len() != r || axes.iter().any(|&a| a >= r || std::mem::replace(&mut seen[a], true)) {
            return Err(Error::shape("permute", self.shape(), format!("{axes:?} is not a permutation of 0..{r}")));
        }
        let mut inverse = vec![0; r];
        for (i, &a) in axes.iter().enumerate() {
            inverse[a] = i;
        }
        Ok(Tensor::view_result(self, self.layout().permute(axes), "permute", || Box::new(move |g, _| Ok(vec![Some(g.permute(&inverse)?)]))))
    }

    /// Swaps two axes (a view).
    pub fn transpose(&self, a: isize, b: isize) -> Result<Tensor> {
        let (a, b) = (axis("transpose", a, self.rank())?, axis("transpose", b, self.rank())?);
        let mut axes: Vec<usize> = (0..self.rank()).collect();
        axes.swap(a, b);
        self.permute(&axes)
    }

    /// Swaps the last two axes (a view); for matrices, the transpose.
    pub fn t(&self) -> Result<Tensor> {
        if self.rank() < 2 {
            return Err(Error::shape("t", self.shape(), "needs at least 2 dimensions"));
        }
        self.transpose(-2, -1)
    }

    /// Elements `start..start+len` along `axis` (a view).
    pub fn narrow(&self, ax: isize, start: usize, len: usize) -> Result<Tensor> {
        let a = axis("narrow", ax, self.rank())?;
        let size = self.shape()[a];
        if start + len > size {
            return Err(Error::shape("narrow", self.shape(), format!("range {start}..{} exceeds axis {a} of size {size}", start + len)));
        }
        let rank = self.rank();
        Ok(Tensor::view_result(self, self.layout().narrow(a, start, len), "narrow", || {
            Box::new(move |g, _| {
                let mut pads = vec![(0, 0); rank - a];
                pads[0] = (start, size - start - len);
                Ok(vec![Some(g.pad(&pads, 0.0)?)])
            })
        }))
    }

    /// Inserts a size-1 axis at `axis` (which may equal the rank).
    pub fn unsqueeze(&self, ax: isize) -> Result<Tensor> {
        let a = axis("unsqueeze", ax, self.rank() + 1)?;
        let mut shape = self.shape().to_vec();
        shape.insert(a, 1);
        self.reshape(&shape)
    }

    /// Removes a size-1 axis.
    pub fn squeeze(&self, ax: isize) -> Result<Tensor> {
        let a = axis("squeeze", ax, self.rank())?;
        if self.shape()[a] != 1 {
            return Err(Error::shape("squeeze", self.shape(), format!("axis {a} has size {}, not 1", self.shape()[a])));
        }
        let mut shape = self.shape().to_vec();
        shape.remove(a);
        self.reshape(&shape)
    }

    /// Broadcast view to `shape` (NumPy rules); the backward sums over broadcast axes.
    pub fn broadcast_as(&self, shape: &[usize]) -> Result<Tensor> {
        if shape == self.shape() {
            return Ok(self.clone());
        }
        let layout = self.layout().broadcast_to(shape, "broadcast_as")?;
        let in_shape = self.shape().to_vec();
        Ok(Tensor::view_result(self, layout, "broadcast_as", || Box::new(move |g, _| Ok(vec![Some(g.sum_to(&in_shape)?)]))))
    }

    /// A contiguous copy (or `self` when already contiguous).
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        self.copy_as(self.dtype(), "contiguous")
    }

    /// A contiguous copy that owns new storage (differentiable: the gradient passes through).
    pub fn copy(&self) -> Result<Tensor> {
        self.copy_as(self.dtype(), "copy")
    }

    /// Converts to `dtype` (a no-op when equal). Differentiable between float dtypes.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        self.copy_as(dtype, "to_dtype")
    }

    fn copy_as(&self, dtype: DType, op: &'static str) -> Result<Tensor> {
        let storage = if self.device().is_cuda() {
            crate::cuda::storage_check_dtype(op, dtype)?;
            crate::storage::Storage::Cuda(crate::cuda::ops::cast(self, dtype)?)
        } else {
            let l = self.layout();
            crate::storage::Storage::Cpu(self.storage().cpu().gather_as(&l.shape, &l.strides, l.offset, dtype))
        };
        let src_dtype = self.dtype();
        if !(src_dtype.is_float() && dtype.is_float()) {
            return Tensor::from_storage(storage, self.shape());
        }
        Ok(Tensor::op_result_storage(storage, self.shape(), op, &[self], |_| Box::new(move |g: &Tensor, _| Ok(vec![Some(g.to_dtype(src_dtype)?)]))))
    }
}
