//! Shape, strides and offset: what makes views (reshape, transpose, narrow, broadcast) free.
use crate::{Error, Result};

/// How a tensor's elements sit in its storage: element `[i…]` is at `offset + Σ i_d·strides[d]`.
/// A broadcast dimension has stride 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
    pub offset: usize,
}

/// Row-major strides for `shape`.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    flamingo_kernels::cpu::strided::contiguous_strides(shape)
}

impl Layout {
    pub fn contiguous(shape: &[usize]) -> Layout {
        Layout { shape: shape.to_vec(), strides: contiguous_strides(shape), offset: 0 }
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    /// Row-major contiguous (size-1 dimensions may have any stride).
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for d in (0..self.shape.len()).rev() {
            if self.shape[d] != 1 && self.strides[d] != expected {
                return false;
            }
            expected *= self.shape[d];
        }
        true
    }
    pub fn permute(&self, axes: &[usize]) -> Layout {
        Layout { shape: axes.iter().map(|&a| self.shape[a]).collect(), strides: axes.iter().map(|&a| self.strides[a]).collect(), offset: self.offset }
    }
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Layout {
        let mut l = self.clone();
        l.offset += start * self.strides[dim];
        l.shape[dim] = len;
        l
    }
    /// Broadcast view to `shape` (NumPy rules: align trailing dims; size-1 dims stretch).
    pub fn broadcast_to(&self, shape: &[usize], op: &'static str) -> Result<Layout> {
        if shape.len() < self.rank() {
            return Err(Error::shape_mismatch(op, &self.shape, shape, "cannot broadcast to fewer dimensions"));
        }
        let lead = shape.len() - self.rank();
        let mut strides = vec![0; shape.len()];
        for d in 0..self.rank() {
            let (have, want) = (self.shape[d], shape[lead + d]);
            strides[lead + d] = if have == want {
                self.strides[d]
            } else if have == 1 {
                0
            } else {
                return Err(Error::shape_mismatch(op, &self.shape, shape, format!("dimension {d} has size {have}, not 1 or {want}")));
            };
        }
        Ok(Layout { shape: shape.to_vec(), strides, offset: self.offset })
    }
}

/// NumPy broadcast of two shapes.
pub fn broadcast_shapes(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(Error::shape_mismatch(op, a, b, "not broadcastable"));
        };
    }
    Ok(out)
}

/// Normalises a possibly negative axis.
pub fn axis(op: &'static str, axis: isize, rank: usize) -> Result<usize> {
    let a = if axis < 0 { axis + rank as isize } else { axis };
    if a < 0 || a as usize >= rank.max(1) {
        return Err(Error::AxisOutOfRange { op, axis, rank });
    }
    Ok(a as usize)
}
