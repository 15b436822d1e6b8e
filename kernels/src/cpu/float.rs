//! The scalar types kernels compute in (f32 and f64) and the math they need.
//!
//! f32 uses branch-free polynomial `exp`/`erf` so loops vectorise; f64 uses libm for accuracy
//! (it is the dtype of gradient checks).

/// A floating-point element the CPU kernels compute in.
pub trait Float:
    num_traits::Float + Send + Sync + Default + std::fmt::Debug + std::iter::Sum + std::ops::AddAssign + std::ops::SubAssign + std::ops::MulAssign + 'static
{
    fn from_f64(v: f64) -> Self;
    fn as_f64(self) -> f64;
    /// e^x, vectorisable for f32 (≤ 2 ulp), exact libm for f64. Returns 0 for x below ≈ −87 (f32).
    fn fexp(self) -> Self;
    /// Error function.
    fn ferf(self) -> Self;
    /// 1 + erf(x), without cancellation for negative x (GELU's CDF is (1 + erf(x/√2))/2).
    fn one_plus_erf(self) -> Self;
    #[inline(always)]
    fn c(v: f64) -> Self {
        Self::from_f64(v)
    }
}

impl Float for f64 {
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn as_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn fexp(self) -> Self {
        self.exp()
    }
    #[inline(always)]
    fn ferf(self) -> Self {
        libm::erf(self)
    }
    #[inline(always)]
    fn one_plus_erf(self) -> Self {
        libm::erfc(-self)
    }
}

impl Float for f32 {
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn as_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn fexp(self) -> Self {
        exp_f32(self)
    }
    #[inline(always)]
    fn ferf(self) -> Self {
        erf_f32(self)
    }
    #[inline(always)]
    fn one_plus_erf(self) -> Self {
        one_plus_erf_f32(self)
    }
}

/// `x` as `&[f32]` when `T` is f32 (for the hand-vectorised f32 paths).
#[inline]
pub fn as_f32<T: 'static>(x: &[T]) -> Option<&[f32]> {
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
        // SAFETY: T is f32, so the slice already has this type.
        Some(unsafe { std::slice::from_raw_parts(x.as_ptr() as *const f32, x.len()) })
    } else {
        None
    }
}

/// `x` as `&mut [f32]` when `T` is f32.
#[inline]
pub fn as_f32_mut<T: 'static>(x: &mut [T]) -> Option<&mut [f32]> {
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
        // SAFETY: T is f32, so the slice already has this type.
        Some(unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr() as *mut f32, x.len()) })
    } else {
        None
    }
}

/// Branch-free e^x for f32: range reduction x = n·ln2 + r, a degree-7 polynomial for e^r,
/// and 2^n by adding n to the exponent bits. NaN in gives NaN out; −∞ gives 0; +∞ gives +∞.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const SHIFTER: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer
    let xc = x.clamp(-87.0, 88.5);
    let t = xc * LOG2E + SHIFTER;
    let n = t - SHIFTER;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let ni = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let v = f32::from_bits((p.to_bits() as i32).wrapping_add(ni << 23) as u32);
    let v = if x < -87.0 { 0.0 } else { v };
    let v = if x > 88.5 { f32::INFINITY } else { v };
    if x.is_nan() {
        x
    } else {
        v
    }
}

/// erf for f32 via erf(x) = 1 − poly(t)·e^(−x²), t = 1/(1 + p|x|) (Abramowitz & Stegun 7.1.26,
/// |error| ≤ 1.5e-7 in exact arithmetic), odd extension through `copysign`. In f32 the subtraction
/// costs a few ulps of 1.0 near 0, so the absolute error is below 1e-6 everywhere; that is a
/// relative error below 1e-6 for GELU, x·(1 + erf(x/√2))/2, which is what erf is used for. It is
/// deliberately one branch-free formula: a select between two approximations stops LLVM from
/// vectorising the loop (measured: 3× slower).
#[inline(always)]
pub fn erf_f32(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152_1 + t * 1.061_405_4))));
    (1.0 - poly * exp_f32(-a * a)).copysign(x)
}

/// erfc(a) for a ≥ 0 in f32: poly(t)·e^(−a²), t = 1/(1 + p·a) (Abramowitz & Stegun 7.1.26, the
/// formula PyTorch's vectorised erf uses), absolute error ≤ 1.5e-7 (plus f32 rounding).
#[inline(always)]
pub fn erfc_nonneg_f32(a: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152_1 + t * 1.061_405_4))));
    poly * exp_f32(-a * a)
}

/// 1 + erf(x) for f32: 2 − erfc(|x|) for x ≥ 0 and erfc(|x|) itself for x < 0, so no
/// cancellation happens on the left (GELU of negative inputs keeps an absolute error ≤ 1.5e-7·|x|/2). The two cases are blended with a 0/1
/// weight made from the sign bit, keeping the loop free of selects (and so vectorisable).
#[inline(always)]
pub fn one_plus_erf_f32(x: f32) -> f32 {
    let e = erfc_nonneg_f32(x.abs());
    let w = f32::from_bits((!x.to_bits() >> 31) * 0x3f80_0000); // 1.0 if sign bit clear, else 0.0
    w * (2.0 - e) + (1.0 - w) * e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_f32_matches_std() {
        let mut worst = 0.0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let e = x.exp();
            let rel = ((exp_f32(x) - e) / e).abs();
            worst = worst.max(rel);
            x += 0.01234;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-1000.0), 0.0);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
    }

    #[test]
    fn one_plus_erf_f32_is_accurate() {
        let mut x = -7.5f32;
        while x < 6.0 {
            let want = libm::erfc(-(x as f64));
            let got = one_plus_erf_f32(x) as f64;
            assert!((got - want).abs() <= 2e-7 + 1e-6 * want, "1+erf({x}) = {got} want {want}");
            x += 0.0031;
        }
    }

    #[test]
    fn erf_f32_matches_libm() {
        let mut x = -6.0f32;
        while x < 6.0 {
            let want = libm::erf(x as f64) as f32;
            assert!((erf_f32(x) - want).abs() < 1e-6, "erf({x}) = {} want {want}", erf_f32(x));
            x += 0.001;
        }
    }
}
