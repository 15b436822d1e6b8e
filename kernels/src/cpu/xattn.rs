//! Fused masked cross-attention (SPEC §2.5): text tokens attend to the R visual tokens of one
//! medium (or of all media seen so far), f32, forward and flash-style backward.
//!
//! Layouts (row-major, contiguous): `q`, `o`, `dq`, `do` are `[B, T, H, D]`; `k`, `v`, `dk`, `dv`
//! are `[B, M, R, H, D]`; `media` is `[B, T]` with 0 = "no image at or before this token" and
//! m ∈ 1..=M = "the last image seen is medium m−1"; `lse` is `[B, T, H]`.
//!
//! Because a token's medium is constant over contiguous stretches of tokens, the fused kernels
//! split each batch row into runs of equal media index (further cut into tiles of at most
//! [`TILE`] tokens) and do each tile as a small dense attention `[len × keys]` against the key
//! rows it may see. With [`XAttnMode::OnlyImmediate`] those are the R keys of one medium, so the
//! cost is independent of M. The keys a token sees are always one contiguous block of key rows
//! (medium m−1, or media 0..m), which is what makes both modes the same code.
//!
//! Work items: the forward parallelises over (tile, head group) items that write disjoint outputs;
//! the backward over (batch row, head group), walking the row's tiles in order, so dk/dv are
//! accumulated in a fixed order. Head groups only split work between threads (heads are computed
//! independently), so results do not depend on the thread count.
//!
//! Scores are formed transposed, `Sᵀ = K Qᵀ` (`[keys × len]`), with the softmax taken down the
//! columns, so the one transpose each head needs is of the tile's Q (and dO), never of the
//! medium's K or V: the tiles partition the tokens, so no per-medium transpose exists and the
//! transposes' total cost does not grow with M.
//!
//! Memory: an item copies all its heads of the tile's Q (dO) rows into head-major scratch in one
//! sequential pass. Of the medium's K and V, only the operand a product uses as its right-hand
//! side (a k × 16 strip reused across row blocks) is copied: V in the forward, K in the backward.
//! The other is the left-hand side of `Sᵀ = K Qᵀ` or `dPᵀ = V dOᵀ`, read six rows at a time
//! along the rows, which works in place. Outputs o/dq/dk/dv go back with non-temporal stores.
//! Scratch is kept per thread across calls (a few MiB at most for AllPrevious; ~1 MiB per thread
//! at the benchmark shape).
use super::float::{exp_f32, Float};
use super::simd::vectorized;
use rayon::prelude::*;

/// Which keys a token with media index m ≥ 1 attends to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XAttnMode {
    /// Only the R keys of medium m−1 (the last image at or before the token).
    OnlyImmediate,
    /// The R·m keys of media 0..m (every image seen so far).
    AllPrevious,
}

/// Problem sizes: batch, text tokens, media per row, visual tokens per medium, heads, head dim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XAttnShape {
    pub b: usize,
    pub t: usize,
    pub m: usize,
    pub r: usize,
    pub h: usize,
    pub d: usize,
}

/// Longest stretch of tokens done as one dense block (longer runs are cut into tiles).
pub const TILE: usize = 64;

impl XAttnShape {
    fn q_len(&self) -> usize {
        self.b * self.t * self.h * self.d
    }
    fn kv_len(&self) -> usize {
        self.b * self.m * self.r * self.h * self.d
    }
    /// First key row (within a batch row's M·R keys) and number of key rows for media index `mi ≥ 1`.
    fn keys(&self, mode: XAttnMode, mi: usize) -> (usize, usize) {
        match mode {
            XAttnMode::OnlyImmediate => ((mi - 1) * self.r, self.r),
            XAttnMode::AllPrevious => (0, mi * self.r),
        }
    }
}

fn check_len(what: &str, got: usize, want: usize) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("masked_xattn: {what} has {got} elements, expected {want}"))
    }
}

/// Checks that every media index lies in 0..=M; the error names the first bad position and value.
fn check_media(s: &XAttnShape, media: &[i64]) -> Result<(), String> {
    check_len("media", media.len(), s.b * s.t)?;
    for (i, &mi) in media.iter().enumerate() {
        if mi < 0 || mi as u64 > s.m as u64 {
            return Err(format!("masked_xattn: media[{}, {}] = {mi} is out of range 0..={} (flat index {i})", i / s.t.max(1), i % s.t.max(1), s.m));
        }
    }
    Ok(())
}

/// One tile: tokens `t0..t0 + len` of batch row `b`, all with media index `mi ≥ 1`.
#[derive(Clone, Copy, Debug)]
struct Tile {
    b: usize,
    t0: usize,
    len: usize,
    mi: usize,
}

/// Tiles of each batch row (in token order), and for each batch row the range of its tiles.
fn tiles(s: &XAttnShape, media: &[i64]) -> (Vec<Tile>, Vec<std::ops::Range<usize>>) {
    let mut out = Vec::new();
    let mut per_row = Vec::with_capacity(s.b);
    for b in 0..s.b {
        let start = out.len();
        let row = &media[b * s.t..(b + 1) * s.t];
        let mut t = 0;
        while t < s.t {
            let mi = row[t];
            let mut e = t + 1;
            while e < s.t && row[e] == mi && e - t < TILE {
                e += 1;
            }
            if mi > 0 {
                out.push(Tile { b, t0: t, len: e - t, mi: mi as usize });
            }
            t = e;
        }
        per_row.push(start..out.len());
    }
    (out, per_row)
}

/// A raw pointer that may cross threads; every use writes a region no other work item touches.
#[derive(Clone, Copy)]
pub(super) struct SyncPtr(pub(super) *mut f32);
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}
impl SyncPtr {
    /// Method access, so closures capture the whole `SyncPtr` (not its `*mut` field).
    #[inline(always)]
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}

/// The operands of one small product `C [+]= A·B` ([`small_mm`]): `A(i,p) = a[i·ars + p·acs]`,
/// `B(p,j) = b[p·ldb + j]`, `C(i,j) = c[i·ldc + j]`, C overwritten or (`accumulate`) added to.
#[derive(Clone, Copy)]
pub(super) struct MmArgs {
    pub a: *const f32,
    pub ars: usize,
    pub acs: usize,
    pub b: *const f32,
    pub ldb: usize,
    pub c: *mut f32,
    pub ldc: usize,
    pub accumulate: bool,
    /// Write C's full 16-lane vectors with non-temporal stores (C 64-byte aligned, `ldc` a
    /// multiple of 16; AVX-512 kernel only). The caller fences.
    pub stream: bool,
}

impl MmArgs {
    /// The same product from row `i` of A and C on.
    ///
    /// # Safety
    /// Row `i` must be inside A's and C's allocations.
    #[inline(always)]
    pub(super) unsafe fn rows_from(self, i: usize) -> MmArgs {
        MmArgs { a: self.a.add(i * self.ars), c: self.c.add(i * self.ldc), ..self }
    }

    /// The same product from column `j` of B and C on.
    ///
    /// # Safety
    /// Column `j` must be inside B's and C's allocations.
    #[inline(always)]
    pub(super) unsafe fn cols_from(self, j: usize) -> MmArgs {
        MmArgs { b: self.b.add(j), c: self.c.add(j), ..self }
    }
}

/// `C (m×n) = [C +] A (m×k) · B (k×n)` for the small blocks of this kernel, single-threaded, with
/// `A(i,p) = a[i·ars + p·acs]`, `B(p,j) = b[p·ldb + j]`, `C(i,j) = c[i·ldc + j]`. Each C element
/// sums over p in order, so results do not depend on blocking or threads.
///
/// Not the `gemm` crate: at these sizes (tens of rows, k and n ≈ 64) its per-call packing and
/// dispatch cost about as much as the arithmetic (measured: ~4 µs a call, which made the time grow
/// with the number of runs, i.e. with M).
///
/// # Safety
/// All three operands with their strides must stay inside live allocations; `c` must not alias them.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(super) unsafe fn small_mm(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    ars: usize,
    acs: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    #[cfg(target_arch = "x86_64")]
    {
        let args = MmArgs { a, ars, acs, b, ldb, c, ldc, accumulate, stream: false };
        if super::avx512::small_mm_available() {
            return super::avx512::small_mm(m, n, k, args);
        }
        if super::avx2::available() {
            return kern_avx2::matmul(m, n, k, args);
        }
    }
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f32;
            for p in 0..k {
                acc += *a.add(i * ars + p * acs) * *b.add(p * ldb + j);
            }
            let cij = c.add(i * ldc + j);
            *cij = if accumulate { *cij + acc } else { acc };
        }
    }
}

/// Whether the outputs `outs` (o in the forward; dq, and dk/dv of media done in one tile, in the
/// backward) may be written straight from their products with non-temporal stores
/// ([`small_mm_stream`]) instead of through per-thread scratch and a streaming copy: the AVX-512
/// products, 64-byte-aligned outputs and head rows a whole number of 16-lane vectors (so every
/// row piece is whole cache lines). `FLAMINGO_XATTN_DIRECT=0` turns it off, for side-by-side
/// timing. Measured (session 15, `xattn_speed`): with the backward's prefetch queue, dk/dv direct
/// took the M = 8 backward from 5.1–5.3 to 4.1–4.5 ms; o and dq direct saved 3–4 % more at both M.
fn streams_from_products(s: &XAttnShape, outs: &[*const f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let on = *ON.get_or_init(|| std::env::var("FLAMINGO_XATTN_DIRECT").as_deref() != Ok("0"));
        on && super::avx512::small_mm_available() && s.d.is_multiple_of(16) && outs.iter().all(|&p| (p as usize).is_multiple_of(64))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (s, outs);
        false
    }
}

