//! Layer normalisation and RMS normalisation over the last axis of a contiguous `[rows, n]`
//! block, forward and backward.
use super::float::Float;
use super::parallel::{for_each_chunk_mut, rows_per_chunk, worth_parallel};
use super::reduce::sum_slice;
use super::simd::vectorized;

/// Mean and reciprocal standard deviation of one row (biased variance) in a single pass:
/// sums of d and d² for d = x − x₀ (shifting by the first element keeps E[d²] − E[d]² from
/// cancelling when the mean is large relative to the spread).
#[inline(always)]
fn row_stats<T: Float>(xr: &[T], eps: f64) -> (T, T) {
    let n = xr.len();
    let x0 = xr[0];
    let inv_n = T::one() / T::c(n as f64);
    #[cfg(target_arch = "x86_64")]
    if let Some(xf) = super::float::as_f32(xr) {
        if super::avx2::available() {
            // SAFETY: AVX2 and FMA were detected just above.
            let (a, b) = unsafe { super::avx2::shifted_sums(xf, xf[0]) };
            let (a, b) = (T::c(a as f64), T::c(b as f64));
            let md = a * inv_n;
            let var = (b * inv_n - md * md).max(T::zero());
            return (x0 + md, T::one() / (var + T::c(eps)).sqrt());
        }
    }
    let mut s1 = [T::zero(); 8];
    let mut s2 = [T::zero(); 8];
    // chunks_exact gives the compiler fixed-length blocks: no bounds checks, full-width vectors.
    let blocks = xr.chunks_exact(8);
    let tail = blocks.remainder();
    // Two separate lane loops: interleaving them makes the SLP vectoriser pair (d, d²) in one
    // 2-wide register instead of filling 8 lanes (seen in the disassembly).
    for c in blocks {
        let mut d = [T::zero(); 8];
        for l in 0..8 {
            d[l] = c[l] - x0;
        }
        for l in 0..8 {
            s1[l] += d[l];
        }
        for l in 0..8 {
            s2[l] += d[l] * d[l];
        }
    }
    let (mut a, mut b) = (sum_slice(&s1), sum_slice(&s2));
    for &v in tail {
        let d = v - x0;
        a += d;
        b += d * d;
    }
    let md = a * inv_n;
    let var = (b * inv_n - md * md).max(T::zero());
    (x0 + md, T::one() / (var + T::c(eps)).sqrt())
}

