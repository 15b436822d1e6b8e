//! AVX-512 versions of AVX2 kernels that showed in profiles: exact GELU (forward and backward;
//! the tail of fewer than 16 elements is left to [`super::avx2`]) and the attention kernels' small
//! products ([`small_mm`], behind `xattn::small_mm`). Each does the same operations in the same
//! order as its AVX2 version on 16 lanes instead of 8, so it gives the same bits.
use super::xattn::MmArgs;
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

/// Whether `xattn::small_mm` runs [`small_mm`]: [`available`], and `FLAMINGO_SMALL_MM_AVX512` is
/// not `0` (which keeps the AVX2 kernel, for side-by-side timing).
pub fn small_mm_available() -> bool {
    use std::sync::OnceLock;
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| available() && std::env::var("FLAMINGO_SMALL_MM_AVX512").as_deref() != Ok("0"))
}

/// One block of `ROWS` rows × `W` vectors of 16 columns of `C [+]= A·B` (the last vector masked
/// by `tail`, all ones for full vectors). Every element is one FMA chain over p from zero, then
/// added to C: the AVX2 kernel's order.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn mm_block<const ROWS: usize, const W: usize>(k: usize, args: MmArgs, tail: __mmask16) {
    let MmArgs { a, ars, acs, b, ldb, c, ldc, accumulate, stream } = args;
    let mut s = [[_mm512_setzero_ps(); W]; ROWS];
    for p in 0..k {
        let bp = b.add(p * ldb);
        let mut bv = [_mm512_setzero_ps(); W];
        for (w, x) in bv.iter_mut().enumerate() {
            *x = if w + 1 == W { _mm512_maskz_loadu_ps(tail, bp.add(16 * w)) } else { _mm512_loadu_ps(bp.add(16 * w)) };
        }
        let ap = a.add(p * acs);
        for (r, sr) in s.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*ap.add(r * ars));
            for w in 0..W {
                sr[w] = _mm512_fmadd_ps(av, bv[w], sr[w]);
            }
        }
    }
    for (r, sr) in s.iter().enumerate() {
        for (w, &x) in sr.iter().enumerate() {
            let cp = c.add(r * ldc + 16 * w);
            let m = if w + 1 == W { tail } else { 0xFFFF };
            let v = if accumulate { _mm512_add_ps(_mm512_maskz_loadu_ps(m, cp), x) } else { x };
            if stream && m == 0xFFFF {
                _mm512_stream_ps(cp, v);
            } else {
                _mm512_mask_storeu_ps(cp, m, v);
            }
        }
    }
}

/// Full row blocks of one strip of `m` rows in blocks of `r` (see [`mm_strip`]).
fn full_blocks(m: usize, r: usize) -> usize {
    let full = m / r;
    if full > 0 && (m % r == 1 || m % r == 2) {
        full - 1
    } else {
        full
    }
}

/// Rows per register block of a strip `W` vectors wide (`ROWS[W - 1]`): about 24 accumulators.
/// [`small_mm`] and [`prefetch_steps`] both read it.
const ROWS: [usize; 4] = [12, 12, 8, 6];

/// How many [`super::prefetch::step`]s [`small_mm`] takes for an `m × n` product: one per full
/// row block of every column strip. Callers pace a prefetch queue by it.
pub(super) fn prefetch_steps(m: usize, n: usize) -> usize {
    let last = match n % 64 {
        0 => 0,
        left => full_blocks(m, ROWS[left.div_ceil(16) - 1]),
    };
    n / 64 * full_blocks(m, ROWS[3]) + last
}

/// All rows of one strip of `W` column vectors: blocks of `R` rows, then the remainder.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn mm_strip<const W: usize, const R: usize>(m: usize, k: usize, args: MmArgs, tail: __mmask16) {
    // A remainder of 1 or 2 rows borrows one block's rows (→ two blocks of about R/2 + 1), since
    // a 1- or 2-row block does few FMAs per load (a run of 32 tokens is 5·6 + 2).
    let full = full_blocks(m, R);
    let mut i = 0;
    for _ in 0..full {
        super::prefetch::step();
        mm_block::<R, W>(k, args.rows_from(i), tail);
        i += R;
    }
    if m - i > R {
        let half = (m - i) / 2;
        rest_block::<W>(half, k, args.rows_from(i), tail);
        i += half;
    }
    rest_block::<W>(m - i, k, args.rows_from(i), tail);
}

/// One block of `rows < 12` rows (none for 0).
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn rest_block<const W: usize>(rows: usize, k: usize, args: MmArgs, tail: __mmask16) {
    macro_rules! rest {
        ($($r:literal)*) => {
            match rows {
                $($r => mm_block::<$r, W>(k, args, tail),)*
                _ => {}
            }
        };
    }
    rest!(1 2 3 4 5 6 7 8 9 10 11);
}