/// `C (m×n) = A (m×k) · B (k×n)` as [`small_mm`], C written with non-temporal stores (the caller
/// fences); only where [`streams_from_products`] said yes.
///
/// # Safety
/// As [`small_mm`]; C 64-byte aligned with `ldc` a multiple of 16.
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn small_mm_stream(m: usize, n: usize, k: usize, a: *const f32, ars: usize, acs: usize, b: *const f32, ldb: usize, c: *mut f32, ldc: usize) {
    #[cfg(target_arch = "x86_64")]
    super::avx512::small_mm(m, n, k, MmArgs { a, ars, acs, b, ldb, c, ldc, accumulate: false, stream: true });
    #[cfg(not(target_arch = "x86_64"))]
    small_mm(m, n, k, a, ars, acs, b, ldb, c, ldc, false);
}

/// The AVX2 kernel behind [`small_mm`], for the AVX-512 kernel's bit-equality test.
///
/// # Safety
/// As [`small_mm`], on a CPU with AVX2 and FMA.
#[cfg(all(test, target_arch = "x86_64"))]
pub(super) unsafe fn avx2_small_mm(m: usize, n: usize, k: usize, args: MmArgs) {
    kern_avx2::matmul(m, n, k, args)
}

/// AVX2+FMA kernels: the register-blocked product behind [`small_mm`] (6 rows × 16 columns of C in
/// 12 registers, a B strip of k × 16 reused from L1 across all row blocks), an 8×8-block transpose
/// and the two row passes (softmax; probabilities and score gradient).
#[cfg(target_arch = "x86_64")]
mod kern_avx2 {
    use super::super::avx2::{exp8, transpose8};
    use super::super::float::exp_f32;
    use super::MmArgs;
    use std::arch::x86_64::*;

    /// One block of `ROWS` rows × `W` vectors of 8 columns (`FULL = false`: one vector, masked).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block<const ROWS: usize, const W: usize, const FULL: bool>(k: usize, args: MmArgs, mask: __m256i) {
        let MmArgs { a, ars, acs, b, ldb, c, ldc, accumulate, .. } = args;
        let mut s = [[_mm256_setzero_ps(); W]; ROWS];
        for p in 0..k {
            let bp = b.add(p * ldb);
            let mut bv = [_mm256_setzero_ps(); W];
            for (w, x) in bv.iter_mut().enumerate() {
                *x = if FULL { _mm256_loadu_ps(bp.add(8 * w)) } else { _mm256_maskload_ps(bp.add(8 * w), mask) };
            }
            let ap = a.add(p * acs);
            for (r, sr) in s.iter_mut().enumerate() {
                let av = _mm256_set1_ps(*ap.add(r * ars));
                for w in 0..W {
                    sr[w] = _mm256_fmadd_ps(av, bv[w], sr[w]);
                }
            }
        }
        for (r, sr) in s.iter().enumerate() {
            for (w, &x) in sr.iter().enumerate() {
                let cp = c.add(r * ldc + 8 * w);
                if FULL {
                    let v = if accumulate { _mm256_add_ps(_mm256_loadu_ps(cp), x) } else { x };
                    _mm256_storeu_ps(cp, v);
                } else {
                    let v = if accumulate { _mm256_add_ps(_mm256_maskload_ps(cp, mask), x) } else { x };
                    _mm256_maskstore_ps(cp, mask, v);
                }
            }
        }
    }

    /// All rows of one column strip.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn strip<const W: usize, const FULL: bool>(m: usize, k: usize, args: MmArgs, mask: __m256i) {
        // Blocks of 6 rows; a remainder of 1 or 2 borrows one block's rows (→ 4+3 or 4+4), since
        // a 1- or 2-row block does few FMAs per load (a run of 32 tokens is 5·6 + 2).
        let mut n6 = m / 6;
        if n6 > 0 && (m % 6 == 1 || m % 6 == 2) {
            n6 -= 1;
        }
        let mut i = 0;
        for _ in 0..n6 {
            block::<6, W, FULL>(k, args.rows_from(i), mask);
            i += 6;
        }
        if m - i >= 7 {
            block::<4, W, FULL>(k, args.rows_from(i), mask);
            i += 4;
        }
        let rest = args.rows_from(i);
        match m - i {
            1 => block::<1, W, FULL>(k, rest, mask),
            2 => block::<2, W, FULL>(k, rest, mask),
            3 => block::<3, W, FULL>(k, rest, mask),
            4 => block::<4, W, FULL>(k, rest, mask),
            5 => block::<5, W, FULL>(k, rest, mask),
            _ => {}
        }
    }

    /// See `small_mm`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn matmul(m: usize, n: usize, k: usize, args: MmArgs) {
        let all = _mm256_set1_epi32(-1);
        let mut j = 0;
        while j + 16 <= n {
            strip::<2, true>(m, k, args.cols_from(j), all);
            j += 16;
        }
        if j + 8 <= n {
            strip::<1, true>(m, k, args.cols_from(j), all);
            j += 8;
        }
        if j < n {
            let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((n - j) as i32), lanes);
            strip::<1, false>(m, k, args.cols_from(j), mask);
        }
    }

    /// See `super::scatter_rows`: unaligned head and tail with plain stores, the 32-byte-aligned
    /// middle with `vmovntps`, then a store fence so later readers see the data.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn stream_rows(src: *const f32, rows: usize, cols: usize, dst: *mut f32, dst_rs: usize) {
        for r in 0..rows {
            let (sp, dp) = (src.add(r * cols), dst.add(r * dst_rs));
            let head = ((32 - (dp as usize) % 32) % 32 / 4).min(cols);
            for c in 0..head {
                *dp.add(c) = *sp.add(c);
            }
            let mut c = head;
            while c + 8 <= cols {
                _mm256_stream_ps(dp.add(c), _mm256_loadu_ps(sp.add(c)));
                c += 8;
            }
            for c in c..cols {
                *dp.add(c) = *sp.add(c);
            }
        }
        _mm_sfence();
    }

    /// Zeroes `rows` rows of `cols` floats at `dst` (row stride `dst_rs`) as [`stream_rows`]
    /// writes them: non-temporal stores for the 32-byte-aligned middle, then a store fence.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn stream_zero_rows(rows: usize, cols: usize, dst: *mut f32, dst_rs: usize) {
        for r in 0..rows {
            let dp = dst.add(r * dst_rs);
            let head = ((32 - (dp as usize) % 32) % 32 / 4).min(cols);
            std::ptr::write_bytes(dp, 0, head);
            let mut c = head;
            while c + 8 <= cols {
                _mm256_stream_ps(dp.add(c), _mm256_setzero_ps());
                c += 8;
            }
            std::ptr::write_bytes(dp.add(c), 0, cols - c);
        }
        _mm_sfence();
    }

    /// `dst[e·n + j] = src[j·d + e]` (both n·d elements), in 8×8 blocks.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn transpose(src: *const f32, n: usize, d: usize, dst: *mut f32) {
        let (n8, d8) = (n - n % 8, d - d % 8);
        for j in (0..n8).step_by(8) {
            for e in (0..d8).step_by(8) {
                let mut r = [_mm256_setzero_ps(); 8];
                for (i, x) in r.iter_mut().enumerate() {
                    *x = _mm256_loadu_ps(src.add((j + i) * d + e));
                }
                r = transpose8(r);
                for (i, x) in r.iter().enumerate() {
                    _mm256_storeu_ps(dst.add((e + i) * n + j), *x);
                }
            }
            for e in d8..d {
                for i in 0..8 {
                    *dst.add(e * n + j + i) = *src.add((j + i) * d + e);
                }
            }
        }
        for j in n8..n {
            for e in 0..d {
                *dst.add(e * n + j) = *src.add(j * d + e);
            }
        }
    }

    /// Horizontal sum of 8 lanes in a fixed order.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }

    /// See `super::softmax_row`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn softmax_row(x: &mut [f32], scale: f32) -> f32 {
        let n = x.len();
        let n8 = n - n % 8;
        let p = x.as_mut_ptr();
        let mut mv = _mm256_set1_ps(f32::NEG_INFINITY);
        for j in (0..n8).step_by(8) {
            mv = _mm256_max_ps(mv, _mm256_loadu_ps(p.add(j)));
        }
        let mh = _mm_max_ps(_mm256_castps256_ps128(mv), _mm256_extractf128_ps::<1>(mv));
        let mh = _mm_max_ps(mh, _mm_movehl_ps(mh, mh));
        let mut mx = _mm_cvtss_f32(_mm_max_ss(mh, _mm_shuffle_ps::<1>(mh, mh)));
        for &v in &x[n8..] {
            mx = mx.max(v);
        }
        let (sv, mxv) = (_mm256_set1_ps(scale), _mm256_set1_ps(mx));
        let mut acc = _mm256_setzero_ps();
        for j in (0..n8).step_by(8) {
            let e = exp8(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(p.add(j)), mxv), sv));
            _mm256_storeu_ps(p.add(j), e);
            acc = _mm256_add_ps(acc, e);
        }
        let mut sum = hsum(acc);
        for v in &mut x[n8..] {
            *v = exp_f32((*v - mx) * scale);
            sum += *v;
        }
        let inv = 1.0 / sum;
        let iv = _mm256_set1_ps(inv);
        for j in (0..n8).step_by(8) {
            _mm256_storeu_ps(p.add(j), _mm256_mul_ps(_mm256_loadu_ps(p.add(j)), iv));
        }
        for v in &mut x[n8..] {
            *v *= inv;
        }
        mx * scale + sum.ln()
    }

    /// See `super::prob_grad_row`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn prob_grad_row(p: &mut [f32], dp: &mut [f32], lse: f32, delta: f32, scale: f32) {
        let n = p.len().min(dp.len());
        let n8 = n - n % 8;
        let (pp, gp) = (p.as_mut_ptr(), dp.as_mut_ptr());
        let (sv, lv, dv) = (_mm256_set1_ps(scale), _mm256_set1_ps(lse), _mm256_set1_ps(delta));
        for j in (0..n8).step_by(8) {
            let e = exp8(_mm256_fmsub_ps(_mm256_loadu_ps(pp.add(j)), sv, lv));
            _mm256_storeu_ps(pp.add(j), e);
            let g = _mm256_mul_ps(_mm256_mul_ps(e, _mm256_sub_ps(_mm256_loadu_ps(gp.add(j)), dv)), sv);
            _mm256_storeu_ps(gp.add(j), g);
        }
        for j in n8..n {
            p[j] = exp_f32(p[j] * scale - lse);
            dp[j] = p[j] * (dp[j] - delta) * scale;
        }
    }

    /// Loads 8 lanes (`FULL`) or the lanes of `mask` (the rest read as 0, nothing read there).
    #[inline(always)]
    unsafe fn ld<const FULL: bool>(p: *const f32, mask: __m256i) -> __m256 {
        if FULL {
            _mm256_loadu_ps(p)
        } else {
            _mm256_maskload_ps(p, mask)
        }
    }

    /// Stores 8 lanes (`FULL`) or the lanes of `mask`.
    #[inline(always)]
    unsafe fn st<const FULL: bool>(p: *mut f32, mask: __m256i, v: __m256) {
        if FULL {
            _mm256_storeu_ps(p, v)
        } else {
            _mm256_maskstore_ps(p, mask, v)
        }
    }

    /// Lanes `0..w` set.
    #[inline(always)]
    unsafe fn lanes_below(w: usize) -> __m256i {
        _mm256_cmpgt_epi32(_mm256_set1_epi32(w as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
    }

    /// Softmax of columns `i..i+8` (or the lanes of `mask`) of an `n × len` block.
    #[inline(always)]
    unsafe fn softmax_col8<const FULL: bool>(x: *mut f32, n: usize, len: usize, i: usize, scale: f32, lse: *mut f32, mask: __m256i) {
        let sv = _mm256_set1_ps(scale);
        let mut mv = _mm256_set1_ps(f32::NEG_INFINITY);
        for j in 0..n {
            mv = _mm256_max_ps(mv, ld::<FULL>(x.add(j * len + i), mask));
        }
        let mut acc = _mm256_setzero_ps();
        for j in 0..n {
            let pj = x.add(j * len + i);
            let e = exp8(_mm256_mul_ps(_mm256_sub_ps(ld::<FULL>(pj, mask), mv), sv));
            st::<FULL>(pj, mask, e);
            acc = _mm256_add_ps(acc, e);
        }
        let inv = _mm256_div_ps(_mm256_set1_ps(1.0), acc);
        for j in 0..n {
            let pj = x.add(j * len + i);
            st::<FULL>(pj, mask, _mm256_mul_ps(ld::<FULL>(pj, mask), inv));
        }
        let (mut m8, mut s8) = ([0.0f32; 8], [0.0f32; 8]);
        _mm256_storeu_ps(m8.as_mut_ptr(), mv);
        _mm256_storeu_ps(s8.as_mut_ptr(), acc);
        for l in 0..(len - i).min(8) {
            *lse.add(i + l) = m8[l] * scale + s8[l].ln();
        }
    }

    /// See `super::softmax_cols`. Eight columns at a time; a last partial group uses masked lanes,
    /// so narrow tiles (a few tokens per image) stay vectorised.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn softmax_cols(x: *mut f32, n: usize, len: usize, scale: f32, lse: *mut f32) {
        let len8 = len - len % 8;
        let all = _mm256_set1_epi32(-1);
        for i in (0..len8).step_by(8) {
            softmax_col8::<true>(x, n, len, i, scale, lse, all);
        }
        if len8 < len {
            softmax_col8::<false>(x, n, len, len8, scale, lse, lanes_below(len - len8));
        }
    }

    /// `p`/`dp` update of columns `i..i+8` (or the lanes of `mask`) of row `j`.
    #[inline(always)]
    unsafe fn prob_grad8<const FULL: bool>(pp: *mut f32, gp: *mut f32, i: usize, lse: *const f32, delta: *const f32, sv: __m256, mask: __m256i) {
        let e = exp8(_mm256_fmsub_ps(ld::<FULL>(pp.add(i), mask), sv, ld::<FULL>(lse.add(i), mask)));
        st::<FULL>(pp.add(i), mask, e);
        let g = _mm256_mul_ps(_mm256_mul_ps(e, _mm256_sub_ps(ld::<FULL>(gp.add(i), mask), ld::<FULL>(delta.add(i), mask))), sv);
        st::<FULL>(gp.add(i), mask, g);
    }

    /// See `super::prob_grad_cols` (a last partial group of columns uses masked lanes).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn prob_grad_cols(p: *mut f32, dp: *mut f32, n: usize, len: usize, lse: *const f32, delta: *const f32, scale: f32) {
        let len8 = len - len % 8;
        let (sv, all, tail) = (_mm256_set1_ps(scale), _mm256_set1_epi32(-1), lanes_below(len - len8));
        for j in 0..n {
            let (pp, gp) = (p.add(j * len), dp.add(j * len));
            for i in (0..len8).step_by(8) {
                prob_grad8::<true>(pp, gp, i, lse, delta, sv, all);
            }
            if len8 < len {
                prob_grad8::<false>(pp, gp, len8, lse, delta, sv, tail);
            }
        }
    }
}

