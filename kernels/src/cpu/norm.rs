//! Layer normalisation over the last axis of a contiguous `[rows, n]` block, forward and backward.
use super::float::Float;
use super::parallel::{for_each_chunk_mut, rows_per_chunk};
use super::reduce::sum_slice;
use super::simd::vectorized;

/// `out = (x − mean)·rstd·gamma + beta` per row; also returns per-row `mean` and `rstd`
/// (needed by the backward). `gamma`/`beta` of length `n` are optional.
pub fn layer_norm_rows<T: Float>(
    x: &[T],
    n: usize,
    gamma: Option<&[T]>,
    beta: Option<&[T]>,
    eps: f64,
    out: &mut [T],
    mean: &mut [T],
    rstd: &mut [T],
) {
    let rows = x.len() / n;
    assert!(out.len() == x.len() && mean.len() == rows && rstd.len() == rows);
    // Compute the statistics first (cheap), then the normalised rows in parallel.
    let rows_per = rows_per_chunk(n, 1 << 13);
    {
        let stats: Vec<(T, T)> = {
            let mut s = vec![(T::zero(), T::zero()); rows];
            for_each_chunk_mut(&mut s, rows_per, x.len() * 3, |ci, chunk| {
                vectorized(|| {
                    for (r, st) in chunk.iter_mut().enumerate() {
                        let row = ci * rows_per + r;
                        let xr = &x[row * n..(row + 1) * n];
                        let mu = sum_slice(xr) / T::c(n as f64);
                        let mut acc = [T::zero(); 8];
                        let mut i = 0;
                        while i + 8 <= n {
                            for l in 0..8 {
                                let d = xr[i + l] - mu;
                                acc[l] += d * d;
                            }
                            i += 8;
                        }
                        let mut var = sum_slice(&acc);
                        while i < n {
                            let d = xr[i] - mu;
                            var += d * d;
                            i += 1;
                        }
                        let var = var / T::c(n as f64);
                        *st = (mu, T::one() / (var + T::c(eps)).sqrt());
                    }
                })
            });
            s
        };
        for (r, (mu, rs)) in stats.into_iter().enumerate() {
            mean[r] = mu;
            rstd[r] = rs;
        }
    }
    let (mean, rstd) = (&*mean, &*rstd);
    for_each_chunk_mut(out, rows_per * n, x.len() * 3, |ci, chunk| {
        vectorized(|| {
            for (r, orow) in chunk.chunks_mut(n).enumerate() {
                let row = ci * rows_per + r;
                let xr = &x[row * n..(row + 1) * n];
                let (mu, rs) = (mean[row], rstd[row]);
                match (gamma, beta) {
                    (Some(g), Some(b)) => {
                        for i in 0..n {
                            orow[i] = (xr[i] - mu) * rs * g[i] + b[i];
                        }
                    }
                    (Some(g), None) => {
                        for i in 0..n {
                            orow[i] = (xr[i] - mu) * rs * g[i];
                        }
                    }
                    (None, Some(b)) => {
                        for i in 0..n {
                            orow[i] = (xr[i] - mu) * rs + b[i];
                        }
                    }
                    (None, None) => {
                        for i in 0..n {
                            orow[i] = (xr[i] - mu) * rs;
                        }
                    }
                }
            }
        })
    });
}

/// Backward of [`layer_norm_rows`]. Writes `dx` (if given) and returns `(dgamma, dbeta)`, each of
/// length `n`, reduced over rows in fixed-size blocks combined in order (thread-count independent).
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_rows_backward<T: Float>(
    x: &[T],
    g: &[T],
    n: usize,
    gamma: Option<&[T]>,
    mean: &[T],
    rstd: &[T],
    dx: Option<&mut [T]>,
    want_param_grads: bool,
) -> (Vec<T>, Vec<T>) {
    let rows = x.len() / n;
    let rows_per = rows_per_chunk(n, 1 << 13);
    if let Some(dx) = dx {
        for_each_chunk_mut(dx, rows_per * n, x.len() * 4, |ci, chunk| {
            vectorized(|| {
                for (r, drow) in chunk.chunks_mut(n).enumerate() {
                    let row = ci * rows_per + r;
                    let xr = &x[row * n..(row + 1) * n];
                    let gr = &g[row * n..(row + 1) * n];
                    let (mu, rs) = (mean[row], rstd[row]);
                    // dxhat = g·gamma; dx = rstd·(dxhat − mean(dxhat) − xhat·mean(dxhat·xhat))
                    let mut s1 = T::zero();
                    let mut s2 = T::zero();
                    for i in 0..n {
                        let dxh = match gamma {
                            Some(gm) => gr[i] * gm[i],
                            None => gr[i],
                        };
                        let xh = (xr[i] - mu) * rs;
                        s1 += dxh;
                        s2 += dxh * xh;
                        drow[i] = dxh;
                    }
                    let inv_n = T::one() / T::c(n as f64);
                    let (m1, m2) = (s1 * inv_n, s2 * inv_n);
                    for i in 0..n {
                        let xh = (xr[i] - mu) * rs;
                        drow[i] = rs * (drow[i] - m1 - xh * m2);
                    }
                }
            })
        });
    }
    if !want_param_grads {
        return (Vec::new(), Vec::new());
    }
    const BLOCK: usize = 64;
    let nblocks = rows.div_ceil(BLOCK);
    let mut partial = vec![T::zero(); nblocks * 2 * n];
    for_each_chunk_mut(&mut partial, 2 * n, x.len() * 2, |b, p| {
        let (pg, pb) = p.split_at_mut(n);
        vectorized(|| {
            for row in b * BLOCK..((b + 1) * BLOCK).min(rows) {
                let xr = &x[row * n..(row + 1) * n];
                let gr = &g[row * n..(row + 1) * n];
                let (mu, rs) = (mean[row], rstd[row]);
                for i in 0..n {
                    pg[i] += gr[i] * (xr[i] - mu) * rs;
                    pb[i] += gr[i];
                }
            }
        })
    });
    let mut dgamma = vec![T::zero(); n];
    let mut dbeta = vec![T::zero(); n];
    for p in partial.chunks(2 * n) {
        for i in 0..n {
            dgamma[i] += p[i];
            dbeta[i] += p[n + i];
        }
    }
    (dgamma, dbeta)
}
