//! Fused tanh-gated residual: `y = x + tanh(α)·f` (Flamingo's gated cross-attention blocks), and
//! its backward `dx = g`, `df = tanh(α)·g`, `dα = (1 − tanh²α)·Σ g∘f` in one pass over g and f.
use super::float::Float;
use super::parallel::worth_parallel;
use super::reduce::sum_slice;
use super::simd::vectorized;
use rayon::prelude::*;

/// Elements per chunk: chunk boundaries (and so the order of the dα sum) never depend on the
/// thread count.
const CHUNK: usize = 1 << 14;

/// `y = x + gate·f` with `gate = tanh(α)` given.
pub fn gated_residual<T: Float>(x: &[T], f: &[T], gate: T, y: &mut [T]) {
    assert!(x.len() == y.len() && f.len() == y.len(), "gated_residual: lengths differ");
    let body = |(yc, (xc, fc)): (&mut [T], (&[T], &[T]))| {
        vectorized(
            #[inline(always)]
            || {
                for i in 0..yc.len() {
                    yc[i] = xc[i] + gate * fc[i];
                }
            },
        )
    };
    if worth_parallel(y.len() * 2) {
        y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK).zip(f.par_chunks(CHUNK))).for_each(body);
    } else {
        y.chunks_mut(CHUNK).zip(x.chunks(CHUNK).zip(f.chunks(CHUNK))).for_each(body);
    }
}

/// Backward: writes `df = gate·g` (when asked) and returns `Σ g∘f` (multiply by `1 − gate²` for
/// dα). The sum is taken per chunk with fixed-order partials, then over chunks in order.
pub fn gated_residual_backward<T: Float>(g: &[T], f: &[T], gate: T, df: Option<&mut [T]>) -> T {
    assert_eq!(g.len(), f.len(), "gated_residual_backward: lengths differ");
    let partial = |gc: &[T], fc: &[T], dc: Option<&mut [T]>| -> T {
        vectorized(
            #[inline(always)]
            || {
                let mut acc = [T::zero(); 8];
                let n8 = gc.len() / 8 * 8;
                if let Some(dc) = dc {
                    for i in 0..gc.len() {
                        dc[i] = gate * gc[i];
                    }
                }
                for i in (0..n8).step_by(8) {
                    for l in 0..8 {
                        acc[l] += gc[i + l] * fc[i + l];
                    }
                }
                let mut tail = T::zero();
                for i in n8..gc.len() {
                    tail += gc[i] * fc[i];
                }
                sum_slice(&acc) + tail
            },
        )
    };
    let parts: Vec<T> = match df {
        Some(df) => {
            assert_eq!(df.len(), g.len(), "gated_residual_backward: df length");
            if worth_parallel(g.len() * 3) {
                df.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK).zip(f.par_chunks(CHUNK))).map(|(d, (gc, fc))| partial(gc, fc, Some(d))).collect()
            } else {
                df.chunks_mut(CHUNK).zip(g.chunks(CHUNK).zip(f.chunks(CHUNK))).map(|(d, (gc, fc))| partial(gc, fc, Some(d))).collect()
            }
        }
        None => {
            if worth_parallel(g.len() * 2) {
                g.par_chunks(CHUNK).zip(f.par_chunks(CHUNK)).map(|(gc, fc)| partial(gc, fc, None)).collect()
            } else {
                g.chunks(CHUNK).zip(f.chunks(CHUNK)).map(|(gc, fc)| partial(gc, fc, None)).collect()
            }
        }
    };
    parts.into_iter().fold(T::zero(), |a, b| a + b)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn gated_residual_matches_the_formula_and_its_derivatives() {
        let n = 40_000; // several chunks
        let x: Vec<f64> = (0..n).map(|i| ((i * 37 % 101) as f64) / 50.0 - 1.0).collect();
        let f: Vec<f64> = (0..n).map(|i| ((i * 53 % 97) as f64) / 40.0 - 1.2).collect();
        let g: Vec<f64> = (0..n).map(|i| ((i * 29 % 89) as f64) / 30.0 - 1.5).collect();
        let gate = 0.3f64.tanh();
        let mut y = vec![0.0; n];
        gated_residual(&x, &f, gate, &mut y);
        assert!(y.iter().zip(x.iter().zip(&f)).all(|(y, (x, f))| (y - (x + gate * f)).abs() < 1e-12));
        let mut df = vec![0.0; n];
        let s = gated_residual_backward(&g, &f, gate, Some(&mut df));
        let want: f64 = g.iter().zip(&f).map(|(a, b)| a * b).sum();
        assert!((s - want).abs() < 1e-9 * want.abs().max(1.0), "{s} vs {want}");
        assert!(df.iter().zip(&g).all(|(d, g)| (d - gate * g).abs() < 1e-12));
        assert_eq!(gated_residual_backward(&g, &f, gate, None), s);
    }
}
