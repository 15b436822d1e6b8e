//! Gathering and scatter-adding slices along the middle axis of `[outer, n, inner]`.
use super::float::Float;

/// `out[o, j, :] = x[o, idx[j], :]` for a contiguous `x` of `[outer, n, inner]`.
/// Indices must already be validated (< n).
pub fn index_select_mid<T: Copy + Send + Sync>(x: &[T], outer: usize, n: usize, inner: usize, idx: &[usize], out: &mut [T]) {
    let m = idx.len();
    assert_eq!(out.len(), outer * m * inner);
    for o in 0..outer {
        for (j, &i) in idx.iter().enumerate() {
            debug_assert!(i < n);
            let src = &x[(o * n + i) * inner..(o * n + i + 1) * inner];
            out[(o * m + j) * inner..(o * m + j + 1) * inner].copy_from_slice(src);
        }
    }
}

/// Backward of [`index_select_mid`]: `dx[o, idx[j], :] += g[o, j, :]`, in index order
/// (deterministic; repeated indices accumulate).
pub fn index_add_mid<T: Float>(g: &[T], outer: usize, n: usize, inner: usize, idx: &[usize], dx: &mut [T]) {
    let m = idx.len();
    assert_eq!(dx.len(), outer * n * inner);
    for o in 0..outer {
        for (j, &i) in idx.iter().enumerate() {
            let src = &g[(o * m + j) * inner..(o * m + j + 1) * inner];
            let dst = &mut dx[(o * n + i) * inner..(o * n + i + 1) * inner];
            for (d, &s) in dst.iter_mut().zip(src) {
                *d += s;
            }
        }
    }
}
