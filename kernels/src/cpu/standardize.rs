//! Fused weight standardisation (NFNet's scaled WS conv weights, SPEC §2.1), per output channel
//! (row of `n` fan-in weights): `y = gain · (w − μ) · s` with `s = u^(−1/2)`, where
//! `u = n·(var + eps)` (timm's `ScaledStdConv2d`: `(w − μ)/sqrt(var + eps)/sqrt(n)`) or
//! `u = max(n·var, floor)` (DeepMind's `rsqrt(max(var·fan_in, 1e-4))`); biased variance.
//!
//! Backward, with `c = w − μ`: `dgain = Σ dy·c·s`; `dc = dy·gain·s − (Σ dy·gain·c)·s³·c` (the
//! second term only while the variance is not clamped), then `dw = dc − mean(dc)`.
use super::float::Float;
use super::parallel::worth_parallel;
use rayon::prelude::*;

/// How `u` (the squared inverse scale) is formed from the row variance.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StdScale {
    /// `u = n·(var + eps)`.
    Timm { eps: f64 },
    /// `u = max(n·var, floor)`.
    DeepMind { floor: f64 },
}

impl StdScale {
    /// `(s, active)`: the scale and whether it depends on the variance.
    #[inline]
    fn scale<T: Float>(self, var: T, n: usize) -> (T, bool) {
        let nf = T::c(n as f64);
        match self {
            StdScale::Timm { eps } => (T::one() / (nf * (var + T::c(eps))).sqrt(), true),
            StdScale::DeepMind { floor } => {
                let u = nf * var;
                if u > T::c(floor) {
                    (T::one() / u.sqrt(), true)
                } else {
                    (T::one() / T::c(floor).sqrt(), false)
                }
            }
        }
    }
}

fn rows_apply<T: Float>(rows: usize, n: usize, out: &mut [T], f: impl Fn(usize, &mut [T]) + Sync + Send) {
    if worth_parallel(rows * n * 4) {
        out.par_chunks_mut(n.max(1)).enumerate().for_each(|(r, o)| f(r, o));
    } else {
        out.chunks_mut(n.max(1)).enumerate().for_each(|(r, o)| f(r, o));
    }
}

/// Forward over `w [rows, n]` and `gain [rows]`: writes `y [rows, n]`.
pub fn standardize_rows<T: Float>(w: &[T], gain: &[T], rows: usize, n: usize, mode: StdScale, y: &mut [T]) {
    assert!(w.len() == rows * n && y.len() == rows * n && gain.len() == rows, "standardize_rows: lengths");
    rows_apply(rows, n, y, |r, yr| {
        let wr = &w[r * n..(r + 1) * n];
        let nf = T::c(n as f64);
        let mean = wr.iter().fold(T::zero(), |a, &b| a + b) / nf;
        let var = wr.iter().fold(T::zero(), |a, &b| a + (b - mean) * (b - mean)) / nf;
        let (s, _) = mode.scale(var, n);
        let k = gain[r] * s;
        for (o, &x) in yr.iter_mut().zip(wr) {
            *o = (x - mean) * k;
        }
    });
}

/// Backward: writes `dw [rows, n]` and returns `dgain [rows]`.
pub fn standardize_rows_backward<T: Float>(w: &[T], gain: &[T], dy: &[T], rows: usize, n: usize, mode: StdScale, dw: &mut [T]) -> Vec<T> {
    assert!(w.len() == rows * n && dy.len() == rows * n && dw.len() == rows * n && gain.len() == rows, "standardize_rows_backward: lengths");
    let mut dgain = vec![T::zero(); rows];
    let nf = T::c(n as f64);
    let per_row = |r: usize, dwr: &mut [T]| -> T {
        let (wr, dyr) = (&w[r * n..(r + 1) * n], &dy[r * n..(r + 1) * n]);
        let mean = wr.iter().fold(T::zero(), |a, &b| a + b) / nf;
        let var = wr.iter().fold(T::zero(), |a, &b| a + (b - mean) * (b - mean)) / nf;
        let (s, active) = mode.scale(var, n);
        let g = gain[r];
        let mut dot = T::zero(); // Σ dy·c
        for (&x, &d) in wr.iter().zip(dyr) {
            dot += d * (x - mean);
        }
        let k3 = if active { g * dot * s * s * s } else { T::zero() };
        let mut sum = T::zero();
        for j in 0..n {
            let c = wr[j] - mean;
            let v = dyr[j] * g * s - k3 * c;
            dwr[j] = v;
            sum += v;
        }
        let mdc = sum / nf;
        for v in dwr.iter_mut() {
            *v -= mdc;
        }
        dot * s
    };
    if worth_parallel(rows * n * 6) {
        dw.par_chunks_mut(n.max(1)).zip(dgain.par_iter_mut()).enumerate().for_each(|(r, (d, dg))| *dg = per_row(r, d));
    } else {
        dw.chunks_mut(n.max(1)).zip(dgain.iter_mut()).enumerate().for_each(|(r, (d, dg))| *dg = per_row(r, d));
    }
    dgain
}