/// Copies heads `h0..h0+hg` of `n` consecutive rows of a `[.., H, D]` tensor (row stride `hd`,
/// `src` pointing at head 0 of the first row) into a head-major contiguous `[hg, n, D]` `dst`.
///
/// A product's right-hand side is never read in place: rows of one head sit H·D floats apart
/// (2 KiB for H·D = 512), so a k × 16 strip of them maps to two L1 cache sets and re-reading it
/// for every row block misses L1 on every row (measured: reading V and K in place as right-hand
/// sides made the M-doubling worse, +11 % against +10 %). Copying all heads of a row at once also
/// reads memory sequentially (measured: per-head strided copies cost 20% of the time, mostly cache
/// misses).
///
/// # Safety
/// The source block must be in bounds; `dst` holds at least `hg·n·d` elements.
#[inline]
unsafe fn gather_heads(src: *const f32, n: usize, hd: usize, h0: usize, hg: usize, d: usize, dst: &mut [f32]) {
    let dst = &mut dst[..hg * n * d];
    for j in 0..n {
        let row = src.add(j * hd + h0 * d);
        for g in 0..hg {
            std::ptr::copy_nonoverlapping(row.add(g * d), dst.as_mut_ptr().add((g * n + j) * d), d);
        }
    }
}

/// Writes `rows` rows of `cols` floats from the contiguous `src` to `dst` (row stride `dst_rs`)
/// with non-temporal stores where the CPU has them: the outputs (o, dq, dk, dv) are not read
/// again here, and plain stores would first read every destination line from memory. For an
/// output that grows with M (dk, dv) that read was most of the extra time at larger M.
///
/// `stream` (see [`streams`]) picks the non-temporal stores; plain copies otherwise.
///
/// # Safety
/// The destination rows must be in bounds and not aliased; `src` holds `rows·cols` elements.
#[inline]
unsafe fn scatter_rows(src: &[f32], rows: usize, cols: usize, dst: *mut f32, dst_rs: usize, stream: bool) {
    let src = &src[..rows * cols];
    #[cfg(target_arch = "x86_64")]
    {
        if stream && super::avx2::available() {
            return kern_avx2::stream_rows(src.as_ptr(), rows, cols, dst, dst_rs);
        }
    }
    for r in 0..rows {
        std::ptr::copy_nonoverlapping(src.as_ptr().add(r * cols), dst.add(r * dst_rs), cols);
    }
}

/// Zeroes `rows` rows of `cols` floats at `dst` (row stride `dst_rs`), with non-temporal stores
/// when `stream` (as [`scatter_rows`]): the dk/dv of media nobody attends to. Plain stores read
/// every line first (measured, session 14: zeroing the dk/dv of 4 unused media of 8 cost 0.45–0.6
/// ms a call with `write_bytes`).
///
/// # Safety
/// The destination rows must be in bounds and not aliased.
#[inline]
unsafe fn zero_rows(rows: usize, cols: usize, dst: *mut f32, dst_rs: usize, stream: bool) {
    #[cfg(target_arch = "x86_64")]
    {
        if stream && super::avx2::available() {
            return kern_avx2::stream_zero_rows(rows, cols, dst, dst_rs);
        }
    }
    for r in 0..rows {
        std::ptr::write_bytes(dst.add(r * dst_rs), 0, cols);
    }
}

/// Outputs of at least this many bytes are written with non-temporal stores.
const STREAM_MIN_BYTES: usize = 2 << 20;

/// Whether an output of `len` floats is written with non-temporal stores. A large output
/// (the 4–8 MiB ones of the benchmark shape) would only evict the inputs from cache, and plain
/// stores read each line first; a small one is read back from cache by the next op (the output
/// projection). The `tiny` training step's outputs are a few KiB: there the streaming copy was
/// 1.9 % of the step's samples (session 12, `perf`).
fn streams(len: usize) -> bool {
    len * std::mem::size_of::<f32>() >= STREAM_MIN_BYTES
}

/// `dst[e·n + j] = src[j·d + e]`: a contiguous `[n, d]` into a contiguous `[d, n]`.
#[inline]
pub(super) fn transpose(src: &[f32], n: usize, d: usize, dst: &mut [f32]) {
    let (src, dst) = (&src[..n * d], &mut dst[..n * d]);
    #[cfg(target_arch = "x86_64")]
    {
        if super::avx2::available() {
            // SAFETY: both slices hold n·d elements (checked by the slicing above).
            return unsafe { kern_avx2::transpose(src.as_ptr(), n, d, dst.as_mut_ptr()) };
        }
    }
    for j in 0..n {
        for e in 0..d {
            dst[e * n + j] = src[j * d + e];
        }
    }
}

/// Softmax of one row of raw scores `x` at temperature `scale`, in place; returns the row's
/// log-sum-exp `max·scale + ln Σ e^((x − max)·scale)`.
#[inline]
pub(super) fn softmax_row(x: &mut [f32], scale: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if super::avx2::available() {
            // SAFETY: AVX2 and FMA were detected just above.
            return unsafe { kern_avx2::softmax_row(x, scale) };
        }
    }
    let mx = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = exp_f32((*v - mx) * scale);
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
    mx * scale + sum.ln()
}

