//! Walking strided (possibly broadcast) operands in row order of a contiguous output.
//!
//! A strided operand is `(data, offset, strides)` over the output's shape; a broadcast dimension
//! has stride 0. Adjacent dimensions that are contiguous for every operand are merged first, so a
//! contiguous tensor is walked as one long row.

/// One operand: element `[i0, i1, ...]` lives at `offset + Σ i_d · strides[d]`.
#[derive(Clone, Copy, Debug)]
pub struct Strided<'a, T> {
    pub data: &'a [T],
    pub offset: usize,
    pub strides: &'a [usize],
}

/// Merges dimensions that are contiguous for all operands and drops size-1 dimensions.
/// Returns the merged shape and each operand's merged strides.
pub fn coalesce(shape: &[usize], strides: &[&[usize]]) -> (Vec<usize>, Vec<Vec<usize>>) {
    let mut out_shape: Vec<usize> = Vec::with_capacity(shape.len());
    let mut out_strides: Vec<Vec<usize>> = vec![Vec::with_capacity(shape.len()); strides.len()];
    for d in 0..shape.len() {
        if shape[d] == 1 {
            continue;
        }
        let merge = match out_shape.last() {
            Some(_) => strides.iter().zip(out_strides.iter()).all(|(s, os)| *os.last().unwrap() == s[d] * shape[d]),
            None => false,
        };
        if merge {
            *out_shape.last_mut().unwrap() *= shape[d];
            for (s, os) in strides.iter().zip(out_strides.iter_mut()) {
                *os.last_mut().unwrap() = s[d];
            }
        } else {
            out_shape.push(shape[d]);
            for (s, os) in strides.iter().zip(out_strides.iter_mut()) {
                os.push(s[d]);
            }
        }
    }
    if out_shape.is_empty() {
        out_shape.push(1);
        for os in out_strides.iter_mut() {
            os.push(1);
        }
    }
    (out_shape, out_strides)
}

/// Offset of the first element of row `row` (all dims but the last) for an operand.
#[inline]
pub fn row_offset(shape: &[usize], strides: &[usize], offset: usize, mut row: usize) -> usize {
    let nd = shape.len();
    let mut off = offset;
    for d in (0..nd.saturating_sub(1)).rev() {
        let i = row % shape[d];
        row /= shape[d];
        off += i * strides[d];
    }
    off
}

/// Copies a strided source into a contiguous destination of `shape` (row-major).
pub fn copy_to_contiguous<T: Copy + Send + Sync>(src: Strided<'_, T>, shape: &[usize], dst: &mut [T]) {
    let (cs, st) = coalesce(shape, &[src.strides]);
    let n = *cs.last().unwrap();
    let s = st[0][st[0].len() - 1];
    let rows_per = super::parallel::rows_per_chunk(n, 1 << 14);
    super::parallel::for_each_chunk_mut(dst, rows_per * n, dst.len(), |ci, chunk| {
        for (r, out_row) in chunk.chunks_mut(n).enumerate() {
            let row = ci * rows_per + r;
            let off = row_offset(&cs, &st[0], src.offset, row);
            if s == 1 {
                out_row.copy_from_slice(&src.data[off..off + n]);
            } else if s == 0 {
                // A broadcast row (e.g. the gradient of a sum): one value, filled vectorised.
                out_row.fill(src.data[off]);
            } else {
                for (j, o) in out_row.iter_mut().enumerate() {
                    *o = src.data[off + j * s];
                }
            }
        }
    });
}

/// Copies a contiguous source of `shape` into a strided region of `dst`
/// (`dst_offset`, `dst_strides`), e.g. the interior of a padded tensor or one slot of a concat.
pub fn copy_into_strided<T: Copy>(src: &[T], shape: &[usize], dst: &mut [T], dst_offset: usize, dst_strides: &[usize]) {
    let contiguous = contiguous_strides(shape);
    let (cs, st) = coalesce(shape, &[&contiguous, dst_strides]);
    let n = *cs.last().unwrap();
    let ds = st[1][st[1].len() - 1];
    let rows = src.len() / n.max(1);
    for row in 0..rows {
        let so = row_offset(&cs, &st[0], 0, row);
        let d0 = row_offset(&cs, &st[1], dst_offset, row);
        if ds == 1 {
            dst[d0..d0 + n].copy_from_slice(&src[so..so + n]);
        } else {
            for j in 0..n {
                dst[d0 + j * ds] = src[so + j];
            }
        }
    }
}

/// Row-major strides of a contiguous tensor of `shape`.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1usize; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    strides
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesce_merges_contiguous_dims() {
        let (s, st) = coalesce(&[2, 3, 4], &[&[12, 4, 1]]);
        assert_eq!(s, vec![24]);
        assert_eq!(st[0], vec![1]);
        // transposed last two dims cannot merge
        let (s, st) = coalesce(&[2, 4, 3], &[&[12, 1, 4]]);
        assert_eq!(s, vec![2, 4, 3]);
        assert_eq!(st[0], vec![12, 1, 4]);
        // broadcast row
        let (s, st) = coalesce(&[5, 1, 7], &[&[0, 7, 1], &[7, 7, 1]]);
        assert_eq!(s, vec![5, 7]);
        assert_eq!(st, vec![vec![0, 1], vec![7, 1]]);
    }

    #[test]
    fn broadcast_copy_fills_rows() {
        let src = [7, 1, 2];
        let mut dst = vec![0; 6];
        // a [2, 3] view of one element, and of a column broadcast along rows
        copy_to_contiguous(Strided { data: &src, offset: 0, strides: &[0, 0] }, &[2, 3], &mut dst);
        assert_eq!(dst, vec![7; 6]);
        copy_to_contiguous(Strided { data: &src, offset: 1, strides: &[1, 0] }, &[2, 3], &mut dst);
        assert_eq!(dst, vec![1, 1, 1, 2, 2, 2]);
    }

    #[test]
    fn transpose_copy() {
        let src: Vec<i32> = (0..6).collect(); // [2,3]
        let mut dst = vec![0; 6];
        copy_to_contiguous(Strided { data: &src, offset: 0, strides: &[1, 3] }, &[3, 2], &mut dst);
        assert_eq!(dst, vec![0, 3, 1, 4, 2, 5]);
    }
}