/// `C (m×n) = [C +] A (m×k) · B (k×n)` for the operands `args` (see `xattn::MmArgs`): the AVX-512
/// version of `xattn::small_mm` (same bits). Column strips of 64 (6 rows × 4 vectors: 24
/// accumulators), then one strip of 1–4 vectors for the rest, its last vector masked.
///
/// # Safety
/// The CPU must support AVX-512F, AVX2 and FMA ([`available`]); the operands with their strides
/// must stay inside live allocations, and `c` must not alias them.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn small_mm(m: usize, n: usize, k: usize, args: MmArgs) {
    let mut j = 0;
    while j + 64 <= n {
        mm_strip::<4, { ROWS[3] }>(m, k, args.cols_from(j), 0xFFFF);
        j += 64;
    }
    // The last strip is as wide as what is left, its last vector masked: a run of 24 tokens as
    // one 2-vector strip (24 accumulators) rather than a 16 and a masked 8 (6 each), which cost
    // more than 32 columns did (measured: 64×24×64 2.25 µs against 1.67 µs for 64×32×64; 64×56×64
    // 4.00 µs against 3.42 µs for 64×64×64).
    let left = n - j;
    let tail = |lanes: usize| if lanes == 16 { 0xFFFF } else { (1u16 << lanes) - 1 };
    match left {
        0 => {}
        1..=16 => mm_strip::<1, { ROWS[0] }>(m, k, args.cols_from(j), tail(left)),
        17..=32 => mm_strip::<2, { ROWS[1] }>(m, k, args.cols_from(j), tail(left - 16)),
        33..=48 => mm_strip::<3, { ROWS[2] }>(m, k, args.cols_from(j), tail(left - 32)),
        _ => mm_strip::<4, { ROWS[3] }>(m, k, args.cols_from(j), tail(left - 48)),
    }
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

    /// `prefetch_steps` counts the steps `small_mm` really takes (one queued line per step).
    #[test]
    fn prefetch_steps_counts_the_products_steps() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512F (this kernel does not run here)");
            return;
        }
        let region = vec![0f32; 1 << 16];
        for &(m, n) in &[(64, 64), (64, 32), (32, 64), (56, 24), (64, 40), (13, 100), (3, 200), (64, 256)] {
            let k = 8;
            let (a, b, mut c) = (vec![0.5f32; m * k], vec![0.25f32; k * n], vec![0f32; m * n]);
            super::super::prefetch::set(&[(region.as_ptr(), region.len())], 1);
            let before = super::super::prefetch::pending();
            unsafe {
                small_mm(m, n, k, MmArgs { a: a.as_ptr(), ars: k, acs: 1, b: b.as_ptr(), ldb: n, c: c.as_mut_ptr(), ldc: n, accumulate: false, stream: false });
            }
            let taken = before - super::super::prefetch::pending();
            super::super::prefetch::clear();
            assert_eq!(taken, prefetch_steps(m, n), "{m} × {n}");
        }
    }

    #[test]
    fn small_mm_matches_the_avx2_kernel_bit_for_bit() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512F (this kernel does not run here)");
            return;
        }
        // Column counts across every strip kind and tail; row counts across every remainder;
        // A both row-major and transposed (acs ≠ 1); C overwritten and accumulated.
        for &(m, n, k) in &[(1, 1, 1), (6, 64, 64), (13, 100, 7), (64, 256, 64), (25, 47, 33), (12, 31, 5), (7, 17, 64), (64, 192, 64), (3, 80, 16)] {
            for transposed in [false, true] {
                let a: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013).collect();
                let b: Vec<f32> = (0..k * (n + 3)).map(|i| ((i * 53 % 89) as f32 - 44.0) * 0.021).collect();
                let (ars, acs) = if transposed { (1, m) } else { (k, 1) };
                for accumulate in [false, true] {
                    let start: Vec<f32> = (0..m * (n + 5)).map(|i| (i % 7) as f32 * 0.5).collect();
                    let (mut wide, mut narrow) = (start.clone(), start.clone());
                    unsafe {
                        let args = |c: *mut f32| MmArgs { a: a.as_ptr(), ars, acs, b: b.as_ptr(), ldb: n + 3, c, ldc: n + 5, accumulate, stream: false };
                        small_mm(m, n, k, args(wide.as_mut_ptr()));
                        crate::cpu::xattn::avx2_small_mm(m, n, k, args(narrow.as_mut_ptr()));
                    }
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&wide), bits(&narrow), "m {m}, n {n}, k {k}, transposed {transposed}, accumulate {accumulate}");
                }
            }
        }
    }
}
