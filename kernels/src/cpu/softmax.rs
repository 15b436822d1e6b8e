//! Softmax and log-softmax over the last axis of a contiguous `[rows, n]` block, with backward.
use super::float::Float;
use super::parallel::{for_each_chunk_mut, rows_per_chunk};
use super::reduce::{max_slice, sum_slice};
use super::simd::vectorized;

/// `out[r] = softmax(x[r])` (`log` = false) or `log_softmax(x[r])` (`log` = true) per row of `n`.
/// A row that is entirely −∞ gives NaN, as in PyTorch.
pub fn softmax_rows<T: Float>(x: &[T], n: usize, log: bool, out: &mut [T]) {
    assert_eq!(x.len(), out.len());
    let rows_per = rows_per_chunk(n, 1 << 13);
    #[cfg(target_arch = "x86_64")]
    if super::avx2::available() {
        if let (Some(xf), Some(of)) = (super::float::as_f32(x), super::float::as_f32_mut(out)) {
            for_each_chunk_mut(of, rows_per * n, x.len() * 4, |ci, chunk| {
                let base = ci * rows_per * n;
                for (r, orow) in chunk.chunks_mut(n).enumerate() {
                    let xr = &xf[base + r * n..base + (r + 1) * n];
                    // SAFETY: AVX2 and FMA were detected above.
                    let (m, s) = unsafe {
                        let m = super::avx2::max(xr);
                        (m, super::avx2::exp_sub_sum(xr, m, orow))
                    };
                    vectorized(
                        #[inline(always)]
                        || finish_row(xr, orow, m, s, log),
                    );
                }
            });
            return;
        }
    }
    for_each_chunk_mut(out, rows_per * n, x.len() * 4, |ci, chunk| {
        let base = ci * rows_per * n;
        vectorized(
            #[inline(always)]
            || {
                for (r, orow) in chunk.chunks_mut(n).enumerate() {
                    let xr = &x[base + r * n..base + (r + 1) * n];
                    let m = max_slice(xr);
                    for i in 0..n {
                        orow[i] = (xr[i] - m).fexp();
                    }
                    let s = sum_slice(orow);
                    finish_row(xr, orow, m, s, log);
                }
            },
        )
    });
}

/// Turns `orow = e^(x − m)` with sum `s` into softmax (divide) or log-softmax (x − m − ln s).
#[inline(always)]
fn finish_row<T: Float>(xr: &[T], orow: &mut [T], m: T, s: T, log: bool) {
    if log {
        let ls = s.ln() + m;
        for (o, &x) in orow.iter_mut().zip(xr) {
            *o = x - ls;
        }
    } else {
        let inv = T::one() / s;
        for v in orow.iter_mut() {
            *v *= inv;
        }
    }
}

/// Backward of [`softmax_rows`] given its output `y` and the upstream gradient `g`:
/// softmax: `dx = y ⊙ (g − Σ g⊙y)`; log-softmax: `dx = g − exp(y) · Σ g`.
pub fn softmax_rows_backward<T: Float>(y: &[T], g: &[T], n: usize, log: bool, dx: &mut [T]) {
    assert!(y.len() == dx.len() && g.len() == dx.len());
    let rows_per = rows_per_chunk(n, 1 << 13);
    for_each_chunk_mut(dx, rows_per * n, y.len() * 4, |ci, chunk| {
        let base = ci * rows_per * n;
        vectorized(
            #[inline(always)]
            || {
                for (r, drow) in chunk.chunks_mut(n).enumerate() {
                    let yr = &y[base + r * n..base + (r + 1) * n];
                    let gr = &g[base + r * n..base + (r + 1) * n];
                    if log {
                        let s = sum_slice(gr);
                        for i in 0..n {
                            drow[i] = gr[i] - yr[i].fexp() * s;
                        }
                    } else {
                        let mut acc = [T::zero(); 8];
                        let (gb, yb) = (gr.chunks_exact(8), yr.chunks_exact(8));
                        let (gt, yt) = (gb.remainder(), yb.remainder());
                        for (gc, yc) in gb.zip(yb) {
                            for l in 0..8 {
                                acc[l] += gc[l] * yc[l];
                            }
                        }
                        let mut dot = sum_slice(&acc);
                        for (g, y) in gt.iter().zip(yt) {
                            dot += *g * *y;
                        }
                        for i in 0..n {
                            drow[i] = yr[i] * (gr[i] - dot);
                        }
                    }
                }
            },
        )
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;

    #[test]
    fn matches_reference() {
        let x: Vec<f64> = (0..40).map(|i| ((i * 7) % 13) as f64 * 0.3 - 1.0).collect();
        let mut out = vec![0.0; 40];
        softmax_rows(&x, 10, false, &mut out);
        let want = reference::softmax_rows(&x, 10);
        for (a, b) in out.iter().zip(&want) {
            assert!((a - b).abs() < 1e-14);
        }
    }

    #[test]
    fn masked_entries_are_exact_zero() {
        let x = vec![0.5f32, f32::NEG_INFINITY, 1.0, f32::NEG_INFINITY];
        let mut out = vec![0.0; 4];
        softmax_rows(&x, 4, false, &mut out);
        assert_eq!(out[1], 0.0);
        assert_eq!(out[3], 0.0);
    }
}
