//! Average pooling over `[n·c, h, w]` planes (no padding; windows fully inside the input).
use super::float::Float;
use super::parallel::for_each_chunk_mut;

/// Output size of a pooling/convolution window.
#[inline]
pub fn out_size(input: usize, k: usize, stride: usize) -> usize {
    (input - k) / stride + 1
}

/// `out[p, y, x] = mean of x[p, y·s .. y·s+k, x·s .. x·s+k]` for each of `planes` planes.
pub fn avg_pool2d<T: Float>(x: &[T], planes: usize, h: usize, w: usize, k: (usize, usize), s: (usize, usize), out: &mut [T]) {
    let (ho, wo) = (out_size(h, k.0, s.0), out_size(w, k.1, s.1));
    assert_eq!(out.len(), planes * ho * wo);
    let inv = T::one() / T::c((k.0 * k.1) as f64);
    for_each_chunk_mut(out, ho * wo, x.len(), |p, o| {
        let xp = &x[p * h * w..(p + 1) * h * w];
        for oy in 0..ho {
            for ox in 0..wo {
                let mut acc = T::zero();
                for ky in 0..k.0 {
                    let row = &xp[(oy * s.0 + ky) * w + ox * s.1..];
                    for v in &row[..k.1] {
                        acc += *v;
                    }
                }
                o[oy * wo + ox] = acc * inv;
            }
        }
    });
}

/// Backward of [`avg_pool2d`]: spreads each output gradient evenly over its window.
pub fn avg_pool2d_backward<T: Float>(g: &[T], planes: usize, h: usize, w: usize, k: (usize, usize), s: (usize, usize), dx: &mut [T]) {
    let (ho, wo) = (out_size(h, k.0, s.0), out_size(w, k.1, s.1));
    assert_eq!(dx.len(), planes * h * w);
    let inv = T::one() / T::c((k.0 * k.1) as f64);
    for_each_chunk_mut(dx, h * w, dx.len(), |p, d| {
        d.iter_mut().for_each(|v| *v = T::zero());
        let gp = &g[p * ho * wo..(p + 1) * ho * wo];
        for oy in 0..ho {
            for ox in 0..wo {
                let gv = gp[oy * wo + ox] * inv;
                for ky in 0..k.0 {
                    let base = (oy * s.0 + ky) * w + ox * s.1;
                    for v in &mut d[base..base + k.1] {
                        *v += gv;
                    }
                }
            }
        }
    });
}