/// Backward of one row: `p ← e^(p·scale − lse)` (raw scores in, probabilities out) and
/// `dp ← p ∘ (dp − delta) · scale` (scaled score gradient).
#[inline]
pub(super) fn prob_grad_row(p: &mut [f32], dp: &mut [f32], lse: f32, delta: f32, scale: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::avx2::available() {
            // SAFETY: AVX2 and FMA were detected just above.
            return unsafe { kern_avx2::prob_grad_row(p, dp, lse, delta, scale) };
        }
    }
    for (x, g) in p.iter_mut().zip(dp.iter_mut()) {
        *x = exp_f32(*x * scale - lse);
        *g = *x * (*g - delta) * scale;
    }
}

/// Softmax of column `x[j·len]`, j < n, in place (see [`softmax_cols`]); returns its log-sum-exp.
///
/// # Safety
/// `x[j·len]` must be valid for j < n.
unsafe fn softmax_col_scalar(x: *mut f32, n: usize, len: usize, scale: f32) -> f32 {
    let mut mx = f32::NEG_INFINITY;
    for j in 0..n {
        mx = mx.max(*x.add(j * len));
    }
    let mut sum = 0.0;
    for j in 0..n {
        let e = exp_f32((*x.add(j * len) - mx) * scale);
        *x.add(j * len) = e;
        sum += e;
    }
    let inv = 1.0 / sum;
    for j in 0..n {
        *x.add(j * len) *= inv;
    }
    mx * scale + sum.ln()
}

/// Softmax down each column of the transposed scores `x [n keys × len queries]` (row-major) at
/// temperature `scale`, in place; `lse[i]` receives column i's log-sum-exp. Eight columns (queries)
/// at a time share the vector lanes, so no row needs a horizontal reduction.
fn softmax_cols(x: &mut [f32], n: usize, len: usize, scale: f32, lse: &mut [f32]) {
    let (x, lse) = (&mut x[..n * len], &mut lse[..len]);
    #[cfg(target_arch = "x86_64")]
    {
        if super::avx2::available() {
            // SAFETY: AVX2 and FMA were detected; both slices have the sizes used (sliced above).
            return unsafe { kern_avx2::softmax_cols(x.as_mut_ptr(), n, len, scale, lse.as_mut_ptr()) };
        }
    }
    softmax_cols_portable(x, n, len, scale, lse)
}

/// [`softmax_cols`] without SIMD (the fallback; also tested against the SIMD path).
fn softmax_cols_portable(x: &mut [f32], n: usize, len: usize, scale: f32, lse: &mut [f32]) {
    let (x, lse) = (&mut x[..n * len], &mut lse[..len]);
    for (i, l) in lse.iter_mut().enumerate() {
        // SAFETY: column i of the n × len block is in bounds (sliced above).
        *l = unsafe { softmax_col_scalar(x.as_mut_ptr().add(i), n, len, scale) };
    }
}

/// Backward on transposed scores `p, dp [n keys × len queries]`: `p ← e^(p·scale − lse[i])` (raw
/// scores in, probabilities out) and `dp ← p ∘ (dp − delta[i]) · scale`, for column (query) i.
fn prob_grad_cols(p: &mut [f32], dp: &mut [f32], n: usize, len: usize, lse: &[f32], delta: &[f32], scale: f32) {
    let (p, dp, lse, delta) = (&mut p[..n * len], &mut dp[..n * len], &lse[..len], &delta[..len]);
    #[cfg(target_arch = "x86_64")]
    {
        if super::avx2::available() {
            // SAFETY: AVX2 and FMA were detected; every slice has the size used (sliced above).
            return unsafe { kern_avx2::prob_grad_cols(p.as_mut_ptr(), dp.as_mut_ptr(), n, len, lse.as_ptr(), delta.as_ptr(), scale) };
        }
    }
    prob_grad_cols_portable(p, dp, len, lse, delta, scale)
}

/// [`prob_grad_cols`] without SIMD (the fallback; also tested against the SIMD path).
fn prob_grad_cols_portable(p: &mut [f32], dp: &mut [f32], len: usize, lse: &[f32], delta: &[f32], scale: f32) {
    for (prow, gprow) in p.chunks_exact_mut(len).zip(dp.chunks_exact_mut(len)) {
        for i in 0..len {
            prow[i] = exp_f32(prow[i] * scale - lse[i]);
            gprow[i] = prow[i] * (gprow[i] - delta[i]) * scale;
        }
    }
}

/// Σ a·b, 8 lanes combined in a fixed order.
#[inline(always)]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Zeroes o/dq rows `[b, t, :, :]` and lse `[b, t, :]` of tokens with media index 0.
fn zero_no_media_rows(s: &XAttnShape, media: &[i64], rows: &mut [f32], lse: Option<&mut [f32]>) {
    let hd = s.h * s.d;
    for (i, &mi) in media.iter().enumerate() {
        if mi == 0 {
            rows[i * hd..(i + 1) * hd].fill(0.0);
        }
    }
    if let Some(lse) = lse {
        for (i, &mi) in media.iter().enumerate() {
            if mi == 0 {
                lse[i * s.h..(i + 1) * s.h].fill(0.0);
            }
        }
    }
}

/// How many head groups to split the heads into so that `outer · groups` work items keep the
/// threads busy (results do not depend on it: heads are computed independently).
fn head_groups(outer: usize, h: usize) -> usize {
    let want = 4 * rayon::current_num_threads();
    let mut g = 1;
    while outer * g < want && g < h {
        g += 1;
    }
    g
}

/// Fused forward. Writes `o [B,T,H,D]` and `lse [B,T,H]` (log-sum-exp of the scaled scores of each
/// row, reused by the backward); tokens with media index 0 get exactly zero in both.
/// Errors (before anything is written) on a media index outside 0..=M, naming its position and
/// value, or on a slice of the wrong length.
#[allow(clippy::too_many_arguments)]
pub fn masked_xattn_forward(
    s: &XAttnShape,
    mode: XAttnMode,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    media: &[i64],
    o: &mut [f32],
    lse: &mut [f32],
) -> Result<(), String> {
    check_len("q", q.len(), s.q_len())?;
    check_len("k", k.len(), s.kv_len())?;
    check_len("v", v.len(), s.kv_len())?;
    check_len("o", o.len(), s.q_len())?;
    check_len("lse", lse.len(), s.b * s.t * s.h)?;
    check_media(s, media)?;
    zero_no_media_rows(s, media, o, Some(&mut *lse));
    if s.d == 0 || s.h == 0 {
        return Ok(());
    }
    let (tl, _) = tiles(s, media);
    let (hd, mr) = (s.h * s.d, s.m * s.r);
    let scale = 1.0 / (s.d as f32).sqrt();
    let max_keys = match mode {
        XAttnMode::OnlyImmediate => s.r,
        XAttnMode::AllPrevious => mr,
    };
    let groups = head_groups(tl.len(), s.h);
    let stream_o = streams(o.len());
    // O goes out straight from its product where it can (see `streams_from_products`).
    let direct_o = stream_o && streams_from_products(s, &[o.as_ptr()]);
    let hpg = s.h.div_ceil(groups);
    let groups = s.h.div_ceil(hpg); // every group non-empty
    let (op, lp) = (SyncPtr(o.as_mut_ptr()), SyncPtr(lse.as_mut_ptr()));
    // One item per (tile, head group): it alone writes o[b, t0..t0+len, heads, :] and
    // lse[b, t0..t0+len, heads].
    let work = |sc: &mut FwdScratch, item: usize| {
        let (tile, grp) = (tl[item / groups], item % groups);
        let (h0, hg) = (grp * hpg, hpg.min(s.h - grp * hpg));
        let (k0, n) = s.keys(mode, tile.mi);
        let (len, d) = (tile.len, s.d);
        let row0 = (tile.b * s.t + tile.t0) * hd;
        let key0 = (tile.b * mr + k0) * hd;
        // SAFETY: operands are in bounds (lengths checked above); outputs are this item's own.
        unsafe {
            gather_heads(q.as_ptr().add(row0), len, hd, h0, hg, d, &mut sc.q);
            gather_heads(v.as_ptr().add(key0), n, hd, h0, hg, d, &mut sc.v);
            for g in 0..hg {
                let h = h0 + g;
                let (qh, vh) = (&sc.q[g * len * d..(g + 1) * len * d], &sc.v[g * n * d..]);
                let kh = k.as_ptr().add(key0 + h * d);
                // Scores are formed transposed, Sᵀ = K Qᵀ [n × len], so the transpose is of the
                // tile's Q, not of the medium's K: the tiles partition the tokens, so the
                // transposes' total cost does not grow with M.
                transpose(qh, len, d, &mut sc.qt);
                let st = &mut sc.s[..n * len];
                small_mm(n, len, d, kh, hd, 1, sc.qt.as_ptr(), len, st.as_mut_ptr(), len, false);
                softmax_cols(st, n, len, scale, &mut sc.lse);
                for (i, &l) in sc.lse[..len].iter().enumerate() {
                    *lp.get().add((tile.b * s.t + tile.t0 + i) * s.h + h) = l;
                }
                // O = P V = (Sᵀ)ᵀ V  [len × D], into the [len, hg·D] output block
                if direct_o {
                    small_mm_stream(len, d, n, st.as_ptr(), 1, len, vh.as_ptr(), d, op.get().add(row0 + h * d), hd);
                } else {
                    small_mm(len, d, n, st.as_ptr(), 1, len, vh.as_ptr(), d, sc.o.as_mut_ptr().add(g * d), hg * d, false);
                }
            }
            if direct_o {
                #[cfg(target_arch = "x86_64")]
                std::arch::x86_64::_mm_sfence();
            } else {
                scatter_rows(&sc.o, len, hg * d, op.get().add(row0 + h0 * d), hd, stream_o);
            }
        }
    };
    let run = |item: usize| {
        FWD_SCRATCH.with(|cell| {
            let sc = &mut *cell.borrow_mut();
            grow(&mut sc.s, TILE * max_keys);
            grow(&mut sc.o, TILE * hpg * s.d);
            grow(&mut sc.q, hpg * TILE * s.d);
            grow(&mut sc.qt, TILE * s.d);
            grow(&mut sc.lse, TILE);
            grow(&mut sc.v, hpg * max_keys * s.d);
            work(sc, item)
        })
    };
    let items = tl.len() * groups;
    if items > 1 && rayon::current_num_threads() > 1 {
        (0..items).into_par_iter().for_each(run);
    } else {
        (0..items).for_each(run);
    }
    Ok(())
}

