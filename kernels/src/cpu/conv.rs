//! 2-D convolution (NCHW) by im2col + GEMM, with groups, strides and per-side zero padding,
//! forward, backward-data and backward-weight.
use super::float::Float;
use super::gemm::{gemm_raw, MatRef};
use super::parallel::worth_parallel;
use rayon::prelude::*;

/// Shapes of one convolution: input `[n, c, h, w]`, weight `[o, c/groups, kh, kw]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: (usize, usize),
    /// Zero padding (top, bottom, left, right).
    pub pad: (usize, usize, usize, usize),
    pub groups: usize,
}

impl ConvGeom {
    pub fn ho(&self) -> usize {
        (self.h + self.pad.0 + self.pad.1 - self.kh) / self.stride.0 + 1
    }
    pub fn wo(&self) -> usize {
        (self.w + self.pad.2 + self.pad.3 - self.kw) / self.stride.1 + 1
    }
    fn cg(&self) -> usize {
        self.c / self.groups
    }
    fn og(&self) -> usize {
        self.o / self.groups
    }
    /// Rows of the im2col matrix per group: `c/groups · kh · kw`.
    fn k(&self) -> usize {
        self.cg() * self.kh * self.kw
    }
    fn l(&self) -> usize {
        self.ho() * self.wo()
    }
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == (1, 1) && self.pad == (0, 0, 0, 0)
    }
}

/// The output columns `ox` whose input column `ox·stride + kx − pad_left` lies inside `0..w`, as a
/// half-open range (empty when none does).
fn valid_ox(geo: &ConvGeom, kx: usize, wo: usize) -> (usize, usize) {
    let (s, pl) = (geo.stride.1, geo.pad.2);
    // ox·s + kx ≥ pl  and  ox·s + kx < pl + w
    let lo = if kx >= pl { 0 } else { (pl - kx).div_ceil(s) };
    let hi = if pl + geo.w > kx { (pl + geo.w - kx).div_ceil(s).min(wo) } else { 0 };
    (lo.min(hi), hi)
}

/// Columns of group `g` of one image: `cols[(ic·kh + ky)·kw + kx, oy·wo + ox]`.
/// Each output row is a zero border plus one run of input: a slice copy when the stride is 1.
fn im2col<T: Float>(x: &[T], geo: &ConvGeom, g: usize, cols: &mut [T]) {
    let (ho, wo, cg) = (geo.ho(), geo.wo(), geo.cg());
    let l = ho * wo;
    let sx = geo.stride.1;
    for ic in 0..cg {
        let plane = &x[(g * cg + ic) * geo.h * geo.w..(g * cg + ic + 1) * geo.h * geo.w];
        for ky in 0..geo.kh {
            for kx in 0..geo.kw {
                let row = &mut cols[((ic * geo.kh + ky) * geo.kw + kx) * l..][..l];
                let (lo, hi) = valid_ox(geo, kx, wo);
                if geo.stride == (1, 1) && wo == geo.w && lo < hi {
                    // "Same" width, stride 1: the valid output rows are one flat copy of the
                    // plane shifted by (ky − pad_top)·w + (kx − pad_left); the wrapped-around
                    // border columns are then zeroed.
                    let oy_lo = geo.pad.0.saturating_sub(ky);
                    let oy_hi = (geo.h + geo.pad.0).saturating_sub(ky).min(ho);
                    row[..oy_lo * wo].fill(T::zero());
                    if oy_lo < oy_hi {
                        row[oy_hi * wo..].fill(T::zero());
                        let shift = (ky as isize - geo.pad.0 as isize) * geo.w as isize + kx as isize - geo.pad.2 as isize;
                        let (d0, d1) = (oy_lo * wo + lo, oy_hi * wo - (wo - hi));
                        let s0 = (d0 as isize + shift) as usize;
                        row[d0..d1].copy_from_slice(&plane[s0..s0 + (d1 - d0)]);
                        for oy in oy_lo..oy_hi {
                            row[oy * wo..oy * wo + lo].fill(T::zero());
                            row[oy * wo + hi..(oy + 1) * wo].fill(T::zero());
                        }
                    } else {
                        row.fill(T::zero());
                    }
                    continue;
                }
                for oy in 0..ho {
                    let iy = (oy * geo.stride.0 + ky) as isize - geo.pad.0 as isize;
                    let dst = &mut row[oy * wo..(oy + 1) * wo];
                    if iy < 0 || iy >= geo.h as isize || lo >= hi {
                        dst.fill(T::zero());
                        continue;
                    }
                    let src = &plane[iy as usize * geo.w..(iy as usize + 1) * geo.w];
                    dst[..lo].fill(T::zero());
                    dst[hi..].fill(T::zero());
                    let ix0 = lo * sx + kx - geo.pad.2;
                    if sx == 1 {
                        dst[lo..hi].copy_from_slice(&src[ix0..ix0 + (hi - lo)]);
                    } else {
                        for (j, d) in dst[lo..hi].iter_mut().enumerate() {
                            *d = src[ix0 + j * sx];
                        }
                    }
                }
            }
        }
    }
}

/// One row of the im2col matrix: input channel (within the group) and kernel offset.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct DepthRow {
    ic: usize,
    ky: usize,
    kx: usize,
}

