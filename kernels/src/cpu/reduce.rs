//! Reductions over the middle axis of a contiguous `[outer, n, inner]` block.
//!
//! Any set of adjacent axes of a contiguous tensor maps onto this form; the engine permutes other
//! cases first. Every sum uses a fixed order (8 interleaved partial sums, combined pairwise), so
//! results do not depend on the thread count.
use super::float::Float;
use super::parallel::{for_each_chunk_mut, rows_per_chunk};
use super::simd::vectorized;

/// Sum of a contiguous slice with 8 interleaved accumulators (vectorisable, fixed order).
#[inline(always)]
pub fn sum_slice<T: Float>(x: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let chunks = x.chunks_exact(8);
    let rem = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] += c[l];
        }
    }
    let mut tail = T::zero();
    for &v in rem {
        tail += v;
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7])) + tail
}

/// Max of a contiguous slice; NaN propagates. Empty slices give −∞.
#[inline(always)]
pub fn max_slice<T: Float>(x: &[T]) -> T {
    let mut m = T::neg_infinity();
    for &v in x {
        m = if v > m || v.is_nan() { v } else { m };
    }
    m
}

/// `out[o, i] = Σ_j x[o, j, i]`.
pub fn sum_mid<T: Float>(x: &[T], outer: usize, n: usize, inner: usize, out: &mut [T]) {
    assert_eq!(x.len(), outer * n * inner);
    assert_eq!(out.len(), outer * inner);
    if inner == 1 {
        let rows_per = rows_per_chunk(n, 1 << 14);
        for_each_chunk_mut(out, rows_per, x.len(), |ci, chunk| {
            for (r, o) in chunk.iter_mut().enumerate() {
                let row = ci * rows_per + r;
                *o = vectorized(#[inline(always)] || sum_slice(&x[row * n..(row + 1) * n]));
            }
        });
    } else {
        for_each_chunk_mut(out, inner, x.len(), |o, orow| {
            let base = o * n * inner;
            vectorized(#[inline(always)] || {
                orow.copy_from_slice(&x[base..base + inner]);
                for j in 1..n {
                    let src = &x[base + j * inner..base + (j + 1) * inner];
                    for i in 0..inner {
                        orow[i] += src[i];
                    }
                }
            })
        });
    }
}

/// `out[o, i] = max_j x[o, j, i]` and `arg[o, i]` = the first j attaining it.
pub fn max_mid<T: Float>(x: &[T], outer: usize, n: usize, inner: usize, out: &mut [T], arg: &mut [usize]) {
    assert_eq!(x.len(), outer * n * inner);
    assert!(out.len() == outer * inner && arg.len() == outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            let mut best = T::neg_infinity();
            let mut bj = 0;
            for j in 0..n {
                let v = x[(o * n + j) * inner + i];
                if v > best || (v.is_nan() && !best.is_nan()) {
                    best = v;
                    bj = j;
                }
            }
            out[o * inner + i] = best;
            arg[o * inner + i] = bj;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_mid_inner_and_rows() {
        let x: Vec<f64> = (0..24).map(|v| v as f64).collect(); // [2,3,4]
        let mut out = vec![0.0; 8];
        sum_mid(&x, 2, 3, 4, &mut out);
        assert_eq!(out, vec![12.0, 15.0, 18.0, 21.0, 48.0, 51.0, 54.0, 57.0]);
        let mut rows = vec![0.0; 6];
        sum_mid(&x, 6, 4, 1, &mut rows);
        assert_eq!(rows, vec![6.0, 22.0, 38.0, 54.0, 70.0, 86.0]);
    }
}