/// Prefetch steps of one head of a backward tile of `len` tokens against `n` keys (whole media of
/// `r` keys): the five products' row blocks ([`crate::cpu::avx512::prefetch_steps`]); 0 where the
/// AVX-512 products do not run (no steps are taken there).
fn prefetch_steps(r: usize, n: usize, len: usize, d: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        if super::avx512::small_mm_available() {
            use super::avx512::prefetch_steps as st;
            return 2 * st(n, len) + st(len, d) + 2 * (n / r.max(1)) * st(r, d);
        }
    }
    let _ = (r, n, len, d);
    0
}

/// Whether the backward prefetches the next tile's operands while it works on this one
/// (`FLAMINGO_XATTN_PREFETCH=0` turns it off, for side-by-side timing).
fn prefetch_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("FLAMINGO_XATTN_PREFETCH").as_deref() != Ok("0"))
}

/// Grows a scratch buffer to at least `n` elements (it never shrinks).
pub(super) fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

thread_local! {
    /// Scratch kept per thread across calls: fresh buffers of this size (hundreds of KiB to a few
    /// MiB) come from mmap, and their page faults serialise the threads (measured: the forward
    /// did not get faster with a second thread when the buffers were made per rayon job).
    static FWD_SCRATCH: std::cell::RefCell<FwdScratch> = std::cell::RefCell::new(FwdScratch::default());
    static BWD_SCRATCH: std::cell::RefCell<BwdScratch> = std::cell::RefCell::new(BwdScratch::default());
}

/// Per-thread scratch of the forward: transposed scores, and head-major copies of the tile's
/// operands.
#[derive(Default)]
struct FwdScratch {
    s: Vec<f32>,
    o: Vec<f32>,
    q: Vec<f32>,
    /// One head's Q of the tile, transposed: `[D, len]`.
    qt: Vec<f32>,
    /// One head's log-sum-exp of the tile's tokens.
    lse: Vec<f32>,
    /// The medium's V rows, head-major `[hg, n, D]` (K is read in place).
    v: Vec<f32>,
}

/// Per-thread scratch of the backward.
#[derive(Default)]
struct BwdScratch {
    p: Vec<f32>,
    dp: Vec<f32>,
    q: Vec<f32>,
    d_o: Vec<f32>,
    /// The medium's K rows, head-major `[hg, n, D]` (V is read in place).
    k: Vec<f32>,
    /// One head's Q and dO of the tile, transposed: `[D, len]`.
    qt: Vec<f32>,
    dot: Vec<f32>,
    /// One head's forward log-sum-exp of the tile's tokens.
    lse: Vec<f32>,
    delta: Vec<f32>,
    /// dq of the tile, `[len, hg·D]`.
    dq: Vec<f32>,
    /// dk and dv of this item's open media and heads, `[slots·R, hg·D]`, written out per medium
    /// once no later tile touches it.
    dk: Vec<f32>,
    dv: Vec<f32>,
    /// Whether dk/dv of each medium (for this item's heads) already hold a first contribution.
    written: Vec<bool>,
    /// Index (within the row's tiles) of the last tile that touches each medium.
    last: Vec<usize>,
    /// Scratch slot (in `dk`/`dv`, R rows each) of each open medium, `usize::MAX` if none.
    slot: Vec<usize>,
    /// Free slots, reused last-in first-out.
    free: Vec<usize>,
    /// `(medium, slot, accumulate)` for the current tile's media.
    acc: Vec<(usize, usize, bool)>,
}

/// Fused backward from `d_o [B,T,H,D]`: writes `dq [B,T,H,D]` and `dk`, `dv [B,M,R,H,D]`
/// (overwritten). Probabilities are recomputed from q, k and the forward's `lse`; the softmax
/// backward uses delta = rowsum(do ∘ o). Errors as [`masked_xattn_forward`].
#[allow(clippy::too_many_arguments)]
pub fn masked_xattn_backward(
    s: &XAttnShape,
    mode: XAttnMode,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    media: &[i64],
    o: &[f32],
    lse: &[f32],
    d_o: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) -> Result<(), String> {
    check_len("q", q.len(), s.q_len())?;
    check_len("k", k.len(), s.kv_len())?;
    check_len("v", v.len(), s.kv_len())?;
    check_len("o", o.len(), s.q_len())?;
    check_len("lse", lse.len(), s.b * s.t * s.h)?;
    check_len("do", d_o.len(), s.q_len())?;
    check_len("dq", dq.len(), s.q_len())?;
    check_len("dk", dk.len(), s.kv_len())?;
    check_len("dv", dv.len(), s.kv_len())?;
    check_media(s, media)?;
    zero_no_media_rows(s, media, dq, None);
    if s.d == 0 || s.h == 0 {
        return Ok(());
    }
    let (tl, per_row) = tiles(s, media);
    let (hd, mr) = (s.h * s.d, s.m * s.r);
    let scale = 1.0 / (s.d as f32).sqrt();
    let max_keys = match mode {
        XAttnMode::OnlyImmediate => s.r,
        XAttnMode::AllPrevious => mr,
    };
    let (stream_dq, stream_kv) = (streams(dq.len()), streams(dk.len()));
    let groups = head_groups(s.b, s.h);
    let hpg = s.h.div_ceil(groups);
    let groups = s.h.div_ceil(hpg); // every group non-empty
    let direct = stream_kv && streams_from_products(s, &[dk.as_ptr(), dv.as_ptr()]);
    let direct_dq = stream_dq && streams_from_products(s, &[dq.as_ptr()]);
    let (dqp, dkp, dvp) = (SyncPtr(dq.as_mut_ptr()), SyncPtr(dk.as_mut_ptr()), SyncPtr(dv.as_mut_ptr()));
    // One item per (b, head group): it alone writes dk/dv[b, :, :, heads, :] and
    // dq[b, tiles, heads, :], walking the tiles of row b in token order (a fixed accumulation
    // order for dk/dv).
    let work = |sc: &mut BwdScratch, item: usize| {
        let (b, grp) = (item / groups, item % groups);
        let (h0, hg) = (grp * hpg, hpg.min(s.h - grp * hpg));
        let d = s.d;
        sc.written.fill(false);
        sc.slot.fill(usize::MAX);
        sc.free.clear();
        sc.free.extend((0..s.m).rev());
        // SAFETY: see the comment above `work`; all operands are in bounds (lengths checked).
        unsafe {
            let row_tiles = &tl[per_row[b].clone()];
            sc.last.fill(usize::MAX);
            for (ti, tile) in row_tiles.iter().enumerate() {
                let (k0, n) = s.keys(mode, tile.mi);
                sc.last[k0 / s.r..(k0 + n) / s.r].fill(ti);
            }
            for (ti, tile) in row_tiles.iter().enumerate() {
                let (k0, n) = s.keys(mode, tile.mi);
                let len = tile.len;
                let row0 = (b * s.t + tile.t0) * hd;
                let key0 = (b * mr + k0) * hd;
                gather_heads(q.as_ptr().add(row0), len, hd, h0, hg, d, &mut sc.q);
                gather_heads(d_o.as_ptr().add(row0), len, hd, h0, hg, d, &mut sc.d_o);
                gather_heads(k.as_ptr().add(key0), n, hd, h0, hg, d, &mut sc.k);
                // While this tile's products run, pull the next tile's operands into L2 (the
                // next row's first tile after the last one: with one head group the same thread
                // usually takes that row next). With the direct dK/dV stores this took the
                // M-doubling from +18–20 % to +8–16 % (docs/PERF.md, session 15); the forward got
                // slower with the same queue, so it has none.
                let steps = hg * prefetch_steps(s.r, n, len, d) * 3 / 4;
                let next = row_tiles.get(ti + 1).or_else(|| per_row.get(b + 1).and_then(|r| tl[r.clone()].first()));
                if let (true, true, Some(nt)) = (prefetch_on() && groups == 1, steps > 0, next) {
                    let (nk0, nn) = s.keys(mode, nt.mi);
                    let (nrow0, nkey0) = ((nt.b * s.t + nt.t0) * hd, (nt.b * mr + nk0) * hd);
                    let lines = (3 * nt.len + 2 * nn) * hd / 16;
                    let rows = |x: &[f32], at: usize, n: usize| (x.as_ptr().add(at), n * hd);
                    // Drained after about three quarters of this tile's row blocks, so the last
                    // lines arrive before the next tile starts.
                    let regions = [rows(k, nkey0, nn), rows(v, nkey0, nn), rows(q, nrow0, nt.len), rows(d_o, nrow0, nt.len), rows(o, nrow0, nt.len)];
                    crate::cpu::prefetch::set(&regions, lines.div_ceil(steps));
                }
                // delta[g, i] = do · o over D, reading o row by row (all heads of a row are adjacent)
                vectorized(
                    #[inline(always)]
                    || {
                        for i in 0..len {
                            let orow = &o[row0 + i * hd + h0 * d..row0 + i * hd + (h0 + hg) * d];
                            for g in 0..hg {
                                let dorow = &sc.d_o[(g * len + i) * d..(g * len + i + 1) * d];
                                sc.delta[g * len + i] = dot(dorow, &orow[g * d..(g + 1) * d]);
                            }
                        }
                    },
                );
                // dK/dV of each medium accumulate in a scratch slot from its first tile to its
                // last one; the first contribution overwrites, so there is no zeroing pass.
                // Freed slots are reused last-in first-out, so with one image per run the
                // same (cache-hot) slot serves every medium.
                sc.acc.clear();
                for m in k0 / s.r..(k0 + n) / s.r {
                    let fresh = sc.slot[m] == usize::MAX;
                    if fresh && direct && sc.last[m] == ti {
                        // This tile is the medium's only one: its dK/dV go straight out.
                        sc.written[m] = true;
                        sc.acc.push((m, usize::MAX, false));
                        continue;
                    }
                    if fresh {
                        sc.slot[m] = sc.free.pop().expect("a free dk/dv slot");
                    }
                    sc.written[m] = true;
                    sc.acc.push((m, sc.slot[m], !fresh));
                }
                for g in 0..hg {
                    let h = h0 + g;
                    // P and dP are kept transposed, [n × len] (see the forward).
                    let (p, dp) = (&mut sc.p[..n * len], &mut sc.dp[..n * len]);
                    let qc = &sc.q[g * len * d..(g + 1) * len * d];
                    let doc = &sc.d_o[g * len * d..(g + 1) * len * d];
                    let kc = &sc.k[g * n * d..(g + 1) * n * d];
                    let vc = v.as_ptr().add(key0 + h * d);
                    let delta = &sc.delta[g * len..(g + 1) * len];
                    transpose(qc, len, d, &mut sc.qt);
                    transpose(doc, len, d, &mut sc.dot);
                    for (i, l) in sc.lse[..len].iter_mut().enumerate() {
                        *l = lse[(b * s.t + tile.t0 + i) * s.h + h];
                    }
                    // Sᵀ = K Qᵀ (Pᵀ = e^(scale·Sᵀ − lse) below); dPᵀ = V dOᵀ
                    small_mm(n, len, d, kc.as_ptr(), d, 1, sc.qt.as_ptr(), len, p.as_mut_ptr(), len, false);
                    small_mm(n, len, d, vc, hd, 1, sc.dot.as_ptr(), len, dp.as_mut_ptr(), len, false);
                    prob_grad_cols(p, dp, n, len, &sc.lse, delta, scale);
                    // dQ = (scale·dS) K = ((scale·dS)ᵀ)ᵀ K, into the [len, hg·D] block
                    if direct_dq {
                        small_mm_stream(len, d, n, dp.as_ptr(), 1, len, kc.as_ptr(), d, dqp.get().add(row0 + h * d), hd);
                    } else {
                        small_mm(len, d, n, dp.as_ptr(), 1, len, kc.as_ptr(), d, sc.dq.as_mut_ptr().add(g * d), hg * d, false);
                    }
                    // dK (+)= (scale·dS)ᵀ Q, dV (+)= Pᵀ dO, into each medium's slot
                    for &(m, slot, acc) in &sc.acc {
                        let j0 = m * s.r - k0;
                        if slot == usize::MAX {
                            let off = (b * mr + m * s.r) * hd + h * d;
                            small_mm_stream(s.r, d, len, dp.as_ptr().add(j0 * len), len, 1, qc.as_ptr(), d, dkp.get().add(off), hd);
                            small_mm_stream(s.r, d, len, p.as_ptr().add(j0 * len), len, 1, doc.as_ptr(), d, dvp.get().add(off), hd);
                            continue;
                        }
                        let kj = slot * s.r * hg * d + g * d;
                        small_mm(s.r, d, len, dp.as_ptr().add(j0 * len), len, 1, qc.as_ptr(), d, sc.dk.as_mut_ptr().add(kj), hg * d, acc);
                        small_mm(s.r, d, len, p.as_ptr().add(j0 * len), len, 1, doc.as_ptr(), d, sc.dv.as_mut_ptr().add(kj), hg * d, acc);
                    }
                }
                crate::cpu::prefetch::clear();
                if !direct_dq {
                    scatter_rows(&sc.dq, len, hg * d, dqp.get().add(row0 + h0 * d), hd, stream_dq);
                }
                for m in k0 / s.r..(k0 + n) / s.r {
                    if sc.last[m] == ti && sc.slot[m] != usize::MAX {
                        let slot = std::mem::replace(&mut sc.slot[m], usize::MAX);
                        let blk = &sc.dk[slot * s.r * hg * d..(slot + 1) * s.r * hg * d];
                        scatter_rows(blk, s.r, hg * d, dkp.get().add((b * mr + m * s.r) * hd + h0 * d), hd, stream_kv);
                        let blk = &sc.dv[slot * s.r * hg * d..(slot + 1) * s.r * hg * d];
                        scatter_rows(blk, s.r, hg * d, dvp.get().add((b * mr + m * s.r) * hd + h0 * d), hd, stream_kv);
                        sc.free.push(slot);
                    }
                }
            }
            #[cfg(target_arch = "x86_64")]
            if direct || direct_dq {
                std::arch::x86_64::_mm_sfence();
            }
            // Media nobody in this row attends to get zero gradient.
            for m in (0..s.m).filter(|&m| !sc.written[m]) {
                let off = (b * mr + m * s.r) * hd + h0 * d;
                zero_rows(s.r, hg * d, dkp.get().add(off), hd, stream_kv);
                zero_rows(s.r, hg * d, dvp.get().add(off), hd, stream_kv);
            }
        }
    };
    let run = |item: usize| {
        BWD_SCRATCH.with(|cell| {
            let sc = &mut *cell.borrow_mut();
            grow(&mut sc.p, TILE * max_keys);
            grow(&mut sc.dp, TILE * max_keys);
            grow(&mut sc.q, hpg * TILE * s.d);
            grow(&mut sc.d_o, hpg * TILE * s.d);
            grow(&mut sc.k, hpg * max_keys * s.d);
            grow(&mut sc.qt, TILE * s.d);
            grow(&mut sc.dot, TILE * s.d);
            grow(&mut sc.lse, TILE);
            grow(&mut sc.delta, hpg * TILE);
            grow(&mut sc.dq, TILE * hpg * s.d);
            grow(&mut sc.dk, mr * hpg * s.d);
            grow(&mut sc.dv, mr * hpg * s.d);
            sc.written.resize(s.m, false);
            sc.last.resize(s.m, usize::MAX);
            sc.slot.resize(s.m, usize::MAX);
            work(sc, item)
        })
    };
    let items = s.b * groups;
    if items > 1 && rayon::current_num_threads() > 1 {
        (0..items).into_par_iter().for_each(run);
    } else {
        (0..items).for_each(run);
    }
    Ok(())
}

