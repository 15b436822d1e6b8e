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

/// Forward: `out [n, o, ho, wo] = conv(x, w) (+ bias [o])`.
pub fn conv2d<T: Float>(x: &[T], w: &[T], bias: Option<&[T]>, geo: &ConvGeom, out: &mut [T]) {
    let (k, l, og) = (geo.k(), geo.l(), geo.og());
    let img_in = geo.c * geo.h * geo.w;
    assert_eq!(x.len(), geo.n * img_in, "conv2d: input length");
    assert_eq!(w.len(), geo.o * k, "conv2d: weight length");
    assert_eq!(out.len(), geo.n * geo.o * l, "conv2d: output length");
    let flops = 2 * geo.n * geo.o * k * l;
    let nested_parallel = geo.n == 1;
    let scratch = || if geo.pointwise() { Vec::new() } else { vec![T::zero(); k * l] };
    per_image(out, geo.o * l, flops / 64, scratch, |b, o_img, cols| {
        let xb = &x[b * img_in..(b + 1) * img_in];
        for g in 0..geo.groups {
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
        let geo_t = ConvGeom { n: geo.n, c: geo.o, h: geo.ho(), w: geo.wo(), o: geo.c, kh, kw, stride: (1, 1), pad: (kh - 1 - p.0, kh - 1 - p.1, kw - 1 - p.2, kw - 1 - p.3), groups: geo.groups };
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
    let scratch = || if geo.pointwise() { Vec::new() } else { vec![T::zero(); k * l] };
    per_image(&mut partial, wlen, flops / 64, scratch, |blk, dw, cols| {
        for b in blk * BLOCK..((blk + 1) * BLOCK).min(geo.n) {
            let xb = &x[b * img_in..(b + 1) * img_in];
            let dyb = &dy[b * geo.o * l..(b + 1) * geo.o * l];
            for g in 0..geo.groups {
                let (src, cm): (&[T], MatRef) = if geo.pointwise() {
                    (xb, MatRef { offset: g * k * l, rs: 1, cs: l as isize })
                } else {
                    im2col(xb, geo, g, cols);
                    (&cols[..], MatRef { offset: 0, rs: 1, cs: l as isize })
                };
                let dst = &mut dw[g * og * k..(g + 1) * og * k];
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
        for (d, v) in dw.iter_mut().zip(p) {
            *d += *v;
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
                                cols[((ic * geo.kh + ky) * geo.kw + kx) * ho * wo + oy * wo + ox] = x[((g * cg + ic) * geo.h + iy as usize) * geo.w + ix as usize];
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
        let geos = [
            ConvGeom { n: 1, c: 4, h: 7, w: 6, o: 2, kh: 3, kw: 3, stride: (1, 1), pad: (1, 1, 1, 1), groups: 2 },
            ConvGeom { n: 1, c: 2, h: 7, w: 9, o: 2, kh: 3, kw: 3, stride: (2, 3), pad: (0, 1, 2, 0), groups: 1 },
            ConvGeom { n: 1, c: 2, h: 5, w: 5, o: 2, kh: 3, kw: 4, stride: (1, 2), pad: (2, 2, 3, 3), groups: 1 },
            ConvGeom { n: 1, c: 1, h: 4, w: 2, o: 1, kh: 2, kw: 5, stride: (1, 1), pad: (0, 0, 2, 1), groups: 1 },
            ConvGeom { n: 1, c: 3, h: 6, w: 8, o: 3, kh: 1, kw: 1, stride: (2, 2), pad: (0, 0, 0, 0), groups: 3 },
            // "same" width at stride 1 (the flat-copy path), uneven padding, tall kernel
            ConvGeom { n: 1, c: 2, h: 5, w: 6, o: 2, kh: 5, kw: 3, stride: (1, 1), pad: (1, 3, 2, 0), groups: 2 },
            ConvGeom { n: 1, c: 1, h: 3, w: 4, o: 1, kh: 7, kw: 1, stride: (1, 1), pad: (3, 3, 0, 0), groups: 1 },
        ];
        for geo in geos {
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

    /// Backward-data is the adjoint of the forward (⟨conv(x), dy⟩ = ⟨x, dx⟩), through both of its
    /// paths: the flipped-kernel convolution (stride 1, padding below the kernel) and col2im.
    #[test]
    fn backward_input_is_the_adjoint_of_the_forward() {
        let geos = [
            ConvGeom { n: 2, c: 4, h: 7, w: 6, o: 6, kh: 3, kw: 3, stride: (1, 1), pad: (1, 1, 1, 1), groups: 2 },
            ConvGeom { n: 1, c: 2, h: 6, w: 7, o: 3, kh: 3, kw: 5, stride: (1, 1), pad: (0, 2, 1, 3), groups: 1 },
            ConvGeom { n: 1, c: 2, h: 5, w: 5, o: 2, kh: 3, kw: 3, stride: (1, 1), pad: (3, 0, 0, 0), groups: 1 },
            ConvGeom { n: 2, c: 3, h: 7, w: 8, o: 3, kh: 3, kw: 3, stride: (2, 2), pad: (1, 1, 1, 1), groups: 3 },
        ];
        for geo in geos {
            let x: Vec<f64> = (0..geo.n * geo.c * geo.h * geo.w).map(|i| ((i * 37) % 23) as f64 - 11.0).collect();
            let w: Vec<f64> = (0..geo.o * geo.cg() * geo.kh * geo.kw).map(|i| ((i * 13) % 7) as f64 - 3.0).collect();
            let dy: Vec<f64> = (0..geo.n * geo.o * geo.ho() * geo.wo()).map(|i| ((i * 11) % 9) as f64 - 4.0).collect();
            let mut y = vec![0.0; dy.len()];
            conv2d(&x, &w, None, &geo, &mut y);
            let mut dx = vec![f64::NAN; x.len()];
            conv2d_backward_input(&dy, &w, &geo, &mut dx);
            let lhs: f64 = y.iter().zip(&dy).map(|(a, b)| a * b).sum();
            let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| a * b).sum();
            assert_eq!(lhs, rhs, "{geo:?}");
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
