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

/// Σ x², each element squared and summed in f64 (as a gradient-norm needs), over fixed chunks of
/// [`SUM_SQ_CHUNK`] elements whose partial sums are added in order: the result does not depend on
/// the thread count. Chunks run in parallel when the slice is large.
pub fn sum_squares_f64<T: Float>(x: &[T]) -> f64 {
    let chunk_sum = |c: &[T]| -> f64 {
        let mut acc = [0f64; 4];
        let quads = c.chunks_exact(4);
        let rem = quads.remainder();
        for q in quads {
            for l in 0..4 {
                let v = q[l].as_f64();
                acc[l] += v * v;
            }
        }
        let tail: f64 = rem.iter().map(|v| v.as_f64() * v.as_f64()).sum();
        (acc[0] + acc[2]) + (acc[1] + acc[3]) + tail
    };
    let mut partial = vec![0f64; x.len().div_ceil(SUM_SQ_CHUNK)];
    for_each_chunk_mut(&mut partial, 1, x.len(), |i, out| {
        out[0] = vectorized(
            #[inline(always)]
            || chunk_sum(&x[i * SUM_SQ_CHUNK..((i + 1) * SUM_SQ_CHUNK).min(x.len())]),
        );
    });
    partial.iter().sum()
}

/// Elements per partial sum of [`sum_squares_f64`].
pub const SUM_SQ_CHUNK: usize = 1 << 14;

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
                *o = vectorized(
                    #[inline(always)]
                    || sum_slice(&x[row * n..(row + 1) * n]),
                );
            }
        });
    } else {
        for_each_chunk_mut(out, inner, x.len(), |o, orow| {
            let base = o * n * inner;
            vectorized(
                #[inline(always)]
                || {
                    orow.copy_from_slice(&x[base..base + inner]);
                    for j in 1..n {
                        let src = &x[base + j * inner..base + (j + 1) * inner];
                        for i in 0..inner {
                            orow[i] += src[i];
                        }
                    }
                },
            )
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

    /// Matches a naive f64 sum of squares for lengths around the chunk size and the 4-lane
    /// blocks, and gives the same bits on one thread as on the pool.
    #[test]
    fn sum_squares_matches_naive_and_threads() {
        for n in [0, 1, 3, 4, 7, SUM_SQ_CHUNK - 1, SUM_SQ_CHUNK, SUM_SQ_CHUNK + 5, 5 * SUM_SQ_CHUNK + 3] {
            let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1013) as f32 / 101.0 - 5.0).collect();
            let want: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
            let got = sum_squares_f64(&x);
            assert!((got - want).abs() <= 1e-12 * want.max(1.0), "n {n}: {got} vs {want}");
            let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(|| sum_squares_f64(&x));
            assert_eq!(one.to_bits(), got.to_bits(), "n {n}: thread count changed the result");
        }
    }

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
