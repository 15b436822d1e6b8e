//! Hand-vectorised AVX2+FMA f32 kernels for the transcendental-heavy loops (exp, GELU), where
//! LLVM's auto-vectoriser gives up (measured: erf-based GELU stayed scalar, ~6× slower).
//! Every function here has the same math as its portable counterpart in `float.rs`, so results
//! agree to a few ulps; callers check `available()` first.
#![cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Whether this CPU runs the kernels in this module.
#[inline]
pub fn available() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// e^x on 8 lanes: the same range reduction and degree-7 polynomial as `float::exp_f32`.
///
/// # Safety
/// The CPU must support AVX2 and FMA ([`available`]).
#[inline]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn exp8(x: __m256) -> __m256 {
    let xc = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0)), _mm256_set1_ps(88.5));
    let shifter = _mm256_set1_ps(12_582_912.0);
    let t = _mm256_fmadd_ps(xc, _mm256_set1_ps(std::f32::consts::LOG2_E), shifter);
    let n = _mm256_sub_ps(t, shifter);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), xc);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
    let mut p = _mm256_set1_ps(1.0 / 5040.0);
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let ni = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(0x4B40_0000));
    let v = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), _mm256_slli_epi32(ni, 23)));
    // Below −87 → 0, above 88.5 → +∞, NaN stays NaN.
    let v = _mm256_blendv_ps(v, _mm256_setzero_ps(), _mm256_cmp_ps(x, _mm256_set1_ps(-87.0), _CMP_LT_OQ));
    let v = _mm256_blendv_ps(v, _mm256_set1_ps(f32::INFINITY), _mm256_cmp_ps(x, _mm256_set1_ps(88.5), _CMP_GT_OQ));
    _mm256_blendv_ps(v, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q))
}

/// 1 + erf(x) on 8 lanes, as `float::one_plus_erf_f32`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn one_plus_erf8(x: __m256) -> __m256 {
    let sign = _mm256_set1_ps(-0.0);
    let a = _mm256_andnot_ps(sign, x);
    let one = _mm256_set1_ps(1.0);
    let t = _mm256_div_ps(one, _mm256_fmadd_ps(a, _mm256_set1_ps(0.327_591_1), one));
    let mut p = _mm256_set1_ps(1.061_405_4);
    for c in [-1.453_152_1, 1.421_413_8, -0.284_496_74, 0.254_829_6] {
        p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(c));
    }
    let e = _mm256_mul_ps(_mm256_mul_ps(t, p), exp8(_mm256_mul_ps(_mm256_sub_ps(_mm256_setzero_ps(), a), a)));
    let neg = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ);
    _mm256_blendv_ps(_mm256_sub_ps(_mm256_set1_ps(2.0), e), e, neg)
}

/// `out = x · (1 + erf(x/√2)) / 2` (exact GELU).
///
/// # Safety
/// The CPU must support AVX2 and FMA ([`available`]).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn gelu(x: &[f32], out: &mut [f32]) {
    let n = x.len().min(out.len());
    let mut i = 0;
    while i + 8 <= n {
        let v = _mm256_loadu_ps(x.as_ptr().add(i));
        let c = one_plus_erf8(_mm256_mul_ps(v, _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2)));
        _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5), v), c));
        i += 8;
    }
    for j in i..n {
        out[j] = 0.5 * x[j] * super::float::one_plus_erf_f32(x[j] * std::f32::consts::FRAC_1_SQRT_2);
    }
}

/// GELU backward: `dx = g · (Φ(x) + x·φ(x))`.
///
/// # Safety
/// The CPU must support AVX2 and FMA ([`available`]).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn gelu_backward(x: &[f32], g: &[f32], dx: &mut [f32]) {
    let n = dx.len();
    let mut i = 0;
    let inv_sqrt_2pi = _mm256_set1_ps(0.398_942_3);
    while i + 8 <= n {
        let v = _mm256_loadu_ps(x.as_ptr().add(i));
        let cdf = _mm256_mul_ps(_mm256_set1_ps(0.5), one_plus_erf8(_mm256_mul_ps(v, _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2))));
        let pdf = _mm256_mul_ps(inv_sqrt_2pi, exp8(_mm256_mul_ps(_mm256_set1_ps(-0.5), _mm256_mul_ps(v, v))));
        let d = _mm256_fmadd_ps(v, pdf, cdf);
        _mm256_storeu_ps(dx.as_mut_ptr().add(i), _mm256_mul_ps(_mm256_loadu_ps(g.as_ptr().add(i)), d));
        i += 8;
    }
    for j in i..n {
        let cdf = 0.5 * super::float::one_plus_erf_f32(x[j] * std::f32::consts::FRAC_1_SQRT_2);
        let pdf = 0.398_942_3 * super::float::exp_f32(-0.5 * x[j] * x[j]);
        dx[j] = g[j] * (cdf + x[j] * pdf);
    }
}