/// Whether a token with media index `mi` may see key row `j` (of a batch row's M·R keys).
#[inline]
fn allowed(mode: XAttnMode, r: usize, mi: i64, j: usize) -> bool {
    let km = (j / r) as i64 + 1; // 1-based medium of key j
    match mode {
        XAttnMode::OnlyImmediate => mi == km,
        XAttnMode::AllPrevious => mi >= km,
    }
}

/// Gathers head `h` of batch row `b` from `x [B, N, H, D]` into a contiguous `[N, D]`.
fn gather<T: Float>(x: &[T], b: usize, n: usize, s: &XAttnShape, h: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(n * s.d);
    for i in 0..n {
        let off = ((b * n + i) * s.h + h) * s.d;
        out.extend_from_slice(&x[off..off + s.d]);
    }
    out
}

/// Scatters a contiguous `[N, D]` block into head `h` of batch row `b` of `x [B, N, H, D]`.
fn scatter<T: Float>(x: &mut [T], blk: &[T], b: usize, n: usize, s: &XAttnShape, h: usize) {
    for i in 0..n {
        let off = ((b * n + i) * s.h + h) * s.d;
        x[off..off + s.d].copy_from_slice(&blk[i * s.d..(i + 1) * s.d]);
    }
}

/// Dense masked probabilities `P [T, M·R]` of one (b, h): −∞ scores where masked, rows with no
/// allowed key all zero.
fn naive_probs<T: Float>(s: &XAttnShape, mode: XAttnMode, qh: &[T], kh: &[T], media_row: &[i64]) -> Vec<T> {
    let (d, mr) = (s.d, s.m * s.r);
    let scale = T::one() / T::from_f64(s.d as f64).sqrt();
    let mut p = vec![T::zero(); s.t * mr];
    for t in 0..s.t {
        let row = &mut p[t * mr..(t + 1) * mr];
        for (j, x) in row.iter_mut().enumerate() {
            *x = if allowed(mode, s.r, media_row[t], j) {
                let mut acc = T::zero();
                for e in 0..d {
                    acc += qh[t * d + e] * kh[j * d + e];
                }
                acc * scale
            } else {
                T::neg_infinity()
            };
        }
        let mx = row.iter().fold(T::neg_infinity(), |a, &b| a.max(b));
        if mx == T::neg_infinity() {
            row.fill(T::zero());
            continue;
        }
        let mut sum = T::zero();
        for x in row.iter_mut() {
            *x = (*x - mx).exp();
            sum += *x;
        }
        for x in row.iter_mut() {
            *x = *x / sum;
        }
    }
    p
}

fn check_naive<T>(s: &XAttnShape, q: &[T], k: &[T], v: &[T], media: &[i64]) {
    assert_eq!(q.len(), s.q_len(), "masked_xattn_naive: q length");
    assert_eq!(k.len(), s.kv_len(), "masked_xattn_naive: k length");
    assert_eq!(v.len(), s.kv_len(), "masked_xattn_naive: v length");
    if let Err(e) = check_media(s, media) {
        panic!("{e}");
    }
}

/// Dense reference forward: per (b, h) builds the `[T, M·R]` masked score matrix (−∞ where masked),
/// softmax, times V; rows with no allowed key give zero. Generic so tests can run it in f64.
/// Panics on bad lengths or media indices.
#[allow(clippy::too_many_arguments)]
pub fn masked_xattn_forward_naive<T: Float>(s: &XAttnShape, mode: XAttnMode, q: &[T], k: &[T], v: &[T], media: &[i64], o: &mut [T]) {
    check_naive(s, q, k, v, media);
    assert_eq!(o.len(), s.q_len(), "masked_xattn_naive: o length");
    let (d, mr) = (s.d, s.m * s.r);
    let blocks: Vec<Vec<T>> = (0..s.b * s.h)
        .into_par_iter()
        .map(|item| {
            let (b, h) = (item / s.h, item % s.h);
            let (qh, kh, vh) = (gather(q, b, s.t, s, h), gather(k, b, mr, s, h), gather(v, b, mr, s, h));
            let p = naive_probs(s, mode, &qh, &kh, &media[b * s.t..(b + 1) * s.t]);
            let mut oh = vec![T::zero(); s.t * d];
            for t in 0..s.t {
                for j in 0..mr {
                    let w = p[t * mr + j];
                    for e in 0..d {
                        oh[t * d + e] += w * vh[j * d + e];
                    }
                }
            }
            oh
        })
        .collect();
    for (item, oh) in blocks.iter().enumerate() {
        scatter(o, oh, item / s.h, s.t, s, item % s.h);
    }
}

