//! Fused softmax cross-entropy over the last axis: no `[rows, classes]` probability tensor is kept.
use super::float::Float;
use super::parallel::{for_each_chunk_mut, rows_per_chunk};
use super::reduce::{max_slice, sum_slice};
use super::simd::vectorized;

/// Per-row loss and log-sum-exp for logits `[rows, v]` and targets (`None` = ignored row).
/// Row loss = (1−ε)·(lse − x_t) + ε·(lse − mean_j x_j)  (label smoothing ε, PyTorch's definition).
/// Ignored rows give loss 0. Returns `(losses, lse)`.
pub fn cross_entropy_rows<T: Float>(logits: &[T], v: usize, targets: &[Option<usize>], smoothing: f64) -> (Vec<T>, Vec<T>) {
    let rows = targets.len();
    assert_eq!(logits.len(), rows * v);
    let mut out = vec![(T::zero(), T::zero()); rows];
    let rows_per = rows_per_chunk(v, 1 << 13);
    for_each_chunk_mut(&mut out, rows_per, logits.len() * 3, |ci, chunk| {
        vectorized(
            #[inline(always)]
            || {
                for (r, o) in chunk.iter_mut().enumerate() {
                    let row = ci * rows_per + r;
                    let xr = &logits[row * v..(row + 1) * v];
                    let m = max_slice(xr);
                    let mut acc = [T::zero(); 8];
                    let blocks = xr.chunks_exact(8);
                    let tail = blocks.remainder();
                    for c in blocks {
                        for l in 0..8 {
                            acc[l] += (c[l] - m).fexp();
                        }
                    }
                    let mut s = sum_slice(&acc);
                    for &x in tail {
                        s += (x - m).fexp();
                    }
                    let lse = s.ln() + m;
                    let loss = match targets[row] {
                        None => T::zero(),
                        Some(t) => {
                            let eps = T::c(smoothing);
                            let nll = lse - xr[t];
                            if smoothing == 0.0 {
                                nll
                            } else {
                                let mean = sum_slice(xr) / T::c(v as f64);
                                (T::one() - eps) * nll + eps * (lse - mean)
                            }
                        }
                    };
                    *o = (loss, lse);
                }
            },
        )
    });
    out.into_iter().unzip()
}

/// Backward: `dlogits[r] = scale[r] · (softmax(x_r) − (1−ε)·onehot(t_r) − ε/v)`, zero for ignored rows.
pub fn cross_entropy_rows_backward<T: Float>(logits: &[T], v: usize, targets: &[Option<usize>], lse: &[T], smoothing: f64, scale: &[T], dlogits: &mut [T]) {
    let rows_per = rows_per_chunk(v, 1 << 13);
    for_each_chunk_mut(dlogits, rows_per * v, logits.len() * 2, |ci, chunk| {
        vectorized(
            #[inline(always)]
            || {
                for (r, drow) in chunk.chunks_mut(v).enumerate() {
                    let row = ci * rows_per + r;
                    let xr = &logits[row * v..(row + 1) * v];
                    match targets[row] {
                        None => drow.iter_mut().for_each(|d| *d = T::zero()),
                        Some(t) => {
                            let s = scale[row];
                            let l = lse[row];
                            let u = T::c(smoothing / v as f64);
                            for i in 0..v {
                                drow[i] = s * ((xr[i] - l).fexp() - u);
                            }
                            drow[t] -= s * T::c(1.0 - smoothing);
                        }
                    }
                }
            },
        )
    });
}