/// `out[i] = e^(x[i] − m)`; returns Σ out (8 lanes summed in a fixed order).
///
/// # Safety
/// The CPU must support AVX2 and FMA ([`available`]).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn exp_sub_sum(x: &[f32], m: f32, out: &mut [f32]) -> f32 {
    let n = x.len();
    let mv = _mm256_set1_ps(m);
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x.as_ptr().add(i)), mv));
        _mm256_storeu_ps(out.as_mut_ptr().add(i), e);
        acc = _mm256_add_ps(acc, e);
        i += 8;
    }
    let mut lanes = [0.0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
    let mut s = ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]));
    for j in i..n {
        out[j] = super::float::exp_f32(x[j] - m);
        s += out[j];
    }
    s
}

/// `(Σ (x − s), Σ (x − s)²)` with 8 lanes combined in a fixed order (layer-norm statistics).
///
/// # Safety
/// The CPU must support AVX2 and FMA ([`available`]).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn shifted_sums(x: &[f32], shift: f32) -> (f32, f32) {
    let n = x.len();
    let sv = _mm256_set1_ps(shift);
    let (mut a, mut b) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    while i + 8 <= n {
        let d = _mm256_sub_ps(_mm256_loadu_ps(x.as_ptr().add(i)), sv);
        a = _mm256_add_ps(a, d);
        b = _mm256_fmadd_ps(d, d, b);
        i += 8;
    }
    let fold = |v: __m256| {
        let mut l = [0.0f32; 8];
        _mm256_storeu_ps(l.as_mut_ptr(), v);
        ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
    };
    let (mut sa, mut sb) = (fold(a), fold(b));
    for &v in &x[i..] {
        let d = v - shift;
        sa += d;
        sb += d * d;
    }
    (sa, sb)
}

/// Max of a slice (NaN-propagating is not needed here: callers handle NaN rows by the result).
///
/// # Safety
/// The CPU must support AVX2 and FMA ([`available`]).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn max(x: &[f32]) -> f32 {
    let n = x.len();
    let mut acc = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut i = 0;
    while i + 8 <= n {
        acc = _mm256_max_ps(acc, _mm256_loadu_ps(x.as_ptr().add(i)));
        i += 8;
    }
    let mut lanes = [0.0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
    let mut m = lanes.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for &v in &x[i..] {
        m = m.max(v);
    }
    m
}

/// Transposes 8 rows of 8 floats (the GEMM's packing and the cross-attention's K transposes).
///
/// # Safety
/// The CPU must support AVX2 and FMA ([`available`]).
#[inline]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(s0, s4),
        _mm256_permute2f128_ps::<0x20>(s1, s5),
        _mm256_permute2f128_ps::<0x20>(s2, s6),
        _mm256_permute2f128_ps::<0x20>(s3, s7),
        _mm256_permute2f128_ps::<0x31>(s0, s4),
        _mm256_permute2f128_ps::<0x31>(s1, s5),
        _mm256_permute2f128_ps::<0x31>(s2, s6),
        _mm256_permute2f128_ps::<0x31>(s3, s7),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_portable_versions() {
        if !available() {
            eprintln!("skipped: no AVX2 on this CPU");
            return;
        }
        let x: Vec<f32> = (0..1003).map(|i| (i as f32 - 500.0) * 0.017).collect();
        let mut a = vec![0.0; x.len()];
        unsafe { gelu(&x, &mut a) };
        for (i, &v) in x.iter().enumerate() {
            let want = 0.5 * v * crate::cpu::float::one_plus_erf_f32(v * std::f32::consts::FRAC_1_SQRT_2);
            assert!((a[i] - want).abs() <= 1e-6 * want.abs() + 1e-12, "gelu({v}): {} vs {want}", a[i]);
        }
        let mut e = vec![0.0; x.len()];
        let s = unsafe { exp_sub_sum(&x, 1.0, &mut e) };
        let want: f64 = x.iter().map(|&v| ((v - 1.0) as f64).exp()).sum();
        assert!(((s as f64) - want).abs() < 1e-5 * want);
        assert_eq!(unsafe { max(&x) }, x[x.len() - 1]);
        let special = [f32::NEG_INFINITY, -1000.0, 0.0, 1000.0, f32::NAN, 1.0, 2.0, 3.0];
        let mut o = [0.0f32; 8];
        unsafe { _mm256_storeu_ps(o.as_mut_ptr(), exp8(_mm256_loadu_ps(special.as_ptr()))) };
        assert_eq!(&o[..4], &[0.0, 0.0, 1.0, f32::INFINITY]);
        assert!(o[4].is_nan());
    }
}
