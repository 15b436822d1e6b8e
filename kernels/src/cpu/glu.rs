//! SwiGLU's gate, `silu(a)·b` (LLaMA's feed-forward), forward and backward in one pass each.
//!
//! The formulas are those of [`UnaryOp::Silu`] and a product, applied in the same order, so the
//! fused results are bit-identical to `a.silu().mul(b)` and its two-op backward; only the
//! number of passes over memory (and of buffers) changes: 1 instead of 2 forward, 1 instead of 3
//! backward.
use super::elementwise::UnaryOp;
use super::float::Float;
use super::parallel::for_each_chunk_mut;
use super::simd::vectorized;
use rayon::prelude::*;

/// Elements per parallel work item.
const CHUNK: usize = 1 << 13;

/// `out = silu(a)·b` elementwise; all three slices have one length.
pub fn swiglu<T: Float>(a: &[T], b: &[T], out: &mut [T]) {
    assert!(a.len() == out.len() && b.len() == out.len(), "swiglu: lengths {} {} {}", a.len(), b.len(), out.len());
    for_each_chunk_mut(out, CHUNK, a.len() * 4, |ci, o| {
        let (a, b) = (&a[ci * CHUNK..ci * CHUNK + o.len()], &b[ci * CHUNK..ci * CHUNK + o.len()]);
        vectorized(
            #[inline(always)]
            || {
                for i in 0..o.len() {
                    o[i] = UnaryOp::Silu.forward(a[i]) * b[i];
                }
            },
        )
    });
}

/// Backward of [`swiglu`] given `g = dL/dout`: `da = silu'(a)·(g·b)` and `db = g·silu(a)`, each
/// written only where asked for.
pub fn swiglu_backward<T: Float>(a: &[T], b: &[T], g: &[T], da: Option<&mut [T]>, db: Option<&mut [T]>) {
    let n = a.len();
    assert!(b.len() == n && g.len() == n, "swiglu_backward: lengths {} {} {}", n, b.len(), g.len());
    let one_side = |ci: usize, da: Option<&mut [T]>, db: Option<&mut [T]>| {
        let lo = ci * CHUNK;
        vectorized(
            #[inline(always)]
            || {
                if let Some(da) = da {
                    let hi = lo + da.len();
                    let (a, b, g) = (&a[lo..hi], &b[lo..hi], &g[lo..hi]);
                    for i in 0..da.len() {
                        da[i] = UnaryOp::Silu.backward(a[i], T::zero(), g[i] * b[i]);
                    }
                }
                if let Some(db) = db {
                    let hi = lo + db.len();
                    let (a, g) = (&a[lo..hi], &g[lo..hi]);
                    for i in 0..db.len() {
                        db[i] = g[i] * UnaryOp::Silu.forward(a[i]);
                    }
                }
            },
        )
    };
    let parallel = super::parallel::worth_parallel(n * 6);
    match (da, db) {
        (Some(da), Some(db)) if parallel => {
            da.par_chunks_mut(CHUNK).zip(db.par_chunks_mut(CHUNK)).enumerate().for_each(|(ci, (x, y))| one_side(ci, Some(x), Some(y)))
        }
        (Some(da), Some(db)) => da.chunks_mut(CHUNK).zip(db.chunks_mut(CHUNK)).enumerate().for_each(|(ci, (x, y))| one_side(ci, Some(x), Some(y))),
        (Some(da), None) => for_each_chunk_mut(da, CHUNK, n * 4, |ci, x| one_side(ci, Some(x), None)),
        (None, Some(db)) => for_each_chunk_mut(db, CHUNK, n * 3, |ci, y| one_side(ci, None, Some(y))),
        (None, None) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused kernels give the same bits as the two unary/binary steps they replace, at a
    /// length with a partial last chunk and a vector tail.
    #[test]
    fn swiglu_matches_silu_then_product_bit_for_bit() {
        let n = CHUNK + 37;
        let a: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.13).collect();
        let b: Vec<f32> = (0..n).map(|i| ((i * 53 % 89) as f32 - 44.0) * 0.07).collect();
        let g: Vec<f32> = (0..n).map(|i| ((i * 29 % 61) as f32 - 30.0) * 0.05).collect();
        let mut out = vec![0.0; n];
        swiglu(&a, &b, &mut out);
        let (mut da, mut db) = (vec![0.0; n], vec![0.0; n]);
        swiglu_backward(&a, &b, &g, Some(&mut da), Some(&mut db));
        let mut da_only = vec![0.0; n];
        swiglu_backward(&a, &b, &g, Some(&mut da_only), None);
        for i in 0..n {
            let s = UnaryOp::Silu.forward(a[i]);
            assert_eq!(out[i].to_bits(), (s * b[i]).to_bits(), "forward at {i}");
            assert_eq!(da[i].to_bits(), UnaryOp::Silu.backward(a[i], s, g[i] * b[i]).to_bits(), "da at {i}");
            assert_eq!(db[i].to_bits(), (g[i] * s).to_bits(), "db at {i}");
            assert_eq!(da_only[i].to_bits(), da[i].to_bits(), "da alone at {i}");
        }
    }
}
