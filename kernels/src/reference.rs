//! Plain, obviously-correct loops. Slow on purpose: tests compare the fast kernels with these.

/// `a [m, k] · b [k, n]`, both contiguous row-major, accumulated in f64.
pub fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0;
            for p in 0..k {
                s += a[i * k + p] * b[p * n + j];
            }
            out[i * n + j] = s;
        }
    }
    out
}

/// Direct 2-D convolution: `x [n, c, h, w]`, `w [o, c/groups, kh, kw]`, symmetric zero padding.
/// Returns `[n, o, ho, wo]`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    x: &[f64],
    (n, c, h, wd): (usize, usize, usize, usize),
    w: &[f64],
    (o, kh, kw): (usize, usize, usize),
    stride: (usize, usize),
    pad: (usize, usize),
    groups: usize,
) -> Vec<f64> {
    let ho = (h + 2 * pad.0 - kh) / stride.0 + 1;
    let wo = (wd + 2 * pad.1 - kw) / stride.1 + 1;
    let cg = c / groups;
    let og = o / groups;
    let mut out = vec![0.0; n * o * ho * wo];
    for b in 0..n {
        for oc in 0..o {
            let g = oc / og;
            for y in 0..ho {
                for xx in 0..wo {
                    let mut s = 0.0;
                    for ic in 0..cg {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (y * stride.0 + ky) as isize - pad.0 as isize;
                                let ix = (xx * stride.1 + kx) as isize - pad.1 as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let xi = ((b * c + g * cg + ic) * h + iy as usize) * wd + ix as usize;
                                let wi = ((oc * cg + ic) * kh + ky) * kw + kx;
                                s += x[xi] * w[wi];
                            }
                        }
                    }
                    out[((b * o + oc) * ho + y) * wo + xx] = s;
                }
            }
        }
    }
    out
}

/// Softmax over rows of length `n`, in f64.
pub fn softmax_rows(x: &[f64], n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(n) {
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = row.iter().map(|v| (v - m).exp()).collect();
        let s: f64 = e.iter().sum();
        out.extend(e.iter().map(|v| v / s));
    }
    out
}