#[cfg(target_arch = "x86_64")]
impl DepthRow {
    /// Row `p` (rows run over `kx`, then `ky`, then `ic`).
    fn at(p: usize, geo: &ConvGeom) -> Self {
        DepthRow { ic: p / (geo.kh * geo.kw), ky: p / geo.kw % geo.kh, kx: p % geo.kw }
    }

    /// The next row.
    #[inline]
    fn advance(&mut self, geo: &ConvGeom) {
        self.kx += 1;
        if self.kx == geo.kw {
            self.kx = 0;
            self.ky += 1;
            if self.ky == geo.kh {
                self.ky = 0;
                self.ic += 1;
            }
        }
    }
}

/// The im2col matrix of one group of one image (`[cg·kh·kw, ho·wo]`, as [`im2col`] builds it)
/// as a GEMM operand that packs its slivers straight from the input planes: the implicit-GEMM
/// convolution. Nothing of size k × l is written; each sliver is a few kB, built where the
/// micro-kernel reads it.
///
/// Why: the explicit im2col wrote and re-read 9× the input per image (295 kB for the 3 × 3
/// benchmark conv), about a third of the forward's time on one thread.
#[cfg(target_arch = "x86_64")]
struct ImplicitCols<'a> {
    /// The group's `cg` input planes of one image, `[cg, h, w]`.
    x: &'a [f32],
    geo: &'a ConvGeom,
}

#[cfg(target_arch = "x86_64")]
impl super::sgemm::PackB for ImplicitCols<'_> {
    fn pack(&self, p0: usize, kc: usize, j0: usize, cols: usize, out: &mut [f32]) {
        use super::sgemm::NR;
        let geo = self.geo;
        let (wo, hw) = (geo.wo(), geo.h * geo.w);
        let (sy, sx) = geo.stride;
        // The sliver's columns as runs within one output row: (oy, first ox, length, first j).
        let mut runs = [(0usize, 0usize, 0usize, 0usize); NR];
        let mut nruns = 0;
        let mut j = 0;
        while j < cols {
            let (oy, ox) = ((j0 + j) / wo, (j0 + j) % wo);
            let len = (wo - ox).min(cols - j);
            runs[nruns] = (oy, ox, len, j);
            nruns += 1;
            j += len;
        }
        let mut at = DepthRow::at(p0, geo);
        if nruns <= MAX_FAST_RUNS && sx == 1 && geo.kw <= MAX_FAST_KW {
            // SAFETY: `ImplicitCols` is only built where AVX2 is available (the GEMM needs it);
            // the run count and kernel width are within the path's limits.
            unsafe { pack_runs(self.x, geo, &runs[..nruns], at, kc, out) };
            return;
        }
        for dst in out[..kc * NR].chunks_exact_mut(NR) {
            dst[cols..].fill(0.0);
            let DepthRow { ic, ky, kx } = at;
            let plane = &self.x[ic * hw..(ic + 1) * hw];
            for &(oy, ox0, len, jd) in &runs[..nruns] {
                let seg = &mut dst[jd..jd + len];
                let iy = (oy * sy + ky) as isize - geo.pad.0 as isize;
                if iy < 0 || iy >= geo.h as isize {
                    seg.fill(0.0);
                    continue;
                }
                let src = &plane[iy as usize * geo.w..(iy as usize + 1) * geo.w];
                // Input column of output column ox: ox·sx + kx − pad_left, inside 0..w for
                // ox in lo..hi.
                let (lo, hi) = valid_ox(geo, kx, wo);
                let (a, b) = (lo.clamp(ox0, ox0 + len), hi.clamp(ox0, ox0 + len));
                if a >= b {
                    seg.fill(0.0);
                    continue;
                }
                seg[..a - ox0].fill(0.0);
                seg[b - ox0..].fill(0.0);
                let ix0 = a * sx + kx - geo.pad.2;
                if sx == 1 {
                    seg[a - ox0..b - ox0].copy_from_slice(&src[ix0..ix0 + (b - a)]);
                } else {
                    for (t, d) in seg[a - ox0..b - ox0].iter_mut().enumerate() {
                        *d = src[ix0 + t * sx];
                    }
                }
            }
            at.advance(geo);
        }
    }
}

/// Widest kernel, and most runs per sliver, that the masked-load path handles (its masks live on
/// the stack: `MAX_FAST_RUNS · MAX_FAST_KW` pairs).
#[cfg(target_arch = "x86_64")]
const MAX_FAST_KW: usize = 8;
#[cfg(target_arch = "x86_64")]
const MAX_FAST_RUNS: usize = 4;