/// Dense reference backward from `d_o`: recomputes the dense `P`, then dP = dO Vᵀ,
/// dS = P ∘ (dP − rowsum(P ∘ dP)), dq = scale·dS K, dk = scale·dSᵀ Q, dv = Pᵀ dO (all overwritten).
/// Panics on bad lengths or media indices.
#[allow(clippy::too_many_arguments)]
pub fn masked_xattn_backward_naive<T: Float>(
    s: &XAttnShape,
    mode: XAttnMode,
    q: &[T],
    k: &[T],
    v: &[T],
    media: &[i64],
    d_o: &[T],
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
) {
    check_naive(s, q, k, v, media);
    assert_eq!(d_o.len(), s.q_len(), "masked_xattn_naive: do length");
    assert_eq!(dq.len(), s.q_len(), "masked_xattn_naive: dq length");
    assert_eq!(dk.len(), s.kv_len(), "masked_xattn_naive: dk length");
    assert_eq!(dv.len(), s.kv_len(), "masked_xattn_naive: dv length");
    let (d, mr) = (s.d, s.m * s.r);
    let scale = T::one() / T::from_f64(s.d as f64).sqrt();
    type Grads<T> = (Vec<T>, Vec<T>, Vec<T>);
    let blocks: Vec<Grads<T>> = (0..s.b * s.h)
        .into_par_iter()
        .map(|item| {
            let (b, h) = (item / s.h, item % s.h);
            let (qh, kh, vh) = (gather(q, b, s.t, s, h), gather(k, b, mr, s, h), gather(v, b, mr, s, h));
            let doh = gather(d_o, b, s.t, s, h);
            let p = naive_probs(s, mode, &qh, &kh, &media[b * s.t..(b + 1) * s.t]);
            let mut ds = vec![T::zero(); s.t * mr];
            for t in 0..s.t {
                let mut delta = T::zero();
                for j in 0..mr {
                    let mut dp = T::zero();
                    for e in 0..d {
                        dp += doh[t * d + e] * vh[j * d + e];
                    }
                    ds[t * mr + j] = dp;
                    delta += p[t * mr + j] * dp;
                }
                for j in 0..mr {
                    ds[t * mr + j] = p[t * mr + j] * (ds[t * mr + j] - delta) * scale;
                }
            }
            let (mut dqh, mut dkh, mut dvh) = (vec![T::zero(); s.t * d], vec![T::zero(); mr * d], vec![T::zero(); mr * d]);
            for t in 0..s.t {
                for j in 0..mr {
                    let (g, w) = (ds[t * mr + j], p[t * mr + j]);
                    for e in 0..d {
                        dqh[t * d + e] += g * kh[j * d + e];
                        dkh[j * d + e] += g * qh[t * d + e];
                        dvh[j * d + e] += w * doh[t * d + e];
                    }
                }
            }
            (dqh, dkh, dvh)
        })
        .collect();
    for (item, (dqh, dkh, dvh)) in blocks.iter().enumerate() {
        let (b, h) = (item / s.h, item % s.h);
        scatter(dq, dqh, b, s.t, s, h);
        scatter(dk, dkh, b, mr, s, h);
        scatter(dv, dvh, b, mr, s, h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random numbers in [−1, 1).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> f64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        }
        fn vec(&mut self, n: usize, amp: f64) -> Vec<f32> {
            (0..n).map(|_| (self.next() * amp) as f32).collect()
        }
        fn below(&mut self, n: usize) -> usize {
            ((self.next() + 1.0) * 0.5 * n as f64) as usize % n.max(1)
        }
    }

    /// Non-decreasing media rows with leading zeros, skipped media and runs of length 1.
    fn random_media(rng: &mut Lcg, b: usize, t: usize, m: usize) -> Vec<i64> {
        let mut out = Vec::with_capacity(b * t);
        for _ in 0..b {
            let mut cur = 0i64;
            for _ in 0..t {
                if rng.below(4) == 0 {
                    cur = (cur + 1 + rng.below(2) as i64).min(m as i64); // sometimes skips a medium
                }
                out.push(cur);
            }
        }
        out
    }

    struct Case {
        s: XAttnShape,
        media: Vec<i64>,
    }

    fn cases() -> Vec<Case> {
        let mut rng = Lcg(7);
        let mut out = Vec::new();
        // Hand-made: leading zeros, runs of length 1, skipped media, a medium never used, non-monotone.
        let s = XAttnShape { b: 2, t: 11, m: 4, r: 5, h: 2, d: 8 };
        let media = vec![0, 0, 1, 3, 3, 3, 4, 2, 2, 0, 4, /* row 2 */ 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2];
        out.push(Case { s, media });
        for &(b, t, m, r, h, d) in &[(1, 7, 1, 3, 1, 4), (3, 20, 3, 7, 2, 16), (2, 33, 5, 9, 3, 12), (2, 300, 3, 16, 2, 8)] {
            let s = XAttnShape { b, t, m, r, h, d };
            let media = random_media(&mut rng, b, t, m);
            out.push(Case { s, media });
        }
        // One long run (longer than a tile) after a few tokens without media.
        let s = XAttnShape { b: 1, t: 2 * TILE + 17, m: 2, r: 8, h: 2, d: 8 };
        let mut media = vec![2i64; s.t];
        media[..3].fill(0);
        out.push(Case { s, media });
        // The benchmark's head count, head size and token count (full 64-token tiles, 8 heads of
        // 64), with random media rows; four rows make every output 2 MiB, so this case writes
        // with non-temporal stores (`streams`) and the smaller ones with plain stores.
        let s = XAttnShape { b: 4, t: 256, m: 4, r: 64, h: 8, d: 64 };
        assert!(streams(s.q_len()) && streams(s.kv_len()));
        let media = random_media(&mut rng, s.b, s.t, s.m);
        out.push(Case { s, media: media.clone() });
        // The same size with media nobody attends to, whose dk/dv are zeroed with non-temporal
        // stores: row 0 skips medium 3, row 1 sees no image at all.
        let mut media = media;
        for (t, mi) in media[..s.t].iter_mut().enumerate() {
            *mi = [0, 1, 2, 4][t * 4 / s.t];
        }
        media[s.t..2 * s.t].fill(0);
        out.push(Case { s, media });
        out
    }

    fn max_err(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    /// A NaN-filled buffer with room for `n` floats from the returned offset, which is 64-byte
    /// aligned or (`aligned` false) one float past it.
    fn out_buf(n: usize, aligned: bool) -> (Vec<f32>, usize) {
        let buf = vec![f32::NAN; n + 17];
        let at = buf.as_ptr().align_offset(64) + usize::from(!aligned);
        (buf, at)
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn xattn_fused_matches_naive_forward_and_backward() {
        let mut rng = Lcg(11);
        for case in cases() {
            let s = case.s;
            for mode in [XAttnMode::OnlyImmediate, XAttnMode::AllPrevious] {
                let q = rng.vec(s.q_len(), 2.0);
                let k = rng.vec(s.kv_len(), 2.0);
                let v = rng.vec(s.kv_len(), 1.0);
                let d_o = rng.vec(s.q_len(), 1.0);
                // Outputs both 64-byte aligned (where the AVX-512 products may stream them out
                // directly) and not (always through scratch): the same bits either way.
                let mut fwd = Vec::new();
                for aligned in [true, false] {
                    let (mut buf, at) = out_buf(s.q_len(), aligned);
                    let mut lse = vec![f32::NAN; s.b * s.t * s.h];
                    masked_xattn_forward(&s, mode, &q, &k, &v, &case.media, &mut buf[at..at + s.q_len()], &mut lse).unwrap();
                    fwd.push((buf[at..at + s.q_len()].to_vec(), lse));
                }
                assert!(bits(&fwd[0].0) == bits(&fwd[1].0) && bits(&fwd[0].1) == bits(&fwd[1].1), "{s:?} {mode:?}: aligned o differs");
                let (o, lse) = fwd.swap_remove(0);
                let mut o_ref = vec![0.0; s.q_len()];
                masked_xattn_forward_naive(&s, mode, &q, &k, &v, &case.media, &mut o_ref);
                let e = max_err(&o, &o_ref);
                assert!(e < 1e-4, "{s:?} {mode:?}: forward max err {e}");

                let mut runs = Vec::new();
                for aligned in [true, false] {
                    let [(mut bq, aq), (mut bk, ak), (mut bv, av)] = [s.q_len(), s.kv_len(), s.kv_len()].map(|n| out_buf(n, aligned));
                    let (dq, dk, dv) = (&mut bq[aq..aq + s.q_len()], &mut bk[ak..ak + s.kv_len()], &mut bv[av..av + s.kv_len()]);
                    masked_xattn_backward(&s, mode, &q, &k, &v, &case.media, &o, &lse, &d_o, dq, dk, dv).unwrap();
                    runs.push((dq.to_vec(), dk.to_vec(), dv.to_vec()));
                }
                for (i, name) in ["dq", "dk", "dv"].iter().enumerate() {
                    let pick = |r: &(Vec<f32>, Vec<f32>, Vec<f32>)| bits([&r.0, &r.1, &r.2][i]);
                    assert!(pick(&runs[0]) == pick(&runs[1]), "{s:?} {mode:?}: aligned {name} differs");
                }
                let (dq, dk, dv) = runs.swap_remove(0);
                let (mut dq_r, mut dk_r, mut dv_r) = (vec![0.0; s.q_len()], vec![0.0; s.kv_len()], vec![0.0; s.kv_len()]);
                masked_xattn_backward_naive(&s, mode, &q, &k, &v, &case.media, &d_o, &mut dq_r, &mut dk_r, &mut dv_r);
                for (name, a, b) in [("dq", &dq, &dq_r), ("dk", &dk, &dk_r), ("dv", &dv, &dv_r)] {
                    let e = max_err(a, b);
                    assert!(e < 1e-4, "{s:?} {mode:?}: {name} max err {e}");
                }

                // Tokens without media: exactly zero output, lse and dq.
                let hd = s.h * s.d;
                for (i, &mi) in case.media.iter().enumerate() {
                    if mi == 0 {
                        assert!(o[i * hd..(i + 1) * hd].iter().all(|&x| x == 0.0));
                        assert!(o_ref[i * hd..(i + 1) * hd].iter().all(|&x| x == 0.0));
                        assert!(dq[i * hd..(i + 1) * hd].iter().all(|&x| x == 0.0));
                        assert!(lse[i * s.h..(i + 1) * s.h].iter().all(|&x| x == 0.0));
                    }
                }
                // Media nobody attends to get exactly zero dk/dv.
                let krow = s.r * hd;
                for b in 0..s.b {
                    for m in 0..s.m {
                        let row = &case.media[b * s.t..(b + 1) * s.t];
                        let seen = row.iter().any(|&mi| match mode {
                            XAttnMode::OnlyImmediate => mi == m as i64 + 1,
                            XAttnMode::AllPrevious => mi > m as i64,
                        });
                        if !seen {
                            let off = (b * s.m + m) * krow;
                            assert!(dk[off..off + krow].iter().chain(&dv[off..off + krow]).all(|&x| x == 0.0));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn xattn_fused_is_independent_of_thread_count() {
        let s = XAttnShape { b: 3, t: 150, m: 3, r: 16, h: 5, d: 16 };
        let mut rng = Lcg(5);
        let media = random_media(&mut rng, s.b, s.t, s.m);
        let (q, k, v, d_o) = (rng.vec(s.q_len(), 1.0), rng.vec(s.kv_len(), 1.0), rng.vec(s.kv_len(), 1.0), rng.vec(s.q_len(), 1.0));
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mode = XAttnMode::AllPrevious;
                let (mut o, mut lse) = (vec![0.0; s.q_len()], vec![0.0; s.b * s.t * s.h]);
                masked_xattn_forward(&s, mode, &q, &k, &v, &media, &mut o, &mut lse).unwrap();
                let (mut dq, mut dk, mut dv) = (vec![0.0; s.q_len()], vec![0.0; s.kv_len()], vec![0.0; s.kv_len()]);
                masked_xattn_backward(&s, mode, &q, &k, &v, &media, &o, &lse, &d_o, &mut dq, &mut dk, &mut dv).unwrap();
                (o, lse, dq, dk, dv)
            })
        };
        let a = run(1);
        for threads in [2, 3, 7] {
            let b = run(threads);
            assert!(a.0 == b.0 && a.1 == b.1 && a.2 == b.2 && a.3 == b.3 && a.4 == b.4, "{threads} threads");
        }
    }

    /// The reference backward against central differences of the reference forward, in f64.
    #[test]
    fn xattn_naive_backward_matches_finite_differences() {
        let s = XAttnShape { b: 2, t: 6, m: 3, r: 3, h: 2, d: 4 };
        let media = vec![0, 1, 1, 3, 3, 2, /* row 2 */ 0, 0, 2, 2, 2, 3];
        let mut rng = Lcg(3);
        let mut f64vec = |n: usize| (0..n).map(|_| rng.next()).collect::<Vec<f64>>();
        let (q, k, v, w) = (f64vec(s.q_len()), f64vec(s.kv_len()), f64vec(s.kv_len()), f64vec(s.q_len()));
        for mode in [XAttnMode::OnlyImmediate, XAttnMode::AllPrevious] {
            // loss = Σ o ∘ w, so dL/do = w.
            let loss = |q: &[f64], k: &[f64], v: &[f64]| {
                let mut o = vec![0.0; s.q_len()];
                masked_xattn_forward_naive(&s, mode, q, k, v, &media, &mut o);
                o.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>()
            };
            let (mut dq, mut dk, mut dv) = (vec![0.0; s.q_len()], vec![0.0; s.kv_len()], vec![0.0; s.kv_len()]);
            masked_xattn_backward_naive(&s, mode, &q, &k, &v, &media, &w, &mut dq, &mut dk, &mut dv);
            let eps = 1e-6;
            for which in 0..3 {
                let grad = [&dq, &dk, &dv][which];
                let base = [&q, &k, &v][which];
                for i in 0..base.len() {
                    let mut plus = base.clone();
                    let mut minus = base.clone();
                    plus[i] += eps;
                    minus[i] -= eps;
                    let eval = |x: &[f64]| match which {
                        0 => loss(x, &k, &v),
                        1 => loss(&q, x, &v),
                        _ => loss(&q, &k, x),
                    };
                    let fd = (eval(&plus) - eval(&minus)) / (2.0 * eps);
                    assert!((fd - grad[i]).abs() < 1e-7, "{mode:?} grad {which}[{i}]: fd {fd} vs {}", grad[i]);
                }
            }
        }
    }

    /// The column softmax and its backward (SIMD path with a scalar tail, and the portable
    /// fallback) against a direct f64 computation, on a block whose width is not a multiple of 8.
    #[test]
    fn xattn_column_kernels_match_direct_formulas() {
        let mut rng = Lcg(7);
        // 13 columns: one full group of 8 and a masked one of 5; 3 columns: only a masked group
        for (n, len) in [(7, 13), (5, 3)] {
            column_kernels_case(&mut rng, n, len);
        }
    }

    fn column_kernels_case(rng: &mut Lcg, n: usize, len: usize) {
        let scale = 0.37f32;
        let x = rng.vec(n * len, 3.0);
        let g = rng.vec(n * len, 1.0);
        let (lse_in, delta) = (rng.vec(len, 2.0), rng.vec(len, 0.5));
        // direct: column i's softmax and log-sum-exp; p = e^(x·scale − lse), dp = p(g − δ)·scale
        let mut want_p = vec![0.0f64; n * len];
        let mut want_lse = vec![0.0f64; len];
        for i in 0..len {
            let col: Vec<f64> = (0..n).map(|j| x[j * len + i] as f64 * scale as f64).collect();
            let mx = col.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = col.iter().map(|c| (c - mx).exp()).sum();
            want_lse[i] = mx + sum.ln();
            for j in 0..n {
                want_p[j * len + i] = (col[j] - want_lse[i]).exp();
            }
        }
        let close = |got: &[f32], want: &[f64], what: &str| {
            for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
                assert!((a as f64 - b).abs() <= 1e-5 * (1.0 + b.abs()), "{what}[{i}]: {a} vs {b}");
            }
        };
        type Softmax = fn(&mut [f32], usize, usize, f32, &mut [f32]);
        type ProbGrad = fn(&mut [f32], &mut [f32], usize, &[f32], &[f32], f32);
        let simd_grad: ProbGrad = |p, dp, len, l, d, s| prob_grad_cols(p, dp, p.len() / len, len, l, d, s);
        let paths: [(&str, Softmax, ProbGrad); 2] = [("dispatched", softmax_cols, simd_grad), ("portable", softmax_cols_portable, prob_grad_cols_portable)];
        for (name, softmax, prob_grad) in paths {
            let (mut p, mut lse) = (x.clone(), vec![0.0f32; len]);
            softmax(&mut p, n, len, scale, &mut lse);
            close(&p, &want_p, &format!("{name} softmax"));
            close(&lse, &want_lse, &format!("{name} lse"));
            let (mut p, mut dp) = (x.clone(), g.clone());
            prob_grad(&mut p, &mut dp, len, &lse_in, &delta, scale);
            let mut want_p2 = vec![0.0f64; n * len];
            let mut want_dp = vec![0.0f64; n * len];
            for j in 0..n {
                for i in 0..len {
                    let e = (x[j * len + i] as f64 * scale as f64 - lse_in[i] as f64).exp();
                    want_p2[j * len + i] = e;
                    want_dp[j * len + i] = e * (g[j * len + i] as f64 - delta[i] as f64) * scale as f64;
                }
            }
            close(&p, &want_p2, &format!("{name} prob"));
            close(&dp, &want_dp, &format!("{name} score gradient"));
        }
    }

    #[test]
    fn xattn_rejects_bad_media_index() {
        let s = XAttnShape { b: 2, t: 3, m: 2, r: 2, h: 1, d: 2 };
        let (q, k, v) = (vec![0.0; s.q_len()], vec![0.0; s.kv_len()], vec![0.0; s.kv_len()]);
        let (mut o, mut lse) = (vec![0.0; s.q_len()], vec![0.0; s.b * s.t * s.h]);
        let (mut dq, mut dk, mut dv) = (vec![0.0; s.q_len()], vec![0.0; s.kv_len()], vec![0.0; s.kv_len()]);
        for (media, pos, val) in [(vec![0, 1, 2, 1, 3, 2], "media[1, 1]", "= 3"), (vec![0, -1, 2, 1, 1, 2], "media[0, 1]", "= -1")] {
            for mode in [XAttnMode::OnlyImmediate, XAttnMode::AllPrevious] {
                let e = masked_xattn_forward(&s, mode, &q, &k, &v, &media, &mut o, &mut lse).unwrap_err();
                assert!(e.contains(pos) && e.contains(val), "{e}");
                let e = masked_xattn_backward(&s, mode, &q, &k, &v, &media, &o, &lse, &q, &mut dq, &mut dk, &mut dv).unwrap_err();
                assert!(e.contains(pos) && e.contains(val), "{e}");
            }
        }
        let e = masked_xattn_forward(&s, XAttnMode::OnlyImmediate, &q[1..], &k, &v, &[0; 6], &mut o, &mut lse).unwrap_err();
        assert!(e.contains("q has 11 elements"), "{e}");
    }
}