/// `out = (x − mean)·rstd·gamma + beta` per row; also returns per-row `mean` and `rstd`
/// (needed by the backward). `gamma`/`beta` of length `n` are optional. Each row's statistics
/// and output are computed while the row is in cache (one pass over memory).
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_rows<T: Float>(x: &[T], n: usize, gamma: Option<&[T]>, beta: Option<&[T]>, eps: f64, out: &mut [T], mean: &mut [T], rstd: &mut [T]) {
    let rows = x.len() / n.max(1);
    assert!(out.len() == x.len() && mean.len() == rows && rstd.len() == rows);
    if rows == 0 {
        return;
    }
    let rows_per = rows_per_chunk(n, 1 << 13);
    let work = |ci: usize, (oc, (mc, rc)): (&mut [T], (&mut [T], &mut [T]))| {
        vectorized(
            #[inline(always)]
            || {
                for (r, orow) in oc.chunks_mut(n).enumerate() {
                    let row = ci * rows_per + r;
                    let xr = &x[row * n..(row + 1) * n];
                    let (mu, rs) = row_stats(xr, eps);
                    mc[r] = mu;
                    rc[r] = rs;
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
            },
        )
    };
    let chunks = out.chunks_mut(rows_per * n).zip(mean.chunks_mut(rows_per).zip(rstd.chunks_mut(rows_per)));
    if worth_parallel(x.len() * 3) {
        use rayon::prelude::*;
        out.par_chunks_mut(rows_per * n).zip(mean.par_chunks_mut(rows_per).zip(rstd.par_chunks_mut(rows_per))).enumerate().for_each(|(ci, c)| work(ci, c));
    } else {
        chunks.enumerate().for_each(|(ci, c)| work(ci, c));
    }
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
            vectorized(
                #[inline(always)]
                || {
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
                },
            )
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
        vectorized(
            #[inline(always)]
            || {
                for row in b * BLOCK..((b + 1) * BLOCK).min(rows) {
                    let xr = &x[row * n..(row + 1) * n];
                    let gr = &g[row * n..(row + 1) * n];
                    let (mu, rs) = (mean[row], rstd[row]);
                    for i in 0..n {
                        pg[i] += gr[i] * (xr[i] - mu) * rs;
                        pb[i] += gr[i];
                    }
                }
            },
        )
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

/// Sum of squares of one row, in eight lanes (so the loop vectorises) added in a fixed order.
#[inline(always)]
fn sum_squares<T: Float>(xr: &[T]) -> T {
    let mut s = [T::zero(); 8];
    let blocks = xr.chunks_exact(8);
    let tail = blocks.remainder();
    for c in blocks {
        for l in 0..8 {
            s[l] += c[l] * c[l];
        }
    }
    let mut t = sum_slice(&s);
    for &v in tail {
        t += v * v;
    }
    t
}

/// Dot product of two rows, in eight lanes added in a fixed order.
#[inline(always)]
fn dot<T: Float>(a: &[T], b: &[T]) -> T {
    let mut s = [T::zero(); 8];
    let (ab, bb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (at, bt) = (ab.remainder(), bb.remainder());
    for (ca, cb) in ab.zip(bb) {
        for l in 0..8 {
            s[l] += ca[l] * cb[l];
        }
    }
    let mut t = sum_slice(&s);
    for (x, y) in at.iter().zip(bt) {
        t += *x * *y;
    }
    t
}

/// RMS normalisation (LLaMA's RMSNorm): `out = x·rstd·gamma` per row, with
/// `rstd = 1/sqrt(mean(x²) + eps)`; also writes the per-row `rstd` (needed by the backward).
/// One pass over memory: each row's statistic and output are computed while it is in cache.
/// `x`, `out`: `[rows, n]`; `gamma`: `[n]` or absent; `rstd`: `[rows]`.
pub fn rms_norm_rows<T: Float>(x: &[T], n: usize, gamma: Option<&[T]>, eps: f64, out: &mut [T], rstd: &mut [T]) {
    let rows = x.len() / n.max(1);
    assert!(out.len() == x.len() && rstd.len() == rows && gamma.is_none_or(|g| g.len() == n));
    if rows == 0 {
        return;
    }
    let rows_per = rows_per_chunk(n, 1 << 13);
    let inv_n = T::one() / T::c(n as f64);
    let work = |ci: usize, (oc, rc): (&mut [T], &mut [T])| {
        vectorized(
            #[inline(always)]
            || {
                for (r, orow) in oc.chunks_mut(n).enumerate() {
                    let row = ci * rows_per + r;
                    let xr = &x[row * n..(row + 1) * n];
                    let rs = T::one() / (sum_squares(xr) * inv_n + T::c(eps)).sqrt();
                    rc[r] = rs;
                    // (x·rstd)·gamma, in the order of the composed formulation.
                    match gamma {
                        Some(g) => (0..n).for_each(|i| orow[i] = xr[i] * rs * g[i]),
                        None => (0..n).for_each(|i| orow[i] = xr[i] * rs),
                    }
                }
            },
        )
    };
    if worth_parallel(x.len() * 3) {
        use rayon::prelude::*;
        out.par_chunks_mut(rows_per * n).zip(rstd.par_chunks_mut(rows_per)).enumerate().for_each(|(ci, c)| work(ci, c));
    } else {
        out.chunks_mut(rows_per * n).zip(rstd.chunks_mut(rows_per)).enumerate().for_each(|(ci, c)| work(ci, c));
    }
}

/// Backward of [`rms_norm_rows`]. With `u = g·gamma`, per row
/// `dx = rstd·u − x·rstd³·mean(u·x)`. Writes `dx` (if given) and returns `dgamma [n]`
/// (`Σ_rows g·x·rstd`; empty unless `want_gamma_grad`), reduced over rows in fixed-size blocks
/// combined in order, so the result does not depend on the thread count.
pub fn rms_norm_rows_backward<T: Float>(x: &[T], g: &[T], n: usize, gamma: Option<&[T]>, rstd: &[T], dx: Option<&mut [T]>, want_gamma_grad: bool) -> Vec<T> {
    let rows = x.len() / n.max(1);
    assert!(g.len() == x.len() && rstd.len() == rows);
    let rows_per = rows_per_chunk(n, 1 << 13);
    let inv_n = T::one() / T::c(n as f64);
    if let Some(dx) = dx {
        for_each_chunk_mut(dx, rows_per * n, x.len() * 4, |ci, chunk| {
            vectorized(
                #[inline(always)]
                || {
                    for (r, drow) in chunk.chunks_mut(n).enumerate() {
                        let row = ci * rows_per + r;
                        let xr = &x[row * n..(row + 1) * n];
                        let gr = &g[row * n..(row + 1) * n];
                        let rs = rstd[row];
                        match gamma {
                            Some(gm) => (0..n).for_each(|i| drow[i] = gr[i] * gm[i]),
                            None => drow.copy_from_slice(gr),
                        }
                        let c = dot(drow, xr) * inv_n * rs * rs * rs;
                        for i in 0..n {
                            drow[i] = rs * drow[i] - xr[i] * c;
                        }
                    }
                },
            )
        });
    }
    if !want_gamma_grad {
        return Vec::new();
    }
    const BLOCK: usize = 64;
    let mut partial = vec![T::zero(); rows.div_ceil(BLOCK) * n];
    for_each_chunk_mut(&mut partial, n, x.len() * 2, |b, p| {
        vectorized(
            #[inline(always)]
            || {
                for row in b * BLOCK..((b + 1) * BLOCK).min(rows) {
                    let (xr, gr, rs) = (&x[row * n..(row + 1) * n], &g[row * n..(row + 1) * n], rstd[row]);
                    for i in 0..n {
                        p[i] += gr[i] * xr[i] * rs;
                    }
                }
            },
        )
    });
    let mut dgamma = vec![T::zero(); n];
    for p in partial.chunks(n) {
        dgamma.iter_mut().zip(p).for_each(|(d, v)| *d += *v);
    }
    dgamma
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RMSNorm forward and backward against the formulas in f64, over enough rows for several
    /// parallel chunks and several gamma-gradient blocks, with a row length that leaves a tail.
    #[test]
    fn rms_norm_matches_direct_formulas() {
        let (rows, n) = (300, 37);
        let x: Vec<f32> = (0..rows * n).map(|i| ((i * 31 % 97) as f32 - 48.0) * 0.05).collect();
        let g: Vec<f32> = (0..rows * n).map(|i| ((i * 17 % 83) as f32 - 41.0) * 0.03).collect();
        let gamma: Vec<f32> = (0..n).map(|i| 0.5 + i as f32 * 0.04).collect();
        let eps = 1e-5;
        let (mut out, mut rstd, mut dx) = (vec![0.0; rows * n], vec![0.0; rows], vec![0.0; rows * n]);
        rms_norm_rows(&x, n, Some(&gamma), eps, &mut out, &mut rstd);
        let dgamma = rms_norm_rows_backward(&x, &g, n, Some(&gamma), &rstd, Some(&mut dx), true);
        let mut dgamma_ref = vec![0.0f64; n];
        for r in 0..rows {
            let xr: Vec<f64> = x[r * n..(r + 1) * n].iter().map(|&v| v as f64).collect();
            let gr: Vec<f64> = g[r * n..(r + 1) * n].iter().map(|&v| v as f64).collect();
            let rs = 1.0 / (xr.iter().map(|v| v * v).sum::<f64>() / n as f64 + eps).sqrt();
            let ux: f64 = (0..n).map(|i| gr[i] * gamma[i] as f64 * xr[i]).sum();
            for i in 0..n {
                let want = xr[i] * rs * gamma[i] as f64;
                assert!((out[r * n + i] as f64 - want).abs() < 1e-5, "forward [{r}, {i}]");
                let want_dx = rs * gr[i] * gamma[i] as f64 - xr[i] * rs.powi(3) * ux / n as f64;
                assert!((dx[r * n + i] as f64 - want_dx).abs() < 1e-5, "dx [{r}, {i}]: {} against {want_dx}", dx[r * n + i]);
                dgamma_ref[i] += gr[i] * xr[i] * rs;
            }
        }
        for i in 0..n {
            assert!((dgamma[i] as f64 - dgamma_ref[i]).abs() < 1e-3, "dgamma[{i}]: {} against {}", dgamma[i], dgamma_ref[i]);
        }
        let none = rms_norm_rows_backward(&x, &g, n, None, &rstd, None, false);
        assert!(none.is_empty());
    }

    #[test]
    fn single_pass_statistics_survive_a_large_mean() {
        // f32 rows with mean 1000 and unit spread: naive E[x²] − E[x]² would lose all digits.
        let n = 512;
        let x: Vec<f32> = (0..2 * n).map(|i| 1000.0 + ((i * 7919) % 997) as f32 / 997.0 * 3.4 - 1.7).collect();
        let (mut out, mut mean, mut rstd) = (vec![0.0f32; 2 * n], vec![0.0f32; 2], vec![0.0f32; 2]);
        layer_norm_rows(&x, n, None, None, 1e-5, &mut out, &mut mean, &mut rstd);
        for r in 0..2 {
            let row: Vec<f64> = x[r * n..(r + 1) * n].iter().map(|&v| v as f64).collect();
            let mu = row.iter().sum::<f64>() / n as f64;
            let var = row.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / n as f64;
            assert!((mean[r] as f64 - mu).abs() < 1e-3, "mean {} vs {mu}", mean[r]);
            let want = 1.0 / (var + 1e-5).sqrt();
            assert!((rstd[r] as f64 - want).abs() < 1e-3 * want, "rstd {} vs {want}", rstd[r]);
        }
    }
}