/// [`ImplicitCols::pack`] at column stride 1 with masked AVX loads. The sliver's columns are
/// `runs` (`(oy, first ox, length, first lane)`): stretches of one output row each, so each
/// run's part of a packed row is consecutive input floats. A run loads 16 lanes starting its
/// first lane's input column `first lane` floats early, masked to its own lanes and to the valid
/// input columns (masked lanes read as zero and touch no memory); the runs' vectors are OR-ed
/// together (their lanes do not overlap, so every value keeps its exact bits). Depth rows start at `at`.
///
/// # Safety
/// AVX2 must be available; `x` holds the group's planes and `out` at least `kc·16` floats;
/// `runs.len() ≤ MAX_FAST_RUNS`, `geo.kw ≤ MAX_FAST_KW`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_runs(x: &[f32], geo: &ConvGeom, runs: &[(usize, usize, usize, usize)], mut at: DepthRow, kc: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let wo = geo.wo();
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let lanes_hi = _mm256_add_epi32(lanes, _mm256_set1_epi32(8));
    // Per (run, kx): the lanes whose input column is inside the row, as two lane masks.
    let mut masks = [[(_mm256_setzero_si256(), _mm256_setzero_si256()); MAX_FAST_KW]; MAX_FAST_RUNS];
    for (run_masks, &(_, ox0, len, jd)) in masks.iter_mut().zip(runs) {
        for (kxi, m) in run_masks.iter_mut().enumerate().take(geo.kw) {
            let (lo, hi) = valid_ox(geo, kxi, wo);
            let (a, b) = (lo.clamp(ox0, ox0 + len) - ox0 + jd, hi.clamp(ox0, ox0 + len) - ox0 + jd);
            let (av, bv) = (_mm256_set1_epi32(a as i32 - 1), _mm256_set1_epi32(b as i32));
            let inside = |l: __m256i| _mm256_and_si256(_mm256_cmpgt_epi32(l, av), _mm256_cmpgt_epi32(bv, l));
            *m = (inside(lanes), inside(lanes_hi));
        }
    }
    let (hw, w) = (geo.h * geo.w, geo.w as isize);
    let base = x.as_ptr();
    let end = base.wrapping_add(x.len());
    let o = out.as_mut_ptr();
    for p in 0..kc {
        let DepthRow { ic, ky, kx } = at;
        let (mut v0, mut v1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for (r, &(oy, ox0, _, jd)) in runs.iter().enumerate() {
            let iy = (oy * geo.stride.0 + ky) as isize - geo.pad.0 as isize;
            if iy < 0 || iy >= geo.h as isize {
                continue;
            }
            // Input column of lane 0 for this run: ox0 − jd + kx − pad_left (masked outside).
            let src = base.wrapping_offset((ic * hw) as isize + iy * w + ox0 as isize - jd as isize + kx as isize - geo.pad.2 as isize);
            let (m0, m1) = masks[r][kx];
            let at = src as usize;
            if at >= base as usize && at + 16 * 4 <= end as usize {
                // The whole 16-float window lies inside the planes: plain loads, then the masks
                // (measured: masked loads stalled the packing, ~55 % of its time on Zen 3).
                v0 = _mm256_or_ps(v0, _mm256_and_ps(_mm256_loadu_ps(src), _mm256_castsi256_ps(m0)));
                v1 = _mm256_or_ps(v1, _mm256_and_ps(_mm256_loadu_ps(src.add(8)), _mm256_castsi256_ps(m1)));
            } else {
                v0 = _mm256_or_ps(v0, _mm256_maskload_ps(src, m0));
                v1 = _mm256_or_ps(v1, _mm256_maskload_ps(src.wrapping_add(8), m1));
            }
        }
        let dst = o.add(p * 16);
        _mm256_storeu_ps(dst, v0);
        _mm256_storeu_ps(dst.add(8), v1);
        at.advance(geo);
    }
}

/// Adjoint of [`im2col`]: accumulates columns back into the group's planes of one image.
fn col2im<T: Float>(cols: &[T], geo: &ConvGeom, g: usize, dx: &mut [T]) {
    let (ho, wo, cg) = (geo.ho(), geo.wo(), geo.cg());
    let l = ho * wo;
    let sx = geo.stride.1;
    for ic in 0..cg {
        let plane = &mut dx[(g * cg + ic) * geo.h * geo.w..(g * cg + ic + 1) * geo.h * geo.w];
        for ky in 0..geo.kh {
            for kx in 0..geo.kw {
                let row = &cols[((ic * geo.kh + ky) * geo.kw + kx) * l..][..l];
                let (lo, hi) = valid_ox(geo, kx, wo);
                if lo >= hi {
                    continue;
                }
                for oy in 0..ho {
                    let iy = (oy * geo.stride.0 + ky) as isize - geo.pad.0 as isize;
                    if iy < 0 || iy >= geo.h as isize {
                        continue;
                    }
                    let dst = &mut plane[iy as usize * geo.w..(iy as usize + 1) * geo.w];
                    let src = &row[oy * wo + lo..oy * wo + hi];
                    let ix0 = lo * sx + kx - geo.pad.2;
                    if sx == 1 {
                        for (d, &v) in dst[ix0..ix0 + (hi - lo)].iter_mut().zip(src) {
                            *d += v;
                        }
                    } else {
                        for (j, &v) in src.iter().enumerate() {
                            dst[ix0 + j * sx] += v;
                        }
                    }
                }
            }
        }
    }
}

