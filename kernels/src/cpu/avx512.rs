//! AVX-512 versions of the AVX2 kernels in [`super::avx2`] that showed in profiles (exact GELU,
//! forward and backward): the same operations in the same order on 16 lanes instead of 8, so they
//! give the same bits, with the tail (fewer than 16 elements) left to the AVX2 version.
use std::arch::x86_64::*;

/// Whether this CPU runs the kernels in this module (AVX-512F, plus AVX2+FMA for the tails).
#[inline]
pub fn available() -> bool {
    std::is_x86_feature_detected!("avx512f") && super::avx2::available()
}

/// e^x on 16 lanes, as [`super::avx2::exp8`].
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn exp16(x: __m512) -> __m512 {
    let xc = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0)), _mm512_set1_ps(88.5));
    let shifter = _mm512_set1_ps(12_582_912.0);
    let t = _mm512_fmadd_ps(xc, _mm512_set1_ps(std::f32::consts::LOG2_E), shifter);
    let n = _mm512_sub_ps(t, shifter);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), xc);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
    let mut p = _mm512_set1_ps(1.0 / 5040.0);
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let ni = _mm512_sub_epi32(_mm512_castps_si512(t), _mm512_set1_epi32(0x4B40_0000));
    let v = _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(p), _mm512_slli_epi32::<23>(ni)));
    // Below −87 → 0, above 88.5 → +∞, NaN stays NaN.
    let v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(-87.0)), v, _mm512_setzero_ps());
    let v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, _mm512_set1_ps(88.5)), v, _mm512_set1_ps(f32::INFINITY));
    _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x), v, x)
}

/// 1 + erf(x) on 16 lanes, as the AVX2 version.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn one_plus_erf16(x: __m512) -> __m512 {
    let a = _mm512_abs_ps(x);
    let one = _mm512_set1_ps(1.0);
    let t = _mm512_div_ps(one, _mm512_fmadd_ps(a, _mm512_set1_ps(0.327_591_1), one));
    let mut p = _mm512_set1_ps(1.061_405_4);
    for c in [-1.453_152_1, 1.421_413_8, -0.284_496_74, 0.254_829_6] {
        p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(c));
    }
    let e = _mm512_mul_ps(_mm512_mul_ps(t, p), exp16(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), a), a)));
    let neg = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_setzero_ps());
    _mm512_mask_blend_ps(neg, _mm512_sub_ps(_mm512_set1_ps(2.0), e), e)
}

/// `out = x · (1 + erf(x/√2)) / 2` (exact GELU), as [`super::avx2::gelu`].
///
/// # Safety
/// The CPU must support AVX-512F, AVX2 and FMA ([`available`]).
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn gelu(x: &[f32], out: &mut [f32]) {
    let n = x.len().min(out.len());
    let mut i = 0;
    while i + 16 <= n {
        let v = _mm512_loadu_ps(x.as_ptr().add(i));
        let c = one_plus_erf16(_mm512_mul_ps(v, _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2)));
        _mm512_storeu_ps(out.as_mut_ptr().add(i), _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5), v), c));
        i += 16;
    }
    super::avx2::gelu(&x[i..n], &mut out[i..n]);
}

/// GELU backward `dx = g · (Φ(x) + x·φ(x))`, as [`super::avx2::gelu_backward`].
///
/// # Safety
/// The CPU must support AVX-512F, AVX2 and FMA ([`available`]).
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn gelu_backward(x: &[f32], g: &[f32], dx: &mut [f32]) {
    let n = dx.len();
    let mut i = 0;
    let inv_sqrt_2pi = _mm512_set1_ps(0.398_942_3);
    while i + 16 <= n {
        let v = _mm512_loadu_ps(x.as_ptr().add(i));
        let cdf = _mm512_mul_ps(_mm512_set1_ps(0.5), one_plus_erf16(_mm512_mul_ps(v, _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2))));
        let pdf = _mm512_mul_ps(inv_sqrt_2pi, exp16(_mm512_mul_ps(_mm512_set1_ps(-0.5), _mm512_mul_ps(v, v))));
        let d = _mm512_fmadd_ps(v, pdf, cdf);
        _mm512_storeu_ps(dx.as_mut_ptr().add(i), _mm512_mul_ps(_mm512_loadu_ps(g.as_ptr().add(i)), d));
        i += 16;
    }
    super::avx2::gelu_backward(&x[i..n], &g[i..n], &mut dx[i..n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs across the range, with the special values and a length that leaves a tail of 16 + 7.
    fn inputs() -> Vec<f32> {
        let mut v: Vec<f32> = (0..4000).map(|i| (i as f32 - 2000.0) * 0.0061).collect();
        v.extend([0.0, -0.0, 1e-30, -1e-30, 9.0, -9.0, 20.0, -20.0, 200.0, -200.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN]);
        v.extend((0..(39 - v.len() % 16)).map(|i| i as f32 * 0.37 - 3.0));
        v
    }

    #[test]
    fn gelu_matches_the_avx2_version_bit_for_bit() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512F (these kernels do not run here)");
            return;
        }
        let x = inputs();
        let g: Vec<f32> = (0..x.len()).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.3).collect();
        let (mut a, mut b) = (vec![0.0f32; x.len()], vec![0.0f32; x.len()]);
        unsafe {
            gelu(&x, &mut a);
            super::super::avx2::gelu(&x, &mut b);
        }
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a), bits(&b), "forward");
        unsafe {
            gelu_backward(&x, &g, &mut a);
            super::super::avx2::gelu_backward(&x, &g, &mut b);
        }
        assert_eq!(bits(&a), bits(&b), "backward");
    }
}