/// Runs `f(image, out_chunk, scratch)` over the images, in parallel when `cost` is worth it. Each
/// worker takes a contiguous block of images and builds its scratch (`init`) once for the block,
/// not once per image (the im2col buffers are hundreds of kB: allocating and zeroing them per
/// image showed in profiles).
fn per_image<T: Send, S>(out: &mut [T], chunk: usize, cost: usize, init: impl Fn() -> S + Sync + Send, f: impl Fn(usize, &mut [T], &mut S) + Sync + Send) {
    if worth_parallel(cost) {
        let per_worker = (out.len() / chunk.max(1)).div_ceil(rayon::current_num_threads()).max(1);
        out.par_chunks_mut(chunk).enumerate().with_min_len(per_worker).for_each_init(init, |s, (i, c)| f(i, c, s));
    } else {
        let mut s = init();
        out.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c, &mut s));
    }
}

/// Whether the forward of `geo` runs as an implicit GEMM ([`ImplicitCols`] into our own GEMM):
/// f32, a kernel that needs im2col, and products that our GEMM takes (see `gemm::use_ours`).
/// (Routing even smaller serial products here measured no faster on the tiny step.)
fn implicit_gemm<T: Float>(geo: &ConvGeom, parallel: bool) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::float::as_f32::<T>(&[]).is_some() && !geo.pointwise() && super::gemm::use_ours(geo.og() * geo.l() * geo.k(), parallel)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (geo, parallel);
        false
    }
}

/// Forward: `out [n, o, ho, wo] = conv(x, w) (+ bias [o])`. Runs as an implicit GEMM where
/// [`implicit_gemm`] says so, otherwise as im2col + GEMM per image and group.
pub fn conv2d<T: Float>(x: &[T], w: &[T], bias: Option<&[T]>, geo: &ConvGeom, out: &mut [T]) {
    conv2d_with(x, w, bias, geo, out, implicit_gemm::<T>(geo, geo.n == 1))
}

fn conv2d_with<T: Float>(x: &[T], w: &[T], bias: Option<&[T]>, geo: &ConvGeom, out: &mut [T], implicit: bool) {
    let (k, l, og) = (geo.k(), geo.l(), geo.og());
    let img_in = geo.c * geo.h * geo.w;
    assert_eq!(x.len(), geo.n * img_in, "conv2d: input length");
    assert_eq!(w.len(), geo.o * k, "conv2d: weight length");
    assert_eq!(out.len(), geo.n * geo.o * l, "conv2d: output length");
    let flops = 2 * geo.n * geo.o * k * l;
    let nested_parallel = geo.n == 1;
    let scratch = || if geo.pointwise() || implicit { Vec::new() } else { vec![T::zero(); k * l] };
    per_image(out, geo.o * l, flops / 64, scratch, |b, o_img, cols| {
        let xb = &x[b * img_in..(b + 1) * img_in];
        for g in 0..geo.groups {
            #[cfg(target_arch = "x86_64")]
            if implicit {
                let dst = &mut o_img[g * og * l..(g + 1) * og * l];
                if let (Some(xf), Some(wf), Some(dst)) = (super::float::as_f32(xb), super::float::as_f32(w), super::float::as_f32_mut(dst)) {
                    let plane = geo.h * geo.w;
                    let src = ImplicitCols { x: &xf[g * geo.cg() * plane..(g + 1) * geo.cg() * plane], geo };
                    let _timer = super::gemm::stats::Timer::start_as(og, l, k, "implicit", nested_parallel);
                    // SAFETY: `implicit` implies AVX2+FMA (use_ours); dst is this group's og×l
                    // output block; the weights are read-only and in bounds.
                    unsafe {
                        super::sgemm::sgemm_packed_rhs(
                            og,
                            l,
                            k,
                            dst.as_mut_ptr(),
                            l as isize,
                            false,
                            wf,
                            MatRef { offset: g * og * k, rs: k as isize, cs: 1 },
                            &src,
                            nested_parallel,
                        )
                    };
                    continue;
                }
            }
            let (src, rm): (&[T], MatRef) = if geo.pointwise() {
                (xb, MatRef { offset: g * k * l, rs: l as isize, cs: 1 })
            } else {
                im2col(xb, geo, g, cols);
                (&cols[..], MatRef { offset: 0, rs: l as isize, cs: 1 })
            };
            let dst = &mut o_img[g * og * l..(g + 1) * og * l];
            // SAFETY: dst is this group's og×l output block; w and src are read-only.
            unsafe {
                gemm_raw(og, l, k, dst.as_mut_ptr(), l as isize, false, w, MatRef { offset: g * og * k, rs: k as isize, cs: 1 }, src, rm, nested_parallel)
            };
        }
        if let Some(bias) = bias {
            for (oc, plane) in o_img.chunks_mut(l).enumerate() {
                let bv = bias[oc];
                plane.iter_mut().for_each(|v| *v += bv);
            }
        }
    });
}

/// Backward-data: `dx [n, c, h, w]` from `dy [n, o, ho, wo]`.
pub fn conv2d_backward_input<T: Float>(dy: &[T], w: &[T], geo: &ConvGeom, dx: &mut [T]) {
    let (k, l, og) = (geo.k(), geo.l(), geo.og());
    let (kh, kw, p) = (geo.kh, geo.kw, geo.pad);
    if geo.stride == (1, 1) && !geo.pointwise() && p.0 < kh && p.1 < kh && p.2 < kw && p.3 < kw {
        // At stride 1 the data gradient is itself a convolution: of dy with the kernel flipped
        // in space and transposed in channels, padded by kernel − 1 − pad. That runs as im2col
        // + a GEMM as deep as the forward's (og·kh·kw), instead of a GEMM og deep and col2im.
        let cg = geo.cg();
        let mut wt = vec![T::zero(); geo.c * og * kh * kw];
        for g in 0..geo.groups {
            for oi in 0..og {
                for ci in 0..cg {
                    for ky in 0..kh {
                        for kx in 0..kw {
                            wt[(((g * cg + ci) * og + oi) * kh + kh - 1 - ky) * kw + kw - 1 - kx] = w[(((g * og + oi) * cg + ci) * kh + ky) * kw + kx];
                        }
                    }
                }
            }
        }
        let geo_t = ConvGeom {
            n: geo.n,
            c: geo.o,
            h: geo.ho(),
            w: geo.wo(),
            o: geo.c,
            kh,
            kw,
            stride: (1, 1),
            pad: (kh - 1 - p.0, kh - 1 - p.1, kw - 1 - p.2, kw - 1 - p.3),
            groups: geo.groups,
        };
        debug_assert_eq!((geo_t.ho(), geo_t.wo()), (geo.h, geo.w));
        conv2d(dy, &wt, None, &geo_t, dx);
        return;
    }
    let img_in = geo.c * geo.h * geo.w;
    let flops = 2 * geo.n * geo.o * k * l;
    let nested_parallel = geo.n == 1;
    let scratch = || if geo.pointwise() { Vec::new() } else { vec![T::zero(); k * l] };
    per_image(dx, img_in, flops / 64, scratch, |b, dxb, cols| {
        dxb.iter_mut().for_each(|v| *v = T::zero());
        let dyb = &dy[b * geo.o * l..(b + 1) * geo.o * l];
        for g in 0..geo.groups {
            // cols [k, l] = w_gᵀ [k, og] · dy_g [og, l]
            let wt = MatRef { offset: g * og * k, rs: 1, cs: k as isize };
            let dyg = MatRef { offset: g * og * l, rs: l as isize, cs: 1 };
            if geo.pointwise() {
                let dst = &mut dxb[g * k * l..(g + 1) * k * l];
                // SAFETY: dst is this group's k×l block of dx; other operands are read-only.
                unsafe { gemm_raw(k, l, og, dst.as_mut_ptr(), l as isize, false, w, wt, dyb, dyg, nested_parallel) };
            } else {
                // SAFETY: cols is a private k×l buffer.
                unsafe { gemm_raw(k, l, og, cols.as_mut_ptr(), l as isize, false, w, wt, dyb, dyg, nested_parallel) };
                col2im(cols, geo, g, dxb);
            }
        }
    });
}

/// Backward-weight (and bias): returns `dw [o, c/groups, kh, kw]` and `db [o]`.
/// Images are processed in fixed blocks whose partial sums are added in order, so the result does
/// not depend on the thread count.
pub fn conv2d_backward_weight<T: Float>(x: &[T], dy: &[T], geo: &ConvGeom, want_bias: bool) -> (Vec<T>, Vec<T>) {
    let (k, l, og) = (geo.k(), geo.l(), geo.og());
    let img_in = geo.c * geo.h * geo.w;
    const BLOCK: usize = 4;
    let nblocks = geo.n.div_ceil(BLOCK);
    let wlen = geo.o * k;
    let mut partial = vec![T::zero(); nblocks * wlen];
    let flops = 2 * geo.n * geo.o * k * l;
    // f32: the product is formed transposed, dw_gᵀ [k, og] += cols [k, l] · dy_gᵀ [l, og], with
    // dy_g copied to [l, og] (after the scratch's first k·l elements), so the `gemm` crate reads
    // both operands row-major. Its product with colsᵀ as a strided view ran at 66 GFLOP/s against
    // 121 for the same-sized forward (session 11); session 11 then transposed the columns (k·l
    // floats); dy_g is og·l (9× smaller in the 3 × 3 WS-conv case), and the blocks' sums are
    // transposed back once, below.
    let transposed = !geo.pointwise() && super::float::as_f32::<T>(&[]).is_some();
    let scratch = || if geo.pointwise() { Vec::new() } else { vec![T::zero(); if transposed { k * l + og * l } else { k * l }] };
    per_image(&mut partial, wlen, flops / 64, scratch, |blk, dw, cols| {
        for b in blk * BLOCK..((blk + 1) * BLOCK).min(geo.n) {
            let xb = &x[b * img_in..(b + 1) * img_in];
            let dyb = &dy[b * geo.o * l..(b + 1) * geo.o * l];
            for g in 0..geo.groups {
                let dst = &mut dw[g * og * k..(g + 1) * og * k];
                if transposed {
                    let (c, dyt) = cols.split_at_mut(k * l);
                    im2col(xb, geo, g, c);
                    let (dyg, dyt) = (super::float::as_f32(&dyb[g * og * l..(g + 1) * og * l]).expect("f32"), super::float::as_f32_mut(dyt).expect("f32"));
                    super::xattn::transpose(dyg, og, l, dyt);
                    // SAFETY: dst is this block's private og·k slice, holding dw_gᵀ [k, og].
                    unsafe {
                        gemm_raw(
                            k,
                            og,
                            l,
                            dst.as_mut_ptr(),
                            og as isize,
                            true,
                            cols,
                            MatRef { offset: 0, rs: l as isize, cs: 1 },
                            cols,
                            MatRef { offset: k * l, rs: og as isize, cs: 1 },
                            nblocks == 1,
                        )
                    };
                    continue;
                }
                let (src, cm): (&[T], MatRef) = if geo.pointwise() {
                    (xb, MatRef { offset: g * k * l, rs: 1, cs: l as isize })
                } else {
                    im2col(xb, geo, g, cols);
                    (&cols[..], MatRef { offset: 0, rs: 1, cs: l as isize })
                };
                // dw_g [og, k] += dy_g [og, l] · colsᵀ [l, k]
                // SAFETY: dst is this block's private og×k slice.
                unsafe {
                    gemm_raw(og, k, l, dst.as_mut_ptr(), k as isize, true, dyb, MatRef { offset: g * og * l, rs: l as isize, cs: 1 }, src, cm, nblocks == 1)
                };
            }
        }
    });
    let mut dw = vec![T::zero(); wlen];
    for p in partial.chunks(wlen) {
        if transposed {
            // Each group's block holds dw_gᵀ [k, og].
            for g in 0..geo.groups {
                let (src, dst) = (&p[g * og * k..(g + 1) * og * k], &mut dw[g * og * k..(g + 1) * og * k]);
                for o in 0..og {
                    for kk in 0..k {
                        dst[o * k + kk] += src[kk * og + o];
                    }
                }
            }
        } else {
            for (d, v) in dw.iter_mut().zip(p) {
                *d += *v;
            }
        }
    }
    let mut db = Vec::new();
    if want_bias {
        db = vec![T::zero(); geo.o];
        for b in 0..geo.n {
            for (oc, d) in db.iter_mut().enumerate() {
                *d += super::reduce::sum_slice(&dy[(b * geo.o + oc) * l..(b * geo.o + oc + 1) * l]);
            }
        }
    }
    (dw, db)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;

    /// The straightforward im2col: one bounds check per element.
    fn im2col_naive(x: &[f64], geo: &ConvGeom, g: usize) -> Vec<f64> {
        let (ho, wo, cg) = (geo.ho(), geo.wo(), geo.cg());
        let mut cols = vec![0.0; geo.k() * ho * wo];
        for ic in 0..cg {
            for ky in 0..geo.kh {
                for kx in 0..geo.kw {
                    for oy in 0..ho {
                        for ox in 0..wo {
                            let iy = (oy * geo.stride.0 + ky) as isize - geo.pad.0 as isize;
                            let ix = (ox * geo.stride.1 + kx) as isize - geo.pad.2 as isize;
                            if iy >= 0 && (iy as usize) < geo.h && ix >= 0 && (ix as usize) < geo.w {
                                cols[((ic * geo.kh + ky) * geo.kw + kx) * ho * wo + oy * wo + ox] =
                                    x[((g * cg + ic) * geo.h + iy as usize) * geo.w + ix as usize];
                            }
                        }
                    }
                }
            }
        }
        cols
    }

    /// im2col equals the naive version and col2im is its adjoint (⟨im2col x, c⟩ = ⟨x, col2im c⟩),
    /// over strides, asymmetric and oversized padding, and kernels wider than the input.
    #[test]
    fn im2col_and_col2im_match_naive_over_geometries() {
        for geo in geometries() {
            let x: Vec<f64> = (0..geo.c * geo.h * geo.w).map(|i| ((i * 37) % 23) as f64 - 11.0).collect();
            for g in 0..geo.groups {
                let want = im2col_naive(&x, &geo, g);
                let mut cols = vec![f64::NAN; want.len()];
                im2col(&x, &geo, g, &mut cols);
                assert_eq!(cols, want, "{geo:?} group {g}");
                let c: Vec<f64> = (0..want.len()).map(|i| ((i * 11) % 13) as f64 - 6.0).collect();
                let mut back = vec![0.0; x.len()];
                col2im(&c, &geo, g, &mut back);
                let lhs: f64 = cols.iter().zip(&c).map(|(a, b)| a * b).sum();
                let rhs: f64 = x.iter().zip(&back).map(|(a, b)| a * b).sum();
                assert_eq!(lhs, rhs, "adjoint {geo:?} group {g}");
            }
        }
    }

    /// Geometries for the im2col tests: strides, asymmetric and oversized padding, kernels wider
    /// than the input, "same" stride-1 convs (the flat-copy path), output rows narrower and wider
    /// than a packed sliver.
    fn geometries() -> Vec<ConvGeom> {
        vec![
            ConvGeom { n: 1, c: 4, h: 7, w: 6, o: 2, kh: 3, kw: 3, stride: (1, 1), pad: (1, 1, 1, 1), groups: 2 },
            ConvGeom { n: 1, c: 2, h: 7, w: 9, o: 2, kh: 3, kw: 3, stride: (2, 3), pad: (0, 1, 2, 0), groups: 1 },
            ConvGeom { n: 1, c: 2, h: 5, w: 5, o: 2, kh: 3, kw: 4, stride: (1, 2), pad: (2, 2, 3, 3), groups: 1 },
            ConvGeom { n: 1, c: 1, h: 4, w: 2, o: 1, kh: 2, kw: 5, stride: (1, 1), pad: (0, 0, 2, 1), groups: 1 },
            ConvGeom { n: 1, c: 3, h: 6, w: 8, o: 3, kh: 1, kw: 1, stride: (2, 2), pad: (0, 0, 0, 0), groups: 3 },
            ConvGeom { n: 1, c: 2, h: 5, w: 6, o: 2, kh: 5, kw: 3, stride: (1, 1), pad: (1, 3, 2, 0), groups: 2 },
            ConvGeom { n: 1, c: 1, h: 3, w: 4, o: 1, kh: 7, kw: 1, stride: (1, 1), pad: (3, 3, 0, 0), groups: 1 },
            ConvGeom { n: 1, c: 2, h: 5, w: 21, o: 2, kh: 3, kw: 3, stride: (1, 1), pad: (1, 1, 1, 1), groups: 1 },
            ConvGeom { n: 1, c: 2, h: 9, w: 35, o: 2, kh: 3, kw: 3, stride: (2, 2), pad: (1, 1, 1, 1), groups: 2 },
            // rows of exactly one or two slivers (the one-row sliver path), wide kernels
            ConvGeom { n: 1, c: 4, h: 4, w: 16, o: 2, kh: 3, kw: 3, stride: (1, 1), pad: (1, 1, 1, 1), groups: 2 },
            ConvGeom { n: 1, c: 2, h: 6, w: 32, o: 2, kh: 5, kw: 5, stride: (2, 1), pad: (2, 2, 2, 2), groups: 1 },
            ConvGeom { n: 1, c: 1, h: 3, w: 18, o: 1, kh: 1, kw: 19, stride: (1, 1), pad: (0, 0, 9, 9), groups: 1 },
        ]
    }

    /// Every packed sliver of the implicit im2col operand equals the corresponding block of the
    /// naive im2col matrix, zero-padded to the sliver width: over geometries, depth offsets and
    /// lengths, and column offsets that start mid-row.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn implicit_cols_pack_like_im2col() {
        use super::super::sgemm::{PackB, NR};
        for geo in geometries() {
            let x: Vec<f64> = (0..geo.c * geo.h * geo.w).map(|i| ((i * 37) % 23) as f64 - 11.0).collect();
            let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            let (k, l, plane) = (geo.k(), geo.l(), geo.h * geo.w);
            for g in 0..geo.groups {
                let want = im2col_naive(&x, &geo, g);
                let src = ImplicitCols { x: &xf[g * geo.cg() * plane..(g + 1) * geo.cg() * plane], geo: &geo };
                for (p0, kc) in [(0, k), (1, k - 1), (k / 2, k - k / 2), (0, 1)] {
                    for j0 in (0..l).step_by(NR).chain([3.min(l - 1), l - 1]) {
                        let cols = (l - j0).min(NR);
                        let mut out = vec![f32::NAN; kc * NR];
                        src.pack(p0, kc, j0, cols, &mut out);
                        for p in 0..kc {
                            for j in 0..NR {
                                let w = if j < cols { want[(p0 + p) * l + j0 + j] as f32 } else { 0.0 };
                                assert_eq!(out[p * NR + j], w, "{geo:?} group {g} p0 {p0} row {p} j0 {j0} col {j}");
                            }
                        }
                    }
                }
            }
        }
    }

    /// The implicit-GEMM forward (forced on, whatever the product size) matches the f64
    /// reference convolution, with bias, over the geometries (and two images).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn implicit_gemm_conv_matches_reference() {
        if !super::super::sgemm::available() {
            eprintln!("skipped: this CPU lacks AVX2/FMA, which the implicit-GEMM path needs");
            return;
        }
        for geo in geometries() {
            let geo = ConvGeom { n: 2, o: 2 * geo.groups, ..geo };
            let x: Vec<f64> = (0..geo.n * geo.c * geo.h * geo.w).map(|i| ((i * 37) % 17) as f64 / 17.0 - 0.5).collect();
            let w: Vec<f64> = (0..geo.o * geo.k()).map(|i| ((i * 13) % 11) as f64 / 11.0 - 0.5).collect();
            let bias: Vec<f64> = (0..geo.o).map(|i| i as f64 * 0.25 - 0.5).collect();
            let f = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
            let mut out = vec![f32::NAN; geo.n * geo.o * geo.l()];
            conv2d_with(&f(&x), &f(&w), Some(&f(&bias)), &geo, &mut out, !geo.pointwise());
            // The reference takes symmetric padding; other geometries are compared with the
            // im2col path in f64 (itself checked against the naive im2col above).
            if geo.pad.0 != geo.pad.1 || geo.pad.2 != geo.pad.3 {
                let mut dflt = vec![0f64; out.len()];
                conv2d(&x, &w, Some(&bias), &geo, &mut dflt);
                for (a, b) in out.iter().zip(&dflt) {
                    assert!((*a as f64 - b).abs() < 1e-4, "{geo:?}: {a} vs {b}");
                }
                continue;
            }
            let want = reference::conv2d(&x, (geo.n, geo.c, geo.h, geo.w), &w, (geo.o, geo.kh, geo.kw), geo.stride, (geo.pad.0, geo.pad.2), geo.groups);
            for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                let b = b + bias[i / geo.l() % geo.o];
                assert!((*a as f64 - b).abs() < 1e-4, "{geo:?} at {i}: {a} vs {b}");
            }
        }
    }

    /// Backward-data is the adjoint of the forward (⟨conv(x), dy⟩ = ⟨x, dx⟩), through both of its
    /// paths: the flipped-kernel convolution (stride 1, padding below the kernel) and col2im.
    #[test]
    fn backward_input_is_the_adjoint_of_the_forward() {
        for geo in small_geometries() {
            let (x, dy) = integer_input_and_grad(&geo);
            let w: Vec<f64> = (0..geo.o * geo.cg() * geo.kh * geo.kw).map(|i| ((i * 13) % 7) as f64 - 3.0).collect();
            let mut y = vec![0.0; dy.len()];
            conv2d(&x, &w, None, &geo, &mut y);
            let mut dx = vec![f64::NAN; x.len()];
            conv2d_backward_input(&dy, &w, &geo, &mut dx);
            let lhs: f64 = y.iter().zip(&dy).map(|(a, b)| a * b).sum();
            let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| a * b).sum();
            assert_eq!(lhs, rhs, "{geo:?}");
        }
    }

    /// Grouped, strided, asymmetrically padded and flipped-kernel geometries, `n` images each.
    fn small_geometries() -> [ConvGeom; 4] {
        [
            ConvGeom { n: 2, c: 4, h: 7, w: 6, o: 6, kh: 3, kw: 3, stride: (1, 1), pad: (1, 1, 1, 1), groups: 2 },
            ConvGeom { n: 1, c: 2, h: 6, w: 7, o: 3, kh: 3, kw: 5, stride: (1, 1), pad: (0, 2, 1, 3), groups: 1 },
            ConvGeom { n: 1, c: 2, h: 5, w: 5, o: 2, kh: 3, kw: 3, stride: (1, 1), pad: (3, 0, 0, 0), groups: 1 },
            ConvGeom { n: 2, c: 3, h: 7, w: 8, o: 3, kh: 3, kw: 3, stride: (2, 2), pad: (1, 1, 1, 1), groups: 3 },
        ]
    }

    /// Small integer-valued `x` and `dy` for `geo` (sums of their products are exact in f32).
    fn integer_input_and_grad(geo: &ConvGeom) -> (Vec<f64>, Vec<f64>) {
        let x = (0..geo.n * geo.c * geo.h * geo.w).map(|i| ((i * 37) % 23) as f64 - 11.0).collect();
        let dy = (0..geo.n * geo.o * geo.ho() * geo.wo()).map(|i| ((i * 11) % 9) as f64 - 4.0).collect();
        (x, dy)
    }

    /// The f32 weight gradient (formed transposed, `colsᵀ`-free) against the f64 one (the plain
    /// product, which the engine's f64 gradient checks cover), with more images than one block.
    /// Integer-valued data keeps every f32 sum exact: equal values.
    #[test]
    fn f32_weight_gradient_matches_the_f64_one() {
        for geo in small_geometries() {
            let geo = ConvGeom { n: geo.n * 3, ..geo };
            let (x, dy) = integer_input_and_grad(&geo);
            let (dw64, db64) = conv2d_backward_weight(&x, &dy, &geo, true);
            let (x32, dy32): (Vec<f32>, Vec<f32>) = (x.iter().map(|&v| v as f32).collect(), dy.iter().map(|&v| v as f32).collect());
            let (dw32, db32) = conv2d_backward_weight(&x32, &dy32, &geo, true);
            assert_eq!(dw32.len(), dw64.len());
            for (i, (a, b)) in dw32.iter().zip(&dw64).enumerate() {
                assert_eq!(*a as f64, *b, "{geo:?}: dw[{i}]");
            }
            assert!(db32.iter().zip(&db64).all(|(a, b)| *a as f64 == *b), "{geo:?}: db");
        }
    }

    #[test]
    fn grouped_strided_conv_matches_reference() {
        let geo = ConvGeom { n: 2, c: 4, h: 7, w: 6, o: 6, kh: 3, kw: 3, stride: (2, 1), pad: (1, 1, 1, 1), groups: 2 };
        let x: Vec<f64> = (0..geo.n * geo.c * geo.h * geo.w).map(|i| ((i * 37) % 17) as f64 / 17.0 - 0.5).collect();
        let w: Vec<f64> = (0..geo.o * 2 * 9).map(|i| ((i * 13) % 11) as f64 / 11.0 - 0.5).collect();
        let mut out = vec![0.0; geo.n * geo.o * geo.ho() * geo.wo()];
        conv2d(&x, &w, None, &geo, &mut out);
        let want = reference::conv2d(&x, (2, 4, 7, 6), &w, (6, 3, 3), (2, 1), (1, 1), 2);
        assert_eq!(out.len(), want.len());
        for (a, b) in out.iter().zip(&want) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
    }
}
